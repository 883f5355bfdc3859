//! Who is calling, and may they? Credentials (SAS tokens, JWTs, client certificates) become a
//! [`Principal`]; the [`Auth`] holder answers (principal, right, entity) questions from the
//! current [`policy::Policy`] and records each decision in the [`audit::Audit`] log.
//!
//! Enforcement points (AMQP link attach, `$management` operations, token expiry, the HTTP
//! APIs) call [`Auth::decide`]; nothing else decides access.

pub mod audit;
pub mod jwt;
pub mod policy;
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

/// Failed token presentations tolerated per client address and minute before every token
/// from that address is refused until the minute is over (SAS and JWT brute force).
pub const MAX_FAILURES_PER_MINUTE: u32 = 30;
/// Addresses tracked at once; beyond this the oldest windows are forgotten.
const MAX_TRACKED_PEERS: usize = 10_000;

/// The broker's access state: the policy (atomically replaced on reload), the token
/// validator, the token service and the audit log.
pub struct Auth {
    policy: RwLock<Arc<Policy>>,
    generation: AtomicU64,
    pub policy_path: Option<PathBuf>,
    pub audit: Audit,
    pub jwt: jwt::Validator,
    pub sts: sts::TokenService,
    /// Failed token presentations per client address: (window start ms, count).
    failures: std::sync::Mutex<std::collections::HashMap<String, (i64, u32)>>,
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

    /// Is `peer` (a client address, port ignored) refused for too many failed tokens?
    pub fn rate_limited(&self, peer: &str, now_ms: i64) -> bool {
        let ip = peer_ip(peer);
        let Ok(map) = self.failures.lock() else {
            return false;
        };
        map.get(ip)
            .is_some_and(|(start, n)| now_ms - start < 60_000 && *n >= MAX_FAILURES_PER_MINUTE)
    }

    /// Count a failed token presentation from `peer`.
    pub fn record_failure(&self, peer: &str, now_ms: i64) {
        let ip = peer_ip(peer).to_string();
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED_PEERS {
            map.retain(|_, (start, _)| now_ms - *start < 60_000);
            if map.len() >= MAX_TRACKED_PEERS {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((now_ms, 0));
        if now_ms - entry.0 >= 60_000 {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
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
            link: link.map(str::to_string),
            ..Default::default()
        });
        d
    }
}

/// The address part of `ip:port` / `[v6]:port`.
fn peer_ip(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => peer,
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
