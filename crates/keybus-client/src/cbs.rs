//! Claims-based security: authorising an entity with a CBS `put-token` carrying a SAS token
//! made from the connection string.

use std::time::Duration;

use keybus_amqp::{Message, Properties, Value};

use crate::connection::Connection;
use crate::error::ClientError;

impl Connection {
    /// Authorize `entity` with a CBS `put-token` of a token for its audience.
    pub async fn put_token(&mut self, entity: &str, timeout: Duration) -> Result<(), ClientError> {
        let audience = self.endpoint.audience(entity);
        let token = self.endpoint.token(&audience);
        self.put_token_for(&audience, &token, timeout).await
    }

    /// CBS `put-token` of `token` (a `SharedAccessSignature ...` string) for `audience`.
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
                (s("type"), s("servicebus.windows.net:sastoken")),
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
