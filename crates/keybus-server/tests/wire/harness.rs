//! The broker under test (memory or durable store) and connected, authorised clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keybus_client::{Connection, Endpoint, Message, Properties, Value};
use keybus_server::config::Config;
use keybus_server::{Running, ServeOptions};

/// Bound on every wait of the suite (a broker that answers at all answers well within it).
pub const T: Duration = Duration::from_secs(5);
/// How long to wait for deliveries that must not come.
pub const QUIET: Duration = Duration::from_millis(300);

/// The entities every test can use.
const CONFIG: &str = r#"
[[queues]]
name = "q"

[[queues]]
name = "sq"
requires_session = true

[[queues]]
name = "small"
max_message_size = 1024

[[queues]]
name = "short"
lock_duration = "1s"
max_delivery_count = 2
forward_dead_lettered_messages_to = "graveyard"

[[queues]]
name = "graveyard"

[[queues]]
name = "relay"
forward_to = "q"

[[topics]]
name = "t"
[[topics.subscriptions]]
name = "s1"
[[topics.subscriptions]]
name = "s2"
"#;

/// Which store backs the broker.
#[derive(Debug, Clone, Copy)]
pub enum Store {
    Memory,
    Durable,
}

/// A running broker; a durable one's directory goes with it.
pub struct Broker {
    pub running: Running,
    dir: Option<PathBuf>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Broker {
    /// A broker a test started itself (it owns no directory).
    pub fn wrap(running: Running) -> Broker {
        Broker { running, dir: None }
    }

    pub async fn start(store: Store) -> Broker {
        Self::start_wrapped(store, "", |s| s).await
    }

    /// A broker with `limits` (TOML lines of `[limits]`) whose store is passed through `wrap`.
    pub async fn start_wrapped(
        store: Store,
        limits: &str,
        wrap: impl FnOnce(Arc<dyn keybus_core::Store>) -> Arc<dyn keybus_core::Store>,
    ) -> Broker {
        Self::start_with(store, "", &format!("[limits]\n{limits}"), None, wrap).await
    }

    /// A broker whose configuration starts with `before` (e.g. SAS policies, which must come
    /// first: the connection string names the first) and ends with `after`, auditing to
    /// `audit` when given.
    pub async fn start_with(
        store: Store,
        before: &str,
        after: &str,
        audit: Option<PathBuf>,
        wrap: impl FnOnce(Arc<dyn keybus_core::Store>) -> Arc<dyn keybus_core::Store>,
    ) -> Broker {
        let dir = match store {
            Store::Memory => None,
            Store::Durable => Some(
                std::env::temp_dir().join(format!("keybus-wire-{}", uuid::Uuid::new_v4().simple())),
            ),
        };
        let opts = ServeOptions {
            config: None,
            data_dir: dir.clone().unwrap_or_else(std::env::temp_dir),
            in_memory: dir.is_none(),
            amqp_port: 0,
            http_port: 0,
            bind: "127.0.0.1".parse().unwrap(),
            audit_log: audit,
            ..ServeOptions::default()
        };
        let config = Config::parse(&format!("{before}\n{CONFIG}\n{after}")).unwrap();
        let running = keybus_server::start_with_store(opts, config, wrap)
            .await
            .unwrap();
        Broker { running, dir }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&self.running.connection_string).unwrap()
    }

    /// The value of the metric sample `name` (e.g. `keybus_store_commit_seconds_count`) as
    /// `/metrics` shows it now.
    pub async fn metric(&self, name: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.running.http_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in /metrics"))
    }

    /// A connection with a token put for each of `entities`.
    pub async fn client(&self, entities: &[&str]) -> Connection {
        let mut c = Connection::connect(&self.endpoint(), T).await.unwrap();
        for e in entities {
            c.put_token(e, T).await.unwrap();
        }
        c
    }
}

/// A message with a `message-id` and a `data` body.
pub fn message(id: &str, body: &[u8]) -> Message {
    Message {
        properties: Some(Properties {
            message_id: Some(Value::String(id.to_string())),
            ..Default::default()
        }),
        body_raw: Message::body_data(body),
        ..Default::default()
    }
}

/// A message of session `session`.
pub fn session_message(id: &str, session: &str) -> Message {
    let mut m = message(id, id.as_bytes());
    if let Some(p) = m.properties.as_mut() {
        p.group_id = Some(session.to_string());
    }
    m
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

/// `#[tokio::test]`s running each scenario once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::harness::Store::Memory).await
                }
            )*
        }
        mod durable {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::harness::Store::Durable).await
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;
