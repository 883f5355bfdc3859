//! keybus's token service (identity reference §1.5, §2.6), its pure part: the signing key and
//! minting ([`TokenService`]), the names it answers as ([`PublicNames`]), and the rules its
//! endpoints apply (which resource, scope and tenant a request may name, how long a token
//! lives). The HTTP endpoints (managed identity, token, discovery, JWKS) are the server's.

mod key;
mod names;

use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use key::{TokenService, stable_uuid};
pub use names::PublicNames;

use crate::policy::{Policy, SERVICE_BUS_AUDIENCES, parse_duration};

/// Does a managed-identity request name a resource the service issues tokens for?
pub fn resource_ok(resource: Option<&str>) -> bool {
    resource.is_some_and(|r| SERVICE_BUS_AUDIENCES.contains(&r))
}

/// Does a token request's `scope` (space-separated) ask for Service Bus (`<audience>/.default`)?
pub fn scope_ok(scope: &str) -> bool {
    scope.split(' ').any(|s| {
        let r = s.trim_end_matches(".default");
        SERVICE_BUS_AUDIENCES.contains(&r)
            || SERVICE_BUS_AUDIENCES.contains(&r.trim_end_matches('/'))
    })
}

/// Is `tenant` (from a request path) the policy's token-service tenant?
pub fn tenant_ok(policy: &Policy, tenant: &str) -> bool {
    policy.file.sts.tenant.eq_ignore_ascii_case(tenant)
}

/// How long the tokens the service mints live (`sts.token_lifetime`, default one hour).
pub fn lifetime(policy: &Policy) -> Duration {
    parse_duration("sts.token_lifetime", &policy.file.sts.token_lifetime)
        .unwrap_or(Duration::from_secs(3600))
}

/// Compare two secrets in constant time (digests first, so lengths leak nothing either).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}
