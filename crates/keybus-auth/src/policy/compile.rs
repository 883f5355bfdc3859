//! Compiling a policy file into a [`Policy`]: reading it (and the secret files it names)
//! once, checking every value, resolving scopes to entity paths and times to milliseconds.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::file::{default_audiences, default_leeway};
use super::*;

/// Turn a policy scope into the broker's lower-case entity path (`""` = namespace).
pub fn scope_path(scope: &str) -> Result<String, String> {
    let s = scope.trim().trim_matches('/').to_ascii_lowercase();
    if s == "namespace" || s.is_empty() {
        return Ok(String::new());
    }
    let bad = |why: &str| Err(format!("scope '{scope}': {why}"));
    if s.split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("empty, '.' or '..' path segment");
    }
    // The scope must name exactly one entity (or subscription): see `scope::resolve`.
    let (rest, topic) = if let Some(rest) = s.strip_prefix("queues/") {
        (rest, false)
    } else if let Some(rest) = s.strip_prefix("topics/") {
        (rest, true)
    } else {
        return bad("expected namespace, queues/<q>, topics/<t> or topics/<t>/subscriptions/<s>");
    };
    let Some(r) = crate::scope::resolve(rest) else {
        return bad("not an entity path");
    };
    match r.rest.as_slice() {
        [] => return Ok(rest.to_string()),
        [_, _] if topic && r.subscription().is_some() => return Ok(rest.to_string()),
        [s, ..] if s == "subscriptions" && !topic => return bad("queues have no subscriptions"),
        _ => {}
    }
    bad("expected namespace, queues/<q>, topics/<t> or topics/<t>/subscriptions/<s>")
}

/// Does `scope` (an entity path, `""` = namespace) contain `path`: the entity itself, its
/// sub-queues and (topics) its subscriptions and rules, never another entity
/// ([`crate::scope::covers`])?
pub fn scope_covers(scope: &str, path: &str) -> bool {
    crate::scope::covers(scope, path)
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, String> {
    match v {
        None => Ok(None),
        Some(t) => {
            let at = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
                .map_err(|e| format!("{field} '{t}': {e} (use RFC 3339, UTC)"))?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("{field} '{t}' is before 1970"))?
                .as_millis();
            Ok(Some(i64::try_from(ms).unwrap_or(i64::MAX)))
        }
    }
}

fn parse_rights(actions: &[String]) -> Result<Vec<Right>, String> {
    if actions.is_empty() {
        return Ok(vec![Right::Send, Right::Listen, Right::Manage]);
    }
    actions
        .iter()
        .map(|a| match a.to_ascii_lowercase().as_str() {
            "send" => Ok(Right::Send),
            "receive" | "listen" => Ok(Right::Listen),
            "manage" => Ok(Right::Manage),
            other => Err(format!("unknown action '{other}' (send, receive, manage)")),
        })
        .collect()
}

/// Parse a duration such as "60m" or "24h".
pub fn parse_duration(field: &str, v: &str) -> Result<std::time::Duration, PolicyError> {
    humantime::parse_duration(v).map_err(|e| PolicyError::Invalid(format!("{field} '{v}': {e}")))
}

impl Policy {
    /// Read and check a policy file (TOML).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(path).map_err(|e| PolicyError::Read(path.to_path_buf(), e))?;
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| PolicyError::Parse(path.to_path_buf(), "not UTF-8".into()))?;
        let file: PolicyFile = toml::from_str(&text)
            .map_err(|e| PolicyError::Parse(path.to_path_buf(), e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut policy = Self::from_file(file, &bytes)?;
        for (i, mi) in policy.file.sts.managed_identities.iter().enumerate() {
            let secret = match (&mi.identity_header, &mi.identity_header_file) {
                (Some(s), None) => s.trim().to_string(),
                (None, Some(f)) => {
                    let f = base.join(f);
                    std::fs::read_to_string(&f)
                        .map_err(|e| PolicyError::Read(f.clone(), e))?
                        .trim()
                        .to_string()
                }
                _ => {
                    return Err(PolicyError::Invalid(format!(
                        "sts.managed_identities[{i}]: give exactly one of identity_header, identity_header_file"
                    )));
                }
            };
            if secret.len() < 16 {
                return Err(PolicyError::Invalid(format!(
                    "sts.managed_identities[{i}]: the identity header secret must be at least 16 characters"
                )));
            }
            policy.mi_secrets.push((secret, i));
        }
        for iss in &mut policy.file.issuers {
            for f in [&mut iss.jwks_file, &mut iss.ca_file].into_iter().flatten() {
                *f = base.join(&*f);
            }
        }
        if let Some(p) = &mut policy.file.audit.path {
            *p = base.join(&*p);
        }
        Ok(policy)
    }

    /// Check a parsed file; `bytes` give its version hash.
    pub fn from_file(mut file: PolicyFile, bytes: &[u8]) -> Result<Self, PolicyError> {
        let invalid = |s: String| PolicyError::Invalid(s);
        // Registrations with the token service imply its issuer.
        let has_registrations =
            !file.sts.clients.is_empty() || !file.sts.managed_identities.is_empty();
        if has_registrations && !file.issuers.iter().any(|i| i.kind == IssuerKind::Builtin) {
            file.issuers.push(IssuerConfig {
                id: "sts".into(),
                kind: IssuerKind::Builtin,
                issuer: None,
                audiences: default_audiences(),
                algorithms: vec!["ES256".into()],
                jwks_uri: None,
                jwks_file: None,
                ca_file: None,
                max_token_lifetime: None,
                leeway_secs: default_leeway(),
                tenants: Vec::new(),
            });
        }
        if file.version != 1 {
            return Err(invalid(format!(
                "version {} is not supported (1)",
                file.version
            )));
        }
        let mut ids = std::collections::HashSet::new();
        for p in &file.principals {
            if p.id == "*" || !ids.insert(p.id.as_str()) {
                return Err(invalid(format!(
                    "principal id '{}' is reserved or given twice",
                    p.id
                )));
            }
            for m in &p.matches {
                if let Some(iss) = &m.issuer
                    && !file.issuers.iter().any(|i| &i.id == iss)
                {
                    return Err(invalid(format!(
                        "principal '{}' matches unknown issuer '{iss}'",
                        p.id
                    )));
                }
                if m.issuer.is_none() && m.spiffe.is_none() {
                    return Err(invalid(format!(
                        "principal '{}': every match needs an issuer or a spiffe id",
                        p.id
                    )));
                }
            }
        }
        let mut issuer_ids = std::collections::HashSet::new();
        for iss in &file.issuers {
            if !issuer_ids.insert(iss.id.as_str()) {
                return Err(invalid(format!("issuer id '{}' given twice", iss.id)));
            }
            if iss.kind == IssuerKind::Oidc && iss.issuer.is_none() {
                return Err(invalid(format!(
                    "issuer '{}': an oidc issuer needs `issuer`",
                    iss.id
                )));
            }
            for a in &iss.algorithms {
                if !matches!(
                    a.as_str(),
                    "RS256"
                        | "RS384"
                        | "RS512"
                        | "PS256"
                        | "PS384"
                        | "PS512"
                        | "ES256"
                        | "ES384"
                        | "EdDSA"
                ) {
                    return Err(invalid(format!(
                        "issuer '{}': algorithm '{a}' is not allowed (asymmetric only: RS*, PS*, ES256, ES384, EdDSA)",
                        iss.id
                    )));
                }
            }
            if iss.leeway_secs > 300 {
                return Err(invalid(format!(
                    "issuer '{}': leeway_secs is at most 300",
                    iss.id
                )));
            }
            if let Some(l) = &iss.max_token_lifetime {
                parse_duration("max_token_lifetime", l)?;
            }
        }
        if let Some(url) = &file.sts.public_url {
            crate::sts::PublicNames::from_url(url)
                .map_err(|e| invalid(format!("sts.public_url: {e}")))?;
        }
        if file.namespace.sas_clock_skew_secs > 300 {
            return Err(invalid(
                "namespace.sas_clock_skew_secs is at most 300".into(),
            ));
        }
        let known = |p: &str| file.principals.iter().any(|x| x.id == p);
        let mut grants = Vec::new();
        for (i, g) in file.grants.iter().enumerate() {
            if !known(&g.principal) {
                return Err(invalid(format!(
                    "grants[{i}]: unknown principal '{}'",
                    g.principal
                )));
            }
            grants.push(Grant {
                principal: g.principal.clone(),
                role: g.role,
                scope: scope_path(&g.scope).map_err(|e| invalid(format!("grants[{i}]: {e}")))?,
                not_before_ms: parse_time("not_before", &g.not_before)
                    .map_err(|e| invalid(format!("grants[{i}]: {e}")))?,
                not_after_ms: parse_time("not_after", &g.not_after)
                    .map_err(|e| invalid(format!("grants[{i}]: {e}")))?,
            });
        }
        let mut denies = Vec::new();
        for (i, d) in file.deny.iter().enumerate() {
            if d.principal != "*" && !known(&d.principal) {
                return Err(invalid(format!(
                    "deny[{i}]: unknown principal '{}'",
                    d.principal
                )));
            }
            denies.push(Deny {
                principal: d.principal.clone(),
                rights: parse_rights(&d.actions).map_err(|e| invalid(format!("deny[{i}]: {e}")))?,
                scope: scope_path(&d.scope).map_err(|e| invalid(format!("deny[{i}]: {e}")))?,
            });
        }
        for (i, c) in file.sts.clients.iter().enumerate() {
            if !known(&c.principal) {
                return Err(invalid(format!(
                    "sts.clients[{i}]: unknown principal '{}'",
                    c.principal
                )));
            }
        }
        for (i, m) in file.sts.managed_identities.iter().enumerate() {
            if !known(&m.principal) {
                return Err(invalid(format!(
                    "sts.managed_identities[{i}]: unknown principal '{}'",
                    m.principal
                )));
            }
        }
        for (i, a) in file.sts.audiences.iter().enumerate() {
            let bare = a.trim_end_matches('/');
            if bare.is_empty() || a.chars().any(char::is_whitespace) {
                return Err(invalid(format!(
                    "sts.audiences[{i}]: '{a}' is not an audience"
                )));
            }
            if crate::policy::SERVICE_BUS_AUDIENCES
                .iter()
                .any(|sb| sb.trim_end_matches('/') == bare)
            {
                return Err(invalid(format!(
                    "sts.audiences[{i}]: Service Bus is always an audience; list only other services"
                )));
            }
        }
        let lifetime = parse_duration("sts.token_lifetime", &file.sts.token_lifetime)?;
        if lifetime < std::time::Duration::from_secs(600)
            || lifetime > std::time::Duration::from_secs(24 * 3600)
        {
            return Err(invalid(
                "sts.token_lifetime must be between 10m and 24h".into(),
            ));
        }
        Ok(Self {
            version: format!("sha256:{:x}", Sha256::digest(bytes)),
            file,
            mi_secrets: Vec::new(),
            grants,
            denies,
        })
    }
}
