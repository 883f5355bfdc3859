//! Shared access signatures (wire reference §3.5): token parsing, signature check, audience
//! matching. Keys are compared in constant time by the `hmac` crate.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Right, SasPolicy};

/// A token that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Lower-case `host-less` resource path the token covers (`""` = the whole namespace).
    pub resource: String,
    pub expires_at_ms: i64,
    pub rights: Vec<Right>,
    pub key_name: String,
}

/// Why a token was refused (all map to CBS status 401 except `Malformed`: 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("The token is malformed: {0}")]
    Malformed(String),
    #[error("The SAS key name '{0}' is not known.")]
    UnknownKey(String),
    #[error("The token signature is invalid.")]
    BadSignature,
    #[error("The token has expired.")]
    Expired,
    #[error("The token audience '{0}' does not cover '{1}'.")]
    WrongAudience(String, String),
}

impl TokenError {
    pub fn status(&self) -> i32 {
        match self {
            TokenError::Malformed(_) => 400,
            _ => 401,
        }
    }
}

/// Largest token we parse; anything bigger is refused before any work.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Allowed clock skew when checking `se`.
const SKEW_MS: i64 = 5 * 60 * 1000;

fn percent_decode(s: &str) -> Result<String, TokenError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .ok_or_else(|| TokenError::Malformed("bad % escape".into()))?;
            let hex = std::str::from_utf8(hex)
                .map_err(|_| TokenError::Malformed("bad % escape".into()))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| TokenError::Malformed("bad % escape".into()))?;
            out.push(v);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TokenError::Malformed("not UTF-8".into()))
}

/// Reduce a URI (`sb://host:port/Path`, `amqps://host/path/`, `https://host/path?query`) to
/// its lower-case path. The JavaScript management client signs the whole request URL, query
/// included; the query is not part of the resource.
pub fn resource_path(uri: &str) -> String {
    let uri = uri.split_once('?').map_or(uri, |(path, _)| path);
    keybus_core::address::strip_authority(uri)
        .trim_end_matches('/')
        .to_ascii_lowercase()
}

/// True if `resource` (a path) covers `target` (a path): equal, or a prefix on a `/` boundary.
pub fn covers(resource: &str, target: &str) -> bool {
    resource.is_empty()
        || target == resource
        || (target.starts_with(resource) && target.as_bytes().get(resource.len()) == Some(&b'/'))
}

/// Validate `SharedAccessSignature sr=..&sig=..&se=..&skn=..` against the policies.
/// `audience` is the CBS `name` the token is put for.
pub fn validate(
    token: &str,
    audience: &str,
    policies: &[SasPolicy],
    now_ms: i64,
) -> Result<Grant, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("token too long".into()));
    }
    let body = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or_else(|| TokenError::Malformed("missing 'SharedAccessSignature ' prefix".into()))?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for part in body.split('&') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            "skn" => skn = Some(v),
            _ => {}
        }
    }
    let missing = |f: &str| TokenError::Malformed(format!("missing {f}"));
    let (sr, sig, se, skn) = (
        sr.ok_or_else(|| missing("sr"))?,
        sig.ok_or_else(|| missing("sig"))?,
        se.ok_or_else(|| missing("se"))?,
        skn.ok_or_else(|| missing("skn"))?,
    );
    let key_name = percent_decode(skn)?;
    let policy = policies
        .iter()
        .find(|p| p.name == key_name)
        .ok_or_else(|| TokenError::UnknownKey(key_name.clone()))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(percent_decode(sig)?)
        .map_err(|_| TokenError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(policy.key.as_bytes())
        .map_err(|_| TokenError::Malformed("bad key".into()))?;
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(se.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    let se: i64 = se
        .parse()
        .map_err(|_| TokenError::Malformed("se is not a number".into()))?;
    let expires_at_ms = se.saturating_mul(1000);
    if expires_at_ms + SKEW_MS <= now_ms {
        return Err(TokenError::Expired);
    }
    let resource = resource_path(&percent_decode(sr)?);
    let target = resource_path(audience);
    if !covers(&resource, &target) {
        return Err(TokenError::WrongAudience(resource, target));
    }
    Ok(Grant {
        resource,
        expires_at_ms,
        rights: policy.rights.clone(),
        key_name,
    })
}

/// Build a token (used by `keybus bench` and tests).
pub fn make_token(resource_uri: &str, key_name: &str, key: &str, expires_unix_s: i64) -> String {
    let sr = encode_component(resource_uri);
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("{sr}\n{expires_unix_s}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expires_unix_s}&skn={}",
        encode_component(&sig),
        encode_component(key_name)
    )
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Vec<SasPolicy> {
        vec![SasPolicy {
            name: "root".into(),
            key: "secret".into(),
            rights: vec![Right::Send],
        }]
    }

    #[test]
    fn round_trip_and_failures() {
        let now = 1_700_000_000_000;
        let t = make_token(
            "sb://localhost:5672/q1",
            "root",
            "secret",
            now / 1000 + 3600,
        );
        let g = validate(&t, "sb://localhost:5672/q1", &policies(), now).unwrap();
        assert_eq!(g.resource, "q1");
        assert!(validate(&t, "amqps://localhost/q1/$management", &policies(), now).is_ok());
        assert!(matches!(
            validate(&t, "sb://localhost/q2", &policies(), now),
            Err(TokenError::WrongAudience(..))
        ));
        assert!(matches!(
            validate(&t, "sb://localhost/q10", &policies(), now),
            Err(TokenError::WrongAudience(..))
        ));
        let bad = make_token("sb://localhost:5672/q1", "root", "wrong", now / 1000 + 3600);
        assert_eq!(
            validate(&bad, "sb://localhost/q1", &policies(), now),
            Err(TokenError::BadSignature)
        );
        let old = make_token("sb://localhost/q1", "root", "secret", now / 1000 - 3600);
        assert_eq!(
            validate(&old, "sb://localhost/q1", &policies(), now),
            Err(TokenError::Expired)
        );
        let unknown = make_token("sb://localhost/q1", "nobody", "secret", now / 1000 + 60);
        assert!(matches!(
            validate(&unknown, "sb://localhost/q1", &policies(), now),
            Err(TokenError::UnknownKey(_))
        ));
        let ns = make_token("sb://localhost/", "root", "secret", now / 1000 + 60);
        assert_eq!(
            validate(&ns, "sb://localhost/any/thing", &policies(), now)
                .unwrap()
                .resource,
            ""
        );
        assert!(validate("garbage", "x", &policies(), now).is_err());
        // The JS management client signs the request URL with its query.
        let url = make_token(
            "https://localhost:5443/q1?api-version=2021-05",
            "root",
            "secret",
            now / 1000 + 60,
        );
        assert_eq!(
            validate(&url, "sb://localhost/q1", &policies(), now)
                .unwrap()
                .resource,
            "q1"
        );
    }
}
