//! Claims-based security: authorising an entity with a CBS `put-token` carrying a SAS token
//! made from the connection string.

use std::time::Duration;

use keybus_amqp::{Message, Properties, Value};

use crate::connection::Connection;
use crate::error::ClientError;

/// The CBS token type of `token`, as the SDKs choose it.
pub(crate) fn token_type(token: &str) -> &'static str {
    if token.starts_with("SharedAccessSignature ") {
        "servicebus.windows.net:sastoken"
    } else {
        "jwt"
    }
}

impl Connection {
    /// Authorize `entity` with a CBS `put-token` of a token for its audience.
    pub async fn put_token(&mut self, entity: &str, timeout: Duration) -> Result<(), ClientError> {
        let audience = self.endpoint.audience(entity);
        let token = self.endpoint.token(&audience);
        self.put_token_for(&audience, &token, timeout).await
    }

    /// CBS `put-token` of `token` for `audience`: a `SharedAccessSignature ...` string goes
    /// as a SAS token, anything else as a JWT (an Entra or keybus token service access token).
    pub async fn put_token_for(
        &mut self,
        audience: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let s = |v: &str| Value::String(v.to_string());
        let msg = Message {
            properties: Some(Properties {
                to: Some("$cbs".into()),
                ..Default::default()
            }),
            application_properties: Some(vec![
                (s("operation"), s("put-token")),
                (s("type"), s(token_type(token))),
                (s("name"), s(audience)),
            ]),
            body_raw: Message::body_value(&Value::String(token.to_string())),
            ..Default::default()
        };
        let reply = self.request("$cbs", msg, timeout).await?;
        let status = reply
            .property("status-code")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        if !(200..300).contains(&status) {
            let description = reply
                .property("status-description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Err(ClientError::Auth {
                audience: audience.to_string(),
                status,
                description,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::token_type;

    #[test]
    fn sas_tokens_and_jwts_have_their_cbs_types() {
        assert_eq!(
            token_type("SharedAccessSignature sr=a&sig=b&se=1&skn=k"),
            "servicebus.windows.net:sastoken"
        );
        assert_eq!(token_type("eyJhbGciOiJFUzI1NiJ9.e30.sig"), "jwt");
    }
}
