//! The bearer token a connector presents to its target: a token of the connector's own
//! identity for the target's audience, from the token service it authenticates with, kept
//! and shared by its pushes until half its lifetime is gone.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Mutex;

use crate::credential::{CredentialError, Credentials};

/// A connector's bearer token for one audience.
pub struct Bearer {
    credentials: Arc<Credentials>,
    audience: String,
    /// The token and when to get a new one.
    cached: Mutex<Option<(String, SystemTime)>>,
}

impl Bearer {
    pub fn new(credentials: Arc<Credentials>, audience: String) -> Bearer {
        Bearer {
            credentials,
            audience,
            cached: Mutex::new(None),
        }
    }

    /// The token to present now (fetched when there is none or it is half-way to expiry;
    /// concurrent pushes wait for one fetch).
    pub async fn get(&self, now: SystemTime) -> Result<String, CredentialError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && now < *refresh_at
        {
            return Ok(token.clone());
        }
        let token = self.credentials.identity_token(&self.audience, now).await?;
        let refresh_at = token.refresh_at(now);
        *cached = Some((token.value.clone(), refresh_at));
        Ok(token.value)
    }
}
