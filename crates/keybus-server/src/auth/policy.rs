//! The access policy file (identity reference §7.1): who may do what, where.
//!
//! Pure data and evaluation: no I/O here except [`Policy::load`], which reads the file (and
//! the secret files it names) once. Default deny; an explicit `deny` beats every grant; a
//! grant applies at its scope and below; sub-queues follow their entity; Owner ⊇ Sender ∪
//! Receiver ∪ manage; time-bounded grants hold only in `[not_before, not_after)`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Right;

/// Audiences our own token service mints, and the default for other issuers.
pub const SERVICE_BUS_AUDIENCES: [&str; 2] = [
    "https://servicebus.azure.net",
    "https://servicebus.azure.net/",
];

/// The federated-credential audience Entra uses by default.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub namespace: NamespaceSection,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    #[serde(default)]
    pub deny: Vec<DenyConfig>,
    #[serde(default)]
    pub sts: StsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSection {
    /// Shared access signatures accepted (Azure's `disableLocalAuth = !local_auth`).
    #[serde(default = "yes")]
    pub local_auth: bool,
    /// Seconds a SAS token is still accepted after its `se` (clock skew; at most 300).
    #[serde(default = "default_leeway")]
    pub sas_clock_skew_secs: u64,
}

impl Default for NamespaceSection {
    fn default() -> Self {
        Self {
            local_auth: true,
            sas_clock_skew_secs: default_leeway(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// keybus's own token service (managed identity endpoint, workload identity endpoint).
    Builtin,
    /// Any OpenID Connect issuer: Entra ID, Kubernetes, Keycloak, Dex, ...
    Oidc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name used by `principals.match.issuer` and in audit lines.
    pub id: String,
    pub kind: IssuerKind,
    /// The exact `iss` claim. For `builtin` it defaults to the token service's own
    /// (`https://<host>:<https-port>/<tenant>/v2.0`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must be in the token).
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (never `none`, never `HS*`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Where the keys are: a JWKS URL, a JWKS file, or (neither) OIDC discovery at
    /// `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Extra CA (PEM) to trust when fetching discovery and keys over https.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest accepted `exp - iat`, e.g. "24h".
    #[serde(default)]
    pub max_token_lifetime: Option<String>,
    /// Allowed clock skew in seconds (default 30, at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Allowed `tid` values (empty: any).
    #[serde(default)]
    pub tenants: Vec<String>,
}

fn default_audiences() -> Vec<String> {
    SERVICE_BUS_AUDIENCES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
/// Default clock skew for SAS `se` and JWT `exp`/`nbf`/`iat`, in seconds.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 30;

fn default_leeway() -> u64 {
    DEFAULT_CLOCK_SKEW_SECS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub id: String,
    #[serde(rename = "match", default)]
    pub matches: Vec<MatchConfig>,
}

/// One way to recognise a principal; every field given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// An `issuers[].id`.
    pub issuer: Option<String>,
    pub sub: Option<String>,
    pub oid: Option<String>,
    pub tid: Option<String>,
    pub client_id: Option<String>,
    /// A SPIFFE ID from a client certificate (mTLS).
    pub spiffe: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Role {
    Owner,
    Sender,
    Receiver,
}

impl Role {
    pub fn allows(self, right: Right) -> bool {
        match self {
            Role::Owner => true,
            Role::Sender => right == Right::Send,
            Role::Receiver => right == Right::Listen,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub principal: String,
    pub role: Role,
    /// `namespace`, `queues/<q>`, `topics/<t>` or `topics/<t>/subscriptions/<s>`.
    pub scope: String,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub approved_by: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyConfig {
    /// A principal id, or `*` for everyone.
    pub principal: String,
    /// `send`, `receive` (or `listen`), `manage`; empty: all.
    #[serde(default)]
    pub actions: Vec<String>,
    pub scope: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsConfig {
    /// The tenant in the token service's URLs and tokens.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Lifetime of minted tokens, e.g. "60m" (at least 10 minutes: shorter defeats the SDKs'
    /// token caches).
    #[serde(default = "default_lifetime")]
    pub token_lifetime: String,
    #[serde(default)]
    pub clients: Vec<StsClient>,
    #[serde(default)]
    pub managed_identities: Vec<ManagedIdentity>,
    /// `https://host[:port]` clients use to reach the token service: the issuer of minted
    /// tokens and the only `Host` the token endpoint and discovery answer. Default: from
    /// `--bind` and the HTTPS port (`https://localhost:<port>` for a loopback bind).
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Default for StsConfig {
    fn default() -> Self {
        Self {
            tenant: default_tenant(),
            token_lifetime: default_lifetime(),
            clients: Vec::new(),
            managed_identities: Vec::new(),
            public_url: None,
        }
    }
}

fn default_tenant() -> String {
    "keybus".into()
}
fn default_lifetime() -> String {
    "60m".into()
}

/// An application registered with the token service (workload identity federation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsClient {
    pub client_id: String,
    pub principal: String,
    #[serde(default)]
    pub federated: Vec<FederatedCredential>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    /// The external issuer's exact `iss` (it must also be configured in `issuers`).
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_exchange_audiences")]
    pub audiences: Vec<String>,
}

fn default_exchange_audiences() -> Vec<String> {
    vec![TOKEN_EXCHANGE_AUDIENCE.into()]
}

/// A workload that gets tokens from the App Service-style managed identity endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedIdentity {
    pub principal: String,
    pub client_id: String,
    /// The `X-IDENTITY-HEADER` secret, inline or in a file (trimmed).
    #[serde(default)]
    pub identity_header: Option<String>,
    #[serde(default)]
    pub identity_header_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON Lines file (default `<data-dir>/audit.jsonl`; none with `--in-memory`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Record allowed decisions too (denials are always recorded).
    #[serde(default = "yes")]
    pub log_allows: bool,
    /// Rotate the file at this size in bytes (default 64 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Rotate the file at this age (`"1d"`, `"12h"`; default one day).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Compressed archives kept (`FILE.1.gz` newest; default 10).
    #[serde(default)]
    pub keep: Option<usize>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            log_allows: true,
            max_bytes: None,
            max_age: None,
            keep: None,
        }
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("policy file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("policy: {0}")]
    Invalid(String),
}

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

#[derive(Debug, Clone)]
struct Grant {
    principal: String,
    role: Role,
    scope: String,
    not_before_ms: Option<i64>,
    not_after_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Deny {
    principal: String,
    rights: Vec<Right>,
    scope: String,
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub file: PolicyFile,
    /// `sha256:<hex>` of the file's bytes; recorded in every audit line.
    pub version: String,
    /// Managed identity secrets, resolved from inline values or files: (secret, index).
    pub mi_secrets: Vec<(String, usize)>,
    grants: Vec<Grant>,
    denies: Vec<Deny>,
}

impl Default for Policy {
    /// No policy file: SAS only, nobody else.
    fn default() -> Self {
        Self {
            file: PolicyFile {
                version: 1,
                namespace: NamespaceSection::default(),
                issuers: Vec::new(),
                principals: Vec::new(),
                grants: Vec::new(),
                deny: Vec::new(),
                sts: StsConfig::default(),
                audit: AuditConfig::default(),
            },
            version: "none".into(),
            mi_secrets: Vec::new(),
            grants: Vec::new(),
            denies: Vec::new(),
        }
    }
}

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
    let Some(r) = super::scope::resolve(rest) else {
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
/// ([`super::scope::covers`])?
pub fn scope_covers(scope: &str, path: &str) -> bool {
    super::scope::covers(scope, path)
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
            super::sts::PublicNames::from_url(url)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Policy {
        let file: PolicyFile = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"));
        Policy::from_file(file, toml_text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#"
        [[issuers]]
        id = "k8s"
        kind = "oidc"
        issuer = "https://k8s.example"

        [[principals]]
        id = "billing"
        match = [{ issuer = "k8s", sub = "system:serviceaccount:billing:api" },
                 { spiffe = "spiffe://cluster.local/ns/billing/sa/api" }]

        [[principals]]
        id = "worker"
        match = [{ issuer = "k8s", sub = "system:serviceaccount:work:w" }]

        [[principals]]
        id = "admin"
        match = [{ issuer = "k8s", sub = "admin" }]

        [[grants]]
        principal = "billing"
        role = "Sender"
        scope = "queues/orders"

        [[grants]]
        principal = "worker"
        role = "Receiver"
        scope = "topics/events"

        [[grants]]
        principal = "admin"
        role = "Owner"
        scope = "namespace"

        [[grants]]
        principal = "worker"
        role = "Receiver"
        scope = "queues/orders"
        not_before = "2026-01-01T00:00:00Z"
        not_after = "2026-01-02T00:00:00Z"

        [[deny]]
        principal = "*"
        actions = ["manage"]
        scope = "queues/payments"
    "#;

    fn subject(sub: &str) -> Subject {
        Subject {
            issuer_id: Some("k8s".into()),
            sub: Some(sub.into()),
            ..Default::default()
        }
    }

    const JAN_1_NOON: i64 = 1_767_268_800_000;

    #[test]
    fn principals_match_on_every_given_field() {
        let p = policy(BASE);
        assert_eq!(
            p.principals_for(&subject("system:serviceaccount:billing:api")),
            vec!["billing"]
        );
        assert!(p.principals_for(&subject("someone-else")).is_empty());
        let other_issuer = Subject {
            issuer_id: Some("entra".into()),
            sub: Some("admin".into()),
            ..Default::default()
        };
        assert!(p.principals_for(&other_issuer).is_empty());
        let spiffe = Subject {
            spiffe: Some("SPIFFE://Cluster.Local/ns/billing/sa/api".into()),
            ..Default::default()
        };
        assert_eq!(p.principals_for(&spiffe), vec!["billing"]);
        let wrong_path_case = Subject {
            spiffe: Some("spiffe://cluster.local/ns/Billing/sa/api".into()),
            ..Default::default()
        };
        assert!(p.principals_for(&wrong_path_case).is_empty());
    }

    #[test]
    fn roles_scopes_and_inheritance() {
        let p = policy(BASE);
        let b = vec!["billing".to_string()];
        assert!(p.decide(&b, Right::Send, "orders", 0).allow);
        assert!(!p.decide(&b, Right::Listen, "orders", 0).allow);
        assert_eq!(p.decide(&b, Right::Listen, "orders", 0).reason, "no_grant");
        // Segment boundaries: orders does not cover orders-archive.
        assert!(!p.decide(&b, Right::Send, "orders-archive", 0).allow);
        assert!(!p.decide(&b, Right::Send, "invoices", 0).allow);
        let w = vec!["worker".to_string()];
        // Topic grants reach subscriptions and their dead-letter queues.
        assert!(
            p.decide(
                &w,
                Right::Listen,
                "events/subscriptions/audit/$deadletterqueue",
                0
            )
            .allow
        );
        assert!(
            p.decide(&w, Right::Listen, "events/subscriptions/a/$management", 0)
                .allow
        );
        assert!(!p.decide(&w, Right::Send, "events", 0).allow);
        let a = vec!["admin".to_string()];
        for r in [Right::Send, Right::Listen, Right::Manage] {
            assert!(p.decide(&a, r, "anything/at/all", 0).allow);
        }
        assert!(!p.decide(&[], Right::Send, "orders", 0).allow);
        assert_eq!(
            p.decide(&[], Right::Send, "orders", 0).reason,
            "no_principal"
        );
    }

    #[test]
    fn explicit_deny_beats_owner() {
        let p = policy(BASE);
        let a = vec!["admin".to_string()];
        let d = p.decide(&a, Right::Manage, "payments", 0);
        assert!(!d.allow);
        assert_eq!(d.reason, "explicit_deny");
        assert_eq!(d.rule.as_deref(), Some("deny[0]"));
        assert!(p.decide(&a, Right::Send, "payments", 0).allow);
        assert!(p.decide(&a, Right::Manage, "payments2", 0).allow);
    }

    #[test]
    fn time_bounded_grants() {
        let p = policy(BASE);
        let w = vec!["worker".to_string()];
        assert!(p.decide(&w, Right::Listen, "orders", JAN_1_NOON).allow);
        let before = p.decide(&w, Right::Listen, "orders", JAN_1_NOON - 86_400_000);
        assert_eq!(before.reason, "grant_not_in_time");
        let after = p.decide(&w, Right::Listen, "orders", JAN_1_NOON + 12 * 3_600_000);
        assert!(!after.allow, "not_after is exclusive");
        assert!(p.grant_boundary_between(JAN_1_NOON, JAN_1_NOON + 86_400_000));
        assert!(!p.grant_boundary_between(JAN_1_NOON + 86_400_000, i64::MAX));
    }

    #[test]
    fn builtin_registrations_name_the_principal() {
        let p = policy(
            r#"
            [[principals]]
            id = "app"
            [[sts.managed_identities]]
            principal = "app"
            client_id = "c-1"
            identity_header = "0123456789abcdef"
            "#,
        );
        let s = Subject {
            issuer_id: Some("sts".into()),
            client_id: Some("c-1".into()),
            ..Default::default()
        };
        assert_eq!(p.principals_for(&s), vec!["app"]);
        let other = Subject {
            client_id: Some("c-2".into()),
            ..s
        };
        assert!(p.principals_for(&other).is_empty());
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        let cases = [
            ("version = 2", "version"),
            (
                "[[grants]]\nprincipal = \"ghost\"\nrole = \"Owner\"\nscope = \"namespace\"",
                "unknown principal",
            ),
            (
                "[[issuers]]\nid = \"x\"\nkind = \"oidc\"\nissuer = \"https://x\"\nalgorithms = [\"HS256\"]",
                "not allowed",
            ),
            (
                "[[issuers]]\nid = \"x\"\nkind = \"oidc\"\nissuer = \"https://x\"\nalgorithms = [\"none\"]",
                "not allowed",
            ),
            ("[[issuers]]\nid = \"x\"\nkind = \"oidc\"", "needs `issuer`"),
            (
                "[[principals]]\nid = \"p\"\n[[grants]]\nprincipal = \"p\"\nrole = \"Owner\"\nscope = \"queues/../x\"",
                "segment",
            ),
            (
                "[[principals]]\nid = \"p\"\n[[grants]]\nprincipal = \"p\"\nrole = \"Owner\"\nscope = \"buckets/x\"",
                "expected",
            ),
            (
                "[[principals]]\nid = \"p\"\n[[grants]]\nprincipal = \"p\"\nrole = \"Owner\"\nscope = \"namespace\"\nnot_after = \"tomorrow\"",
                "not_after",
            ),
            ("[sts]\ntoken_lifetime = \"1m\"", "token_lifetime"),
        ];
        for (text, want) in cases {
            let err = match toml::from_str::<PolicyFile>(text) {
                Err(e) => e.to_string(),
                Ok(f) => match Policy::from_file(f, text.as_bytes()) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("accepted: {text}"),
                },
            };
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(toml::from_str::<PolicyFile>("[namespace]\nlocal_auth = \"no\"").is_err());
        assert!(toml::from_str::<PolicyFile>("unknown_key = 1").is_err());
    }

    #[test]
    fn scope_paths() {
        assert_eq!(scope_path("namespace").as_deref(), Ok(""));
        assert_eq!(scope_path("queues/Orders").as_deref(), Ok("orders"));
        assert_eq!(scope_path("queues/a/b").as_deref(), Ok("a/b"));
        assert_eq!(
            scope_path("topics/t/subscriptions/s").as_deref(),
            Ok("t/subscriptions/s")
        );
        assert!(scope_path("queues/q/subscriptions/s").is_err());
        assert!(scope_covers("", "x"));
        assert!(scope_covers("a", "a/$deadletterqueue"));
        assert!(!scope_covers("a", "ab"));
        // Another entity whose name starts with `a/` is not inside `a`.
        assert!(!scope_covers("orders", "orders/archive"));
        assert!(!scope_covers("orders", "orders/archive/$deadletterqueue"));
        assert!(scope_covers("t", "t/subscriptions/s/rules/$default"));
        assert!(scope_path("topics/t/subscriptions").is_err());
        assert!(scope_path("topics/t/subscriptions/s/rules/r").is_err());
        assert!(scope_path("queues/q/$deadletterqueue").is_err());
        assert!(scope_path("queues/a/b/c").is_ok());
    }
}
