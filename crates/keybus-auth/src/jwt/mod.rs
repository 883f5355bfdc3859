//! JSON Web Token validation (identity reference §5.1) for tokens from keybus's own token
//! service and from the OIDC issuers the policy configures.
//!
//! Validation is synchronous and never waits on the network: keys come from a per-issuer cache
//! filled from a JWKS file, a JWKS URL or OIDC discovery by background tasks. An unknown `kid`
//! asks for one refresh (at most one per minute and issuer) and the token is refused.
//! Signatures are checked by `jsonwebtoken`; everything around them (size, header, algorithm
//! allow-list, issuer and key selection, times against the injected clock) is checked here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::policy::{IssuerConfig, IssuerKind, Policy, Subject};
use crate::sts::TokenService;
use crate::{CredentialKind, Principal, token_sha256};
use keys::{KeyCache, refresh};

mod fetch;
mod keys;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

/// Largest token we look at (Entra tokens with group claims can be large).
pub const MAX_JWT_LEN: usize = 16 * 1024;
/// Why a JWT was refused; the text is what the CBS reply carries (all status 401).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JwtError {
    #[error("InvalidToken: {0}")]
    Invalid(String),
    #[error("InvalidIssuer: The token issuer '{0}' is not trusted.")]
    Issuer(String),
    #[error("InvalidSignature: The token has an invalid signature.")]
    Signature,
    #[error("InvalidSignature: The token's signing key '{0}' is not known (yet).")]
    UnknownKey(String),
    #[error("InvalidAudience: The token audience is not valid for this resource.")]
    Audience,
    #[error("ExpiredToken: The token is expired. Expiration time: '{0}'")]
    Expired(String),
}

fn invalid(s: impl Into<String>) -> JwtError {
    JwtError::Invalid(s.into())
}

/// Claims keybus reads; everything else is ignored.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub oid: Option<String>,
    pub tid: Option<String>,
    pub appid: Option<String>,
    pub azp: Option<String>,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
    pub jti: Option<String>,
    pub uti: Option<String>,
    pub nonce: Option<String>,
}

/// A token that passed: its claims, the issuer entry that vouched for it, its key id.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    pub issuer_id: String,
    pub kid: Option<String>,
    pub expires_at_ms: i64,
    /// The issuer's clock skew (ms): the token is accepted until `expires_at_ms` + this.
    pub leeway_ms: i64,
}

/// Validates tokens against the configured issuers.
#[derive(Default)]
pub struct Validator {
    caches: Arc<RwLock<HashMap<String, Arc<Mutex<KeyCache>>>>>,
}

fn b64url(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| invalid("a token segment is not base64url"))
}

fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// (Re)build the issuer table from a policy: key files are read now, URLs fetched in
    /// the background.
    pub fn configure(&self, policy: &Policy) {
        let mut map = HashMap::new();
        for iss in &policy.file.issuers {
            if iss.kind != IssuerKind::Oidc {
                continue;
            }
            let cache = Arc::new(Mutex::new(KeyCache::default()));
            map.insert(iss.id.clone(), cache.clone());
            refresh(iss.clone(), cache, true);
        }
        match self.caches.write() {
            Ok(mut g) => *g = map,
            Err(p) => *p.into_inner() = map,
        }
    }

    fn cache(&self, id: &str) -> Option<Arc<Mutex<KeyCache>>> {
        self.caches.read().ok()?.get(id).cloned()
    }

    /// Validate a token presented to the broker (audience: Service Bus): the principal and
    /// until when it is accepted (`exp` plus the issuer's leeway), in ms.
    pub fn validate(
        &self,
        token: &str,
        sts: &TokenService,
        policy: &Policy,
        now_ms: i64,
    ) -> Result<(Principal, i64), JwtError> {
        let v = self.verify(token, sts, policy, now_ms, None)?;
        let c = &v.claims;
        let subject = Subject {
            issuer_id: Some(v.issuer_id.clone()),
            sub: c.sub.clone(),
            oid: c.oid.clone(),
            tid: c.tid.clone(),
            client_id: c.appid.clone().or_else(|| c.azp.clone()),
            spiffe: None,
        };
        let principal = Principal {
            key: format!(
                "jwt:{}/{}",
                v.issuer_id,
                c.sub.as_deref().or(c.oid.as_deref()).unwrap_or("?")
            ),
            kind: CredentialKind::Jwt,
            subject,
            sas: None,
            iss: c.iss.clone(),
            kid: v.kid.clone(),
            jti: c.jti.clone().or_else(|| c.uti.clone()),
            token_sha256: Some(token_sha256(token)),
        };
        Ok((principal, v.expires_at_ms.saturating_add(v.leeway_ms)))
    }

    /// The whole pipeline. `audiences`: accept these instead of the issuer's own (the token
    /// service checks federated credentials with their audiences).
    pub fn verify(
        &self,
        token: &str,
        sts: &TokenService,
        policy: &Policy,
        now_ms: i64,
        audiences: Option<&[String]>,
    ) -> Result<Verified, JwtError> {
        if token.len() > MAX_JWT_LEN {
            return Err(invalid(format!(
                "the token is larger than {MAX_JWT_LEN} bytes"
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(invalid("a JWT has three dot-separated parts"));
        };
        if s.is_empty() {
            return Err(invalid("unsigned tokens are not accepted"));
        }
        let header: Value = serde_json::from_slice(&b64url(h)?)
            .map_err(|_| invalid("the token header is not JSON"))?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the token header has no alg"))?
            .to_string();
        if alg_name.eq_ignore_ascii_case("none") || alg_name.starts_with("HS") {
            return Err(invalid(format!(
                "the algorithm '{alg_name}' is not accepted"
            )));
        }
        if header.get("crit").is_some() {
            return Err(invalid("critical header parameters are not supported"));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let claims: Claims = serde_json::from_slice(&b64url(p)?)
            .map_err(|_| invalid("the token claims are not a JSON object of the expected types"))?;
        let iss = claims
            .iss
            .clone()
            .ok_or_else(|| invalid("the token has no iss"))?;

        // Which issuer entry vouches for it, and its keys.
        let (entry, keys): (IssuerConfig, Vec<Jwk>) = if let Some(b) = policy
            .builtin_issuer()
            .filter(|b| builtin_iss_ok(b, &iss, sts, policy))
        {
            (b.clone(), sts.public_jwks())
        } else {
            let entry = policy
                .file
                .issuers
                .iter()
                .find(|i| i.kind == IssuerKind::Oidc && i.issuer.as_deref() == Some(iss.as_str()))
                .ok_or_else(|| JwtError::Issuer(iss.clone()))?
                .clone();
            let cache = self
                .cache(&entry.id)
                .ok_or_else(|| JwtError::Issuer(iss.clone()))?;
            let keys = {
                let (keys, stale) = cache
                    .lock()
                    .map_err(|_| invalid("key cache unavailable"))?
                    .keys_now();
                if stale {
                    refresh(entry.clone(), cache.clone(), false);
                }
                keys
            };
            (entry, keys)
        };
        let allowed: Vec<String> = if entry.kind == IssuerKind::Builtin {
            vec!["ES256".into()]
        } else {
            entry.algorithms.clone()
        };
        if !allowed.iter().any(|a| a == &alg_name) {
            return Err(invalid(format!(
                "the algorithm '{alg_name}' is not accepted for this issuer"
            )));
        }
        let alg: Algorithm = alg_name
            .parse()
            .map_err(|_| invalid(format!("unknown algorithm '{alg_name}'")))?;

        let usable = |k: &&Jwk| {
            !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))
                && k.common
                    .public_key_use
                    .as_ref()
                    .is_none_or(|u| *u == PublicKeyUse::Signature)
                && k.common
                    .key_algorithm
                    .is_none_or(|ka| ka.to_string() == alg_name)
        };
        let candidates: Vec<&Jwk> = keys.iter().filter(usable).collect();
        let key = match &kid {
            Some(kid) => candidates
                .iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
                .copied(),
            None if candidates.len() == 1 => candidates.first().copied(),
            None => None,
        };
        let Some(key) = key else {
            if let Some(cache) = self.cache(&entry.id) {
                refresh(entry.clone(), cache, false);
            }
            return Err(JwtError::UnknownKey(kid.unwrap_or_else(|| "(none)".into())));
        };
        let decoding = DecodingKey::from_jwk(key).map_err(|_| JwtError::Signature)?;
        if decoding.family() != alg.family() {
            return Err(invalid("the key does not fit the token's algorithm"));
        }
        // `jsonwebtoken` checks the signature, that exp/iss/aud are present, iss, and nbf
        // against the system clock. exp, nbf and iat are checked again below against the
        // broker's clock; aud (string or array, per-issuer or federated lists) too.
        let leeway_s = entry.leeway_secs.min(300);
        let mut validation = Validation::new(alg);
        validation.leeway = leeway_s;
        validation.validate_exp = false;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[iss.as_str()]);
        jsonwebtoken::decode::<Value>(token, &decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => JwtError::Signature,
                K::MissingRequiredClaim(c) => invalid(format!("the token has no {c}")),
                K::InvalidAlgorithm => invalid("the key does not fit the token's algorithm"),
                K::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                other => invalid(format!("{other:?}")),
            }
        })?;

        // Audience: a string or an array; one of the accepted values.
        let payload: Value =
            serde_json::from_slice(&b64url(p)?).map_err(|_| invalid("bad claims"))?;
        let accepted = audiences.unwrap_or(&entry.audiences);
        let aud_ok = match payload.get("aud") {
            Some(Value::String(a)) => accepted.iter().any(|x| x == a),
            Some(Value::Array(xs)) => xs
                .iter()
                .filter_map(Value::as_str)
                .any(|a| accepted.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(JwtError::Audience);
        }
        if claims.nonce.is_some() {
            return Err(invalid("ID tokens are not access tokens"));
        }
        // Times, against the broker's clock.
        let leeway = leeway_s as i64 * 1000;
        let exp_ms = claims
            .exp
            .map(|e| (e * 1000.0) as i64)
            .ok_or_else(|| invalid("the token has no exp"))?;
        if exp_ms + leeway <= now_ms {
            return Err(JwtError::Expired(utc(exp_ms)));
        }
        if let Some(nbf) = claims.nbf
            && (nbf * 1000.0) as i64 > now_ms + leeway
        {
            return Err(invalid("the token is not valid yet (nbf)"));
        }
        if let Some(iat) = claims.iat
            && (iat * 1000.0) as i64 > now_ms + leeway
        {
            return Err(invalid("the token was issued in the future (iat)"));
        }
        if let Some(max) = &entry.max_token_lifetime
            && let Ok(max) = crate::policy::parse_duration("max_token_lifetime", max)
        {
            let start = claims.iat.or(claims.nbf).map(|t| (t * 1000.0) as i64);
            match start {
                Some(s) if exp_ms - s <= max.as_millis() as i64 => {}
                _ => {
                    return Err(invalid(format!(
                        "the token lives longer than this issuer allows ({})",
                        humantime::format_duration(max)
                    )));
                }
            }
        }
        if !entry.tenants.is_empty()
            && !claims
                .tid
                .as_ref()
                .is_some_and(|t| entry.tenants.iter().any(|x| x.eq_ignore_ascii_case(t)))
        {
            return Err(invalid("the token's tenant is not allowed"));
        }
        Ok(Verified {
            claims,
            issuer_id: entry.id,
            kid,
            expires_at_ms: exp_ms,
            leeway_ms: leeway,
        })
    }
}

/// Is `iss` our own token service's? The entry's explicit `issuer` if it has one; otherwise
/// exactly the issuer the token service mints with now (from `[sts] public_url`, else from
/// the names derived from the listeners, for the policy's tenant). Any other
/// `https://<host>/<tenant>/v2.0` is someone else's, even when signed with our key.
fn builtin_iss_ok(entry: &IssuerConfig, iss: &str, sts: &TokenService, policy: &Policy) -> bool {
    match &entry.issuer {
        Some(exact) => exact == iss,
        None => sts.issuer(policy) == iss,
    }
}
