//! Shared access signatures (wire reference §3.5): token parsing, signature check, audience
//! matching. Keys are compared in constant time by the `hmac` crate.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Right, SasPolicy};

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
    #[error("InvalidToken: The token is malformed: {0}")]
    Malformed(String),
    /// Same text as a bad signature: no oracle for key names.
    #[error("InvalidSignature: The token has an invalid signature.")]
    UnknownKey(String),
    #[error("InvalidSignature: The token has an invalid signature.")]
    BadSignature,
    #[error("ExpiredToken: The token is expired. Expiration time: '{0}'")]
    Expired(String),
    #[error("InvalidAudience: The token audience '{0}' is not valid for '{1}'.")]
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
/// Default allowed clock skew when checking `se` (policy `namespace.sas_clock_skew_secs`).
pub const DEFAULT_SKEW_MS: i64 = 30 * 1000;

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
    let path = match uri.split_once("://") {
        Some((_scheme, rest)) => rest.split_once('/').map_or("", |(_authority, path)| path),
        None => uri,
    };
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_ascii_lowercase()
}

/// The path of a token's `sr` or of the audience it is checked for: a URI, or (as the
/// JavaScript SDK signs the management API's supplementary tokens, and as Azure's examples
/// write it) a scheme-less `host[:port][/path]`, whose first segment is the host.
fn token_path(uri: &str) -> String {
    let uri = uri.split_once('?').map_or(uri, |(path, _)| path);
    if uri.contains("://") {
        return resource_path(uri);
    }
    uri.split_once('/')
        .map_or("", |(_host, path)| path)
        .trim_end_matches('/')
        .to_ascii_lowercase()
}

/// True if `resource` (a path) covers `target` (a path): the same entity, or one of its own
/// sub-queues, subscriptions or rules ([`crate::scope::covers`]); never another entity
/// whose name merely starts with `resource/`.
pub fn covers(resource: &str, target: &str) -> bool {
    crate::scope::covers(resource, target)
}

/// Validate `SharedAccessSignature sr=..&sig=..&se=..&skn=..` against the policies.
/// `audience` is the CBS `name` the token is put for; a token is accepted until `skew_ms`
/// after its `se`.
pub fn validate(
    token: &str,
    audience: &str,
    policies: &[SasPolicy],
    now_ms: i64,
    skew_ms: i64,
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
    let resource = token_path(&percent_decode(sr)?);
    // Rules of that name on the token's entity or an ancestor (the namespace) may have signed
    // it; an unknown name gets the same answer as a bad signature.
    let candidates: Vec<&SasPolicy> = policies
        .iter()
        .filter(|p| p.name == key_name && covers(&p.scope, &resource))
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey(key_name));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(percent_decode(sig)?)
        .map_err(|_| TokenError::BadSignature)?;
    let policy = candidates
        .into_iter()
        .find(|p| {
            Hmac::<Sha256>::new_from_slice(p.key.as_bytes()).is_ok_and(|mut mac| {
                mac.update(sr.as_bytes());
                mac.update(b"\n");
                mac.update(se.as_bytes());
                mac.verify_slice(&sig).is_ok()
            })
        })
        .ok_or(TokenError::BadSignature)?;
    let se: i64 = se
        .parse()
        .map_err(|_| TokenError::Malformed("se is not a number".into()))?;
    let expires_at_ms = se.saturating_mul(1000);
    if expires_at_ms.saturating_add(skew_ms) <= now_ms {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(se.max(0) as u64);
        return Err(TokenError::Expired(
            humantime::format_rfc3339_seconds(t).to_string(),
        ));
    }
    let target = token_path(audience);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tokens are made as clients make them, by the one SAS token maker (`keybus-client`).
    pub(crate) fn make_token(uri: &str, key_name: &str, key: &str, expires_unix_s: i64) -> String {
        keybus_client::sas::token(
            uri,
            key_name,
            key,
            u64::try_from(expires_unix_s).unwrap_or(0),
        )
    }

    fn policies() -> Vec<SasPolicy> {
        vec![SasPolicy {
            name: "root".into(),
            key: "secret".into(),
            rights: vec![Right::Send],
            scope: String::new(),
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
        let g = validate(
            &t,
            "sb://localhost:5672/q1",
            &policies(),
            now,
            DEFAULT_SKEW_MS,
        )
        .unwrap();
        assert_eq!(g.resource, "q1");
        assert!(
            validate(
                &t,
                "amqps://localhost/q1/$management",
                &policies(),
                now,
                DEFAULT_SKEW_MS
            )
            .is_ok()
        );
        assert!(matches!(
            validate(&t, "sb://localhost/q2", &policies(), now, DEFAULT_SKEW_MS),
            Err(TokenError::WrongAudience(..))
        ));
        assert!(matches!(
            validate(&t, "sb://localhost/q10", &policies(), now, DEFAULT_SKEW_MS),
            Err(TokenError::WrongAudience(..))
        ));
        let bad = make_token("sb://localhost:5672/q1", "root", "wrong", now / 1000 + 3600);
        assert_eq!(
            validate(&bad, "sb://localhost/q1", &policies(), now, DEFAULT_SKEW_MS),
            Err(TokenError::BadSignature)
        );
        let old = make_token("sb://localhost/q1", "root", "secret", now / 1000 - 3600);
        assert_eq!(
            validate(&old, "sb://localhost/q1", &policies(), now, DEFAULT_SKEW_MS),
            Err(TokenError::Expired("2023-11-14T21:13:20Z".into()))
        );
        let unknown = make_token("sb://localhost/q1", "nobody", "secret", now / 1000 + 60);
        assert!(matches!(
            validate(
                &unknown,
                "sb://localhost/q1",
                &policies(),
                now,
                DEFAULT_SKEW_MS
            ),
            Err(TokenError::UnknownKey(_))
        ));
        let ns = make_token("sb://localhost/", "root", "secret", now / 1000 + 60);
        assert_eq!(
            validate(
                &ns,
                "sb://localhost/any/thing",
                &policies(),
                now,
                DEFAULT_SKEW_MS
            )
            .unwrap()
            .resource,
            ""
        );
        assert!(validate("garbage", "x", &policies(), now, DEFAULT_SKEW_MS).is_err());
        // The JS management client signs the request URL with its query.
        let url = make_token(
            "https://localhost:5443/q1?api-version=2021-05",
            "root",
            "secret",
            now / 1000 + 60,
        );
        assert_eq!(
            validate(&url, "sb://localhost/q1", &policies(), now, DEFAULT_SKEW_MS)
                .unwrap()
                .resource,
            "q1"
        );
    }

    #[test]
    fn entity_rules_sign_only_for_their_entity() {
        let now = 1_700_000_000_000;
        let rules = vec![
            SasPolicy {
                name: "app".into(),
                key: "ns-key".into(),
                rights: vec![Right::Manage],
                scope: String::new(),
            },
            SasPolicy {
                name: "app".into(),
                key: "orders-key".into(),
                rights: vec![Right::Send],
                scope: "orders".into(),
            },
            SasPolicy {
                name: "listener".into(),
                key: "events-key".into(),
                rights: vec![Right::Listen],
                scope: "events".into(),
            },
        ];
        let exp = now / 1000 + 60;
        // The entity rule's key works for its entity, with its rights ...
        let t = make_token("sb://h/orders", "app", "orders-key", exp);
        let g = validate(&t, "sb://h/orders", &rules, now, DEFAULT_SKEW_MS).unwrap();
        assert_eq!(g.rights, vec![Right::Send]);
        // ... and the namespace rule of the same name keeps its own.
        let t = make_token("sb://h/orders", "app", "ns-key", exp);
        assert_eq!(
            validate(&t, "sb://h/orders", &rules, now, DEFAULT_SKEW_MS)
                .unwrap()
                .rights,
            vec![Right::Manage]
        );
        // Not for another entity or the namespace.
        let t = make_token("sb://h/invoices", "app", "orders-key", exp);
        assert_eq!(
            validate(&t, "sb://h/invoices", &rules, now, DEFAULT_SKEW_MS),
            Err(TokenError::BadSignature)
        );
        let t = make_token("sb://h/", "listener", "events-key", exp);
        assert!(matches!(
            validate(&t, "sb://h/", &rules, now, DEFAULT_SKEW_MS),
            Err(TokenError::UnknownKey(_))
        ));
        // A topic rule covers its subscriptions.
        let t = make_token(
            "sb://h/events/subscriptions/s1",
            "listener",
            "events-key",
            exp,
        );
        assert!(
            validate(
                &t,
                "sb://h/events/Subscriptions/s1",
                &rules,
                now,
                DEFAULT_SKEW_MS
            )
            .is_ok()
        );
        // An entity rule for `orders` signs nothing for the queue `orders/archive`, and a
        // token for `orders` is not valid for it either.
        let t = make_token("sb://h/orders/archive", "app", "orders-key", exp);
        assert_eq!(
            validate(&t, "sb://h/orders/archive", &rules, now, DEFAULT_SKEW_MS),
            Err(TokenError::BadSignature)
        );
        let t = make_token("sb://h/orders", "app", "orders-key", exp);
        assert!(matches!(
            validate(&t, "sb://h/orders/archive", &rules, now, DEFAULT_SKEW_MS),
            Err(TokenError::WrongAudience(..))
        ));
        assert!(
            validate(
                &t,
                "sb://h/Orders/$DeadLetterQueue",
                &rules,
                now,
                DEFAULT_SKEW_MS
            )
            .is_ok()
        );
        // Unknown names and bad signatures read the same.
        assert_eq!(
            TokenError::UnknownKey("x".into()).to_string(),
            TokenError::BadSignature.to_string()
        );
    }

    #[test]
    fn expiry_allows_only_the_configured_skew() {
        let now = 1_700_000_000_000;
        let se = now / 1000;
        let t = make_token("sb://h/q1", "root", "secret", se);
        let at = |ms: i64, skew: i64| validate(&t, "sb://h/q1", &policies(), ms, skew);
        // Up to the skew after `se` it is accepted, not a moment later.
        assert!(at(now + 29_999, DEFAULT_SKEW_MS).is_ok());
        let e = at(now + 30_000, DEFAULT_SKEW_MS)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("ExpiredToken: The token is expired. Expiration time: '2023-11-14T22:13:20Z'")
        );
        // Five minutes late: refused (it used to be accepted).
        assert!(matches!(
            at(now + 299_000, DEFAULT_SKEW_MS),
            Err(TokenError::Expired(_))
        ));
        // No skew: refused at `se`; a larger configured skew: accepted.
        assert!(at(now, 0).is_err());
        assert!(at(now - 1, 0).is_ok());
        assert!(at(now + 100_000, 120_000).is_ok());
    }
}
