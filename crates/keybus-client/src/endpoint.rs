//! Connection strings: `Endpoint=sb://host[:port];SharedAccessKeyName=..;SharedAccessKey=..`
//! (or `SharedAccessSignature=..`), and the CBS audiences and tokens they give.

use crate::sas;

/// Why a connection string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("'{0}' is not Key=Value")]
    NotKeyValue(String),
    #[error("the connection string has no Endpoint")]
    NoEndpoint,
    #[error("bad port in Endpoint '{0}'")]
    BadPort(String),
    #[error("no host in Endpoint '{0}'")]
    NoHost(String),
    #[error("the connection string needs SharedAccessKeyName and SharedAccessKey")]
    NoCredentials,
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `sb://host[:port]` (no trailing slash), the prefix of CBS audiences.
    pub uri_base: String,
    pub key_name: Option<String>,
    pub key: Option<String>,
    /// A ready-made `SharedAccessSignature ...` token.
    pub signature: Option<String>,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, EndpointError> {
        let (mut endpoint, mut key_name, mut key, mut signature) = (None, None, None, None);
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| EndpointError::NotKeyValue(part.to_string()))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(v.trim().to_string()),
                "sharedaccesskeyname" => key_name = Some(v.to_string()),
                "sharedaccesskey" => key = Some(v.to_string()),
                "sharedaccesssignature" => signature = Some(v.to_string()),
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or(EndpointError::NoEndpoint)?;
        let rest = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| EndpointError::BadPort(endpoint.clone()))?,
            ),
            _ => (authority.to_string(), 5672),
        };
        if host.is_empty() {
            return Err(EndpointError::NoHost(endpoint));
        }
        if signature.is_none() && (key_name.is_none() || key.is_none()) {
            return Err(EndpointError::NoCredentials);
        }
        Ok(Endpoint {
            host,
            port,
            uri_base: format!("sb://{authority}"),
            key_name,
            key,
            signature,
        })
    }

    /// CBS audience of an entity.
    pub fn audience(&self, entity: &str) -> String {
        format!("{}/{}", self.uri_base, entity)
    }

    /// A SAS token for `audience`, valid for a day (or the connection string's signature).
    pub fn token(&self, audience: &str) -> String {
        if let Some(sig) = &self.signature {
            return sig.clone();
        }
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 24 * 3600;
        sas::token(
            audience,
            self.key_name.as_deref().unwrap_or(""),
            self.key.as_deref().unwrap_or(""),
            expiry,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connection_string() {
        let e = Endpoint::parse(
            "Endpoint=sb://127.0.0.1:40123;SharedAccessKeyName=Root;SharedAccessKey=abc=;UseDevelopmentEmulator=true;",
        )
        .unwrap();
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.port, 40123);
        assert_eq!(e.key.as_deref(), Some("abc="));
        assert_eq!(e.audience("q"), "sb://127.0.0.1:40123/q");
        let e = Endpoint::parse("Endpoint=sb://localhost/;SharedAccessKeyName=a;SharedAccessKey=b")
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 5672));
        assert_eq!(
            Endpoint::parse("SharedAccessKeyName=a").unwrap_err(),
            EndpointError::NoEndpoint
        );
    }
}
