//! Who is calling, and may they? Credentials (SAS tokens, JWTs, client certificates) become a
//! [`Principal`]; the [`Auth`] holder answers (principal, right, entity) questions from the
//! current [`policy::Policy`] and records each decision in the [`audit::Audit`] log.
//!
//! Enforcement points (AMQP link attach, `$management` operations, token expiry, the HTTP
//! APIs) call [`Auth::decide`]; nothing else decides access.

pub mod audit;
pub mod jwt;
pub mod policy;
pub mod ratelimit;
pub mod scope;
pub mod sts;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use crate::config::Right;
use audit::{Audit, Event};
use policy::{Decision, Policy, PolicyError, Subject};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Sas,
    Jwt,
    Mtls,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Sas => "sas",
            CredentialKind::Jwt => "jwt",
            CredentialKind::Mtls => "mtls",
        }
    }
}

/// What a SAS token grants by itself (rights on a resource subtree).
#[derive(Debug, Clone, PartialEq)]
pub struct SasRights {
    /// Lower-case, host-less resource path the token covers (`""` = namespace).
    pub resource: String,
    pub rights: Vec<Right>,
    pub key_name: String,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Stable identifier for audit lines: `sas:<key>`, `jwt:<issuer-id>/<sub>`, a SPIFFE ID.
    pub key: String,
    pub kind: CredentialKind,
    /// Claims matched against the policy's principals (JWT, mTLS).
    pub subject: Subject,
    /// Set for SAS tokens: their rights need no policy.
    pub sas: Option<SasRights>,
    /// The token's `iss`, `kid`, `jti` and SHA-256 (never the token itself).
    pub iss: Option<String>,
    pub kid: Option<String>,
    pub jti: Option<String>,
    pub token_sha256: Option<String>,
}

impl Principal {
    pub fn from_sas(grant: &crate::sas::Grant, token: &str) -> Self {
        Self {
            key: format!("sas:{}", grant.key_name),
            kind: CredentialKind::Sas,
            subject: Subject::default(),
            sas: Some(SasRights {
                resource: grant.resource.clone(),
                rights: grant.rights.clone(),
                key_name: grant.key_name.clone(),
            }),
            iss: None,
            kid: None,
            jti: None,
            token_sha256: Some(token_sha256(token)),
        }
    }

    pub fn from_spiffe(id: &str) -> Self {
        Self {
            key: id.to_string(),
            kind: CredentialKind::Mtls,
            subject: Subject {
                spiffe: Some(id.to_string()),
                ..Default::default()
            },
            sas: None,
            iss: None,
            kid: None,
            jti: None,
            token_sha256: None,
        }
    }

    /// The `principal` object of an audit line; `names` = the policy principals matched.
    pub fn audit_json(&self, names: &[String]) -> Value {
        let s = &self.subject;
        json!({
            "id": names.first().cloned().unwrap_or_else(|| self.key.clone()),
            "key": self.key,
            "kind": self.kind.as_str(),
            "iss": self.iss, "sub": s.sub, "oid": s.oid, "tid": s.tid,
            "client_id": s.client_id, "spiffe": s.spiffe,
            "kid": self.kid, "jti": self.jti, "token_sha256": self.token_sha256,
        })
    }
}

/// SHA-256 of a token, hex, for audit lines.
pub fn token_sha256(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// Failed token presentations tolerated per client source (IPv4 address or IPv6 /64) and
/// minute before its further failing tokens are answered `TooManyFailedAttempts`.
pub const MAX_FAILURES_PER_MINUTE: u32 = ratelimit::MAX_FAILURES;

/// Why a token was refused by [`Auth::verify_from`].
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The token is not valid (Azure-style `Code: description`).
    Invalid(String),
    /// Not valid, and its source has failed too often: retry after this many ms.
    Limited(String, i64),
}

impl Refusal {
    /// The Azure-style description (`InvalidSignature: ...`, `TooManyFailedAttempts: ...`).
    pub fn description(&self) -> &str {
        match self {
            Refusal::Invalid(d) | Refusal::Limited(d, _) => d,
        }
    }

    /// The audit `reason`: the code before the first `:`.
    pub fn reason(&self) -> String {
        self.description()
            .split(':')
            .next()
            .unwrap_or("invalid_token")
            .to_string()
    }
}

/// The broker's access state: the policy (atomically replaced on reload), the token
/// validator, the token service and the audit log.
pub struct Auth {
    policy: RwLock<Arc<Policy>>,
    generation: AtomicU64,
    pub policy_path: Option<PathBuf>,
    pub audit: Audit,
    pub jwt: jwt::Validator,
    pub sts: sts::TokenService,
    /// Failed token presentations per client source (see [`ratelimit`]).
    failures: std::sync::Mutex<ratelimit::RateLimiter>,
}

impl Auth {
    pub fn new(
        policy: Policy,
        policy_path: Option<PathBuf>,
        audit: Audit,
        sts: sts::TokenService,
    ) -> Self {
        audit.set_log_allows(policy.file.audit.log_allows);
        let jwt = jwt::Validator::new();
        jwt.configure(&policy);
        Self {
            policy: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(1),
            policy_path,
            audit,
            jwt,
            sts,
            failures: Default::default(),
        }
    }

    /// Is `peer` (`ip:port` or an address) limited for too many failed tokens? `Some(ms)`
    /// until its window ends.
    pub fn rate_limited(&self, peer: &str, now_ms: i64) -> Option<i64> {
        let src = ratelimit::Source::parse(peer)?;
        self.failures.lock().ok()?.limited(src, now_ms)
    }

    /// Count a failed token presentation from `peer`; returns [`Auth::rate_limited`] after it.
    pub fn record_failure(&self, peer: &str, now_ms: i64) -> Option<i64> {
        let src = ratelimit::Source::parse(peer)?;
        self.failures.lock().ok()?.record_failure(src, now_ms)
    }

    /// Sources limited now (for `/metrics`).
    pub fn limited_sources(&self, now_ms: i64) -> usize {
        self.failures
            .lock()
            .map(|rl| rl.limited_count(now_ms))
            .unwrap_or(0)
    }

    /// [`Auth::verify`] for a token from `peer`, rate limited: a valid token is accepted
    /// even from a limited source (the limit slows guessing, it never denies service); a
    /// refused one is counted, and from a limited source refused as `TooManyFailedAttempts`.
    pub fn verify_from(
        &self,
        token: &str,
        audience: &str,
        sas_policies: &[crate::config::SasPolicy],
        peer: &str,
        now_ms: i64,
    ) -> Result<(Principal, i64), Refusal> {
        match self.verify(token, audience, sas_policies, now_ms) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.refuse(peer, e, now_ms)),
        }
    }

    /// Count a refused credential from `peer` and say whether its source is now limited.
    pub fn refuse(&self, peer: &str, description: String, now_ms: i64) -> Refusal {
        // Limited already: this one is a further guess (30 refusals are answered as such).
        let limited = self.rate_limited(peer, now_ms);
        self.record_failure(peer, now_ms);
        match limited {
            Some(ms) => Refusal::Limited(
                format!(
                    "TooManyFailedAttempts: more than {MAX_FAILURES_PER_MINUTE} tokens from this address were refused in the last minute; valid tokens are still accepted, retry in {} s. ({description})",
                    (ms + 999) / 1000
                ),
                ms,
            ),
            None => Refusal::Invalid(description),
        }
    }

    /// No policy file: SAS only, no audit file, a throw-away token service.
    pub fn sas_only() -> Self {
        Self::new(
            Policy::default(),
            None,
            Audit::disabled(),
            sts::TokenService::in_memory(),
        )
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Bumped on every reload; connections re-check their links when it changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Read the policy file again; on error keep the old policy. Audited either way.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.policy_path else {
            return Ok(());
        };
        let result = Policy::load(path);
        let old = self.policy().version.clone();
        match result {
            Ok(p) => {
                let version = p.version.clone();
                if version == old {
                    return Ok(());
                }
                self.audit.set_log_allows(p.file.audit.log_allows);
                self.jwt.configure(&p);
                match self.policy.write() {
                    Ok(mut g) => *g = Arc::new(p),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(p),
                }
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(%version, "policy reloaded");
                self.audit.record(Event {
                    event: "policy.reload",
                    allow: true,
                    reason: "ok".into(),
                    policy_version: Some(version),
                    extra: vec![("previous_version", json!(old))],
                    ..Default::default()
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; keeping the previous policy");
                self.audit.record(Event {
                    event: "policy.reload",
                    allow: false,
                    reason: format!("invalid: {e}"),
                    policy_version: Some(old),
                    ..Default::default()
                });
                Err(e)
            }
        }
    }

    /// Check a SAS token or a JWT presented for `audience`: the principal and until when the
    /// credential is accepted (ms: its expiry plus the allowed clock skew), or the Azure-style
    /// reason it was refused (`ExpiredToken: ...` for a token past expiry and skew).
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        sas_policies: &[crate::config::SasPolicy],
        now_ms: i64,
    ) -> Result<(Principal, i64), String> {
        let policy = self.policy();
        if token.starts_with("SharedAccessSignature ") {
            if !policy.local_auth() {
                return Err(
                    "LocalAuthDisabled: SAS authentication is disabled for this namespace.".into(),
                );
            }
            let skew = policy.sas_skew_ms();
            crate::sas::validate(token, audience, sas_policies, now_ms, skew)
                .map(|g| {
                    let until = g.expires_at_ms.saturating_add(skew);
                    (Principal::from_sas(&g, token), until)
                })
                .map_err(|e| e.to_string())
        } else {
            self.jwt
                .validate(token, &self.sts, &policy, now_ms)
                .map_err(|e| e.to_string())
        }
    }

    /// May `p` exercise `right` on `path` (lower-case, host-less) now?
    pub fn decide(&self, p: &Principal, right: Right, path: &str, now_ms: i64) -> Decision {
        self.decide_with(&self.policy(), p, right, path, now_ms).0
    }

    /// [`Auth::decide`] against a given policy; also returns the matched principal names.
    pub fn decide_with(
        &self,
        policy: &Policy,
        p: &Principal,
        right: Right,
        path: &str,
        now_ms: i64,
    ) -> (Decision, Vec<String>) {
        if let Some(sas) = &p.sas {
            if !policy.local_auth() {
                return (Decision::deny("local_auth_disabled", None), Vec::new());
            }
            let path = path.to_ascii_lowercase();
            let ok = crate::sas::covers(&sas.resource, &path)
                && (sas.rights.contains(&right) || sas.rights.contains(&Right::Manage));
            let d = if ok {
                Decision::allow(Some(format!("sas:{}", sas.key_name)))
            } else {
                Decision::deny("no_grant", Some(format!("sas:{}", sas.key_name)))
            };
            return (d, Vec::new());
        }
        let names = policy.principals_for(&p.subject);
        (policy.decide(&names, right, path, now_ms), names)
    }

    /// Decide and audit one access question.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        event: &'static str,
        p: &Principal,
        right: Right,
        path: &str,
        now_ms: i64,
        conn: Option<&str>,
        peer: Option<&str>,
        link: Option<&str>,
    ) -> Decision {
        let policy = self.policy();
        let (d, names) = self.decide_with(&policy, p, right, path, now_ms);
        self.audit.record(Event {
            event,
            allow: d.allow,
            reason: d.reason.to_string(),
            principal: Some(p.audit_json(&names)),
            action: Some(right_action(right).into()),
            entity: Some(path.to_string()),
            rule: d.rule.clone(),
            policy_version: Some(policy.version.clone()),
            conn: conn.map(str::to_string),
            peer: peer.map(str::to_string),
            link: link.map(str::to_string),
            ..Default::default()
        });
        d
    }
}

/// The audit `action` for a right.
pub fn right_action(r: Right) -> &'static str {
    match r {
        Right::Send => "send",
        Right::Listen => "receive",
        Right::Manage => "manage",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::config::SasPolicy;

    #[test]
    fn a_valid_token_passes_from_a_limited_source() {
        let auth = Auth::sas_only();
        let policies = [SasPolicy {
            name: "root".into(),
            key: "the-right-key".into(),
            rights: vec![Right::Send],
            scope: String::new(),
        }];
        let aud = "sb://localhost/q";
        let now = 1_700_000_000_000;
        let good = crate::sas::make_token(aud, "root", "the-right-key", now / 1000 + 600);
        let bad = crate::sas::make_token(aud, "root", "a-wrong-key", now / 1000 + 600);
        let peer = "198.51.100.4:5555";
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            let r = auth.verify_from(&bad, aud, &policies, peer, now);
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{r:?}");
        }
        let r = auth.verify_from(&bad, aud, &policies, peer, now);
        assert!(matches!(r, Err(Refusal::Limited(_, 60_000))), "{r:?}");
        assert_eq!(
            r.err().map(|e| e.reason()).as_deref(),
            Some("TooManyFailedAttempts")
        );
        // Another port of the same address is the same source ...
        assert!(auth.rate_limited("198.51.100.4:1", now + 1).is_some());
        // ... and its valid token is still accepted.
        let ok = auth.verify_from(&good, aud, &policies, "198.51.100.4:1", now + 1);
        assert!(ok.is_ok(), "{ok:?}");
        assert!(matches!(
            auth.verify_from(&bad, aud, &policies, peer, now + 2),
            Err(Refusal::Limited(..))
        ));
        assert_eq!(auth.limited_sources(now + 2), 1);
        assert!(auth.rate_limited(peer, now + 60_000).is_none());
    }
}
