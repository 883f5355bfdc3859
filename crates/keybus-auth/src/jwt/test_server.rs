//! A loopback HTTP(S) server for the key-fetch tests: answers `GET`s from a fixed table of
//! paths with JSON bodies (and an optional `Cache-Control`), one request per connection. Its
//! TLS certificate (for `localhost` and `127.0.0.1`) is signed by a CA made for the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One answer: the body and its `Cache-Control` header, if any.
#[derive(Clone)]
pub struct Answer {
    pub body: String,
    pub cache_control: Option<&'static str>,
}

/// The path -> answer table.
pub type Routes = HashMap<String, Answer>;

/// A bound listener, so the routes can name its port before it serves.
pub struct Server {
    listener: TcpListener,
    pub port: u16,
}

impl Server {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Self { listener, port }
    }

    /// Serve `routes` over plain HTTP.
    pub fn serve_http(self, routes: Routes) {
        let routes = Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = self.listener.accept().await {
                tokio::spawn(answer(tcp, routes.clone()));
            }
        });
    }

    /// Serve `routes` over HTTPS with a certificate from a new CA, written as PEM to
    /// `ca_file`.
    pub fn serve_https(self, routes: Routes, ca_file: &Path) {
        let config = tls_config(ca_file);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let routes = Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = self.listener.accept().await {
                let (acceptor, routes) = (acceptor.clone(), routes.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        answer(stream, routes).await;
                    }
                });
            }
        });
    }
}

/// Read one request head, answer it from `routes` (404 otherwise) and close.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    routes: Arc<Routes>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
    let response = match routes.get(&path) {
        Some(a) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n{}",
            a.body.len(),
            a.cache_control
                .map(|c| format!("cache-control: {c}\r\n"))
                .unwrap_or_default(),
            a.body
        ),
        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A CA (its certificate written to `ca_file`) and a server configuration with a certificate
/// for `localhost` and `127.0.0.1` it signed.
fn tls_config(ca_file: &Path) -> rustls::ServerConfig {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(ca_file, ca_cert.pem()).unwrap();

    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf
        .signed_by(&leaf_key, &Issuer::new(ca, &ca_key))
        .unwrap();

    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .unwrap()
}
