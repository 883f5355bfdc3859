//! The policy file's schema (TOML, unknown keys refused): namespace settings, issuers,
//! principals, grants and denies, the token service's registrations, audit settings.

use std::path::PathBuf;

use serde::Deserialize;

use crate::Right;

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

pub(super) fn default_audiences() -> Vec<String> {
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

pub(super) fn default_leeway() -> u64 {
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
    /// Audiences besides Service Bus the service mints tokens for: the HTTP services
    /// connectors push to (`keybus connect`), which validate them with the JWKS. keybus itself
    /// accepts only Service Bus audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
}

impl Default for StsConfig {
    fn default() -> Self {
        Self {
            tenant: default_tenant(),
            token_lifetime: default_lifetime(),
            clients: Vec::new(),
            managed_identities: Vec::new(),
            public_url: None,
            audiences: Vec::new(),
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
