//! Who is calling: a verified caller ([`Principal`]), how it proved who it is, and what a SAS
//! token grants by itself.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Right;
use crate::policy::Subject;
use crate::sas::Grant;

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
    pub fn from_sas(grant: &Grant, token: &str) -> Self {
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
    format!("{:x}", Sha256::digest(token.as_bytes()))
}
