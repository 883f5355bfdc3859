//! Deciding: which policy principals a verified subject is, and whether they may exercise a
//! right on an entity now. Default deny; an explicit `deny` beats every grant.

use super::*;

/// What a verified credential says about its holder; principals are matched against it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    /// The `issuers[].id` that vouched for a token.
    pub issuer_id: Option<String>,
    pub sub: Option<String>,
    pub oid: Option<String>,
    pub tid: Option<String>,
    pub client_id: Option<String>,
    pub spiffe: Option<String>,
}

/// The outcome of one authorisation question.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// Machine code for the audit log: `ok`, `no_grant`, `explicit_deny`, `no_principal`, ...
    pub reason: &'static str,
    /// Which grant allowed it (`grants[2]`), or which deny refused it (`deny[0]`).
    pub rule: Option<String>,
}

impl Decision {
    pub fn allow(rule: Option<String>) -> Self {
        Self {
            allow: true,
            reason: "ok",
            rule,
        }
    }
    pub fn deny(reason: &'static str, rule: Option<String>) -> Self {
        Self {
            allow: false,
            reason,
            rule,
        }
    }
}

impl Policy {
    pub fn local_auth(&self) -> bool {
        self.file.namespace.local_auth
    }

    /// How long after its `se` a SAS token is still accepted, in milliseconds.
    pub fn sas_skew_ms(&self) -> i64 {
        self.file.namespace.sas_clock_skew_secs.min(300) as i64 * 1000
    }

    /// The builtin issuer's configured id, if any.
    pub fn builtin_issuer(&self) -> Option<&IssuerConfig> {
        self.file
            .issuers
            .iter()
            .find(|i| i.kind == IssuerKind::Builtin)
    }

    /// The policy principals a verified subject is.
    pub fn principals_for(&self, s: &Subject) -> Vec<String> {
        let eq = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref() == Some(w.as_str()),
        };
        let mut out: Vec<String> = self
            .file
            .principals
            .iter()
            .filter(|p| {
                p.matches.iter().any(|m| {
                    eq(&m.issuer, &s.issuer_id)
                        && eq(&m.sub, &s.sub)
                        && eq(&m.oid, &s.oid)
                        && eq(&m.tid, &s.tid)
                        && eq(&m.client_id, &s.client_id)
                        && match &m.spiffe {
                            None => true,
                            Some(w) => s.spiffe.as_deref().is_some_and(|h| spiffe_eq(w, h)),
                        }
                })
            })
            .map(|p| p.id.clone())
            .collect();
        // Tokens from our own service name their client: its registration says who it is.
        if let (Some(iss), Some(client)) = (&s.issuer_id, &s.client_id)
            && self.builtin_issuer().is_some_and(|b| &b.id == iss)
        {
            let regs = self
                .file
                .sts
                .clients
                .iter()
                .filter(|c| &c.client_id == client)
                .map(|c| &c.principal)
                .chain(
                    self.file
                        .sts
                        .managed_identities
                        .iter()
                        .filter(|m| &m.client_id == client)
                        .map(|m| &m.principal),
                );
            for p in regs {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// May any of `principals` exercise `right` on `path` (lower-case entity path, sub-queues
    /// and `$management` below their entity) at `now_ms`?
    pub fn decide(&self, principals: &[String], right: Right, path: &str, now_ms: i64) -> Decision {
        let path = path.to_ascii_lowercase();
        for (i, d) in self.denies.iter().enumerate() {
            if (d.principal == "*" || principals.contains(&d.principal))
                && d.rights.contains(&right)
                && scope_covers(&d.scope, &path)
            {
                return Decision::deny("explicit_deny", Some(format!("deny[{i}]")));
            }
        }
        if principals.is_empty() {
            return Decision::deny("no_principal", None);
        }
        let mut expired = None;
        for (i, g) in self.grants.iter().enumerate() {
            if !principals.contains(&g.principal)
                || !g.role.allows(right)
                || !scope_covers(&g.scope, &path)
            {
                continue;
            }
            let early = g.not_before_ms.is_some_and(|t| now_ms < t);
            let late = g.not_after_ms.is_some_and(|t| now_ms >= t);
            if early || late {
                expired.get_or_insert(i);
                continue;
            }
            return Decision::allow(Some(format!("grants[{i}]")));
        }
        match expired {
            Some(i) => Decision::deny("grant_not_in_time", Some(format!("grants[{i}]"))),
            None => Decision::deny("no_grant", None),
        }
    }

    /// Does any grant start or end within `(after_ms, until_ms]`? Live links must then be
    /// checked again.
    pub fn grant_boundary_between(&self, after_ms: i64, until_ms: i64) -> bool {
        self.grants.iter().any(|g| {
            [g.not_before_ms, g.not_after_ms]
                .into_iter()
                .flatten()
                .any(|t| t > after_ms && t <= until_ms)
        })
    }
}

/// SPIFFE IDs compare scheme and trust domain case-insensitively, the path exactly.
fn spiffe_eq(a: &str, b: &str) -> bool {
    fn split(s: &str) -> Option<(String, &str)> {
        let rest = s.get(..9).filter(|p| p.eq_ignore_ascii_case("spiffe://"))?;
        let _ = rest;
        let tail = &s[9..];
        let (domain, path) = tail.split_once('/').unwrap_or((tail, ""));
        Some((domain.to_ascii_lowercase(), path))
    }
    match (split(a), split(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}
