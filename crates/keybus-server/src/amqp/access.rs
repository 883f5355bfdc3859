//! Access control on a connection: the credentials put on `$cbs` (wire reference §3,
//! identity reference §3.4), the checks at link attach and `$management` operations, and the
//! re-checks that detach links when a token expires or the policy changes.

use std::sync::Arc;

use keybus_amqp::AmqpError;

use super::errors::{self, error};
use super::state::{Binding, Conn, MAX_FAILED_TOKENS};
use keybus_auth::audit::Event;

use keybus_auth::Right;
use keybus_auth::sas;

/// Credentials kept per connection; the oldest is dropped beyond this.
const MAX_BINDINGS: usize = 1024;

/// The `amqp:unauthorized-access` error for a missing right, in Service Bus's words.
pub(crate) fn unauthorized(path: &str, right: Right) -> AmqpError {
    let claim = match right {
        Right::Send => "Send",
        Right::Listen => "Listen",
        Right::Manage => "Manage",
    };
    error(
        errors::UNAUTHORIZED,
        format!(
            "Unauthorized access. '{claim}' claim(s) are required to perform this operation. Resource: '{path}'."
        ),
    )
}

/// Outcome of a `put-token`: CBS status code and description.
pub(crate) struct PutToken {
    pub status: i32,
    pub description: String,
}

impl Conn {
    /// Validate a token put on `$cbs` for `audience` and keep it on this connection.
    pub(super) fn put_token(
        &mut self,
        audience: &str,
        token: &str,
        correlation: Option<String>,
    ) -> PutToken {
        let now = self.broker.now();
        let auth = self.broker.auth().clone();
        let policy = auth.policy();
        // A valid token is accepted even from a rate-limited address; only refusals count.
        let verified = auth.verify(token, audience, self.broker.policies(), now);
        let resource = sas::resource_path(audience);
        match verified {
            Ok((principal, expires_at_ms)) => {
                let names = policy.principals_for(&principal.subject);
                auth.audit.record(Event {
                    event: "token.put",
                    allow: true,
                    reason: "ok".into(),
                    principal: Some(principal.audit_json(&names)),
                    entity: Some(resource.clone()),
                    policy_version: Some(policy.version.clone()),
                    conn: Some(self.id.clone()),
                    peer: Some(self.peer.clone()),
                    correlation_id: correlation,
                    extra: vec![("expires_at_ms", expires_at_ms.into())],
                    ..Default::default()
                });
                self.bindings.retain(|b| b.audience != audience);
                if self.bindings.len() >= MAX_BINDINGS {
                    self.bindings.remove(0);
                }
                self.bindings.push(Binding {
                    audience: audience.to_string(),
                    resource,
                    principal: Arc::new(principal),
                    expires_at_ms,
                });
                self.authenticated = true;
                if let Some(p) = &self.permit {
                    p.authenticate();
                }
                // A refreshed token may carry another identity: links are checked again.
                self.auth_checked.0 = 0;
                PutToken {
                    status: 202,
                    description: "Accepted".into(),
                }
            }
            Err(description) if self.mtls_principal_known(&policy) => {
                // mTLS: the client certificate names the principal; the SDK still puts some
                // token (a placeholder) on `$cbs`, which is accepted on such connections only.
                auth.audit.record(Event {
                    event: "token.put",
                    allow: true,
                    reason: "mtls".into(),
                    principal: self
                        .bindings
                        .iter()
                        .find(|b| b.audience == "mtls")
                        .map(|b| {
                            b.principal
                                .audit_json(&policy.principals_for(&b.principal.subject))
                        }),
                    entity: Some(resource),
                    policy_version: Some(policy.version.clone()),
                    conn: Some(self.id.clone()),
                    peer: Some(self.peer.clone()),
                    correlation_id: correlation,
                    extra: vec![("token_refused_because", description.into())],
                    ..Default::default()
                });
                PutToken {
                    status: 202,
                    description: "Accepted (client certificate)".into(),
                }
            }
            Err(description) => {
                self.failed_tokens += 1;
                let refusal = auth.refuse(&self.peer, description, now);
                let limited = matches!(refusal, keybus_auth::Refusal::Limited(..));
                let reason = refusal.reason();
                auth.audit.record(Event {
                    event: "token.put",
                    allow: false,
                    reason,
                    entity: Some(resource),
                    policy_version: Some(policy.version.clone()),
                    conn: Some(self.id.clone()),
                    peer: Some(self.peer.clone()),
                    correlation_id: correlation,
                    extra: vec![(
                        "kind",
                        if token.starts_with("SharedAccessSignature ") {
                            "sas"
                        } else {
                            "jwt"
                        }
                        .into(),
                    )],
                    ..Default::default()
                });
                if self.failed_tokens >= MAX_FAILED_TOKENS {
                    self.close_with = Some(error(
                        errors::UNAUTHORIZED,
                        format!("{MAX_FAILED_TOKENS} tokens were refused on this connection"),
                    ));
                } else if limited {
                    // A limited source pays a reconnect for each further guess.
                    self.close_with = Some(error(
                        errors::UNAUTHORIZED,
                        "too many refused tokens from this address: a new connection is needed for each further attempt",
                    ));
                }
                PutToken {
                    status: 401,
                    description: refusal.description().to_string(),
                }
            }
        }
    }

    /// Does this connection carry a client certificate whose SPIFFE ID is a policy principal?
    fn mtls_principal_known(&self, policy: &keybus_auth::policy::Policy) -> bool {
        self.bindings.iter().any(|b| {
            b.audience == "mtls" && !policy.principals_for(&b.principal.subject).is_empty()
        })
    }

    /// The live credentials that cover `path`, newest first.
    fn covering(&self, path: &str, now: i64) -> impl Iterator<Item = &Binding> {
        self.bindings
            .iter()
            .rev()
            .filter(move |b| b.expires_at_ms > now && sas::covers(&b.resource, path))
    }

    /// Does a live credential on this connection allow `right` on `path`? (Not audited.)
    pub(crate) fn authorized(&self, path: &str, right: Right) -> bool {
        let now = self.broker.now();
        self.covering(path, now).any(|b| {
            self.broker
                .auth()
                .decide(&b.principal, right, path, now)
                .allow
        })
    }

    /// [`Conn::authorized`], audited as `event` (`authz` for attaches, `mgmt.op`, ...).
    pub(crate) fn check_audited(
        &self,
        event: &'static str,
        path: &str,
        right: Right,
        link: Option<&str>,
        correlation_id: Option<String>,
    ) -> Result<(), AmqpError> {
        let now = self.broker.now();
        let auth = &self.broker.auth();
        let mut first_denial = None;
        for b in self.covering(path, now) {
            let d = auth.check(
                event,
                &b.principal,
                right,
                path,
                now,
                Some(&self.id),
                Some(&self.peer),
                link,
            );
            if d.allow {
                return Ok(());
            }
            first_denial.get_or_insert(d);
        }
        if first_denial.is_none() {
            auth.audit.record(Event {
                event,
                allow: false,
                reason: "no_token".into(),
                action: Some(right.action().into()),
                entity: Some(path.to_string()),
                conn: Some(self.id.clone()),
                peer: Some(self.peer.clone()),
                link: link.map(str::to_string),
                correlation_id,
                ..Default::default()
            });
        }
        Err(unauthorized(path, right))
    }

    /// Drop expired credentials, and detach every link that lost its access: the token ran
    /// out, the policy was reloaded, or a time-bounded grant began or ended.
    pub(crate) fn check_access(&mut self) {
        let deadline = self.broker.config().limits.token_timeout_ms;
        if !self.authenticated && self.opened_at.elapsed().as_millis() > u128::from(deadline) {
            self.close_with = Some(error(
                errors::UNAUTHORIZED,
                format!("no token was put on $cbs within {deadline} ms of connecting"),
            ));
            return;
        }
        let now = self.broker.now();
        let auth = self.broker.auth().clone();
        let generation = auth.generation();
        let (checked_gen, checked_at) = self.auth_checked;
        let before = self.bindings.len();
        let (expired, live): (Vec<Binding>, Vec<Binding>) = std::mem::take(&mut self.bindings)
            .into_iter()
            .partition(|b| b.expires_at_ms <= now);
        self.bindings = live;
        for b in &expired {
            auth.audit.record(Event {
                event: "token.expired",
                allow: false,
                reason: "expired_token".into(),
                principal: Some(b.principal.audit_json(&[])),
                entity: Some(b.resource.clone()),
                conn: Some(self.id.clone()),
                peer: Some(self.peer.clone()),
                ..Default::default()
            });
        }
        let boundary = auth.policy().grant_boundary_between(checked_at, now);
        self.auth_checked = (generation, now);
        if self.bindings.len() == before && checked_gen == generation && !boundary {
            return;
        }
        let mut lost = Vec::new();
        for (ch, s) in &self.sessions {
            for (h, l) in &s.links {
                if let Some((path, right)) = &l.auth
                    && !self.authorized(path, *right)
                {
                    lost.push((*ch, *h, path.clone(), *right));
                }
            }
        }
        for (ch, h, path, right) in lost {
            let principal = self
                .covering(&path, now)
                .next()
                .map(|b| b.principal.audit_json(&[]));
            auth.audit.record(Event {
                event: "link.detach",
                allow: false,
                reason: if principal.is_some() {
                    "access_revoked".into()
                } else {
                    "expired_token".into()
                },
                principal,
                action: Some(right.action().into()),
                entity: Some(path.clone()),
                policy_version: Some(auth.policy().version.clone()),
                conn: Some(self.id.clone()),
                peer: Some(self.peer.clone()),
                ..Default::default()
            });
            self.force_detach(ch, h, unauthorized(&path, right));
        }
    }
}
