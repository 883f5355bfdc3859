//! Access control for keybus, with no I/O of its own beyond its files (the policy, the audit
//! log and its keys, the token service's key) and the issuers' key sets:
//!
//! - [`policy`]: the reviewed policy file, compiled, and its pure evaluation;
//! - [`sas`]: shared access signatures; [`jwt`]: JSON Web Tokens, with the issuers' key cache;
//! - [`scope`]: the one matcher of scopes to entities; [`ratelimit`]: the failed-token limiter;
//! - [`audit`]: the keyed, rotated JSON Lines audit log and its verification;
//! - [`sts`]: the token service's key, minting and rules (its HTTP endpoints are the server's);
//! - [`Auth`]: all of it together, the one place access is decided.
//!
//! It knows nothing of AMQP, HTTP frameworks or the broker: the server passes it plain values
//! (paths, peers as text, times in ms) and maps its answers onto the wire.

pub mod audit;
mod auth;
pub mod jwt;
pub mod policy;
mod principal;
pub mod ratelimit;
mod right;
pub mod sas;
pub mod scope;
pub mod sts;

pub use auth::{Auth, MAX_FAILURES_PER_MINUTE, Refusal};
pub use principal::{CredentialKind, Principal, SasRights, token_sha256};
pub use right::{Right, SasPolicy};
