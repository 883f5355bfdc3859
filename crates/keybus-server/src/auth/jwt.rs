//! JSON Web Token validation (identity reference §5). PLACEHOLDER: being written.

use super::Principal;
use super::policy::Policy;

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JwtError {
    #[error("InvalidToken: JWT validation is not available yet.")]
    Unsupported,
}

/// Validates tokens against the configured issuers.
#[derive(Default)]
pub struct Validator {}

impl Validator {
    pub fn new() -> Self {
        Self {}
    }

    /// (Re)build the issuer table from a policy.
    pub fn configure(&self, _policy: &Policy) {}

    /// Validate `token`; on success the principal and when it expires (ms since the epoch).
    pub fn validate(
        &self,
        _token: &str,
        _sts: &super::sts::TokenService,
        _policy: &Policy,
        _now_ms: i64,
    ) -> Result<(Principal, i64), JwtError> {
        Err(JwtError::Unsupported)
    }
}
