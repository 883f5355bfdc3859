//! Validation tests: claims, headers, algorithm confusion, the built-in issuer, and key
//! fetching over HTTP(S) from loopback test servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine;

use super::test_server::{Answer, Routes, Server};
use super::*;
use crate::policy::PolicyFile;
use crate::sts::{PublicNames, TokenService};

/// A fresh directory for one test.
fn temp_dir(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "keybus-jwt-{what}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

const NOW: i64 = 1_767_225_600_000;
const ISS: &str = "https://issuer.example";

/// A policy with an OIDC issuer whose key is `ext`'s, and the builtin service.
fn setup() -> (
    Validator,
    TokenService,
    TokenService,
    Policy,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(format!(
        "keybus-jwt-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let ext = TokenService::in_memory();
    let jwks = dir.join("jwks.json");
    let keys = serde_json::json!({ "keys": ext.public_jwks() });
    let _ = std::fs::write(&jwks, keys.to_string());
    let text = format!(
        r#"
        [[issuers]]
        id = "ext"
        kind = "oidc"
        issuer = "{ISS}"
        jwks_file = "{}"
        algorithms = ["ES256"]
        max_token_lifetime = "2h"
        [[principals]]
        id = "app"
        [[sts.managed_identities]]
        principal = "app"
        client_id = "c-1"
        identity_header = "0123456789abcdef0123"
        "#,
        jwks.display()
    );
    let file: PolicyFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy::from_file(file, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let v = Validator::new();
    v.configure(&policy);
    (v, TokenService::in_memory(), ext, policy, dir)
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": ISS, "aud": "https://servicebus.azure.net", "sub": "s-1",
        "iat": NOW / 1000, "nbf": NOW / 1000, "exp": NOW / 1000 + 600,
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn b64j(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn external_tokens() {
    let (v, sts, ext, policy, dir) = setup();
    let sign = |c: serde_json::Value| ext.sign(&c).unwrap_or_default();
    let check = |t: &str| v.validate(t, &sts, &policy, NOW);
    let (p, exp) = check(&sign(claims(serde_json::json!({})))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.subject.issuer_id.as_deref(), Some("ext"));
    assert_eq!(p.subject.sub.as_deref(), Some("s-1"));
    assert_eq!(exp, NOW + 600_000 + 30_000, "exp plus the default leeway");
    assert!(p.token_sha256.is_some());
    // Audience as an array.
    let arr = sign(claims(
        serde_json::json!({"aud": ["x", "https://servicebus.azure.net/"]}),
    ));
    assert!(check(&arr).is_ok());
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"exp": NOW / 1000 - 120}), "ExpiredToken"),
        (
            serde_json::json!({"nbf": NOW / 1000 + 3600}),
            "not valid yet",
        ),
        (serde_json::json!({"iat": NOW / 1000 + 3600}), "future"),
        (
            serde_json::json!({"aud": "https://management.azure.com"}),
            "InvalidAudience",
        ),
        (
            serde_json::json!({"iss": "https://evil.example"}),
            "InvalidIssuer",
        ),
        (serde_json::json!({"exp": null}), "exp"),
        (serde_json::json!({"aud": null}), "aud"),
        (
            serde_json::json!({"iat": NOW / 1000 - 86_400, "nbf": null}),
            "longer",
        ),
        (serde_json::json!({"nonce": "n"}), "ID tokens"),
    ];
    for (extra, want) in cases {
        let e = check(&sign(claims(extra.clone())))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(want), "{extra}: {e}");
    }
    // Expiry: accepted up to the default 30 s leeway after exp, refused past it (it used
    // to be 60 s), with the real reason.
    let exp = NOW / 1000 - 600;
    let t = sign(claims(
        serde_json::json!({"iat": exp - 600, "nbf": exp - 600, "exp": exp}),
    ));
    let at = |ms: i64| v.validate(&t, &sts, &policy, ms);
    assert!(at(exp * 1000 + 29_999).is_ok());
    for late in [30_000, 45_000, 60_000] {
        let e = at(exp * 1000 + late)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("ExpiredToken: The token is expired."),
            "{late}: {e}"
        );
    }
    // A token signed by another key with the issuer's kid: bad signature.
    let other = TokenService::in_memory();
    let forged = other
        .sign(&claims(serde_json::json!({})))
        .unwrap_or_default();
    let e = check(&forged)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("InvalidSignature"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hostile_headers() {
    let (v, sts, ext, policy, dir) = setup();
    let check = |t: &str| {
        v.validate(t, &sts, &policy, NOW)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let body = b64j(&claims(serde_json::json!({})));
    let good = ext.sign(&claims(serde_json::json!({}))).unwrap_or_default();
    let sig = good.rsplit('.').next().unwrap_or_default().to_string();
    let with = |h: serde_json::Value| format!("{}.{body}.{sig}", b64j(&h));
    assert!(
        check(&format!(
            "{}.{body}.",
            b64j(&serde_json::json!({"alg": "none"}))
        ))
        .contains("InvalidToken")
    );
    assert!(check(&with(serde_json::json!({"alg": "none"}))).contains("'none'"));
    assert!(check(&with(serde_json::json!({"alg": "HS256", "kid": "x"}))).contains("'HS256'"));
    assert!(check(&with(serde_json::json!({"alg": "RS256"}))).contains("not accepted"));
    assert!(
        check(&with(serde_json::json!({"alg": "ES256", "crit": ["b64"]}))).contains("critical")
    );
    assert!(
        check(&with(serde_json::json!({"alg": "ES256", "kid": "unknown"}))).contains("not known")
    );
    assert!(check("a.b").contains("three"));
    assert!(check(&"x".repeat(MAX_JWT_LEN + 1)).contains("larger"));
    assert!(check("!!!.@@@.###").contains("base64url"));
    // A `jwk` header naming the attacker's own key is ignored: the issuer's keys decide.
    let attacker = TokenService::in_memory();
    let mut h = serde_json::json!({"alg": "ES256", "jwk": attacker.public_jwks()[0]});
    if let Some(o) = h.as_object_mut() {
        o.remove("kid");
    }
    let t = attacker
        .sign(&claims(serde_json::json!({})))
        .unwrap_or_default();
    let s2 = t.rsplit('.').next().unwrap_or_default();
    assert!(check(&format!("{}.{body}.{s2}", b64j(&h))).contains("InvalidSignature"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn algorithm_confusion_and_missing_claims() {
    use hmac::{Hmac, Mac};
    let (v, sts, ext, policy, dir) = setup();
    let check = |t: &str| {
        v.validate(t, &sts, &policy, NOW)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    // HS256 keyed with the issuer's public key bytes (the JWK text, the raw point): a
    // verifier that let the token pick the algorithm would accept these.
    let jwk = serde_json::to_value(&ext.public_jwks()[0]).unwrap_or_default();
    let kid = jwk["kid"].as_str().unwrap_or_default().to_string();
    let coord = |c: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[c].as_str().unwrap_or_default())
            .unwrap_or_default()
    };
    let mut point = vec![4u8];
    point.extend(coord("x"));
    point.extend(coord("y"));
    let secrets: Vec<Vec<u8>> = vec![jwk.to_string().into_bytes(), point];
    for (alg, secret) in [
        ("HS256", &secrets[0]),
        ("HS256", &secrets[1]),
        ("HS384", &secrets[0]),
    ] {
        let input = format!(
            "{}.{}",
            b64j(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid})),
            b64j(&claims(serde_json::json!({})))
        );
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap_or_else(|e| panic!("{e}"));
        mac.update(input.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let e = check(&format!("{input}.{sig}"));
        assert!(
            e.starts_with("InvalidToken") && e.contains(alg),
            "{alg}: {e}"
        );
    }
    // The same claims signed properly pass, so the refusals above are about the algorithm.
    assert!(check(&ext.sign(&claims(serde_json::json!({}))).unwrap_or_default()).is_empty());
    // Required claims: iss (no issuer entry to pick), exp, aud.
    for (missing, want) in [("iss", "no iss"), ("exp", "exp"), ("aud", "aud")] {
        let t = ext
            .sign(&claims(serde_json::json!({ missing: null })))
            .unwrap_or_default();
        let e = check(&t);
        assert!(
            e.starts_with("InvalidToken") && e.contains(want),
            "{missing}: {e}"
        );
    }
    // An issuer whose key set has no key for this token's kid: refused, and a refresh
    // (rate limited, never from the validating call) is asked for.
    let stranger = TokenService::in_memory();
    let e = check(
        &stranger
            .sign(&claims(serde_json::json!({})))
            .unwrap_or_default(),
    );
    assert!(e.contains("not known"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn keys_from_discovery_over_https_and_from_a_loopback_jwks_uri() {
    let dir = temp_dir("fetch");
    let ext = TokenService::in_memory();
    let _ = std::fs::create_dir_all(&dir);
    let jwks = serde_json::json!({ "keys": ext.public_jwks() }).to_string();
    let https = Server::bind().await;
    let port = https.port;
    let routes: Routes = [
        (
            "/.well-known/openid-configuration".to_string(),
            Answer {
                body: serde_json::json!({
                    "issuer": format!("https://localhost:{port}"),
                    "jwks_uri": format!("https://localhost:{port}/keys"),
                })
                .to_string(),
                cache_control: None,
            },
        ),
        (
            "/keys".to_string(),
            Answer {
                body: jwks,
                cache_control: Some("public, max-age=60"),
            },
        ),
    ]
    .into_iter()
    .collect();
    let ca = dir.join("ca.pem");
    https.serve_https(routes.clone(), &ca);
    // Plain http on loopback, for `jwks_uri`.
    let http = Server::bind().await;
    let http_port = http.port;
    http.serve_http(routes);

    let iss = format!("https://localhost:{port}");
    let text = format!(
        r#"
        [[issuers]]
        id = "disco"
        kind = "oidc"
        issuer = "{iss}"
        ca_file = "{}"
        algorithms = ["ES256"]
        [[issuers]]
        id = "direct"
        kind = "oidc"
        issuer = "https://direct.example"
        jwks_uri = "http://127.0.0.1:{http_port}/keys"
        algorithms = ["ES256"]
        [[issuers]]
        id = "untrusted"
        kind = "oidc"
        issuer = "https://localhost:{port}/"
        jwks_uri = "https://localhost:{port}/keys"
        algorithms = ["ES256"]
        "#,
        ca.display()
    );
    let file: PolicyFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy::from_file(file, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let v = Validator::new();
    v.configure(&policy);
    let sts = TokenService::in_memory();
    let now = keys::now_ms_system();
    let token = |iss: &str| {
        ext.sign(&serde_json::json!({
            "iss": iss, "aud": "https://servicebus.azure.net", "sub": "s",
            "iat": now / 1000, "exp": now / 1000 + 600,
        }))
        .unwrap_or_default()
    };
    let mut results = (Err(JwtError::Signature), Err(JwtError::Signature));
    for _ in 0..100 {
        results = (
            v.validate(&token(&iss), &sts, &policy, now),
            v.validate(&token("https://direct.example"), &sts, &policy, now),
        );
        if results.0.is_ok() && results.1.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (disco, direct) = results;
    assert_eq!(
        disco
            .map(|(p, _)| p.subject.issuer_id)
            .ok()
            .flatten()
            .as_deref(),
        Some("disco")
    );
    assert_eq!(
        direct
            .map(|(p, _)| p.subject.issuer_id)
            .ok()
            .flatten()
            .as_deref(),
        Some("direct")
    );
    // The same server without its CA (no ca_file): never trusted, so no keys.
    let e = v
        .validate(&token(&format!("{iss}/")), &sts, &policy, now)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("not known"), "{e}");
    // Fetch hygiene.
    for bad in [
        "http://example.com/keys",
        "ftp://127.0.0.1/keys",
        "file:///etc/passwd",
    ] {
        assert!(fetch::http_get(bad, None).await.is_err(), "{bad}");
    }
    let (_, max_age) = fetch::http_get(&format!("http://127.0.0.1:{http_port}/keys"), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(max_age, Some(60_000));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn builtin_tokens_round_trip() {
    let (v, sts, _ext, policy, dir) = setup();
    sts.set_default_public(PublicNames::for_bind(
        std::net::IpAddr::from([127, 0, 0, 1]),
        5443,
    ));
    assert_eq!(sts.issuer(&policy), "https://localhost:5443/keybus/v2.0");
    let mint = |sts: &TokenService, iss: &str| {
        sts.mint(iss, "keybus", "c-1", "app", Duration::from_secs(3600), NOW)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (t, exp) = mint(&sts, "https://localhost:5443/keybus/v2.0");
    assert_eq!(exp, NOW / 1000 + 3600);
    let (p, _) = v
        .validate(&t, &sts, &policy, NOW)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.subject.client_id.as_deref(), Some("c-1"));
    assert_eq!(policy.principals_for(&p.subject), vec!["app"]);
    // Signed by our own key, but with an issuer the service never mints: someone else's
    // host (even with our tenant path), another port, another name of the same listener.
    for iss in [
        "https://evil.example/keybus/v2.0",
        "https://localhost:5444/keybus/v2.0",
        "https://127.0.0.1:5443/keybus/v2.0",
        "https://localhost:5443/KEYBUS/v2.0",
        "http://localhost:5443/keybus/v2.0",
    ] {
        let (forged, _) = mint(&sts, iss);
        let e = v
            .validate(&forged, &sts, &policy, NOW)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("InvalidIssuer"), "{iss}: {e}");
    }
    // With `[sts] public_url`, its issuer and no longer the listeners' default.
    let text = r#"
        [sts]
        public_url = "https://sb.example.com"
        [[principals]]
        id = "app"
        [[sts.managed_identities]]
        principal = "app"
        client_id = "c-1"
        identity_header = "0123456789abcdef0123"
    "#;
    let file: crate::policy::PolicyFile = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
    let public = Policy::from_file(file, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let (ours, _) = mint(&sts, "https://sb.example.com/keybus/v2.0");
    assert!(v.validate(&ours, &sts, &public, NOW).is_ok());
    assert!(v.validate(&t, &sts, &public, NOW).is_err());
    // Another keybus's service signed it: refused.
    let other = TokenService::in_memory();
    let (t2, _) = other
        .mint(
            "https://localhost:5443/keybus/v2.0",
            "keybus",
            "c-1",
            "app",
            Duration::from_secs(3600),
            NOW,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(v.validate(&t2, &sts, &policy, NOW).is_err());
    // Expired later.
    let late = NOW + 3_700_000;
    let e = v
        .validate(&t, &sts, &policy, late)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with("ExpiredToken"), "{e}");
    // A different tenant path in iss is not ours.
    let (t3, _) = sts
        .mint(
            "https://localhost:5443/other/v2.0",
            "keybus",
            "c-1",
            "app",
            Duration::from_secs(3600),
            NOW,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(v.validate(&t3, &sts, &policy, NOW).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// Environment of the child process of [`an_issuer_whose_ca_is_only_in_the_system_store_is_trusted`].
const CHILD_ISSUER: &str = "KEYBUS_TEST_SYSTEM_STORE_ISSUER";
const CHILD_TOKEN: &str = "KEYBUS_TEST_SYSTEM_STORE_TOKEN";

/// The key-fetch client trusts the platform's roots, not only an issuer's `ca_file` (which is
/// an extra CA): an HTTPS issuer whose CA is only in the "system" store is trusted. On Linux
/// the platform verifier reads the system store through `rustls-native-certs`, which honours
/// `SSL_CERT_FILE`; the environment of a running test cannot be changed safely, so the test
/// serves discovery and JWKS here and validates in a child run of this test binary whose
/// `SSL_CERT_FILE` is the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_whose_ca_is_only_in_the_system_store_is_trusted() {
    let dir = temp_dir("system-store");
    std::fs::create_dir_all(&dir).unwrap();
    let ext = TokenService::in_memory();
    let server = Server::bind().await;
    let iss = format!("https://localhost:{}", server.port);
    let routes: Routes = [
        (
            "/.well-known/openid-configuration".to_string(),
            serde_json::json!({ "issuer": iss, "jwks_uri": format!("{iss}/keys") }),
        ),
        (
            "/keys".to_string(),
            serde_json::json!({ "keys": ext.public_jwks() }),
        ),
    ]
    .into_iter()
    .map(|(path, body)| {
        let body = body.to_string();
        (
            path,
            Answer {
                body,
                cache_control: None,
            },
        )
    })
    .collect();
    let ca = dir.join("system-ca.pem");
    server.serve_https(routes, &ca);
    let now = keys::now_ms_system() / 1000;
    let token = ext
        .sign(&serde_json::json!({
            "iss": iss, "aud": "https://servicebus.azure.net", "sub": "s",
            "iat": now, "exp": now + 600,
        }))
        .unwrap();

    let run = move |ssl_cert_file: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "jwt::tests::system_store_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ISSUER, &iss)
        .env(CHILD_TOKEN, &token)
        .env_remove("SSL_CERT_DIR");
        match ssl_cert_file {
            Some(f) => cmd.env("SSL_CERT_FILE", f),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        cmd.output().unwrap()
    };
    let child_ca = ca.clone();
    let trusted = tokio::task::spawn_blocking(move || {
        let with = run(Some(&child_ca));
        let without = run(None);
        (with, without)
    })
    .await
    .unwrap();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (with, without) = trusted;
    assert!(with.status.success(), "{}", text(&with));
    assert!(text(&with).contains("1 passed"), "{}", text(&with));
    // The same issuer without its CA in the system store: no keys, the token is refused.
    assert!(!without.status.success(), "{}", text(&without));
    assert!(text(&without).contains("not known"), "{}", text(&without));
    let _ = std::fs::remove_dir_all(dir);
}

/// The child of [`an_issuer_whose_ca_is_only_in_the_system_store_is_trusted`]: an issuer
/// with discovery and no `ca_file`; the token must validate within 5 s.
#[tokio::test]
#[ignore = "run by an_issuer_whose_ca_is_only_in_the_system_store_is_trusted"]
async fn system_store_child() {
    let (Ok(iss), Ok(token)) = (std::env::var(CHILD_ISSUER), std::env::var(CHILD_TOKEN)) else {
        return;
    };
    let text = format!(
        r#"
        [[issuers]]
        id = "system"
        kind = "oidc"
        issuer = "{iss}"
        algorithms = ["ES256"]
        "#
    );
    let file: PolicyFile = toml::from_str(&text).unwrap();
    let policy = Policy::from_file(file, text.as_bytes()).unwrap();
    let v = Validator::new();
    v.configure(&policy);
    let sts = TokenService::in_memory();
    let mut result = Err(JwtError::Signature);
    for _ in 0..100 {
        result = v.validate(&token, &sts, &policy, keys::now_ms_system());
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match result {
        Ok((p, _)) => assert_eq!(p.subject.issuer_id.as_deref(), Some("system")),
        Err(e) => panic!("refused: {e}"),
    }
}
