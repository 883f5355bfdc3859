//! The token service's signing key (ES256, P-256, kept in `<data-dir>/sts/`) and token
//! minting. The HTTP endpoints live in the server; this is what they call.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::PublicNames;
use crate::policy::{Policy, SERVICE_BUS_AUDIENCES};

const KEY_FILE: &str = "signing-key.der";

/// Who a token is minted for: the token service's tenant, the registered client id and the
/// principal it stands for.
#[derive(Debug, Clone, Copy)]
pub struct Grantee<'a> {
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub principal: &'a str,
}

/// Signing key and token minting.
pub struct TokenService {
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
    /// Names derived from the listeners (`--bind`, the HTTPS port), used unless the policy
    /// sets `sts.public_url`.
    default_public: std::sync::RwLock<PublicNames>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl TokenService {
    /// A fresh key that lives as long as the process.
    pub fn in_memory() -> Self {
        match rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256) {
            Ok(k) => Self::from_pkcs8(&k.serialize_der()).unwrap_or_else(|_| Self::unusable()),
            Err(_) => Self::unusable(),
        }
    }

    /// A service whose tokens nobody accepts (key generation failed: it cannot happen with
    /// ring, but a server path must not panic).
    fn unusable() -> Self {
        Self {
            encoding: EncodingKey::from_ec_der(&[]),
            jwk: Jwk {
                common: Default::default(),
                algorithm: jsonwebtoken::jwk::AlgorithmParameters::OctetKey(
                    jsonwebtoken::jwk::OctetKeyParameters {
                        key_type: jsonwebtoken::jwk::OctetKeyType::Octet,
                        value: String::new(),
                    },
                ),
            },
            kid: String::new(),
            default_public: Default::default(),
        }
    }

    /// The key in `dir` (created 0700, key 0600), generated on first use.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(KEY_FILE);
        let der = match std::fs::read(&path) {
            Ok(d) if !d.is_empty() => d,
            _ => {
                let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let der = k.serialize_der();
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                {
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create(true).truncate(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::OpenOptionsExt;
                        opts.mode(0o600);
                    }
                    use std::io::Write;
                    let mut f = opts.open(&tmp)?;
                    f.write_all(&der)?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, &path)?;
                der
            }
        };
        Self::from_pkcs8(&der).map_err(std::io::Error::other)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = rcgen::KeyPair::try_from(der).map_err(|e| format!("token service key: {e}"))?;
        let raw = pair.public_key_raw();
        // Uncompressed P-256 point: 0x04 || X (32) || Y (32).
        if raw.len() != 65 || raw[0] != 4 {
            return Err("token service key: not an uncompressed P-256 point".into());
        }
        let (x, y) = (b64(&raw[1..33]), b64(&raw[33..]));
        // RFC 7638 JWK thumbprint: SHA-256 of the required members in lexicographic order.
        let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(&Sha256::digest(thumbprint.as_bytes()));
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        }))
        .map_err(|e| format!("token service key: {e}"))?;
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der),
            jwk,
            kid,
            default_public: Default::default(),
        })
    }

    /// Set the names derived from the listeners (at start-up, once the HTTPS port is known).
    pub fn set_default_public(&self, names: PublicNames) {
        match self.default_public.write() {
            Ok(mut g) => *g = names,
            Err(p) => *p.into_inner() = names,
        }
    }

    /// The names in force: the policy's `sts.public_url`, else the listeners' defaults.
    pub fn public_names(&self, policy: &Policy) -> PublicNames {
        if let Some(url) = &policy.file.sts.public_url
            && let Ok(n) = PublicNames::from_url(url)
        {
            return n;
        }
        match self.default_public.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The issuer (`iss`) of the tokens the service mints now: the names in force, for the
    /// policy's tenant.
    pub fn issuer(&self, policy: &Policy) -> String {
        self.public_names(policy).issuer(&policy.file.sts.tenant)
    }

    /// The public keys, for validation and the JWKS endpoint.
    pub fn public_jwks(&self) -> Vec<Jwk> {
        vec![self.jwk.clone()]
    }

    /// Mint an access token for Service Bus. Returns the token and its `exp` (unix s).
    pub fn mint(
        &self,
        issuer_url: &str,
        tenant: &str,
        client_id: &str,
        principal: &str,
        lifetime: Duration,
        now_ms: i64,
    ) -> Result<(String, i64), String> {
        let grant = Grantee {
            tenant,
            client_id,
            principal,
        };
        self.mint_for(
            issuer_url,
            SERVICE_BUS_AUDIENCES[0],
            grant,
            lifetime,
            now_ms,
        )
    }

    /// Mint an access token with audience `audience` (Service Bus, or a service of the
    /// policy's `sts.audiences`). Returns the token and its `exp` (unix s).
    pub fn mint_for(
        &self,
        issuer_url: &str,
        audience: &str,
        grantee: Grantee<'_>,
        lifetime: Duration,
        now_ms: i64,
    ) -> Result<(String, i64), String> {
        let Grantee {
            tenant,
            client_id,
            principal,
        } = grantee;
        let now = now_ms / 1000;
        let exp = now + lifetime.as_secs() as i64;
        let oid = stable_uuid(&format!("{tenant}/{principal}"));
        let claims = json!({
            "iss": issuer_url, "aud": audience,
            "iat": now, "nbf": now, "exp": exp,
            "tid": tenant, "oid": oid, "sub": oid,
            "appid": client_id, "azp": client_id,
            "idtyp": "app", "ver": "2.0",
            "jti": uuid::Uuid::new_v4().hyphenated().to_string(),
            "xms_mirid": format!("/keybus/identities/{principal}"),
        });
        Ok((self.sign(&claims)?, exp))
    }

    /// Sign any claims with the service's key (ES256, with its `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| format!("cannot sign: {e}"))
    }
}

/// A name-based (version 5) UUID for a name (the same principal keeps its object id).
pub fn stable_uuid(name: &str) -> String {
    uuid::Uuid::new_v5(&KEYBUS_NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

/// The namespace of keybus's name-based UUIDs: a fixed UUID chosen for keybus, so ids differ
/// from those other software derives from the same names.
const KEYBUS_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8c6f_2a1e_5b7d_5c43_9e0a_4d1f_6b2c_3a90);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn key_persists_and_tokens_verify() {
        let dir = std::env::temp_dir().join(format!("keybus-sts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = TokenService::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let b = TokenService::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.kid, b.kid, "the key is kept across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(dir.join(KEY_FILE)).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let c = TokenService::in_memory();
        assert_ne!(a.kid, c.kid);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
