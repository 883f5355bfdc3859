//! The broker's access state ([`Auth`]): the policy in force (atomically replaced on reload),
//! the token validator, the token service, the failed-token limiter and the audit log. It
//! answers (principal, right, entity) questions and records each decision; enforcement points
//! (AMQP link attach, `$management` operations, token expiry, the HTTP APIs) call
//! [`Auth::decide`] or [`Auth::check`]; nothing else decides access.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::json;

use crate::audit::{Audit, Event};
use crate::policy::{Decision, Policy, PolicyError};
use crate::principal::Principal;
use crate::sts::TokenService;
use crate::{Right, SasPolicy, jwt, ratelimit};

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
    pub sts: TokenService,
    /// Failed token presentations per client source (see [`ratelimit`]).
    failures: std::sync::Mutex<ratelimit::RateLimiter>,
}

impl Auth {
    pub fn new(
        policy: Policy,
        policy_path: Option<PathBuf>,
        audit: Audit,
        sts: TokenService,
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
        sas_policies: &[SasPolicy],
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
            TokenService::in_memory(),
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
        sas_policies: &[SasPolicy],
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
            action: Some(right.action().into()),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

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
        let good = crate::sas::tests::make_token(aud, "root", "the-right-key", now / 1000 + 600);
        let bad = crate::sas::tests::make_token(aud, "root", "a-wrong-key", now / 1000 + 600);
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
