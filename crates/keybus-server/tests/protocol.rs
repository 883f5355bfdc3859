//! Protocol edge cases over raw TCP against an in-process broker: bad headers, malformed and
//! oversized frames, unknown performatives, and the configured limits. The broker must answer
//! each with the right AMQP error and keep serving other connections.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keybus_amqp::{
    AMQP_HEADER, Attach, AttachTarget, Begin, BytesMut, Frame, FrameBody, Open, Performative, Role,
    SASL_HEADER, SaslFrameBody, SaslInit, Symbol, Target,
};
use keybus_server::config::{Config, Limits};
use keybus_server::{Running, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn broker(limits: Limits) -> Running {
    let opts = ServeOptions {
        config: None,
        data_dir: std::env::temp_dir(),
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        ..ServeOptions::default()
    };
    let config = Config::parse(&format!(
        "[[queues]]\nname = \"q\"\n[limits]\nmax_connections = {}\nmax_unauthenticated_connections = {}\nmax_unauthenticated_per_address = {}\nmax_sessions_per_connection = {}\nmax_links_per_session = {}\nmax_frame_size = {}\n",
        limits.max_connections, limits.max_unauthenticated_connections, limits.max_unauthenticated_per_address, limits.max_sessions_per_connection, limits.max_links_per_session, limits.max_frame_size
    ))
    .unwrap();
    keybus_server::start_with(opts, config).await.unwrap()
}

struct Client {
    sock: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(b: &Running) -> Client {
        Client {
            sock: TcpStream::connect(b.amqp_addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    async fn send_frame(&mut self, channel: u16, p: Performative) {
        let mut out = BytesMut::new();
        keybus_amqp::encode_amqp_frame(channel, &p, &[], &mut out);
        self.send(&out).await;
    }

    async fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.split_to(n).to_vec())
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = vec![0u8; 65536];
        match tokio::time::timeout(Duration::from_secs(5), self.sock.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(_) => panic!("timed out waiting for the broker"),
        }
    }

    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, n)) = keybus_amqp::decode_frame(&self.buf, u32::MAX).unwrap() {
                let _ = self.buf.split_to(n);
                return Some(f);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next performative (skipping empty frames).
    async fn performative(&mut self) -> Option<Performative> {
        loop {
            match self.frame().await? {
                Frame {
                    body: FrameBody::Amqp { performative, .. },
                    ..
                } => return Some(performative),
                _ => continue,
            }
        }
    }

    /// SASL ANONYMOUS, AMQP header, open.
    async fn open(b: &Running) -> Client {
        let mut c = Client::connect(b).await;
        c.send(&SASL_HEADER).await;
        assert_eq!(c.read_exact(8).await.unwrap(), SASL_HEADER);
        let Some(Frame {
            body: FrameBody::Sasl(SaslFrameBody::Mechanisms(m)),
            ..
        }) = c.frame().await
        else {
            panic!("expected sasl-mechanisms")
        };
        assert_eq!(
            m.mechanisms,
            vec![Symbol::from("MSSBCBS"), Symbol::from("ANONYMOUS")]
        );
        let mut out = BytesMut::new();
        let init = SaslInit {
            mechanism: Symbol::from("ANONYMOUS"),
            initial_response: None,
            hostname: None,
        };
        keybus_amqp::encode_frame(0, &FrameBody::Sasl(SaslFrameBody::Init(init)), &mut out);
        out.extend_from_slice(&AMQP_HEADER);
        keybus_amqp::encode_amqp_frame(
            0,
            &Performative::Open(Open {
                container_id: "t".into(),
                ..Default::default()
            }),
            &[],
            &mut out,
        );
        c.send(&out).await;
        let Some(Frame {
            body: FrameBody::Sasl(SaslFrameBody::Outcome(o)),
            ..
        }) = c.frame().await
        else {
            panic!("expected sasl-outcome")
        };
        assert_eq!(o.code, 0);
        assert_eq!(c.read_exact(8).await.unwrap(), AMQP_HEADER);
        assert!(matches!(
            c.performative().await,
            Some(Performative::Open(_))
        ));
        c
    }

    async fn expect_close(&mut self, condition: &str) {
        loop {
            match self.performative().await {
                Some(Performative::Close(c)) => {
                    assert_eq!(
                        c.error.expect("close carries an error").condition.as_str(),
                        condition
                    );
                    return;
                }
                Some(_) => continue,
                None => panic!("connection ended without close({condition})"),
            }
        }
    }
}

async fn still_serving(b: &Running) {
    let mut c = Client::open(b).await;
    c.send_frame(
        0,
        Performative::Begin(Begin {
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Begin(_))
    ));
}

#[tokio::test]
async fn wrong_protocol_header_gets_our_header_and_hang_up() {
    let b = broker(Limits::default()).await;
    let mut c = Client::connect(&b).await;
    // (A connection opening with `G` is an HTTP request: the AMQP-over-WebSockets upgrade.)
    c.send(b"HELO keybus\r\n\r\n").await;
    assert_eq!(c.read_exact(8).await.unwrap(), SASL_HEADER);
    assert!(c.read_exact(1).await.is_none());
    still_serving(&b).await;
}

#[tokio::test]
async fn malformed_frame_closes_with_decode_error() {
    let b = broker(Limits::default()).await;
    let mut c = Client::open(&b).await;
    // A frame whose body is not a described performative.
    c.send(&[0, 0, 0, 12, 2, 0, 0, 0, 0xa1, 2, b'h', b'i'])
        .await;
    c.expect_close("amqp:decode-error").await;
    still_serving(&b).await;
}

#[tokio::test]
async fn unknown_performative_closes_with_decode_error() {
    let b = broker(Limits::default()).await;
    let mut c = Client::open(&b).await;
    // described(0x99, list0)
    c.send(&[0, 0, 0, 11, 2, 0, 0, 0, 0x00, 0x53, 0x99]).await;
    c.send(&[]).await;
    let mut raw = vec![0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x99, 0x45];
    raw[3] = raw.len() as u8;
    let mut c2 = Client::open(&b).await;
    c2.send(&raw).await;
    c2.expect_close("amqp:decode-error").await;
    drop(c);
    still_serving(&b).await;
}

#[tokio::test]
async fn oversized_frame_closes_with_framing_error() {
    let b = broker(Limits {
        max_frame_size: 4096,
        ..Limits::default()
    })
    .await;
    let mut c = Client::open(&b).await;
    let mut raw = vec![0u8; 8];
    raw[..4].copy_from_slice(&10_000u32.to_be_bytes());
    raw[4] = 2;
    c.send(&raw).await;
    c.expect_close("amqp:connection:framing-error").await;
    still_serving(&b).await;
}

#[tokio::test]
async fn frame_below_minimum_size_closes_with_framing_error() {
    let b = broker(Limits::default()).await;
    let mut c = Client::open(&b).await;
    c.send(&[0, 0, 0, 4, 2, 0, 0, 0]).await;
    c.expect_close("amqp:connection:framing-error").await;
}

#[tokio::test]
async fn connection_limit() {
    let b = broker(Limits {
        max_connections: 2,
        max_unauthenticated_connections: 2,
        max_unauthenticated_per_address: 2,
        ..Limits::default()
    })
    .await;
    let _c1 = Client::open(&b).await;
    let _c2 = Client::open(&b).await;
    // Refused at accept, in SASL (what every SDK speaks first): our SASL header, the
    // mechanisms, and a sys-temp outcome naming the full budget.
    let mut c3 = Client::connect(&b).await;
    c3.send(&SASL_HEADER).await;
    assert_eq!(c3.read_exact(8).await.unwrap(), SASL_HEADER);
    assert!(matches!(
        c3.frame().await.map(|f| f.body),
        Some(FrameBody::Sasl(SaslFrameBody::Mechanisms(_)))
    ));
    let Some(FrameBody::Sasl(SaslFrameBody::Outcome(outcome))) = c3.frame().await.map(|f| f.body)
    else {
        panic!("no sasl-outcome");
    };
    assert_eq!(outcome.code, 4);
    let text = String::from_utf8_lossy(&outcome.additional_data.unwrap_or_default()).into_owned();
    assert!(text.contains("max_connections budget is full"), "{text}");
    assert!(
        c3.frame().await.is_none(),
        "the socket is closed after the outcome"
    );
    drop(_c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serving(&b).await;
}

#[tokio::test]
async fn session_limit() {
    let b = broker(Limits {
        max_sessions_per_connection: 1,
        ..Limits::default()
    })
    .await;
    let mut c = Client::open(&b).await;
    let begin = || {
        Performative::Begin(Begin {
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            ..Default::default()
        })
    };
    c.send_frame(0, begin()).await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Begin(_))
    ));
    c.send_frame(1, begin()).await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Begin(_))
    ));
    match c.performative().await {
        Some(Performative::End(e)) => assert_eq!(
            e.error.unwrap().condition.as_str(),
            "amqp:resource-limit-exceeded"
        ),
        other => panic!("expected end, got {other:?}"),
    }
}

#[tokio::test]
async fn link_limit_and_unauthorized_attach() {
    let b = broker(Limits {
        max_links_per_session: 1,
        ..Limits::default()
    })
    .await;
    let mut c = Client::open(&b).await;
    c.send_frame(
        0,
        Performative::Begin(Begin {
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Begin(_))
    ));
    let attach = |handle: u32| {
        Performative::Attach(Attach {
            name: format!("l{handle}"),
            handle,
            role: Role::Sender,
            target: Some(AttachTarget::Node(Target {
                address: Some("q".into()),
                ..Default::default()
            })),
            initial_delivery_count: Some(0),
            ..Default::default()
        })
    };
    // No token was put on this connection: the attach is refused.
    c.send_frame(0, attach(0)).await;
    let Some(Performative::Attach(reply)) = c.performative().await else {
        panic!("expected attach")
    };
    assert!(reply.target.is_none());
    match c.performative().await {
        Some(Performative::Detach(d)) => assert_eq!(
            d.error.unwrap().condition.as_str(),
            "amqp:unauthorized-access"
        ),
        other => panic!("expected detach, got {other:?}"),
    }
    // A $cbs link fits; a second link on the session exceeds the limit of one.
    c.send_frame(
        0,
        Performative::Attach(Attach {
            name: "cbs".into(),
            handle: 1,
            role: Role::Sender,
            target: Some(AttachTarget::Node(Target {
                address: Some("$cbs".into()),
                ..Default::default()
            })),
            initial_delivery_count: Some(0),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Attach(_))
    ));
    c.send_frame(0, attach(2)).await;
    loop {
        match c.performative().await {
            Some(Performative::Detach(d)) => {
                assert_eq!(
                    d.error.unwrap().condition.as_str(),
                    "amqp:resource-limit-exceeded"
                );
                break;
            }
            Some(_) => continue,
            None => panic!("connection ended"),
        }
    }
}

#[tokio::test]
async fn missing_entity_is_not_found_with_js_description() {
    let b = broker(Limits::default()).await;
    let mut c = Client::open(&b).await;
    c.send_frame(
        0,
        Performative::Begin(Begin {
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Begin(_))
    ));
    c.send_frame(
        0,
        Performative::Attach(Attach {
            name: "x".into(),
            handle: 0,
            role: Role::Sender,
            target: Some(AttachTarget::Node(Target {
                address: Some("nope".into()),
                ..Default::default()
            })),
            initial_delivery_count: Some(0),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(
        c.performative().await,
        Some(Performative::Attach(_))
    ));
    match c.performative().await {
        Some(Performative::Detach(d)) => {
            let e = d.error.unwrap();
            assert_eq!(e.condition.as_str(), "amqp:not-found");
            let desc = e.description.unwrap();
            assert!(
                desc.starts_with("The messaging entity '") && desc.contains("' could not be found"),
                "{desc}"
            );
        }
        other => panic!("expected detach, got {other:?}"),
    }
}

#[tokio::test]
async fn no_sasl_layer_is_accepted() {
    let b = broker(Limits::default()).await;
    let mut c = Client::connect(&b).await;
    let mut out = BytesMut::new();
    out.extend_from_slice(&AMQP_HEADER);
    keybus_amqp::encode_amqp_frame(
        0,
        &Performative::Open(Open {
            container_id: "js".into(),
            ..Default::default()
        }),
        &[],
        &mut out,
    );
    c.send(&out).await;
    assert_eq!(c.read_exact(8).await.unwrap(), AMQP_HEADER);
    let Some(Performative::Open(open)) = c.performative().await else {
        panic!("expected open")
    };
    assert_eq!(open.idle_time_out, Some(120_000));
    assert!(open.max_frame_size >= 512);
}

/// A store that refuses every write, as a full or failed disk would.
struct BrokenStore;

impl keybus_core::MessageSource for BrokenStore {
    fn read_message(
        &self,
        _: &str,
        _: keybus_core::SubQueue,
        _: i64,
    ) -> Result<std::sync::Arc<keybus_amqp::Message>, keybus_core::StoreError> {
        Err(keybus_core::StoreError::Poisoned)
    }
}

impl keybus_core::Store for BrokenStore {
    fn commit(&self, _ops: Vec<keybus_core::StoreOp>) -> keybus_core::CommitFuture {
        Box::pin(async { Err(keybus_core::StoreError::Poisoned) })
    }
    fn list_entities(&self) -> Result<Vec<keybus_core::EntityDefinition>, keybus_core::StoreError> {
        Ok(Vec::new())
    }
    fn load_entity(
        &self,
        _: &str,
        _: keybus_core::LoadOptions,
    ) -> Result<keybus_core::EntitySnapshot, keybus_core::StoreError> {
        Ok(keybus_core::EntitySnapshot::default())
    }
    fn healthy(&self) -> bool {
        false
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn health_is_200_and_503_when_the_store_cannot_write() {
    let b = broker(Limits::default()).await;
    assert!(
        http_get(b.http_addr, "/health")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let broken = keybus_server::runtime::Broker::open(
        Config::default(),
        Vec::new(),
        std::sync::Arc::new(BrokenStore),
        std::sync::Arc::new(keybus_core::SystemClock),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(keybus_server::http::serve(
        listener,
        broken,
        std::sync::Arc::new(keybus_server::http::console::Console::new()),
    ));
    assert!(http_get(addr, "/health").await.starts_with("HTTP/1.1 503"));
}

#[tokio::test]
async fn a_connection_without_a_token_is_closed_after_the_timeout() {
    let opts = ServeOptions {
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        ..ServeOptions::default()
    };
    let config = Config::parse("[limits]\ntoken_timeout_ms = 300\n").unwrap();
    let b = keybus_server::start_with(opts, config).await.unwrap();
    let started = std::time::Instant::now();
    let mut c = Client::open(&b).await;
    c.expect_close("amqp:unauthorized-access").await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}
