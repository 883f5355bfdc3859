//! TLS for AMQPS and HTTPS: a certificate and key from PEM files (`--tls-cert`, `--tls-key`),
//! or a development CA and server certificate created in the data directory (`--dev-tls`).
//!
//! rustls with the `ring` provider; certificates for `--dev-tls` come from `rcgen`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("creating the development certificates: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Server certificate and key files, and the CA that issued them when keybus made it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Ready-to-use TLS server configurations.
#[derive(Clone)]
pub struct Tls {
    /// For AMQPS (and AMQP over secure WebSockets on the same port).
    pub amqp: Arc<ServerConfig>,
    /// For HTTPS (ALPN `http/1.1`).
    pub http: Arc<ServerConfig>,
    pub files: TlsFiles,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Load the certificate chain and private key. With `client_ca`, AMQPS asks clients for
    /// a certificate and checks it against that trust bundle (mTLS); clients without one
    /// still connect and authenticate with tokens.
    pub fn load(files: TlsFiles, client_ca: Option<&Path>) -> Result<Tls, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| pem_error(&files.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(&files.cert, e))?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: files.cert.clone(),
                what: "no certificate in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))
        };
        let base = builder()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let amqp = match client_ca {
            None => base.clone(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_error(ca, e))? {
                    roots
                        .add(cert.map_err(|e| pem_error(ca, e))?)
                        .map_err(|e| pem_error(ca, e))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Pem {
                        path: ca.to_path_buf(),
                        what: "no CA certificate in the trust bundle".into(),
                    });
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                builder()?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)
                    .map_err(|e| TlsError::Config(e.to_string()))?
            }
        };
        let mut http = base.clone();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            amqp: Arc::new(amqp),
            http: Arc::new(http),
            files,
        })
    }
}

/// The SPIFFE ID of a verified client certificate (X509-SVID rules: exactly one URI SAN,
/// `spiffe://` with a non-empty path, not a CA). `Ok(None)`: a certificate without one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<Option<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    if parsed
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
    {
        return Err("a CA certificate cannot be a client identity".into());
    }
    let uris: Vec<&str> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad subject alternative names: {e}")),
    };
    match uris.as_slice() {
        [] => Ok(None),
        [one] => {
            let lower = one.to_ascii_lowercase();
            let rest = lower
                .strip_prefix("spiffe://")
                .ok_or("the URI SAN is not a SPIFFE ID")?;
            let (domain, path) = rest.split_once('/').ok_or("the SPIFFE ID has no path")?;
            let segments_ok = !path.is_empty()
                && path
                    .split('/')
                    .all(|s| !s.is_empty() && s != "." && s != "..");
            if domain.is_empty()
                || !segments_ok
                || one.len() > 2048
                || one.contains(['?', '#', '%'])
            {
                return Err(format!("'{one}' is not a valid SPIFFE ID"));
            }
            Ok(Some(one.to_string()))
        }
        _ => Err("a client certificate with several URI SANs is refused".into()),
    }
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Private keys are 0600 from creation on (never readable by others, not even briefly).
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(err)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// `--dev-tls`: reuse `<dir>/tls/{ca.pem,server.pem,server-key.pem}`, or create a local CA and
/// a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra_hosts`.
pub fn dev_files(dir: &Path, extra_hosts: &[String]) -> Result<TlsFiles, TlsError> {
    let tls_dir = dir.join("tls");
    let files = TlsFiles {
        cert: tls_dir.join("server.pem"),
        key: tls_dir.join("server-key.pem"),
        ca: Some(tls_dir.join("ca.pem")),
    };
    let ca_path = tls_dir.join("ca.pem");
    if files.cert.exists() && files.key.exists() && ca_path.exists() {
        return Ok(files);
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&tls_dir).map_err(|source| TlsError::Write {
        path: tls_dir.clone(),
        source,
    })?;

    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "keybus development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(gen_err)?;

    let mut server = CertificateParams::default();
    server
        .distinguished_name
        .push(DnType::CommonName, "keybus development server");
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(gen_err)?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for h in extra_hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(h.clone().try_into().map_err(gen_err)?)),
        }
    }
    server.subject_alt_names = sans;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().map_err(gen_err)?;
    let issuer = Issuer::new(ca, &ca_key);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(gen_err)?;

    write(&ca_path, &ca_cert.pem(), false)?;
    write(&files.cert, &server_cert.pem(), false)?;
    write(&files.key, &server_key.serialize_pem(), true)?;
    Ok(files)
}
