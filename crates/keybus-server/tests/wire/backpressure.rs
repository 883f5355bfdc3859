//! Back-pressure over the wire: a store that cannot keep up makes the broker refuse new sends
//! with `com.microsoft:server-busy` at once (no worker waits for the store), withhold sender
//! credit, and, once the store catches up, take sends again; every acknowledged message is
//! received exactly once and no refused one appears.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybus_client::{ClientError, ReceiveMode, ReceiverOptions};
use keybus_core::{CommitFuture, EntityDefinition, EntitySnapshot, StoreError};
use tokio::sync::watch;

use crate::harness::{Broker, QUIET, Store, T, message, on_both_stores};

on_both_stores!(
    a_lagging_store_refuses_sends_as_server_busy_and_loses_nothing,
    credit_is_withheld_while_busy_and_given_back,
    a_rest_send_while_busy_is_503_with_retry_after
);

/// A store in front of the real one whose commits resolve only while its gate is open. The
/// real store gets each batch at once, in order; only the answer lags (a store that is
/// behind).
struct Lagging {
    inner: Arc<dyn keybus_core::Store>,
    open: watch::Sender<bool>,
}

impl Lagging {
    fn new(inner: Arc<dyn keybus_core::Store>) -> Arc<Lagging> {
        Arc::new(Lagging {
            inner,
            open: watch::Sender::new(true),
        })
    }

    fn close(&self) {
        self.open.send_replace(false);
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    /// Commits waiting at the gate.
    fn waiting(&self) -> usize {
        self.open.receiver_count()
    }

    async fn wait_until_waiting(&self, n: usize) {
        let deadline = Instant::now() + T;
        while self.waiting() < n {
            assert!(
                Instant::now() < deadline,
                "{} commits waiting, expected {n}",
                self.waiting()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl keybus_core::MessageSource for Lagging {
    fn read_message(
        &self,
        entity: &str,
        sub: keybus_core::SubQueue,
        seq: i64,
    ) -> Result<Arc<keybus_amqp::Message>, StoreError> {
        self.inner.read_message(entity, sub, seq)
    }
}

impl keybus_core::Store for Lagging {
    fn commit(&self, ops: Vec<keybus_core::StoreOp>) -> CommitFuture {
        let durable = self.inner.commit(ops);
        let mut open = self.open.subscribe();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            drop(open);
            durable.await
        })
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

/// A broker that counts the store busy at two commits in flight, and its store's gate.
async fn lagging_broker(store: Store) -> (Broker, Arc<Lagging>) {
    let mut gate = None;
    let b = Broker::start_wrapped(store, "max_store_backlog = 2", |inner| {
        let lagging = Lagging::new(inner);
        gate = Some(lagging.clone());
        lagging
    })
    .await;
    (b, gate.unwrap())
}

fn is_busy(r: &Result<(), ClientError>) -> bool {
    matches!(r, Err(e @ ClientError::Rejected(_)) if e.condition() == Some("com.microsoft:server-busy"))
}

/// One HTTP/1.1 request on its own connection; the whole response.
async fn http(b: &Broker, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(b.running.http_addr)
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

/// `keybus_throttled_requests_total` as `/metrics` renders it.
async fn throttled(b: &Broker) -> u64 {
    let body = http(
        b,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    body.lines()
        .find_map(|l| l.strip_prefix("keybus_throttled_requests_total "))
        .unwrap_or_else(|| panic!("no throttled counter in {body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Everything `q` holds, by message id, received and deleted.
async fn drain(b: &Broker) -> BTreeMap<String, usize> {
    let mut c = b.client(&["q"]).await;
    let opts = ReceiverOptions {
        mode: ReceiveMode::ReceiveAndDelete,
        session: None,
    };
    let rcv = c.create_receiver("q", &opts, T).await.unwrap();
    let mut seen = BTreeMap::new();
    loop {
        let got = c.receive(rcv, 100, QUIET).await.unwrap();
        if got.is_empty() {
            return seen;
        }
        for d in got {
            *seen
                .entry(d.message_id().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
}

async fn a_lagging_store_refuses_sends_as_server_busy_and_loses_nothing(store: Store) {
    let (b, gate) = lagging_broker(store).await;
    // A message locked before the store falls behind, to be completed while it is busy.
    let mut r = b.client(&["q"]).await;
    let snd = r.create_sender("q", T).await.unwrap();
    r.send(snd, &message("settled", b"x"), T).await.unwrap();
    let rcv = r
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let locked = r.receive(rcv, 1, T).await.unwrap().remove(0);
    gate.close();
    // Two sends on their own connections fill the backlog; their answers wait for the store.
    let mut waiting = Vec::new();
    for id in ["a1", "a2"] {
        let mut c = b.client(&["q"]).await;
        let snd = c.create_sender("q", T).await.unwrap();
        waiting.push(tokio::spawn(async move {
            c.send(snd, &message(id, id.as_bytes()), T).await
        }));
    }
    gate.wait_until_waiting(2).await;
    // A third is refused at once, before it touches the queue.
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let before = throttled(&b).await;
    let asked = Instant::now();
    let refused = c.send(snd, &message("refused", b"x"), T).await;
    assert!(is_busy(&refused), "{refused:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // So is a scheduled send; a settlement is still taken (it frees space).
    let at = crate::harness::now_ms() + 60_000;
    let scheduled = c.schedule("q", &[message("later", b"x")], at, T).await;
    assert_eq!(
        scheduled.as_ref().err().and_then(ClientError::condition),
        Some("com.microsoft:server-busy"),
        "{scheduled:?}"
    );
    assert_eq!(throttled(&b).await, before + 2);
    let settling = tokio::spawn(async move {
        r.settle(rcv, &locked, keybus_client::Outcome::Complete, T)
            .await
    });
    gate.wait_until_waiting(3).await;
    // The store catches up: the waiting sends and the settlement are acknowledged and new
    // sends are taken.
    gate.open();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    settling.await.unwrap().unwrap();
    c.send(snd, &message("a3", b"x"), T).await.unwrap();
    let seen = drain(&b).await;
    let expected: BTreeMap<String, usize> = ["a1", "a2", "a3"]
        .into_iter()
        .map(|id| (id.to_string(), 1))
        .collect();
    assert_eq!(
        seen, expected,
        "every acknowledged message once, no refused one"
    );
}

async fn credit_is_withheld_while_busy_and_given_back(store: Store) {
    let (b, gate) = lagging_broker(store).await;
    gate.close();
    let mut waiting = Vec::new();
    for id in ["w1", "w2"] {
        let mut c = b.client(&["q"]).await;
        let snd = c.create_sender("q", T).await.unwrap();
        waiting.push(tokio::spawn(async move {
            c.send(snd, &message(id, id.as_bytes()), T).await
        }));
    }
    gate.wait_until_waiting(2).await;
    // The link starts with 1000 credit; while busy every send is refused and the credit is
    // not topped up, so the 1001st transfer gets no credit.
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    for i in 0..1000 {
        let r = c.send(snd, &message(&format!("r{i}"), b"x"), T).await;
        assert!(is_busy(&r), "send {i}: {r:?}");
    }
    assert_eq!(c.sender(snd).unwrap().credit, 0, "no top-up while busy");
    // Asking the broker to restate the credit (`echo`) gets no more either.
    c.ask_credit(snd);
    let starved = c.send(snd, &message("starved", b"x"), QUIET).await;
    assert!(starved.is_err() && !is_busy(&starved), "{starved:?}");
    // Once the store caught up, the connection gives the credit back and sends go again.
    gate.open();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    c.send(snd, &message("w3", b"x"), T).await.unwrap();
    let seen = drain(&b).await;
    let acknowledged: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert!(
        ["w1", "w2", "w3"]
            .iter()
            .all(|id| seen.get(*id) == Some(&1)),
        "{seen:?}"
    );
    assert!(
        acknowledged.iter().all(|id| !id.starts_with('r')),
        "no refused message appears: {acknowledged:?}"
    );
}

async fn a_rest_send_while_busy_is_503_with_retry_after(store: Store) {
    let (b, gate) = lagging_broker(store).await;
    gate.close();
    let mut waiting = Vec::new();
    for id in ["h1", "h2"] {
        let mut c = b.client(&["q"]).await;
        let snd = c.create_sender("q", T).await.unwrap();
        waiting.push(tokio::spawn(async move {
            c.send(snd, &message(id, id.as_bytes()), T).await
        }));
    }
    gate.wait_until_waiting(2).await;
    let e = b.endpoint();
    let token = e.token(&e.audience("q"));
    let post = format!(
        "POST /q/messages HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\
         Content-Length: 4\r\nConnection: close\r\n\r\nbusy"
    );
    let before = throttled(&b).await;
    let response = http(&b, &post).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{response}"
    );
    assert_eq!(throttled(&b).await, before + 1);
    gate.open();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    let response = http(&b, &post).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let seen = drain(&b).await;
    assert_eq!(seen.len(), 3, "h1, h2 and the second REST send: {seen:?}");
}
