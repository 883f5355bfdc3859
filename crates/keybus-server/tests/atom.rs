//! The ATOM/XML management API over plain HTTP/1.1 (raw TCP) against an in-process broker:
//! authorisation, refused input (nothing stored), the entity paths, paging; and, through the
//! broker's lifecycle methods, that what the API creates and deletes is durable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keybus_amqp::Message;
use keybus_auth::{Right, SasPolicy};
use keybus_core::{
    EntityDefinition, EntityKind, FilterDefinition, IncomingMessage, QueueProperties,
    RuleDefinition, Store, SubscriptionDefinition, SystemClock, TopicProperties,
};
use keybus_server::config::Config;
use keybus_server::runtime::Broker;
use keybus_server::{Running, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SB: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
const ATOM: &str = "http://www.w3.org/2005/Atom";

const CONFIG: &str = r#"
[namespace]
name = "atom-tests"

[[sas_policies]]
name = "root"
key = "root-key"
rights = ["Manage", "Send", "Listen"]

[[sas_policies]]
name = "reader"
key = "reader-key"
rights = ["Listen"]

[[sas_policies]]
name = "sender"
key = "sender-key"
rights = ["Send"]

[[queues]]
name = "cfg-q"

[[topics]]
name = "cfg-t"
[[topics.subscriptions]]
name = "s"
"#;

async fn broker() -> Running {
    let opts = ServeOptions {
        config: None,
        data_dir: std::env::temp_dir(),
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        ..ServeOptions::default()
    };
    keybus_server::start_with(opts, Config::parse(CONFIG).unwrap())
        .await
        .unwrap()
}

fn token(policy: &str, key: &str, resource: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    keybus_client::sas::token(resource, policy, key, (now + 3600).max(0) as u64)
}

fn root() -> String {
    token("root", "root-key", "sb://localhost/")
}

struct Resp {
    status: u16,
    headers: String,
    body: String,
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/atom+xml\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // A refused large body may close the connection before the whole request is written.
    let _ = sock.write_all(&bytes).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("the broker did not answer")
        .ok();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Resp {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

async fn get(b: &Running, path: &str) -> Resp {
    http(b.http_addr, "GET", path, Some(&root()), &[], b"").await
}

async fn put(b: &Running, path: &str, body: &str) -> Resp {
    http(
        b.http_addr,
        "PUT",
        path,
        Some(&root()),
        &[],
        body.as_bytes(),
    )
    .await
}

fn entry(desc: &str) -> String {
    format!("<entry xmlns=\"{ATOM}\"><content type=\"application/xml\">{desc}</content></entry>")
}

fn queue(inner: &str) -> String {
    entry(&format!(
        "<QueueDescription xmlns=\"{SB}\">{inner}</QueueDescription>"
    ))
}

#[tokio::test]
async fn authorisation() {
    let b = broker().await;
    let a = b.http_addr;
    // No token, a garbage token, a wrong key, a Bearer token: 401 with an XML error.
    let r = http(a, "GET", "/$Resources/queues", None, &[], b"").await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("<Error><Code>401</Code>"), "{}", r.body);
    assert_eq!(
        http(a, "GET", "/cfg-q", Some("garbage"), &[], b"")
            .await
            .status,
        401
    );
    let wrong = token("root", "not-the-key", "sb://localhost/");
    assert_eq!(
        http(a, "GET", "/cfg-q", Some(&wrong), &[], b"")
            .await
            .status,
        401
    );
    assert_eq!(
        http(a, "GET", "/cfg-q", Some("Bearer x.y.z"), &[], b"")
            .await
            .status,
        401
    );
    // A token for one entity does not cover another.
    let scoped = token(
        "root",
        "root-key",
        "https://localhost/cfg-q?api-version=2021-05",
    );
    assert_eq!(
        http(a, "GET", "/cfg-q", Some(&scoped), &[], b"")
            .await
            .status,
        200
    );
    assert_eq!(
        http(a, "GET", "/cfg-t", Some(&scoped), &[], b"")
            .await
            .status,
        401
    );
    // Listen reads; only Manage changes.
    let reader = token("reader", "reader-key", "sb://localhost/");
    assert_eq!(
        http(a, "GET", "/cfg-q", Some(&reader), &[], b"")
            .await
            .status,
        200
    );
    assert_eq!(
        http(a, "GET", "/$Resources/Topics", Some(&reader), &[], b"")
            .await
            .status,
        200
    );
    let r = http(a, "PUT", "/new-q", Some(&reader), &[], queue("").as_bytes()).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Manage"), "{}", r.body);
    assert_eq!(
        http(a, "DELETE", "/cfg-q", Some(&reader), &[], b"")
            .await
            .status,
        401
    );
    // Send may read the namespace info only.
    let sender = token("sender", "sender-key", "sb://localhost/");
    assert_eq!(
        http(a, "GET", "/$namespaceinfo", Some(&sender), &[], b"")
            .await
            .status,
        200
    );
    assert_eq!(
        http(a, "GET", "/cfg-q", Some(&sender), &[], b"")
            .await
            .status,
        401
    );
    assert_eq!(get(&b, "/new-q").await.status, 404);
    b.stop();
}

#[tokio::test]
async fn refused_input_stores_nothing() {
    let b = broker().await;
    let bodies = [
        "".to_string(),
        "plain text".to_string(),
        "<entry".to_string(),
        format!("<entry xmlns=\"{ATOM}\"><content></entry>"),
        format!(
            "<!DOCTYPE e [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><entry xmlns=\"{ATOM}\">&x;</entry>"
        ),
        "<?pi x?><entry/>".to_string(),
        format!("<entry xmlns=\"{ATOM}\"/>"),
        entry("<QueueDescription/>"),
        queue("<Unknown>1</Unknown>"),
        queue("<LockDuration>PT1M</LockDuration><LockDuration>PT1M</LockDuration>"),
        queue("<CountDetails><QueueDescription/></CountDetails><Bogus/>"),
        queue("<LockDuration>1 minute</LockDuration>"),
        queue("<LockDuration>PT10M</LockDuration>"),
        queue("<MaxDeliveryCount>0</MaxDeliveryCount>"),
        queue("<MaxDeliveryCount>x</MaxDeliveryCount>"),
        queue("<RequiresSession>maybe</RequiresSession>"),
        queue("<MaxSizeInMegabytes>99999999999999999</MaxSizeInMegabytes>"),
        queue("<MaxMessageSizeInKilobytes>0</MaxMessageSizeInKilobytes>"),
        queue("<AutoDeleteOnIdle>PT1M</AutoDeleteOnIdle>"),
        queue("<DuplicateDetectionHistoryTimeWindow>P30D</DuplicateDetectionHistoryTimeWindow>"),
        queue("<Status>Paused</Status>"),
        queue("<ForwardTo>sb://localhost/nowhere</ForwardTo>"),
        queue("<ForwardTo>bad-q</ForwardTo>"),
        queue(&format!(
            "<UserMetadata>{}</UserMetadata>",
            "x".repeat(1025)
        )),
        entry(&format!("<SubscriptionDescription xmlns=\"{SB}\"/>")),
        entry(&format!("<RuleDescription xmlns=\"{SB}\"/>")),
        entry(&format!(
            "<TopicDescription xmlns=\"{SB}\"><LockDuration>PT1M</LockDuration></TopicDescription>"
        )),
    ];
    for body in &bodies {
        let r = put(&b, "/bad-q", body).await;
        assert_eq!(r.status, 400, "{body}: {} {}", r.status, r.body);
        assert!(r.body.contains("<Detail>"), "{}", r.body);
        assert!(r.headers.to_ascii_lowercase().contains("application/xml"));
    }
    assert_eq!(get(&b, "/bad-q").await.status, 404);
    // Not UTF-8.
    let r = http(
        b.http_addr,
        "PUT",
        "/bad-q",
        Some(&root()),
        &[],
        &[0xff, 0xfe, b'<'],
    )
    .await;
    assert_eq!(r.status, 400);
    // Too large.
    let big = vec![b' '; keybus_server::http::atom::MAX_BODY + 10];
    let r = http(b.http_addr, "PUT", "/bad-q", Some(&root()), &[], &big).await;
    assert!(r.status == 413 || r.status == 0, "{}", r.status);
    // Forbidden names and path tricks.
    for path in [
        "/..",
        "/a/../b",
        "/..%2F..%2Fetc%2Fpasswd",
        "/a%2F..%2Fcfg-q",
        "/%2Fa",
        "/a%5Cb",
        "/a%40b",
        "/a%3Fb",
        "/a%23b",
        "/a*b",
        "/a%20b",
        "/a%2525",
        "/a%zz",
        "/a%00",
        "/$bad",
        "/cfg-t/Subscriptions/..",
        "/cfg-t/Subscriptions/a%2Fb/Rules",
        "/cfg-t/Subscriptions/s/Rules/%2E%2E",
        "/cfg-t/Subscriptions/s/Rules/$other",
        "/q/",
    ] {
        let r = put(&b, path, &queue("")).await;
        assert_eq!(r.status, 400, "{path}: {} {}", r.status, r.body);
    }
    let names: Vec<String> = b
        .broker
        .entity_list()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Bad query values.
    assert_eq!(get(&b, "/$Resources/queues?$top=x").await.status, 400);
    assert_eq!(get(&b, "/$Resources/queues?%24top=0").await.status, 400);
    assert_eq!(
        get(&b, "/$Resources/queues?api-version=%3Cx%3E")
            .await
            .status,
        400
    );
    // Methods.
    assert_eq!(
        http(b.http_addr, "POST", "/cfg-q", Some(&root()), &[], b"")
            .await
            .status,
        405
    );
    assert_eq!(put(&b, "/$namespaceinfo", &queue("")).await.status, 405);
    assert_eq!(put(&b, "/$Resources/queues", &queue("")).await.status, 405);
    // Existing routes are untouched.
    assert_eq!(
        http(b.http_addr, "GET", "/health", None, &[], b"")
            .await
            .status,
        200
    );
    b.stop();
}

#[tokio::test]
async fn entities_through_the_api() {
    let b = broker().await;
    // Create a queue with properties; 201 with the description; 409 the second time.
    let body = queue(
        "<LockDuration>PT30S</LockDuration><MaxDeliveryCount>3</MaxDeliveryCount><RequiresSession>true</RequiresSession><DefaultMessageTimeToLive>P1D</DefaultMessageTimeToLive><AutoDeleteOnIdle>PT10M</AutoDeleteOnIdle><UserMetadata>m &amp; n</UserMetadata><ForwardDeadLetteredMessagesTo>sb://elsewhere/cfg-q</ForwardDeadLetteredMessagesTo>",
    );
    let r = put(&b, "/Api/Q1", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.body.contains("<LockDuration>PT30S</LockDuration>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("<UserMetadata>m &amp; n</UserMetadata>"));
    assert!(r.body.contains(
        "<ForwardDeadLetteredMessagesTo>sb://localhost/cfg-q</ForwardDeadLetteredMessagesTo>"
    ));
    assert!(r.body.contains("<title type=\"text\">Api/Q1</title>"));
    assert_eq!(put(&b, "/api/q1", &body).await.status, 409);
    // Python percent-encodes the slash; the same entity.
    let r = get(&b, "/api%2Fq1?enrich=false&api-version=2024-05").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<MaxDeliveryCount>3</MaxDeliveryCount>"));
    assert!(
        r.body
            .contains("<AutoDeleteOnIdle>PT10M</AutoDeleteOnIdle>")
    );
    assert!(
        r.body
            .contains("<d2p1:ActiveMessageCount>0</d2p1:ActiveMessageCount>")
    );
    // Update: If-Match replaces; a fixed property cannot change; a missing entity is 404.
    let upd = queue("<LockDuration>PT40S</LockDuration><RequiresSession>true</RequiresSession>");
    let r = http(
        b.http_addr,
        "PUT",
        "/api/q1",
        Some(&root()),
        &[("If-Match", "*")],
        upd.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<LockDuration>PT40S</LockDuration>"));
    assert!(r.body.contains("<MaxDeliveryCount>10</MaxDeliveryCount>"));
    assert!(!r.body.contains("ForwardDeadLetteredMessagesTo"));
    // Omitted fixed properties keep their value.
    let r = http(
        b.http_addr,
        "PUT",
        "/api/q1",
        Some(&root()),
        &[("If-Match", "*")],
        queue("").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<RequiresSession>true</RequiresSession>"));
    let flip = queue("<RequiresSession>false</RequiresSession>");
    let r = http(
        b.http_addr,
        "PUT",
        "/api/q1",
        Some(&root()),
        &[("If-Match", "*")],
        flip.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(
        b.http_addr,
        "PUT",
        "/nope",
        Some(&root()),
        &[("If-Match", "*")],
        queue("").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404);
    let topic_body = entry(&format!("<TopicDescription xmlns=\"{SB}\"/>"));
    let r = http(
        b.http_addr,
        "PUT",
        "/api/q1",
        Some(&root()),
        &[("If-Match", "*")],
        topic_body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);

    // Topics, subscriptions (with a first rule), rules; JS paths with capitals and a trailing slash.
    assert_eq!(put(&b, "/t1", &topic_body).await.status, 201);
    let sub = entry(&format!(
        "<SubscriptionDescription xmlns=\"{SB}\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><LockDuration>PT20S</LockDuration><DefaultRuleDescription><Filter i:type=\"SqlFilter\"><SqlExpression>a = 1</SqlExpression></Filter><Action i:type=\"EmptyRuleAction\"/><Name>first</Name></DefaultRuleDescription><MaxDeliveryCount>2</MaxDeliveryCount></SubscriptionDescription>"
    ));
    assert_eq!(put(&b, "/t1/Subscriptions/s1", &sub).await.status, 201);
    assert_eq!(put(&b, "/t1/subscriptions/S1", &sub).await.status, 409);
    assert_eq!(put(&b, "/missing/Subscriptions/s1", &sub).await.status, 404);
    let r = get(&b, "/t1/Subscriptions/s1/Rules/").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<Name>first</Name>"), "{}", r.body);
    assert!(
        r.body.contains("t1/Subscriptions/s1/Rules/first"),
        "{}",
        r.body
    );
    let rule = entry(&format!(
        "<RuleDescription xmlns=\"{SB}\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Filter i:type=\"CorrelationFilter\"><Label>x</Label><Properties><KeyValueOfstringanyType><Key>n</Key><Value i:type=\"d6p1:int\" xmlns:d6p1=\"http://www.w3.org/2001/XMLSchema\">5</Value></KeyValueOfstringanyType></Properties></Filter><Action i:type=\"SqlRuleAction\"><SqlExpression>SET y = 2</SqlExpression></Action><Name>corr</Name></RuleDescription>"
    ));
    let r = put(&b, "/t1/subscriptions/s1/rules/corr", &rule).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.contains("<Value i:type=\"d6p1:int\""), "{}", r.body);
    assert_eq!(
        put(&b, "/t1/subscriptions/s1/rules/other", &rule)
            .await
            .status,
        400
    );
    assert_eq!(
        put(&b, "/t1/subscriptions/s1/rules/corr", &rule)
            .await
            .status,
        409
    );
    let bad_rule = entry(&format!(
        "<RuleDescription xmlns=\"{SB}\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Filter i:type=\"SqlFilter\"><SqlExpression>a = = 1</SqlExpression></Filter></RuleDescription>"
    ));
    assert_eq!(
        put(&b, "/t1/subscriptions/s1/rules/broken", &bad_rule)
            .await
            .status,
        400
    );
    let r = get(&b, "/t1/Subscriptions/").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<title type=\"text\">s1</title>"));
    let r = get(&b, "/t1").await;
    assert!(
        r.body.contains("<SubscriptionCount>1</SubscriptionCount>"),
        "{}",
        r.body
    );
    assert_eq!(
        http(
            b.http_addr,
            "DELETE",
            "/t1/subscriptions/s1/rules/first",
            Some(&root()),
            &[],
            b""
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&b, "/t1/subscriptions/s1/rules/first").await.status,
        404
    );
    assert_eq!(
        get(&b, "/t1/subscriptions/s1/rules/$Default").await.status,
        404
    );

    // Paging: $skip/$top with a next link until the end.
    for i in 0..5 {
        assert_eq!(put(&b, &format!("/page-{i}"), &queue("")).await.status, 201);
    }
    let mut path = "/$Resources/queues?$top=2".to_string();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let r = get(&b, &path).await;
        assert_eq!(r.status, 200);
        for part in r.body.split("<title type=\"text\">").skip(2) {
            seen.push(part.split('<').next().unwrap().to_string());
        }
        let Some(next) = r.body.split("<link rel=\"next\" href=\"").nth(1) else {
            break;
        };
        let href = next.split('"').next().unwrap().replace("&amp;", "&");
        path = href.trim_start_matches("https://localhost").to_string();
    }
    assert_eq!(
        seen,
        [
            "Api/Q1", "cfg-q", "page-0", "page-1", "page-2", "page-3", "page-4"
        ]
    );

    // Delete: 200, then 404; the topic's subscriptions go with it.
    for p in ["/api/q1", "/t1"] {
        let r = http(b.http_addr, "DELETE", p, Some(&root()), &[], b"").await;
        assert_eq!(r.status, 200, "{p}");
        let r = http(b.http_addr, "DELETE", p, Some(&root()), &[], b"").await;
        assert_eq!(r.status, 404, "{p}");
    }
    assert_eq!(get(&b, "/t1/subscriptions/s1").await.status, 404);
    assert!(b.broker.resolve("t1/subscriptions/s1").is_none());
    b.stop();
}

// ------------------------------------------------------------------ durability (broker level)

fn msg(id: &str) -> IncomingMessage {
    let message = Message {
        properties: Some(keybus_amqp::Properties {
            message_id: Some(keybus_amqp::Value::String(id.into())),
            ..Default::default()
        }),
        body_raw: Message::body_data(id.as_bytes()),
        ..Default::default()
    };
    IncomingMessage::new(message, 100)
}

async fn open(store: Arc<dyn Store>) -> Arc<Broker> {
    let policies = vec![SasPolicy {
        name: "root".into(),
        key: "k".into(),
        rights: vec![Right::Manage],
        scope: String::new(),
    }];
    Broker::open(Config::default(), policies, store, Arc::new(SystemClock))
        .await
        .unwrap()
}

async fn send(broker: &Broker, entity: &str, ids: &[&str]) {
    let e = broker.entity(entity).unwrap();
    let (fut, pending) = {
        let mut st = e.lock();
        let (_, pending) = st
            .send(ids.iter().map(|i| msg(i)).collect(), broker.now(), false)
            .unwrap();
        (e.submit(&mut st).unwrap(), pending)
    };
    fut.await.unwrap();
    e.lock().finish(&pending, true);
}

fn subscription(topic: &str, name: &str) -> EntityDefinition {
    EntityDefinition {
        name: format!("{topic}/Subscriptions/{name}"),
        kind: EntityKind::Subscription(SubscriptionDefinition {
            topic: topic.into(),
            name: name.into(),
            properties: QueueProperties::default(),
            dead_lettering_on_filter_evaluation_exceptions: false,
            rules: vec![RuleDefinition::default_rule()],
        }),
    }
}

#[tokio::test]
async fn lifecycle_changes_are_durable() {
    let store: Arc<dyn Store> = Arc::new(keybus_store::MemStore::new());
    let b = open(store.clone()).await;
    let mut props = QueueProperties {
        max_delivery_count: 4,
        ..QueueProperties::default()
    };
    props.meta.user_metadata = Some("kept".into());
    b.create_entity(EntityDefinition {
        name: "Dq".into(),
        kind: EntityKind::Queue(props),
    })
    .await
    .unwrap();
    b.create_entity(EntityDefinition {
        name: "dt".into(),
        kind: EntityKind::Topic(TopicProperties::default()),
    })
    .await
    .unwrap();
    for s in ["a", "b", "c"] {
        b.create_entity(subscription("dt", s)).await.unwrap();
    }
    b.create_rule(
        "dt",
        "c",
        RuleDefinition {
            name: "never".into(),
            filter: FilterDefinition::False,
            action: None,
            created_at: 0,
        },
    )
    .await
    .unwrap();
    b.delete_rule("dt", "c", "$Default").await.unwrap();
    send(&b, "dq", &["q1", "q2"]).await;
    send(&b, "dt", &["t1", "t2"]).await;
    // Two bodies, referred to by a and b.
    assert_eq!(
        store
            .load_entity("dt", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap()
            .bodies
            .len(),
        2
    );
    b.delete_subscription("dt", "a").await.unwrap();
    assert_eq!(
        store
            .load_entity("dt", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap()
            .bodies
            .len(),
        2
    );
    assert!(
        store
            .load_entity("dt/subscriptions/a", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap()
            .main
            .is_empty()
    );
    b.delete_subscription("dt", "b").await.unwrap();
    // No subscription refers to them any more: both bodies are gone.
    assert!(
        store
            .load_entity("dt", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap()
            .bodies
            .is_empty()
    );
    b.create_entity(subscription("dt", "b")).await.unwrap();

    // A new broker over the same store sees what the API made.
    let b2 = open(store.clone()).await;
    let Some(keybus_server::runtime::lifecycle::EntityView::Queue(q)) = b2.entity_view("dq") else {
        panic!("the queue is gone")
    };
    assert_eq!(q.name, "Dq");
    assert_eq!(q.props.max_delivery_count, 4);
    assert_eq!(q.props.meta.user_metadata.as_deref(), Some("kept"));
    assert!(q.props.meta.created_at > 0);
    assert_eq!(q.counts.active, 2);
    let subs: Vec<String> = b2
        .subscription_views("dt")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(subs, ["b", "c"]);
    let rules: Vec<String> = b2
        .rule_list("dt", "c")
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(rules, ["never"]);
    assert_eq!(b2.subscription_view("dt", "b").unwrap().counts.active, 0);

    // Deleting removes definitions and messages from the store.
    b2.delete_entity("DQ").await.unwrap();
    b2.delete_entity("dt").await.unwrap();
    let left: Vec<String> = store
        .list_entities()
        .unwrap()
        .into_iter()
        .map(|d| d.key())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        store
            .load_entity("dq", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap()
            .main
            .is_empty()
    );
    assert!(
        store
            .load_entity("dt/subscriptions/c", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap()
            .main
            .is_empty()
    );
    // Sends on a deleted entity are refused with not-found.
    assert!(b2.entity("dq").is_none());
    let b3 = open(store).await;
    assert!(b3.entity_list().is_empty());
}
