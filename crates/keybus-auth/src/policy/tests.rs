//! Policy tests: principal matching, roles and scopes, denies, time bounds, registrations,
//! refused files.

use super::*;

fn policy(toml_text: &str) -> Policy {
    let file: PolicyFile = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"));
    Policy::from_file(file, toml_text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

const BASE: &str = r#"
    [[issuers]]
    id = "k8s"
    kind = "oidc"
    issuer = "https://k8s.example"

    [[principals]]
    id = "billing"
    match = [{ issuer = "k8s", sub = "system:serviceaccount:billing:api" },
             { spiffe = "spiffe://cluster.local/ns/billing/sa/api" }]

    [[principals]]
    id = "worker"
    match = [{ issuer = "k8s", sub = "system:serviceaccount:work:w" }]

    [[principals]]
    id = "admin"
    match = [{ issuer = "k8s", sub = "admin" }]

    [[grants]]
    principal = "billing"
    role = "Sender"
    scope = "queues/orders"

    [[grants]]
    principal = "worker"
    role = "Receiver"
    scope = "topics/events"

    [[grants]]
    principal = "admin"
    role = "Owner"
    scope = "namespace"

    [[grants]]
    principal = "worker"
    role = "Receiver"
    scope = "queues/orders"
    not_before = "2026-01-01T00:00:00Z"
    not_after = "2026-01-02T00:00:00Z"

    [[deny]]
    principal = "*"
    actions = ["manage"]
    scope = "queues/payments"
"#;

fn subject(sub: &str) -> Subject {
    Subject {
        issuer_id: Some("k8s".into()),
        sub: Some(sub.into()),
        ..Default::default()
    }
}

const JAN_1_NOON: i64 = 1_767_268_800_000;

#[test]
fn principals_match_on_every_given_field() {
    let p = policy(BASE);
    assert_eq!(
        p.principals_for(&subject("system:serviceaccount:billing:api")),
        vec!["billing"]
    );
    assert!(p.principals_for(&subject("someone-else")).is_empty());
    let other_issuer = Subject {
        issuer_id: Some("entra".into()),
        sub: Some("admin".into()),
        ..Default::default()
    };
    assert!(p.principals_for(&other_issuer).is_empty());
    let spiffe = Subject {
        spiffe: Some("SPIFFE://Cluster.Local/ns/billing/sa/api".into()),
        ..Default::default()
    };
    assert_eq!(p.principals_for(&spiffe), vec!["billing"]);
    let wrong_path_case = Subject {
        spiffe: Some("spiffe://cluster.local/ns/Billing/sa/api".into()),
        ..Default::default()
    };
    assert!(p.principals_for(&wrong_path_case).is_empty());
}

#[test]
fn roles_scopes_and_inheritance() {
    let p = policy(BASE);
    let b = vec!["billing".to_string()];
    assert!(p.decide(&b, Right::Send, "orders", 0).allow);
    assert!(!p.decide(&b, Right::Listen, "orders", 0).allow);
    assert_eq!(p.decide(&b, Right::Listen, "orders", 0).reason, "no_grant");
    // Segment boundaries: orders does not cover orders-archive.
    assert!(!p.decide(&b, Right::Send, "orders-archive", 0).allow);
    assert!(!p.decide(&b, Right::Send, "invoices", 0).allow);
    let w = vec!["worker".to_string()];
    // Topic grants reach subscriptions and their dead-letter queues.
    assert!(
        p.decide(
            &w,
            Right::Listen,
            "events/subscriptions/audit/$deadletterqueue",
            0
        )
        .allow
    );
    assert!(
        p.decide(&w, Right::Listen, "events/subscriptions/a/$management", 0)
            .allow
    );
    assert!(!p.decide(&w, Right::Send, "events", 0).allow);
    let a = vec!["admin".to_string()];
    for r in [Right::Send, Right::Listen, Right::Manage] {
        assert!(p.decide(&a, r, "anything/at/all", 0).allow);
    }
    assert!(!p.decide(&[], Right::Send, "orders", 0).allow);
    assert_eq!(
        p.decide(&[], Right::Send, "orders", 0).reason,
        "no_principal"
    );
}

#[test]
fn explicit_deny_beats_owner() {
    let p = policy(BASE);
    let a = vec!["admin".to_string()];
    let d = p.decide(&a, Right::Manage, "payments", 0);
    assert!(!d.allow);
    assert_eq!(d.reason, "explicit_deny");
    assert_eq!(d.rule.as_deref(), Some("deny[0]"));
    assert!(p.decide(&a, Right::Send, "payments", 0).allow);
    assert!(p.decide(&a, Right::Manage, "payments2", 0).allow);
}

#[test]
fn time_bounded_grants() {
    let p = policy(BASE);
    let w = vec!["worker".to_string()];
    assert!(p.decide(&w, Right::Listen, "orders", JAN_1_NOON).allow);
    let before = p.decide(&w, Right::Listen, "orders", JAN_1_NOON - 86_400_000);
    assert_eq!(before.reason, "grant_not_in_time");
    let after = p.decide(&w, Right::Listen, "orders", JAN_1_NOON + 12 * 3_600_000);
    assert!(!after.allow, "not_after is exclusive");
    assert!(p.grant_boundary_between(JAN_1_NOON, JAN_1_NOON + 86_400_000));
    assert!(!p.grant_boundary_between(JAN_1_NOON + 86_400_000, i64::MAX));
}

#[test]
fn builtin_registrations_name_the_principal() {
    let p = policy(
        r#"
        [[principals]]
        id = "app"
        [[sts.managed_identities]]
        principal = "app"
        client_id = "c-1"
        identity_header = "0123456789abcdef"
        "#,
    );
    let s = Subject {
        issuer_id: Some("sts".into()),
        client_id: Some("c-1".into()),
        ..Default::default()
    };
    assert_eq!(p.principals_for(&s), vec!["app"]);
    let other = Subject {
        client_id: Some("c-2".into()),
        ..s
    };
    assert!(p.principals_for(&other).is_empty());
}

#[test]
fn bad_policies_are_refused_with_a_reason() {
    let cases = [
        ("version = 2", "version"),
        (
            "[[grants]]\nprincipal = \"ghost\"\nrole = \"Owner\"\nscope = \"namespace\"",
            "unknown principal",
        ),
        (
            "[[issuers]]\nid = \"x\"\nkind = \"oidc\"\nissuer = \"https://x\"\nalgorithms = [\"HS256\"]",
            "not allowed",
        ),
        (
            "[[issuers]]\nid = \"x\"\nkind = \"oidc\"\nissuer = \"https://x\"\nalgorithms = [\"none\"]",
            "not allowed",
        ),
        ("[[issuers]]\nid = \"x\"\nkind = \"oidc\"", "needs `issuer`"),
        (
            "[[principals]]\nid = \"p\"\n[[grants]]\nprincipal = \"p\"\nrole = \"Owner\"\nscope = \"queues/../x\"",
            "segment",
        ),
        (
            "[[principals]]\nid = \"p\"\n[[grants]]\nprincipal = \"p\"\nrole = \"Owner\"\nscope = \"buckets/x\"",
            "expected",
        ),
        (
            "[[principals]]\nid = \"p\"\n[[grants]]\nprincipal = \"p\"\nrole = \"Owner\"\nscope = \"namespace\"\nnot_after = \"tomorrow\"",
            "not_after",
        ),
        ("[sts]\ntoken_lifetime = \"1m\"", "token_lifetime"),
        ("[sts]\naudiences = [\"\"]", "sts.audiences[0]"),
        (
            "[sts]\naudiences = [\"https://servicebus.azure.net\"]",
            "Service Bus is always an audience",
        ),
    ];
    for (text, want) in cases {
        let err = match toml::from_str::<PolicyFile>(text) {
            Err(e) => e.to_string(),
            Ok(f) => match Policy::from_file(f, text.as_bytes()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {text}"),
            },
        };
        assert!(err.contains(want), "{text}: {err}");
    }
    assert!(toml::from_str::<PolicyFile>("[namespace]\nlocal_auth = \"no\"").is_err());
    assert!(toml::from_str::<PolicyFile>("unknown_key = 1").is_err());
}

#[test]
fn scope_paths() {
    assert_eq!(scope_path("namespace").as_deref(), Ok(""));
    assert_eq!(scope_path("queues/Orders").as_deref(), Ok("orders"));
    assert_eq!(scope_path("queues/a/b").as_deref(), Ok("a/b"));
    assert_eq!(
        scope_path("topics/t/subscriptions/s").as_deref(),
        Ok("t/subscriptions/s")
    );
    assert!(scope_path("queues/q/subscriptions/s").is_err());
    assert!(scope_covers("", "x"));
    assert!(scope_covers("a", "a/$deadletterqueue"));
    assert!(!scope_covers("a", "ab"));
    // Another entity whose name starts with `a/` is not inside `a`.
    assert!(!scope_covers("orders", "orders/archive"));
    assert!(!scope_covers("orders", "orders/archive/$deadletterqueue"));
    assert!(scope_covers("t", "t/subscriptions/s/rules/$default"));
    assert!(scope_path("topics/t/subscriptions").is_err());
    assert!(scope_path("topics/t/subscriptions/s/rules/r").is_err());
    assert!(scope_path("queues/q/$deadletterqueue").is_err());
    assert!(scope_path("queues/a/b/c").is_ok());
}

#[test]
fn token_audiences_are_service_bus_and_the_listed_services() {
    use crate::sts::{audience_for, scope_audience};
    let p = policy("[sts]\naudiences = [\"api://orders-hook\", \"https://hooks.example/\"]");
    let sb = Some("https://servicebus.azure.net".to_string());
    assert_eq!(audience_for(&p, "https://servicebus.azure.net/"), sb);
    assert_eq!(audience_for(&p, "https://servicebus.azure.net"), sb);
    assert_eq!(
        audience_for(&p, "api://orders-hook").as_deref(),
        Some("api://orders-hook")
    );
    assert_eq!(
        audience_for(&p, "https://hooks.example").as_deref(),
        Some("https://hooks.example/")
    );
    assert_eq!(audience_for(&p, "api://someone-else"), None);
    assert_eq!(
        scope_audience(&p, "openid api://orders-hook/.default").as_deref(),
        Some("api://orders-hook")
    );
    assert_eq!(
        scope_audience(&p, "https://servicebus.azure.net//.default"),
        sb
    );
    assert_eq!(
        scope_audience(&p, "https://servicebus.azure.net/.default"),
        sb
    );
    assert_eq!(scope_audience(&p, "api://orders-hook"), None);
    assert_eq!(scope_audience(&p, "api://other/.default"), None);
}
