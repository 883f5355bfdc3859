//! Admission and stage deadlines, probed the way an outsider would: raw sockets that never
//! speak, stop half-way through a header or request, or hold no token, against an in-process
//! broker with small budgets and short deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keybus_amqp::{
    AMQP_HEADER, Attach, AttachTarget, Begin, BytesMut, Frame, FrameBody, Message, Open,
    Performative, Role, SASL_HEADER, SaslFrameBody, SaslInit, Symbol, Target, Transfer, Value,
};
use keybus_server::config::Config;
use keybus_server::{Running, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn broker(limits: &str) -> Running {
    let opts = ServeOptions {
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        ..ServeOptions::default()
    };
    let config = Config::parse(&format!("[[queues]]\nname = \"q\"\n[limits]\n{limits}\n")).unwrap();
    keybus_server::start_with(opts, config).await.unwrap()
}

/// Connect to `to` from the loopback address `from` (a second "client host").
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Read until the peer closes; returns what was read and how long it took. Panics if the
/// socket is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (all, started.elapsed()),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "socket still open after {limit:?} (read {} bytes)",
                all.len()
            ),
        }
    }
}

/// Whether the socket is still open after `d` (no EOF, no error).
async fn still_open_after(s: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + d;
    loop {
        match tokio::time::timeout_at(until.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(_)) => continue,
            Err(_) => return true,
        }
    }
}

fn frames(bytes: &[u8]) -> Vec<Performative> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Some((f, n))) = keybus_amqp::decode_frame(rest, u32::MAX) {
        if let Frame {
            body: FrameBody::Amqp { performative, .. },
            ..
        } = f
        {
            out.push(performative);
        }
        rest = &rest[n..];
    }
    out
}

/// The code and additional data (as text) of the `sasl-outcome` after our SASL header.
fn sasl_outcome(bytes: &[u8]) -> Option<(u8, String)> {
    let mut rest = bytes.strip_prefix(&SASL_HEADER[..])?;
    while let Ok(Some((frame, used))) = keybus_amqp::decode_frame(rest, 1 << 20) {
        rest = &rest[used..];
        if let FrameBody::Sasl(keybus_amqp::SaslFrameBody::Outcome(o)) = frame.body {
            let data = o.additional_data.unwrap_or_default();
            return Some((o.code, String::from_utf8_lossy(&data).into_owned()));
        }
    }
    None
}

fn close_condition(bytes: &[u8]) -> Option<String> {
    let body = bytes.strip_prefix(&AMQP_HEADER[..]).unwrap_or(bytes);
    frames(body).into_iter().find_map(|p| match p {
        Performative::Close(c) => c.error.map(|e| e.condition.as_str().to_string()),
        _ => None,
    })
}

fn open_frame() -> Vec<u8> {
    let mut out = BytesMut::new();
    keybus_amqp::encode_amqp_frame(
        0,
        &Performative::Open(Open {
            container_id: "probe".into(),
            ..Default::default()
        }),
        &[],
        &mut out,
    );
    out.to_vec()
}

/// SASL ANONYMOUS, AMQP header and `open` in one write.
fn sasl_and_open() -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&SASL_HEADER);
    let init = SaslInit {
        mechanism: Symbol::from("ANONYMOUS"),
        initial_response: None,
        hostname: None,
    };
    keybus_amqp::encode_frame(0, &FrameBody::Sasl(SaslFrameBody::Init(init)), &mut out);
    out.extend_from_slice(&AMQP_HEADER);
    out.extend_from_slice(&open_frame());
    out.to_vec()
}

/// Begin, attach a sender to `$cbs` and put a real SAS token for the namespace.
fn put_token(b: &Running) -> Vec<u8> {
    let mut out = BytesMut::new();
    keybus_amqp::encode_amqp_frame(
        0,
        &Performative::Begin(Begin {
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            ..Default::default()
        }),
        &[],
        &mut out,
    );
    keybus_amqp::encode_amqp_frame(
        0,
        &Performative::Attach(Attach {
            name: "cbs-sender".into(),
            handle: 0,
            role: Role::Sender,
            target: Some(AttachTarget::Node(Target {
                address: Some("$cbs".into()),
                ..Default::default()
            })),
            initial_delivery_count: Some(0),
            ..Default::default()
        }),
        &[],
        &mut out,
    );
    let policy = &b.broker.policies()[0];
    let audience = format!("sb://127.0.0.1:{}/", b.amqp_addr.port());
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    let token =
        keybus_client::sas::token(&audience, &policy.name, &policy.key, expires.max(0) as u64);
    let s = |v: &str| Value::String(v.to_string());
    let msg = Message {
        application_properties: Some(vec![
            (s("operation"), s("put-token")),
            (s("type"), s("servicebus.windows.net:sastoken")),
            (s("name"), s(&audience)),
        ]),
        body_raw: Message::body_value(&Value::String(token)),
        ..Default::default()
    };
    keybus_amqp::encode_amqp_frame(
        0,
        &Performative::Transfer(Transfer {
            handle: 0,
            delivery_id: Some(0),
            delivery_tag: Some(keybus_amqp::Bytes::from_static(b"t0")),
            message_format: Some(0),
            settled: Some(true),
            ..Default::default()
        }),
        &msg.to_bytes(),
        &mut out,
    );
    out.to_vec()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let (bytes, _) = closed_within(&mut s, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

const SHORT: &str = "handshake_timeout_ms = 300\nopen_timeout_ms = 300\ntoken_timeout_ms = 300\nwebsocket_upgrade_timeout_ms = 300\nhttp_header_timeout_ms = 300\nhttp_body_timeout_ms = 300\n";

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_handshake_deadline() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    let (_, took) = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
}

#[tokio::test]
async fn half_a_protocol_header_then_silence_is_closed() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    s.write_all(b"AMQ").await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn only_the_amqp_header_then_silence_is_closed_after_the_open_deadline() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    s.write_all(&AMQP_HEADER).await.unwrap();
    let (bytes, _) = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(bytes.starts_with(&AMQP_HEADER));
}

#[tokio::test]
async fn the_sasl_header_then_silence_is_closed_after_the_handshake_deadline() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    s.write_all(&SASL_HEADER).await.unwrap();
    let (bytes, _) = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(bytes.starts_with(&SASL_HEADER));
}

#[tokio::test]
async fn open_without_a_token_is_closed_after_the_token_deadline() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    s.write_all(&sasl_and_open()).await.unwrap();
    let (bytes, took) = closed_within(&mut s, Duration::from_secs(5)).await;
    let after_sasl = &bytes[bytes.windows(8).position(|w| w == AMQP_HEADER).unwrap() + 8..];
    assert_eq!(
        close_condition(after_sasl).as_deref(),
        Some("amqp:unauthorized-access")
    );
    assert!(took >= Duration::from_millis(250), "{took:?}");
}

#[tokio::test]
async fn half_a_websocket_upgrade_is_closed() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    s.write_all(b"GET /$servicebus/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn half_an_http_request_head_is_closed() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.http_addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await;
    // And a socket that sends nothing at all.
    let mut s = TcpStream::connect(b.http_addr).await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn half_an_http_request_body_is_answered_408_and_closed() {
    let b = broker(SHORT).await;
    let mut s = TcpStream::connect(b.http_addr).await.unwrap();
    s.write_all(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (bytes, _) = closed_within(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_it_announced() {
    let b = broker("idle_timeout_ms = 500\ntoken_timeout_ms = 60000\n").await;
    let mut s = TcpStream::connect(b.amqp_addr).await.unwrap();
    s.write_all(&sasl_and_open()).await.unwrap();
    let (bytes, took) = closed_within(&mut s, Duration::from_secs(5)).await;
    let after_sasl = &bytes[bytes.windows(8).position(|w| w == AMQP_HEADER).unwrap() + 8..];
    let performatives = frames(after_sasl);
    assert!(matches!(
        performatives.first(),
        Some(Performative::Open(Open {
            idle_time_out: Some(500),
            ..
        }))
    ));
    assert_eq!(
        close_condition(after_sasl).as_deref(),
        Some("amqp:resource-limit-exceeded")
    );
    assert!(took >= Duration::from_millis(450), "{took:?}");
}

#[tokio::test]
async fn token_less_sockets_cannot_take_the_slots_of_authenticated_ones() {
    let b = broker(
        "max_connections = 6\nmax_unauthenticated_connections = 3\nmax_unauthenticated_per_address = 2\nhandshake_timeout_ms = 60000\ntoken_timeout_ms = 60000\nopen_timeout_ms = 60000\n",
    )
    .await;
    let adm = b.broker.admission().clone();
    // One source address may hold two token-less sockets; the third is refused at once in
    // SASL: our header, the mechanisms and a sys-temp outcome naming the full budget.
    let mut squat = vec![
        connect_from("127.0.0.2", b.amqp_addr).await,
        connect_from("127.0.0.2", b.amqp_addr).await,
    ];
    wait_for("two unauthenticated", || {
        adm.snapshot().unauthenticated == 2
    })
    .await;
    let mut refused = connect_from("127.0.0.2", b.amqp_addr).await;
    let (bytes, _) = closed_within(&mut refused, Duration::from_secs(2)).await;
    assert_eq!(
        sasl_outcome(&bytes),
        Some((
            4,
            "connection refused (amqp:resource-limit-exceeded): the broker's max_unauthenticated_per_address budget is full".to_string()
        ))
    );
    // Another address takes the last unauthenticated slot; then every address is refused.
    squat.push(connect_from("127.0.0.3", b.amqp_addr).await);
    wait_for("three unauthenticated", || {
        adm.snapshot().unauthenticated == 3
    })
    .await;
    let mut refused = connect_from("127.0.0.4", b.amqp_addr).await;
    closed_within(&mut refused, Duration::from_secs(2)).await;

    // Real clients still get in: each authenticated one frees its unauthenticated slot.
    // With all three unauthenticated slots squatted, authenticated clients fill the other
    // three; every squatter is still there.
    let mut real = Vec::new();
    for i in 0..3 {
        // The squatters fill the unauthenticated budget: free one to let a real client in,
        // as a squatter's deadline would.
        let dropped = squat.pop();
        drop(dropped);
        wait_for("a free slot", || adm.snapshot().unauthenticated < 3).await;
        let mut c = TcpStream::connect(b.amqp_addr).await.unwrap();
        c.write_all(&sasl_and_open()).await.unwrap();
        c.write_all(&put_token(&b)).await.unwrap();
        wait_for("authenticated", || adm.snapshot().authenticated == i + 1).await;
        real.push(c);
        squat.push(connect_from(&format!("127.0.0.{}", 10 + i), b.amqp_addr).await);
        wait_for("squatters back", || adm.snapshot().unauthenticated == 3).await;
    }
    // Six sockets: three authenticated, three squatting; the next is refused, and closing an
    // authenticated client gives its slot back.
    let s = adm.snapshot();
    assert_eq!((s.authenticated, s.unauthenticated), (3, 3));
    let mut refused = TcpStream::connect(b.amqp_addr).await.unwrap();
    closed_within(&mut refused, Duration::from_secs(2)).await;
    for c in &mut real {
        assert!(still_open_after(c, Duration::from_millis(50)).await);
    }
    drop(real.pop());
    wait_for("slot back", || adm.snapshot().authenticated == 2).await;

    let metrics = http(b.http_addr, &get("/metrics")).await;
    assert!(
        metrics.contains(
            "keybus_refused_sockets_total{listener=\"amqp\",reason=\"max_unauthenticated_per_address\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("keybus_open_sockets{stage=\"authenticated\"} 2"));
    assert!(metrics.contains("keybus_open_files_limit "));
}

#[tokio::test]
async fn health_answers_while_the_amqp_and_http_listeners_are_saturated() {
    let b = broker(
        "max_connections = 4\nmax_http_connections = 2\nhttp_reserved_connections = 1\nhandshake_timeout_ms = 60000\nhttp_header_timeout_ms = 60000\n",
    )
    .await;
    let adm = b.broker.admission().clone();
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(connect_from(&format!("127.0.1.{i}"), b.amqp_addr).await);
    }
    wait_for("AMQP full", || adm.snapshot().unauthenticated == 1).await;
    // Saturate the plain HTTP budget with silent sockets.
    for _ in 0..2 {
        held.push(TcpStream::connect(b.http_addr).await.unwrap());
    }
    wait_for("HTTP full", || adm.snapshot().http == 2).await;
    let health = http(b.http_addr, &get("/health")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http(b.http_addr, &get("/metrics")).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let other = http(b.http_addr, &get("/msi/token")).await;
    assert!(other.starts_with("HTTP/1.1 503"), "{other}");
}
