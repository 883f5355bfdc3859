//! keybus's token service (identity reference §1.5, §2.6), its pure part: the signing key and
//! minting ([`TokenService`]), the names it answers as ([`PublicNames`]), and the rules its
//! endpoints apply (which resource, scope and tenant a request may name, how long a token
//! lives). The HTTP endpoints (managed identity, token, discovery, JWKS) are the server's.

mod key;
mod names;

use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use key::{Grantee, TokenService, stable_uuid};
pub use names::PublicNames;

use crate::policy::{Policy, SERVICE_BUS_AUDIENCES, parse_duration};

/// The `aud` of a token for `resource` (a managed-identity request's `resource`, or a scope
/// without `/.default`): Service Bus's, or one of the policy's `sts.audiences` as listed
/// (a trailing `/` either way); `None` for anything else.
pub fn audience_for(policy: &Policy, resource: &str) -> Option<String> {
    let bare = resource.trim_end_matches('/');
    if SERVICE_BUS_AUDIENCES.contains(&resource) || SERVICE_BUS_AUDIENCES.contains(&bare) {
        return Some(SERVICE_BUS_AUDIENCES[0].to_string());
    }
    policy
        .file
        .sts
        .audiences
        .iter()
        .find(|a| a.trim_end_matches('/') == bare)
        .cloned()
}

/// The `aud` a token request's `scope` (space-separated `<audience>/.default`) asks for.
pub fn scope_audience(policy: &Policy, scope: &str) -> Option<String> {
    scope
        .split(' ')
        .find_map(|s| audience_for(policy, s.strip_suffix(".default")?))
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
