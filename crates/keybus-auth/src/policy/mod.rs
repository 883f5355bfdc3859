//! The access policy file (identity reference §7.1): who may do what, where.
//!
//! Pure data and evaluation: no I/O here except [`Policy::load`], which reads the file (and
//! the secret files it names) once. Default deny; an explicit `deny` beats every grant; a
//! grant applies at its scope and below; sub-queues follow their entity; Owner ⊇ Sender ∪
//! Receiver ∪ manage; time-bounded grants hold only in `[not_before, not_after)`.

mod compile;
mod decide;
mod file;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::Right;

pub use compile::{parse_duration, scope_covers, scope_path};
pub use decide::{Decision, Subject};
pub use file::{
    AuditConfig, DEFAULT_CLOCK_SKEW_SECS, DenyConfig, FederatedCredential, GrantConfig,
    IssuerConfig, IssuerKind, ManagedIdentity, MatchConfig, NamespaceSection, PolicyFile,
    PrincipalConfig, Role, SERVICE_BUS_AUDIENCES, StsClient, StsConfig, TOKEN_EXCHANGE_AUDIENCE,
};

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

#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) principal: String,
    pub(super) role: Role,
    pub(super) scope: String,
    pub(super) not_before_ms: Option<i64>,
    pub(super) not_after_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub(super) struct Deny {
    pub(super) principal: String,
    pub(super) rights: Vec<Right>,
    pub(super) scope: String,
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub file: PolicyFile,
    /// `sha256:<hex>` of the file's bytes; recorded in every audit line.
    pub version: String,
    /// Managed identity secrets, resolved from inline values or files: (secret, index).
    pub mi_secrets: Vec<(String, usize)>,
    pub(super) grants: Vec<Grant>,
    pub(super) denies: Vec<Deny>,
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
