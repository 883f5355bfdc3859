//! The web console (`/console/`) over plain HTTP/1.1 against the in-process broker, checked
//! against what `keybus-client` sees over AMQP: sign-in (one-time token, SAS key), the
//! security headers and cookies, CSRF, the access decision and its audit lines, the
//! overview's counts and their live events, browsing without locking, send, redrive, purge.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybus_client::{Outcome, ReceiveMode, ReceiverOptions, Value};
use keybus_core::{CommitFuture, EntityDefinition, EntitySnapshot, StoreError, StoreOp, SubQueue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Broker, Store, T, message, now_ms, on_both_stores};

on_both_stores!(
    one_time_token_signs_in_once,
    pages_are_strict,
    overview_counts_match_and_change_live,
    browse_peeks_without_locking,
    send_needs_the_csrf_header,
    receiver_sees_no_controls_and_a_forged_post_is_refused,
    redrive_moves_dead_letters_back,
    redrive_in_a_subscription_is_one_store_batch,
    purge_needs_the_typed_confirmation,
    scheduled_and_deferred_messages,
);

const POLICIES: &str = r#"
[[sas_policies]]
name = "root"
key = "root-key"
rights = ["Manage", "Send", "Listen"]

[[sas_policies]]
name = "reader"
key = "reader-key"
rights = ["Listen"]
"#;

/// The test's audit log, removed with it.
struct AuditFile(PathBuf);

impl Drop for AuditFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A broker with a root and a Listen-only policy, auditing into a file of its own.
async fn broker(store: Store) -> (Broker, AuditFile) {
    let audit = std::env::temp_dir().join(format!(
        "keybus-console-audit-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    let b = Broker::start_with(store, POLICIES, "", Some(audit.clone()), |s| s).await;
    (b, AuditFile(audit))
}

/// The audit lines written so far.
fn audit_lines(b: &Broker, file: &AuditFile) -> Vec<serde_json::Value> {
    b.running.broker.auth().audit.flush();
    std::fs::read_to_string(&file.0)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (connection closed after it).
async fn http(b: &Broker, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let addr = b.running.http_addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: dechunk(body),
    }
}

/// The body of a chunked answer (or the body as it is).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = after.get(..n) else {
            return body.to_string();
        };
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or("");
    }
}

/// A signed-in console user: the cookie header and the CSRF token.
struct User {
    cookie: String,
    csrf: String,
}

impl User {
    async fn get(&self, b: &Broker, path: &str) -> Resp {
        http(b, "GET", path, &[("Cookie", &self.cookie)], "").await
    }

    async fn post(&self, b: &Broker, path: &str, body: &str) -> Resp {
        http(
            b,
            "POST",
            path,
            &[("Cookie", &self.cookie), ("X-Keybus-Csrf", &self.csrf)],
            body,
        )
        .await
    }
}

fn cookie_of(r: &Resp) -> String {
    r.header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"keybus-csrf\" content=\"").unwrap() + 28;
    page[at..at + 64].to_string()
}

/// Sign in with the one-time token.
async fn owner(b: &Broker) -> User {
    let url = &b.running.console_url;
    let path = &url[url.find("/console/").unwrap()..];
    let r = http(b, "GET", path, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = cookie_of(&r);
    let page = http(b, "GET", "/console/", &[("Cookie", &cookie)], "").await;
    User {
        csrf: csrf_of(&page.body),
        cookie,
    }
}

/// Sign in with a SAS key.
async fn with_key(b: &Broker, name: &str, key: &str) -> User {
    let r = http(
        b,
        "POST",
        "/console/signin",
        &[("X-Keybus-Csrf", "signin")],
        &format!("key_name={name}&key={key}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("hx-redirect"), Some("/console/"));
    let cookie = cookie_of(&r);
    let page = http(b, "GET", "/console/", &[("Cookie", &cookie)], "").await;
    User {
        csrf: csrf_of(&page.body),
        cookie,
    }
}

async fn one_time_token_signs_in_once(store: Store) {
    let (b, audit) = broker(store).await;
    let url = b.running.console_url.clone();
    assert!(url.starts_with(&format!(
        "http://127.0.0.1:{}/console/?token=",
        b.running.http_addr.port()
    )));
    let path = &url[url.find("/console/").unwrap()..];
    let r = http(&b, "GET", path, &[], "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains(r#"<meta http-equiv="refresh" content="0;url=/console/">"#),
        "{}",
        r.body
    );
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/console/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let again = http(&b, "GET", path, &[], "").await;
    assert_eq!(again.status, 401, "the token works once");
    let cookie = cookie_of(&r);
    let page = http(&b, "GET", "/console/", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h1>Entities</h1>"), "{}", page.body);
    assert!(page.body.contains("console:local-owner(sas:root)"));
    let lines = audit_lines(&b, &audit);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "console.signin" && l["decision"] == "allow")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "console.signin" && l["decision"] == "deny")
    );
    // Without a session: the sign-in form.
    let anon = http(&b, "GET", "/console/", &[], "").await;
    assert!(anon.body.contains("<h1>Sign in</h1>"));
    // A wrong key is refused.
    let wrong = http(
        &b,
        "POST",
        "/console/signin",
        &[("X-Keybus-Csrf", "signin")],
        "key_name=root&key=nope",
    )
    .await;
    assert_eq!(wrong.status, 401);
}

async fn pages_are_strict(store: Store) {
    let (b, _) = broker(store).await;
    let u = owner(&b).await;
    for path in [
        "/console/",
        "/console/browse?e=q",
        "/console/browse?e=q&dlq=1",
    ] {
        let r = u.get(&b, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        // No inline script or style anywhere.
        assert!(!r.body.contains("<script>"), "{path}");
        assert!(!r.body.contains(" style="), "{path}");
        assert!(!r.body.contains("<style"), "{path}");
        assert!(!r.body.contains(" hx-on"), "{path}");
        assert!(
            r.body
                .contains("<script src=\"/console/static/htmx.min.js\"></script>")
        );
    }
    let js = u.get(&b, "/console/static/htmx.min.js").await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("2.0.11"));
    assert!(js.header("content-security-policy").is_some());
    let none = u.get(&b, "/console/static/nope.js").await;
    assert_eq!(none.status, 404);
}

/// The counts of `path` in a counts event or page cell.
fn cell(page: &str, path: &str, field: &str) -> Option<u64> {
    let marker = format!("data-k=\"{path}\" data-f=\"{field}\">");
    let at = page.find(&marker)? + marker.len();
    page[at..].split('<').next()?.parse().ok()
}

async fn overview_counts_match_and_change_live(store: Store) {
    let (b, _) = broker(store).await;
    let u = owner(&b).await;
    let mut c = b.client(&["q", "t"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("a", b"1"), T).await.unwrap();
    c.send(snd, &message("b", b"2"), T).await.unwrap();
    let tsnd = c.create_sender("t", T).await.unwrap();
    c.send(tsnd, &message("c", b"3"), T).await.unwrap();
    let page = u.get(&b, "/console/").await;
    let counts = {
        let e = b.running.broker.entity("q").unwrap();
        let st = e.lock();
        st.receiver_ref(None).unwrap().counts()
    };
    assert_eq!(cell(&page.body, "q", "active"), Some(counts.active));
    assert_eq!(counts.active, 2);
    assert_eq!(cell(&page.body, "q", "size"), Some(counts.size_bytes));
    assert_eq!(cell(&page.body, "t/subscriptions/s1", "active"), Some(1));
    assert_eq!(cell(&page.body, "q", "dead_letter"), Some(0));
    // Live: the event stream sends the new count after a send.
    let addr = b.running.http_addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /console/events?page=0&q= HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\n\r\n",
            u.cookie
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    read_until(&mut s, &mut seen, r#""active":2,"dead_letter":0,"#).await;
    let sent = std::time::Instant::now();
    c.send(snd, &message("d", b"4"), T).await.unwrap();
    read_until(&mut s, &mut seen, r#""active":3,"dead_letter":0,"#).await;
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert!(seen.contains("text/event-stream"));
    // The incoming rate of q rises (measured over a window of a second).
    let rate_of_q = |seen: &str| {
        seen.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .filter(|r| r["k"] == "q")
            .filter_map(|r| r["in_rate"].as_str().and_then(|x| x.parse::<f64>().ok()))
            .fold(0.0_f64, f64::max)
    };
    let mut buf = [0u8; 4096];
    let rose = tokio::time::timeout(T, async {
        while rate_of_q(&seen) <= 0.0 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(rose.is_ok(), "no rate for q in {seen}");
}

/// Read from `s` into `seen` until it holds `needle`.
async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(T, async {
        while !seen.contains(needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(found.is_ok(), "no {needle} in {seen}");
}

async fn browse_peeks_without_locking(store: Store) {
    let (b, audit) = broker(store).await;
    let u = owner(&b).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let mut m = message("json-1", br#"{"order":7,"items":["a"]}"#);
    m.application_properties = Some(vec![(
        Value::String("region".into()),
        Value::String("eu<west>".into()),
    )]);
    c.send(snd, &m, T).await.unwrap();
    c.send(snd, &message("bin-1", &[0, 1, 2, 0xff]), T)
        .await
        .unwrap();
    let r = u.get(&b, "/console/browse?e=q").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("json-1") && r.body.contains("bin-1"));
    assert!(
        r.body.contains("  &quot;order&quot;: 7"),
        "pretty JSON: {}",
        r.body
    );
    assert!(r.body.contains("app: region"));
    assert!(r.body.contains("eu&lt;west&gt;"), "escaped");
    assert!(r.body.contains("000102ff"), "hex");
    // Paged from a sequence number.
    let second = u.get(&b, "/console/browse?e=q&from=2").await;
    assert!(!second.body.contains("json-1") && second.body.contains("bin-1"));
    // Nothing was locked or counted.
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 2, T).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.delivery_count() == 0));
    let lines = audit_lines(&b, &audit);
    assert!(lines.iter().any(|l| l["event"] == "console.browse"
        && l["decision"] == "allow"
        && l["resource"]["entity"] == "q"));
    let missing = u.get(&b, "/console/browse?e=nope").await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("there is no entity &#39;nope&#39;")
            || missing.body.contains("there is no entity 'nope'"),
        "{}",
        missing.body
    );
    assert!(
        missing.body.contains("<h1>Browse</h1>"),
        "a whole page: {}",
        missing.body
    );
}

async fn send_needs_the_csrf_header(store: Store) {
    let (b, audit) = broker(store).await;
    let u = owner(&b).await;
    let form =
        "body=hello&message_id=console-1&session_id=&correlation_id=c-9&properties=k%3Dv&repeat=3";
    let forged = http(
        &b,
        "POST",
        "/console/send?e=q",
        &[("Cookie", &u.cookie)],
        form,
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let wrong = http(
        &b,
        "POST",
        "/console/send?e=q",
        &[("Cookie", &u.cookie), ("X-Keybus-Csrf", "0000")],
        form,
    )
    .await;
    assert_eq!(wrong.status, 403);
    let cross = http(
        &b,
        "POST",
        "/console/send?e=q",
        &[
            ("Cookie", &u.cookie),
            ("X-Keybus-Csrf", &u.csrf),
            ("Origin", "http://evil.example"),
        ],
        form,
    )
    .await;
    assert_eq!(cross.status, 403);
    let mut c = b.client(&["q"]).await;
    assert!(
        c.peek("q", 1, 10, T).await.unwrap().is_empty(),
        "nothing sent"
    );
    let lines = audit_lines(&b, &audit);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "console.csrf" && l["decision"] == "deny")
    );
    let ok = u.post(&b, "/console/send?e=q", form).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Sent 3 messages to q"));
    let rcv = c
        .create_receiver(
            "q",
            &ReceiverOptions {
                mode: ReceiveMode::ReceiveAndDelete,
                ..ReceiverOptions::default()
            },
            T,
        )
        .await
        .unwrap();
    let got = c.receive(rcv, 3, T).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|d| d.message_id() == Some("console-1")));
    assert_eq!(got[0].body(), b"hello");
    assert_eq!(got[0].property("k").and_then(Value::as_str), Some("v"));
    // Unsigned: no session.
    let anon = http(
        &b,
        "POST",
        "/console/send?e=q",
        &[("X-Keybus-Csrf", &u.csrf)],
        form,
    )
    .await;
    assert_eq!(anon.status, 401);
}

async fn receiver_sees_no_controls_and_a_forged_post_is_refused(store: Store) {
    let (b, audit) = broker(store).await;
    let r = with_key(&b, "reader", "reader-key").await;
    let page = r.get(&b, "/console/browse?e=q").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("sas:reader"));
    assert!(!page.body.contains("Send a test message"));
    assert!(!page.body.contains("/console/send"));
    assert!(!page.body.contains("/console/purge"));
    let dlq = r.get(&b, "/console/browse?e=q&dlq=1").await;
    assert!(!dlq.body.contains("/console/redrive"));
    // A POST the page never offered, with a valid CSRF token: the decision says no.
    let forged = r.post(&b, "/console/send?e=q", "body=x").await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let purge = r.post(&b, "/console/purge?e=q", "confirm=q").await;
    assert_eq!(purge.status, 403);
    let redrive = r.post(&b, "/console/redrive?e=q", "which=all").await;
    assert_eq!(redrive.status, 403);
    let lines = audit_lines(&b, &audit);
    let denied = |event: &str| {
        lines.iter().any(|l| {
            l["event"] == event && l["decision"] == "deny" && l["principal"]["key"] == "sas:reader"
        })
    };
    assert!(denied("console.send"), "{lines:?}");
    assert!(denied("console.purge"));
    assert!(denied("console.redrive"));
    let mut c = b.client(&["q"]).await;
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
    // The owner sees the controls.
    let o = owner(&b).await;
    let page = o.get(&b, "/console/browse?e=q").await;
    assert!(page.body.contains("Send a test message"));
    assert!(page.body.contains("/console/purge?e=q"));
}

async fn redrive_moves_dead_letters_back(store: Store) {
    let (b, audit) = broker(store).await;
    let u = owner(&b).await;
    let mut c = b.client(&["q", "q/$DeadLetterQueue"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    for id in ["d1", "d2", "d3"] {
        c.send(snd, &message(id, id.as_bytes()), T).await.unwrap();
    }
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    for d in c.receive(rcv, 3, T).await.unwrap() {
        let outcome = Outcome::DeadLetter {
            reason: Some("Poison".into()),
            description: Some("cannot parse".into()),
        };
        c.settle(rcv, &d, outcome, T).await.unwrap();
    }
    let page = u.get(&b, "/console/browse?e=q&dlq=1").await;
    assert!(
        page.body.contains("<span class=\"reason\">Poison</span>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("cannot parse"));
    // Selected first (d1 is sequence number 1), then all.
    let one = u
        .post(&b, "/console/redrive?e=q", "which=selected&seq=1")
        .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert!(one.body.contains("Redrove 1 message to q"));
    let got = c.receive(rcv, 1, T).await.unwrap().remove(0);
    assert_eq!(got.message_id(), Some("d1"));
    assert_eq!(got.delivery_count(), 0);
    assert_eq!(got.body(), b"d1");
    assert!(got.property("DeadLetterReason").is_none());
    assert_eq!(
        got.annotation("x-opt-keybus-redrive-count")
            .and_then(Value::as_i64),
        Some(1)
    );
    c.settle(rcv, &got, Outcome::Complete, T).await.unwrap();
    let all = u.post(&b, "/console/redrive?e=q", "which=all").await;
    assert!(all.body.contains("Redrove 2 messages to q"), "{}", all.body);
    let got = c.receive(rcv, 2, T).await.unwrap();
    let mut ids: Vec<_> = got.iter().filter_map(|d| d.message_id()).collect();
    ids.sort();
    assert_eq!(ids, vec!["d2", "d3"]);
    assert!(
        c.peek("q/$DeadLetterQueue", 1, 10, T)
            .await
            .unwrap()
            .is_empty()
    );
    let counts = {
        let e = b.running.broker.entity("q").unwrap();
        let st = e.lock();
        st.receiver_ref(None).unwrap().counts()
    };
    assert_eq!(counts.dead_letter, 0);
    let lines = audit_lines(&b, &audit);
    assert!(lines.iter().any(|l| l["event"] == "console.redrive"
        && l["decision"] == "allow"
        && l["principal"]["key"] == "console:local-owner(sas:root)"));
}

async fn purge_needs_the_typed_confirmation(store: Store) {
    let (b, _) = broker(store).await;
    let u = owner(&b).await;
    let mut c = b.client(&["t"]).await;
    let snd = c.create_sender("t", T).await.unwrap();
    for i in 0..3 {
        c.send(snd, &message(&format!("p{i}"), b"x"), T)
            .await
            .unwrap();
    }
    let path = "t/subscriptions/s1";
    let e = "t%2Fsubscriptions%2Fs1";
    let wrong = u
        .post(&b, &format!("/console/purge?e={e}"), "confirm=t")
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert!(wrong.body.contains("type the entity path"));
    assert_eq!(c.peek(path, 1, 10, T).await.unwrap().len(), 3);
    let ok = u
        .post(
            &b,
            &format!("/console/purge?e={e}"),
            &format!("confirm={e}"),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Purged 3 messages"));
    assert!(c.peek(path, 1, 10, T).await.unwrap().is_empty());
    assert_eq!(
        c.peek("t/subscriptions/s2", 1, 10, T).await.unwrap().len(),
        3
    );
}

/// A store that remembers every batch it is given.
struct Recording {
    inner: Arc<dyn keybus_core::Store>,
    batches: Mutex<Vec<Vec<StoreOp>>>,
}

impl keybus_core::MessageSource for Recording {
    fn read_message(
        &self,
        entity: &str,
        sub: keybus_core::SubQueue,
        seq: i64,
    ) -> Result<Arc<keybus_amqp::Message>, StoreError> {
        self.inner.read_message(entity, sub, seq)
    }
}

impl keybus_core::Store for Recording {
    fn commit(&self, ops: Vec<StoreOp>) -> CommitFuture {
        self.batches.lock().unwrap().push(ops.clone());
        self.inner.commit(ops)
    }
    fn list_entities(&self) -> Result<Vec<EntityDefinition>, StoreError> {
        self.inner.list_entities()
    }
    fn load_entity(
        &self,
        entity: &str,
        options: keybus_core::LoadOptions,
    ) -> Result<EntitySnapshot, StoreError> {
        self.inner.load_entity(entity, options)
    }
    fn healthy(&self) -> bool {
        self.inner.healthy()
    }
    fn status(&self) -> Result<(), StoreError> {
        self.inner.status()
    }
}

async fn redrive_in_a_subscription_is_one_store_batch(store: Store) {
    let mut rec = None;
    let b = Broker::start_with(store, POLICIES, "", None, |inner| {
        let r = Arc::new(Recording {
            inner,
            batches: Mutex::new(Vec::new()),
        });
        rec = Some(r.clone());
        r
    })
    .await;
    let rec = rec.unwrap();
    let u = owner(&b).await;
    let mut c = b
        .client(&["t", "t/subscriptions/s1", "t/subscriptions/s2"])
        .await;
    let snd = c.create_sender("t", T).await.unwrap();
    c.send(snd, &message("t1", b"body-1"), T).await.unwrap();
    c.send(snd, &message("t2", b"body-2"), T).await.unwrap();
    let rcv = c
        .create_receiver("t/subscriptions/s1", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    for d in c.receive(rcv, 2, T).await.unwrap() {
        let outcome = Outcome::DeadLetter {
            reason: Some("Bad".into()),
            description: None,
        };
        c.settle(rcv, &d, outcome, T).await.unwrap();
    }
    let before = rec.batches.lock().unwrap().len();
    let r = u
        .post(&b, "/console/redrive?e=t%2Fsubscriptions%2Fs1", "which=all")
        .await;
    assert!(r.body.contains("Redrove 2 messages"), "{}", r.body);
    let batches = rec.batches.lock().unwrap()[before..].to_vec();
    assert_eq!(batches.len(), 1, "one batch: {batches:?}");
    let deletes = batches[0]
        .iter()
        .filter(|o| {
            matches!(
                o,
                StoreOp::DeleteMessage {
                    sub: SubQueue::DeadLetter,
                    ..
                }
            )
        })
        .count();
    let puts = batches[0]
        .iter()
        .filter(|o| matches!(o, StoreOp::PutMessage { sub: SubQueue::Main, record, .. } if record.delivery_count == 0))
        .count();
    assert_eq!((deletes, puts), (2, 2), "{:?}", batches[0]);
    let got = c.receive(rcv, 2, T).await.unwrap();
    let bodies: Vec<_> = got.iter().map(|d| d.body()).collect();
    assert_eq!(bodies, vec![b"body-1".to_vec(), b"body-2".to_vec()]);
    // The other subscription's copies (sharing the topic's stored body) are untouched.
    let s2 = c.peek("t/subscriptions/s2", 1, 10, T).await.unwrap();
    assert_eq!(s2.len(), 2);
    assert_eq!(s2[0].body_raw, keybus_client::Message::body_data(b"body-1"));
}

/// A bearer JWT from an issuer the policy trusts (keybus's own token service, for a managed
/// identity with the Receiver role on `q`) signs in; the policy's decision follows it.
#[tokio::test]
async fn a_bearer_jwt_signs_in_with_its_policy_roles() {
    let dir = std::env::temp_dir().join(format!(
        "keybus-console-jwt-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[principals]]
id = "console-reader"

[[grants]]
principal = "console-reader"
role = "Receiver"
scope = "queues/q"

[[sts.managed_identities]]
principal = "console-reader"
client_id = "6f1c2b0e-0000-4000-8000-000000000009"
identity_header = "a-long-random-secret-for-the-console-test"
"#,
    )
    .unwrap();
    let opts = keybus_server::ServeOptions {
        config: None,
        data_dir: dir.clone(),
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        policy: Some(policy),
        ..keybus_server::ServeOptions::default()
    };
    let config = keybus_server::config::Config::parse("[[queues]]\nname = \"q\"\n").unwrap();
    let running = keybus_server::start_with(opts, config).await.unwrap();
    let auth = running.broker.auth();
    let p = auth.policy();
    let tenant = p.file.sts.tenant.clone();
    let issuer = auth.sts.public_names(&p).issuer(&tenant);
    let (jwt, _) = auth
        .sts
        .mint(
            &issuer,
            &tenant,
            "6f1c2b0e-0000-4000-8000-000000000009",
            "console-reader",
            Duration::from_secs(600),
            running.broker.now(),
        )
        .unwrap();
    let b = Broker::wrap(running);
    let r = http(
        &b,
        "POST",
        "/console/signin",
        &[("X-Keybus-Csrf", "signin")],
        &format!("token=Bearer+{jwt}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = cookie_of(&r);
    let page = http(&b, "GET", "/console/browse?e=q", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("jwt:"), "{}", page.body);
    assert!(!page.body.contains("/console/send"));
    let u = User {
        csrf: csrf_of(&page.body),
        cookie,
    };
    assert_eq!(u.post(&b, "/console/send?e=q", "body=x").await.status, 403);
    let bad = http(
        &b,
        "POST",
        "/console/signin",
        &[("X-Keybus-Csrf", "signin")],
        &format!("token={}x", &jwt[..jwt.len() - 1]),
    )
    .await;
    assert_eq!(bad.status, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The overview stays a page with 10,000 entities: 50 rows, paged, filtered by name.
#[tokio::test]
async fn the_overview_pages_ten_thousand_entities() {
    let mut config = String::from(POLICIES);
    for i in 0..10_000 {
        config.push_str(&format!("[[queues]]\nname = \"bulk-{i:05}\"\n"));
    }
    let opts = keybus_server::ServeOptions {
        config: None,
        data_dir: std::env::temp_dir(),
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        ..keybus_server::ServeOptions::default()
    };
    let config = keybus_server::config::Config::parse(&config).unwrap();
    let b = Broker::wrap(keybus_server::start_with(opts, config).await.unwrap());
    let u = owner(&b).await;
    let started = std::time::Instant::now();
    let first = u.get(&b, "/console/").await;
    let took = started.elapsed();
    assert_eq!(first.status, 200);
    assert!(
        first.body.contains("10000 entities · page 1 of 200"),
        "{}",
        &first.body[..2000]
    );
    assert_eq!(
        first.body.matches("<tr>").count(),
        51,
        "a header row and 50 entities"
    );
    assert!(first.body.contains(">bulk-00049<") && !first.body.contains(">bulk-00050<"));
    assert!(
        took < Duration::from_secs(2),
        "the first page took {took:?}"
    );
    let last = u.get(&b, "/console/?page=199").await;
    assert!(last.body.contains(">bulk-09999<"));
    assert!(!last.body.contains("Next page"));
    let filtered = u.get(&b, "/console/?q=bulk-0777").await;
    assert!(filtered.body.contains("10 entities · page 1 of 1"));
}

async fn scheduled_and_deferred_messages(store: Store) {
    let (b, _audit) = broker(store).await;
    let u = owner(&b).await;
    let mut c = b.client(&["q"]).await;
    let seqs = c
        .schedule("q", &[message("later", b"x")], now_ms() + 3_600_000, T)
        .await
        .unwrap();
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("put-off", b"y"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let d = c.receive(rcv, 1, T).await.unwrap().remove(0);
    let deferred = d.sequence_number().unwrap();
    c.settle(rcv, &d, Outcome::Defer, T).await.unwrap();
    let page = u.get(&b, "/console/browse?e=q").await;
    assert!(
        page.body
            .contains(&format!("Cancel scheduled message {}", seqs[0])),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(&format!("Receive and complete deferred message {deferred}"))
    );
    // A Listen-only principal may take the deferred one, not cancel the scheduled one.
    let r = with_key(&b, "reader", "reader-key").await;
    let rpage = r.get(&b, "/console/browse?e=q").await;
    assert!(!rpage.body.contains("Cancel scheduled message"));
    assert!(rpage.body.contains("Receive and complete deferred message"));
    let refused = r
        .post(&b, &format!("/console/cancel?e=q&seq={}", seqs[0]), "")
        .await;
    assert_eq!(refused.status, 403);
    let cancel = u
        .post(&b, &format!("/console/cancel?e=q&seq={}", seqs[0]), "")
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    let took = r
        .post(&b, &format!("/console/deferred?e=q&seq={deferred}"), "")
        .await;
    assert_eq!(took.status, 200, "{}", took.body);
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
    let again = r
        .post(&b, &format!("/console/deferred?e=q&seq={deferred}"), "")
        .await;
    assert_eq!(again.status, 404);
}
