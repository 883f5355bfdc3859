//! A small, single-task AMQP 1.0 client for the benchmark.
//!
//! One [`Connection`] owns its `TcpStream` and is driven by whoever holds it (no background
//! tasks, no channels on the hot path): [`Connection::run_until`] writes every frame it can
//! (transfers within credit / session window / in-flight limit, batched dispositions and
//! credit refills), flushes them in one `write_all`, then reads whatever arrived in one big
//! chunk and processes all complete frames. Each link gets its own AMQP session, so a
//! disposition's delivery-id range always belongs to the single sender (or receiver) link of
//! that session; only the `$cbs` session carries a sender and a receiver.
//!
//! Links carry a *workload* (send N messages with at most M unsettled, optionally paced;
//! or receive with a credit window and complete every message) and counters the benchmark
//! phases read after the run.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keybus_amqp::{
    AMQP_HEADER, Attach, Begin, Bytes, BytesMut, Close, DecodeError, DeliveryState, Detach,
    Disposition, End, Flow, Frame, FrameBody, Message, Open, Performative, Properties,
    ReceiverSettleMode, Role, SASL_HEADER, SaslFrameBody, SaslInit, SenderSettleMode, Source,
    Symbol, Target, Transfer, Value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame we accept (and advertise).
const LOCAL_MAX_FRAME: u32 = 1024 * 1024;
/// Session incoming window we advertise; refreshed when half is used.
const INCOMING_WINDOW: u32 = 65_536;
/// Outgoing bytes generated before we stop producing and flush.
const WRITE_BUDGET: usize = 256 * 1024;
/// How often a waiting `run_until` wakes up to re-check its condition.
const TICK: Duration = Duration::from_millis(20);
/// Size of one socket read (buffer kept at least this free).
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {err}")]
    Connect { addr: String, err: std::io::Error },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable frame from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the broker closed the connection{0}")]
    Closed(String),
    #[error("link '{name}' was detached by the broker: {error}")]
    Detached { name: String, error: String },
    #[error("put-token for '{audience}' failed: status {status} {description}")]
    Auth {
        audience: String,
        status: i64,
        description: String,
    },
    #[error("timed out waiting for {what}; state: {state}")]
    Timeout { what: String, state: String },
}

/// Identifies a link: index of its session in the connection, index of the link in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkId {
    pub session: usize,
    pub link: usize,
}

/// Shared completion counter of one queue in a receive phase: receivers on several
/// connections stop once the queue's expected message count has been completed.
#[derive(Debug)]
pub struct Tally {
    pub completed: AtomicU64,
    pub target: u64,
}

impl Tally {
    pub fn new(target: u64) -> Arc<Tally> {
        Arc::new(Tally {
            completed: AtomicU64::new(0),
            target,
        })
    }
    pub fn done(&self) -> bool {
        self.completed.load(Ordering::Relaxed) >= self.target
    }
}

/// Monotonic nanoseconds since the first call (process-wide), stamped into latency messages.
pub fn now_ns() -> i64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    i64::try_from(base.elapsed().as_nanos()).unwrap_or(i64::MAX)
}

/// Application property carrying the send time (ns, see [`now_ns`]) of latency messages.
pub const STAMP_PROPERTY: &str = "kb-sent-ns";

/// A pre-encoded message; per send only the message-id digits (and, for latency messages,
/// the send timestamp) are patched in place.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    bytes: Vec<u8>,
    id_offset: Option<usize>,
    stamp_offset: Option<usize>,
}

const ID_PLACEHOLDER: &[u8; 16] = b"@@@@@@@@@@@@@@@@";
const STAMP_PLACEHOLDER: i64 = 0x7f3e_5a5a_5a5a_3e7f;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl MessageTemplate {
    /// A message with a `message-id` (`kb-<16 hex>`), optionally a send-time application
    /// property, and one `data` body section of `size` bytes.
    pub fn new(size: usize, stamped: bool) -> MessageTemplate {
        let mut id = b"kb-".to_vec();
        id.extend_from_slice(ID_PLACEHOLDER);
        let msg = Message {
            properties: Some(Properties {
                message_id: Some(Value::String(String::from_utf8_lossy(&id).into_owned())),
                ..Default::default()
            }),
            application_properties: stamped
                .then(|| vec![(Value::from(STAMP_PROPERTY), Value::Long(STAMP_PLACEHOLDER))]),
            body_raw: Message::body_data(&vec![b'k'; size]),
            ..Default::default()
        };
        let bytes = msg.to_bytes().to_vec();
        let id_offset = find(&bytes, ID_PLACEHOLDER);
        let stamp_offset = if stamped {
            find(&bytes, &STAMP_PLACEHOLDER.to_be_bytes())
        } else {
            None
        };
        MessageTemplate {
            bytes,
            id_offset,
            stamp_offset,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Append message number `seq` to `out`.
    fn write(&self, seq: u64, out: &mut BytesMut) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(off) = self.id_offset {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            if let Some(dst) = out.get_mut(start + off..start + off + 16) {
                for (i, d) in dst.iter_mut().enumerate() {
                    let nibble = (seq >> (60 - 4 * i)) & 0xf;
                    *d = HEX.get(nibble as usize).copied().unwrap_or(b'0');
                }
            }
        }
        if let Some(off) = self.stamp_offset
            && let Some(dst) = out.get_mut(start + off..start + off + 8)
        {
            dst.copy_from_slice(&now_ns().to_be_bytes());
        }
    }
}

/// Fixed-rate sending: message `k` is due at `start + k * interval`.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub start: Instant,
    pub interval: Duration,
}

/// What a sender link does during a run.
#[derive(Debug, Clone)]
pub struct SendWork {
    pub count: u64,
    pub max_inflight: u32,
    pub pacing: Option<Pacing>,
    pub template: Arc<MessageTemplate>,
}

#[derive(Debug, Default)]
pub struct SenderLink {
    /// Link credit granted by the broker and not yet used.
    pub credit: u32,
    pub delivery_count: u32,
    next_tag: u64,
    /// Unsettled window: `unsettled[i]` is delivery id `unsettled_base + i`, `true` once settled.
    unsettled_base: u32,
    unsettled: VecDeque<bool>,
    pub outstanding: u32,
    pub work: Option<SendWork>,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
    /// Settled deliveries of an outgoing message (CBS requests) seen so far.
    pub settled_total: u64,
}

/// What a receiver link does during a run.
#[derive(Debug, Clone)]
pub struct RecvWork {
    /// Credit kept outstanding (refilled when half is used).
    pub credit_window: u32,
    /// Stop condition shared with the other receivers on the same queue (`None`: run until
    /// the caller's condition says so, e.g. "quiet for a while").
    pub tally: Option<Arc<Tally>>,
    /// Decode the send timestamp of each message and record its latency.
    pub measure_latency: bool,
}

#[derive(Debug, Default)]
pub struct ReceiverLink {
    /// Collect messages (CBS responses) instead of completing them.
    collect: bool,
    pub inbox: Vec<Bytes>,
    pub work: Option<RecvWork>,
    /// Credit we granted and the broker has not used.
    pub credit: u32,
    pub delivery_count: u32,
    /// Multi-frame delivery in progress: (delivery id, settled, payload so far).
    partial: Option<(u32, bool, BytesMut)>,
    current_delivery: u32,
    /// Completions (`accepted`, unsettled) waiting to be written, as inclusive id ranges.
    pending: Vec<(u32, u32)>,
    /// Completions written whose settled echo has not arrived.
    pub awaiting_echo: u64,
    pub received: u64,
    pub completed: u64,
    pub complete_errors: u64,
    pub last_error: Option<String>,
    /// Latencies in microseconds (latency runs only).
    pub latencies_us: Vec<u32>,
    pub last_delivery: Option<Instant>,
}

#[derive(Debug)]
pub enum LinkKind {
    Sender(SenderLink),
    Receiver(ReceiverLink),
}

#[derive(Debug)]
pub struct Link {
    pub name: String,
    pub address: String,
    handle: u32,
    remote_handle: Option<u32>,
    pub attached: bool,
    pub detached: Option<String>,
    pub kind: LinkKind,
}

#[derive(Debug)]
struct Session {
    channel: u16,
    remote_channel: Option<u16>,
    next_outgoing_id: u32,
    /// Transfers the broker still accepts on this session.
    remote_incoming_window: u32,
    next_incoming_id: u32,
    /// What is left of the incoming window we advertised.
    incoming_window: u32,
    ended: bool,
    links: Vec<Link>,
}

impl Session {
    fn sender_index(&self) -> Option<usize> {
        self.links
            .iter()
            .position(|l| matches!(l.kind, LinkKind::Sender(_)))
    }
    fn receiver_index(&self) -> Option<usize> {
        self.links
            .iter()
            .position(|l| matches!(l.kind, LinkKind::Receiver(_)))
    }
    fn session_flow(&self) -> Flow {
        Flow {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: u32::MAX,
            ..Default::default()
        }
    }
}

/// Parsed `Endpoint=sb://host:port;SharedAccessKeyName=..;SharedAccessKey=..` string.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `sb://host[:port]` (no trailing slash), the prefix of CBS audiences.
    pub uri_base: String,
    pub key_name: Option<String>,
    pub key: Option<String>,
    /// A ready-made `SharedAccessSignature ...` token.
    pub signature: Option<String>,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (mut endpoint, mut key_name, mut key, mut signature) = (None, None, None, None);
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not Key=Value"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(v.trim().to_string()),
                "sharedaccesskeyname" => key_name = Some(v.to_string()),
                "sharedaccesskey" => key = Some(v.to_string()),
                "sharedaccesssignature" => signature = Some(v.to_string()),
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or("the connection string has no Endpoint")?;
        let rest = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in Endpoint '{endpoint}'"))?,
            ),
            _ => (authority.to_string(), 5672),
        };
        if host.is_empty() {
            return Err(format!("no host in Endpoint '{endpoint}'"));
        }
        if signature.is_none() && (key_name.is_none() || key.is_none()) {
            return Err(
                "the connection string needs SharedAccessKeyName and SharedAccessKey".into(),
            );
        }
        Ok(Endpoint {
            host,
            port,
            uri_base: format!("sb://{authority}"),
            key_name,
            key,
            signature,
        })
    }

    /// CBS audience of an entity.
    pub fn audience(&self, entity: &str) -> String {
        format!("{}/{}", self.uri_base, entity)
    }

    /// A SAS token for `audience`, valid for a day.
    pub fn token(&self, audience: &str) -> String {
        if let Some(sig) = &self.signature {
            return sig.clone();
        }
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 24 * 3600;
        sas_token(
            audience,
            self.key_name.as_deref().unwrap_or(""),
            self.key.as_deref().unwrap_or(""),
            expiry,
        )
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters, upper-case hex.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `SharedAccessSignature sr=..&sig=..&se=..&skn=..` (wire reference §3.5).
pub fn sas_token(uri: &str, key_name: &str, key: &str, expiry_unix_s: u64) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let sr = url_encode(uri);
    let sig = match Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(format!("{sr}\n{expiry_unix_s}").as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_unix_s}&skn={}",
        url_encode(&sig),
        url_encode(key_name)
    )
}

const REFUSED: &str = "the broker refused the link";

fn error_text(e: &Option<keybus_amqp::AmqpError>) -> String {
    match e {
        Some(e) => format!("{} {}", e.condition, e.description.as_deref().unwrap_or("")),
        None => "(no error)".to_string(),
    }
}

fn state_text(s: &Option<DeliveryState>) -> String {
    match s {
        Some(DeliveryState::Rejected { error }) => format!("rejected: {}", error_text(error)),
        Some(DeliveryState::Modified { .. }) => "modified".into(),
        Some(DeliveryState::Released) => "released".into(),
        Some(DeliveryState::Received { .. }) => "received".into(),
        Some(DeliveryState::Accepted) => "accepted".into(),
        None => "no state".into(),
    }
}

/// One AMQP connection (see the module docs).
pub struct Connection {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    remote_max_frame: u32,
    heartbeat: Option<Duration>,
    last_write: Instant,
    opened: bool,
    closed: Option<String>,
    close_sent: bool,
    sessions: Vec<Session>,
    cbs: Option<(LinkId, LinkId)>,
    cbs_seq: u64,
    endpoint: Endpoint,
    /// Frames read (for diagnostics).
    pub frames_in: u64,
}

impl Connection {
    /// TCP connect, SASL ANONYMOUS, AMQP open.
    pub async fn connect(
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(err)) => return Err(ClientError::Connect { addr, err }),
            Err(_) => {
                return Err(ClientError::Connect {
                    addr,
                    err: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                });
            }
        };
        stream.set_nodelay(true)?;
        let mut c = Connection {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK * 2),
            wbuf: BytesMut::with_capacity(WRITE_BUDGET * 2),
            remote_max_frame: 512,
            heartbeat: None,
            last_write: Instant::now(),
            opened: false,
            closed: None,
            close_sent: false,
            sessions: Vec::new(),
            cbs: None,
            cbs_seq: 0,
            endpoint: endpoint.clone(),
            frames_in: 0,
        };
        let deadline = Instant::now() + timeout;
        // SASL layer.
        c.wbuf.extend_from_slice(&SASL_HEADER);
        c.flush().await?;
        let h = c.read_exact_header(deadline).await?;
        if h != SASL_HEADER {
            return Err(ClientError::Protocol(format!(
                "expected the SASL header, got {h:?}"
            )));
        }
        match c.read_sasl(deadline).await? {
            SaslFrameBody::Mechanisms(m) => {
                if !m.mechanisms.iter().any(|s| s.as_str() == "ANONYMOUS") {
                    return Err(ClientError::Protocol(format!(
                        "the broker does not offer SASL ANONYMOUS (offers {:?})",
                        m.mechanisms
                    )));
                }
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected sasl-mechanisms, got {other:?}"
                )));
            }
        }
        let init = SaslFrameBody::Init(SaslInit {
            mechanism: Symbol::from("ANONYMOUS"),
            initial_response: Some(Bytes::new()),
            hostname: Some(endpoint.host.clone()),
        });
        keybus_amqp::encode_frame(0, &FrameBody::Sasl(init), &mut c.wbuf);
        c.flush().await?;
        match c.read_sasl(deadline).await? {
            SaslFrameBody::Outcome(o) if o.code == 0 => {}
            other => return Err(ClientError::Protocol(format!("SASL failed: {other:?}"))),
        }
        // AMQP layer.
        c.wbuf.extend_from_slice(&AMQP_HEADER);
        let open = Open {
            container_id: format!("keybus-bench-{}", uuid::Uuid::new_v4().simple()),
            hostname: Some(endpoint.host.clone()),
            max_frame_size: LOCAL_MAX_FRAME,
            channel_max: 1023,
            ..Default::default()
        };
        keybus_amqp::encode_amqp_frame(0, &Performative::Open(open), &[], &mut c.wbuf);
        c.flush().await?;
        let h = c.read_exact_header(deadline).await?;
        if h != AMQP_HEADER {
            return Err(ClientError::Protocol(format!(
                "expected the AMQP header, got {h:?}"
            )));
        }
        c.run_until(deadline, "the broker's open", |c| c.opened)
            .await?;
        Ok(c)
    }

    async fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), ClientError> {
        while self.rbuf.len() < n {
            self.rbuf.reserve(READ_CHUNK);
            let r = tokio::time::timeout_at(deadline.into(), self.stream.read_buf(&mut self.rbuf))
                .await;
            match r {
                Ok(Ok(0)) => return Err(ClientError::Closed(" during the handshake".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        what: "the handshake".into(),
                        state: String::new(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn read_exact_header(&mut self, deadline: Instant) -> Result<[u8; 8], ClientError> {
        self.fill(8, deadline).await?;
        let mut h = [0u8; 8];
        h.copy_from_slice(&self.rbuf.split_to(8));
        Ok(h)
    }

    async fn read_sasl(&mut self, deadline: Instant) -> Result<SaslFrameBody, ClientError> {
        loop {
            if let Some((frame, used)) = keybus_amqp::decode_frame(&self.rbuf, LOCAL_MAX_FRAME)? {
                let _ = self.rbuf.split_to(used);
                return match frame.body {
                    FrameBody::Sasl(b) => Ok(b),
                    other => Err(ClientError::Protocol(format!(
                        "expected a SASL frame, got {other:?}"
                    ))),
                };
            }
            let want = self.rbuf.len() + 1;
            self.fill(want, deadline).await?;
        }
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.last_write = Instant::now();
        }
        Ok(())
    }

    fn frame(&mut self, channel: u16, p: Performative) {
        keybus_amqp::encode_amqp_frame(channel, &p, &[], &mut self.wbuf);
    }

    fn new_session(&mut self) -> usize {
        let idx = self.sessions.len();
        let channel = u16::try_from(idx).unwrap_or(u16::MAX);
        self.sessions.push(Session {
            channel,
            remote_channel: None,
            next_outgoing_id: 0,
            remote_incoming_window: 0,
            next_incoming_id: 0,
            incoming_window: INCOMING_WINDOW,
            ended: false,
            links: Vec::new(),
        });
        self.frame(
            channel,
            Performative::Begin(Begin {
                remote_channel: None,
                next_outgoing_id: 0,
                incoming_window: INCOMING_WINDOW,
                outgoing_window: u32::MAX,
                handle_max: 7,
                ..Default::default()
            }),
        );
        idx
    }

    fn add_link(
        &mut self,
        session: usize,
        name: String,
        address: String,
        kind: LinkKind,
        attach: Attach,
    ) -> LinkId {
        let Some(s) = self.sessions.get_mut(session) else {
            return LinkId {
                session,
                link: usize::MAX,
            };
        };
        let handle = u32::try_from(s.links.len()).unwrap_or(u32::MAX);
        let channel = s.channel;
        s.links.push(Link {
            name,
            address,
            handle,
            remote_handle: None,
            attached: false,
            detached: None,
            kind,
        });
        let link = s.links.len() - 1;
        self.frame(channel, Performative::Attach(Attach { handle, ..attach }));
        LinkId { session, link }
    }

    /// Open a session with a sender link to `address` (durable sends: unsettled, the broker
    /// settles with `accepted`). Frames are only queued; see [`Connection::wait_ready`].
    pub fn open_sender(&mut self, address: &str) -> LinkId {
        let session = self.new_session();
        self.attach_sender(session, address)
    }

    fn attach_sender(&mut self, session: usize, address: &str) -> LinkId {
        let name = format!("kb-bench-snd-{}", uuid::Uuid::new_v4().simple());
        let attach = Attach {
            name: name.clone(),
            role: Role::Sender,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Source {
                address: Some(name.clone()),
                ..Default::default()
            }),
            target: Some(Target {
                address: Some(address.to_string()),
                ..Default::default()
            }),
            initial_delivery_count: Some(0),
            ..Default::default()
        };
        self.add_link(
            session,
            name,
            address.to_string(),
            LinkKind::Sender(SenderLink::default()),
            attach,
        )
    }

    /// Open a session with a peek-lock receiver link on `address` (no credit until a
    /// [`RecvWork`] is set).
    pub fn open_receiver(&mut self, address: &str) -> LinkId {
        let session = self.new_session();
        self.attach_receiver(session, address, false)
    }

    fn attach_receiver(&mut self, session: usize, address: &str, collect: bool) -> LinkId {
        let name = format!("kb-bench-rcv-{}", uuid::Uuid::new_v4().simple());
        let attach = Attach {
            name: name.clone(),
            role: Role::Receiver,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::Second,
            source: Some(Source {
                address: Some(address.to_string()),
                ..Default::default()
            }),
            target: Some(Target {
                address: Some(name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let kind = LinkKind::Receiver(ReceiverLink {
            collect,
            ..Default::default()
        });
        self.add_link(session, name, address.to_string(), kind, attach)
    }

    pub fn link(&self, id: LinkId) -> Option<&Link> {
        self.sessions.get(id.session)?.links.get(id.link)
    }

    pub fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.sessions.get_mut(id.session)?.links.get_mut(id.link)
    }

    pub fn sender(&self, id: LinkId) -> Option<&SenderLink> {
        match &self.link(id)?.kind {
            LinkKind::Sender(s) => Some(s),
            LinkKind::Receiver(_) => None,
        }
    }

    pub fn sender_mut(&mut self, id: LinkId) -> Option<&mut SenderLink> {
        match &mut self.link_mut(id)?.kind {
            LinkKind::Sender(s) => Some(s),
            LinkKind::Receiver(_) => None,
        }
    }

    pub fn receiver(&self, id: LinkId) -> Option<&ReceiverLink> {
        match &self.link(id)?.kind {
            LinkKind::Receiver(r) => Some(r),
            LinkKind::Sender(_) => None,
        }
    }

    pub fn receiver_mut(&mut self, id: LinkId) -> Option<&mut ReceiverLink> {
        match &mut self.link_mut(id)?.kind {
            LinkKind::Receiver(r) => Some(r),
            LinkKind::Sender(_) => None,
        }
    }

    /// Wait until all `links` are attached and every sender among them has credit.
    pub async fn wait_ready(
        &mut self,
        links: &[LinkId],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let links = links.to_vec();
        self.run_until(
            Instant::now() + timeout,
            "link attach and credit",
            move |c| {
                links.iter().all(|&id| match c.link(id) {
                    Some(l) => {
                        l.attached && !matches!(&l.kind, LinkKind::Sender(s) if s.credit == 0)
                    }
                    None => true,
                })
            },
        )
        .await
    }

    /// Authorize `entity` with a CBS `put-token` (opens the `$cbs` link pair on first use).
    pub async fn put_token(&mut self, entity: &str, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        let (snd, rcv) = match self.cbs {
            Some(p) => p,
            None => {
                let session = self.new_session();
                let snd = self.attach_sender(session, "$cbs");
                let rcv = self.attach_receiver(session, "$cbs", true);
                self.cbs = Some((snd, rcv));
                (snd, rcv)
            }
        };
        let reply_to = self.link(rcv).map(|l| l.name.clone()).unwrap_or_default();
        self.run_until(deadline, "the $cbs links", move |c| {
            c.link(rcv).is_some_and(|l| l.attached) && c.sender(snd).is_some_and(|s| s.credit > 0)
        })
        .await?;
        let audience = self.endpoint.audience(entity);
        let token = self.endpoint.token(&audience);
        self.cbs_seq += 1;
        let s = |v: &str| Value::String(v.to_string());
        let msg = Message {
            properties: Some(Properties {
                message_id: Some(s(&format!("kb-cbs-{}", self.cbs_seq))),
                to: Some("$cbs".into()),
                reply_to: Some(reply_to),
                ..Default::default()
            }),
            application_properties: Some(vec![
                (s("operation"), s("put-token")),
                (s("type"), s("servicebus.windows.net:sastoken")),
                (s("name"), s(&audience)),
            ]),
            body_raw: Message::body_value(&Value::String(token)),
            ..Default::default()
        };
        let payload = msg.to_bytes();
        self.send_one(snd, &payload);
        let before = self.receiver(rcv).map_or(0, |r| r.inbox.len());
        self.run_until(deadline, "the put-token response", move |c| {
            c.receiver(rcv).is_some_and(|r| r.inbox.len() > before)
        })
        .await?;
        let reply = self
            .receiver_mut(rcv)
            .and_then(|r| r.inbox.pop())
            .unwrap_or_default();
        let reply = Message::decode(&reply)?;
        let props = reply.application_properties.unwrap_or_default();
        let status = keybus_amqp::map_get(&props, "status-code")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        if !(200..300).contains(&status) {
            let description = keybus_amqp::map_get(&props, "status-description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Err(ClientError::Auth {
                audience,
                status,
                description,
            });
        }
        Ok(())
    }

    /// Queue one unsettled transfer on a sender link (ignores credit: used for CBS only,
    /// after credit was seen).
    fn send_one(&mut self, id: LinkId, payload: &[u8]) {
        let max_frame = self.remote_max_frame as usize;
        let Some(session) = self.sessions.get_mut(id.session) else {
            return;
        };
        let channel = session.channel;
        let delivery_id = session.next_outgoing_id;
        let Some(Link {
            handle,
            kind: LinkKind::Sender(s),
            ..
        }) = session.links.get_mut(id.link)
        else {
            return;
        };
        let tag = s.next_tag;
        s.next_tag += 1;
        s.credit = s.credit.saturating_sub(1);
        s.delivery_count = s.delivery_count.wrapping_add(1);
        if s.unsettled.is_empty() {
            s.unsettled_base = delivery_id;
        }
        s.unsettled.push_back(false);
        s.outstanding += 1;
        s.sent += 1;
        let handle = *handle;
        let frames = write_transfer(
            &mut self.wbuf,
            channel,
            handle,
            delivery_id,
            tag,
            payload,
            max_frame,
        );
        session.next_outgoing_id = delivery_id.wrapping_add(1);
        session.remote_incoming_window = session.remote_incoming_window.saturating_sub(frames);
    }

    fn queue_link_flow(&mut self, id: LinkId, credit: u32) {
        let Some(session) = self.sessions.get_mut(id.session) else {
            return;
        };
        let mut flow = session.session_flow();
        session.incoming_window = INCOMING_WINDOW;
        let channel = session.channel;
        let Some(link) = session.links.get(id.link) else {
            return;
        };
        let dc = match &link.kind {
            LinkKind::Receiver(r) => r.delivery_count,
            LinkKind::Sender(s) => s.delivery_count,
        };
        flow.handle = Some(link.handle);
        flow.delivery_count = Some(dc);
        flow.link_credit = Some(credit);
        self.frame(channel, Performative::Flow(flow));
    }

    /// Start a workload on a sender link.
    pub fn set_send_work(&mut self, id: LinkId, work: SendWork) {
        if let Some(s) = self.sender_mut(id) {
            s.work = Some(work);
        }
    }

    /// Start a workload on a receiver link (credit is granted on the next run).
    pub fn set_recv_work(&mut self, id: LinkId, work: RecvWork) {
        if let Some(r) = self.receiver_mut(id) {
            r.work = Some(work);
        }
    }

    /// True when every workload on this connection is finished: senders have sent and had
    /// settled all their messages, receivers' queues are fully completed and no completion
    /// awaits its echo.
    pub fn work_done(&self) -> bool {
        self.sessions
            .iter()
            .flat_map(|s| &s.links)
            .all(|l| match &l.kind {
                LinkKind::Sender(s) => match &s.work {
                    Some(w) => s.sent >= w.count && s.outstanding == 0,
                    None => true,
                },
                LinkKind::Receiver(r) => match &r.work {
                    Some(w) => {
                        w.tally.as_ref().is_none_or(|t| t.done())
                            && r.pending.is_empty()
                            && r.awaiting_echo == 0
                    }
                    None => true,
                },
            })
    }

    /// Summary of link states, for timeouts.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for s in &self.sessions {
            for l in &s.links {
                let d = match &l.kind {
                    LinkKind::Sender(x) => format!(
                        "sender {} credit={} sent={} unsettled={} accepted={} rejected={} session-window={}",
                        l.address,
                        x.credit,
                        x.sent,
                        x.outstanding,
                        x.accepted,
                        x.rejected,
                        s.remote_incoming_window
                    ),
                    LinkKind::Receiver(x) => format!(
                        "receiver {} credit={} received={} completed={} awaiting-echo={} pending={}",
                        l.address,
                        x.credit,
                        x.received,
                        x.completed,
                        x.awaiting_echo,
                        x.pending.len()
                    ),
                };
                out.push(format!(
                    "[ch {} {}{}]",
                    s.channel,
                    d,
                    if l.attached { "" } else { " (not attached)" }
                ));
            }
        }
        out.join(" ")
    }

    fn check_failed(&self) -> Result<(), ClientError> {
        if let Some(c) = &self.closed {
            return Err(ClientError::Closed(format!(": {c}")));
        }
        for l in self.sessions.iter().flat_map(|s| &s.links) {
            if let Some(e) = &l.detached {
                return Err(ClientError::Detached {
                    name: format!("{} ({})", l.name, l.address),
                    error: e.clone(),
                });
            }
        }
        Ok(())
    }

    /// Drive the connection until `done` holds (checked after every batch of I/O).
    pub async fn run_until(
        &mut self,
        deadline: Instant,
        what: &str,
        mut done: impl FnMut(&Connection) -> bool,
    ) -> Result<(), ClientError> {
        loop {
            self.process_input()?;
            let more = self.produce();
            self.flush().await?;
            self.check_failed()?;
            if done(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    what: what.to_string(),
                    state: self.describe(),
                });
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            if more {
                match self.stream.try_read_buf(&mut self.rbuf) {
                    Ok(0) => return Err(ClientError::Closed(" (EOF)".into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                let mut wake = deadline.min(now + TICK);
                if let Some(p) = self.next_due() {
                    wake = wake.min(p);
                }
                if let Some(h) = self.heartbeat {
                    wake = wake.min(self.last_write + h);
                }
                let r = tokio::time::timeout_at(wake.into(), self.stream.read_buf(&mut self.rbuf))
                    .await;
                match r {
                    Ok(Ok(0)) => return Err(ClientError::Closed(" (EOF)".into())),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => continue,
                }
            }
        }
    }

    /// Earliest time a paced sender has its next message due (if in the future).
    fn next_due(&self) -> Option<Instant> {
        self.sessions
            .iter()
            .flat_map(|s| &s.links)
            .filter_map(|l| match &l.kind {
                LinkKind::Sender(s) => {
                    let w = s.work.as_ref()?;
                    let p = w.pacing?;
                    (s.sent < w.count).then(|| p.start + p.interval.mul_f64(s.sent as f64))
                }
                LinkKind::Receiver(_) => None,
            })
            .min()
    }

    /// Queue every frame that can be sent now. Returns true if it stopped because of the
    /// write budget (more can be produced right away).
    fn produce(&mut self) -> bool {
        let max_frame = self.remote_max_frame as usize;
        let now = Instant::now();
        let mut more = false;
        for session in &mut self.sessions {
            if session.ended {
                continue;
            }
            let channel = session.channel;
            for li in 0..session.links.len() {
                let Some(link) = session.links.get_mut(li) else {
                    continue;
                };
                if !link.attached || link.detached.is_some() {
                    continue;
                }
                let handle = link.handle;
                match &mut link.kind {
                    LinkKind::Sender(s) => {
                        let Some(w) = &s.work else { continue };
                        while s.sent < w.count
                            && s.credit > 0
                            && session.remote_incoming_window > 0
                            && s.outstanding < w.max_inflight
                        {
                            if let Some(p) = w.pacing
                                && p.start + p.interval.mul_f64(s.sent as f64) > now
                            {
                                break;
                            }
                            if self.wbuf.len() >= WRITE_BUDGET {
                                more = true;
                                break;
                            }
                            let delivery_id = session.next_outgoing_id;
                            let tag = s.next_tag;
                            s.next_tag += 1;
                            s.credit -= 1;
                            s.delivery_count = s.delivery_count.wrapping_add(1);
                            if s.unsettled.is_empty() {
                                s.unsettled_base = delivery_id;
                            }
                            s.unsettled.push_back(false);
                            s.outstanding += 1;
                            let seq = s.sent;
                            s.sent += 1;
                            let frames = write_templated_transfer(
                                &mut self.wbuf,
                                channel,
                                handle,
                                delivery_id,
                                tag,
                                &w.template,
                                seq,
                                max_frame,
                            );
                            session.next_outgoing_id = delivery_id.wrapping_add(1);
                            session.remote_incoming_window =
                                session.remote_incoming_window.saturating_sub(frames);
                        }
                    }
                    LinkKind::Receiver(r) => {
                        for (first, last) in r.pending.drain(..) {
                            r.awaiting_echo += u64::from(last.wrapping_sub(first)) + 1;
                            let d = Disposition {
                                role: Role::Receiver,
                                first,
                                last: (last != first).then_some(last),
                                settled: false,
                                state: Some(DeliveryState::Accepted),
                                batchable: false,
                            };
                            keybus_amqp::encode_amqp_frame(
                                channel,
                                &Performative::Disposition(d),
                                &[],
                                &mut self.wbuf,
                            );
                        }
                        let window = r
                            .work
                            .as_ref()
                            .map_or(if r.collect { 10 } else { 0 }, |w| w.credit_window);
                        let active = r
                            .work
                            .as_ref()
                            .is_none_or(|w| w.tally.as_ref().is_none_or(|t| !t.done()));
                        let refill = active && window > 0 && r.credit <= window / 2;
                        if refill || session.incoming_window < INCOMING_WINDOW / 2 {
                            let mut flow = Flow {
                                next_incoming_id: Some(session.next_incoming_id),
                                incoming_window: INCOMING_WINDOW,
                                next_outgoing_id: session.next_outgoing_id,
                                outgoing_window: u32::MAX,
                                ..Default::default()
                            };
                            session.incoming_window = INCOMING_WINDOW;
                            if refill {
                                r.credit = window;
                                flow.handle = Some(handle);
                                flow.delivery_count = Some(r.delivery_count);
                                flow.link_credit = Some(window);
                            }
                            keybus_amqp::encode_amqp_frame(
                                channel,
                                &Performative::Flow(flow),
                                &[],
                                &mut self.wbuf,
                            );
                        }
                    }
                }
            }
        }
        if self.wbuf.is_empty()
            && let Some(h) = self.heartbeat
            && now.duration_since(self.last_write) >= h
        {
            keybus_amqp::encode_empty_frame(&mut self.wbuf);
        }
        more
    }

    fn process_input(&mut self) -> Result<(), ClientError> {
        loop {
            let Some(size) = keybus_amqp::peek_frame_size(&self.rbuf) else {
                return Ok(());
            };
            if size > LOCAL_MAX_FRAME {
                return Err(DecodeError::FrameTooLarge {
                    size,
                    max: LOCAL_MAX_FRAME,
                }
                .into());
            }
            if self.rbuf.len() < size as usize {
                self.rbuf.reserve(size as usize);
                return Ok(());
            }
            let bytes = self.rbuf.split_to(size as usize).freeze();
            let Some((frame, _)) = keybus_amqp::decode_frame_bytes(&bytes, LOCAL_MAX_FRAME)? else {
                return Err(ClientError::Protocol("incomplete frame".into()));
            };
            self.frames_in += 1;
            self.on_frame(frame)?;
        }
    }

    fn session_by_remote(&mut self, channel: u16) -> Option<&mut Session> {
        self.sessions
            .iter_mut()
            .find(|s| s.remote_channel == Some(channel))
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        let channel = frame.channel;
        let (performative, payload) = match frame.body {
            FrameBody::Empty => return Ok(()),
            FrameBody::Sasl(b) => {
                return Err(ClientError::Protocol(format!(
                    "unexpected SASL frame {b:?}"
                )));
            }
            FrameBody::Amqp {
                performative,
                payload,
            } => (performative, payload),
        };
        match performative {
            Performative::Open(o) => {
                self.remote_max_frame = o.max_frame_size.clamp(512, LOCAL_MAX_FRAME);
                self.heartbeat = o
                    .idle_time_out
                    .filter(|&ms| ms > 0)
                    .map(|ms| Duration::from_millis(u64::from(ms) / 2));
                self.opened = true;
            }
            Performative::Close(c) => {
                self.closed = Some(error_text(&c.error));
                self.wbuf.clear();
                if !self.close_sent {
                    self.close_sent = true;
                    self.frame(0, Performative::Close(Close::default()));
                }
            }
            Performative::Begin(b) => {
                let Some(ours) = b.remote_channel else {
                    return Err(ClientError::Protocol(
                        "the broker began a session we did not ask for".into(),
                    ));
                };
                let Some(s) = self.sessions.get_mut(usize::from(ours)) else {
                    return Err(ClientError::Protocol(format!(
                        "begin for unknown channel {ours}"
                    )));
                };
                s.remote_channel = Some(channel);
                s.remote_incoming_window = b.incoming_window;
                s.next_incoming_id = b.next_outgoing_id;
            }
            Performative::End(e) => {
                let reply = if let Some(s) = self.session_by_remote(channel) {
                    s.ended = true;
                    for l in &mut s.links {
                        l.detached.get_or_insert_with(|| {
                            format!("session ended: {}", error_text(&e.error))
                        });
                    }
                    Some(s.channel)
                } else {
                    None
                };
                if let Some(ch) = reply {
                    self.frame(ch, Performative::End(End::default()));
                }
            }
            Performative::Attach(a) => {
                let Some(s) = self.session_by_remote(channel) else {
                    return Ok(());
                };
                if let Some(l) = s.links.iter_mut().find(|l| l.name == a.name) {
                    l.remote_handle = Some(a.handle);
                    l.attached = true;
                    match &mut l.kind {
                        LinkKind::Receiver(r) => {
                            r.delivery_count = a.initial_delivery_count.unwrap_or(0);
                            if a.source.is_none() {
                                l.detached = Some(format!("{REFUSED} (null source)"));
                            }
                        }
                        LinkKind::Sender(_) => {
                            if a.target.is_none() {
                                l.detached = Some(format!("{REFUSED} (null target)"));
                            }
                        }
                    }
                }
            }
            Performative::Detach(d) => {
                let mut reply = None;
                if let Some(s) = self.session_by_remote(channel)
                    && let Some(l) = s
                        .links
                        .iter_mut()
                        .find(|l| l.remote_handle == Some(d.handle))
                {
                    let why = if d.error.is_some() {
                        error_text(&d.error)
                    } else {
                        "detached without error".into()
                    };
                    // A refusal is an attach with a null terminus followed by this detach,
                    // which carries the reason: prefer it.
                    match &mut l.detached {
                        Some(prev) if prev.starts_with(REFUSED) => {
                            *prev = format!("{REFUSED}: {why}")
                        }
                        Some(_) => {}
                        None => l.detached = Some(why),
                    }
                    reply = Some((s.channel, l.handle));
                }
                if let Some((ch, handle)) = reply {
                    self.frame(
                        ch,
                        Performative::Detach(Detach {
                            handle,
                            closed: true,
                            error: None,
                        }),
                    );
                }
            }
            Performative::Flow(f) => self.on_flow(channel, &f),
            Performative::Transfer(t) => self.on_transfer(channel, t, payload),
            Performative::Disposition(d) => self.on_disposition(channel, &d),
        }
        Ok(())
    }

    fn on_flow(&mut self, channel: u16, f: &Flow) {
        let mut echo = None;
        let Some(s) = self.session_by_remote(channel) else {
            return;
        };
        // Transfers the broker will still take: its next-incoming-id + window - our next id.
        let limit = f
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(f.incoming_window);
        s.remote_incoming_window = limit
            .wrapping_sub(s.next_outgoing_id)
            .min(f.incoming_window);
        if let Some(h) = f.handle
            && let Some(li) = s.links.iter().position(|l| l.remote_handle == Some(h))
        {
            if let Some(l) = s.links.get_mut(li) {
                match &mut l.kind {
                    LinkKind::Sender(snd) => {
                        if let Some(credit) = f.link_credit {
                            let peer_dc = f.delivery_count.unwrap_or(snd.delivery_count);
                            let c = peer_dc
                                .wrapping_add(credit)
                                .wrapping_sub(snd.delivery_count);
                            snd.credit = if c > 1 << 30 { 0 } else { c };
                        }
                    }
                    LinkKind::Receiver(r) => {
                        if let Some(dc) = f.delivery_count {
                            // The broker's view (after a drain it may have advanced the count).
                            let limit = r.delivery_count.wrapping_add(r.credit);
                            r.delivery_count = dc;
                            r.credit = limit.wrapping_sub(dc).min(1 << 30);
                            if let Some(c) = f.link_credit {
                                r.credit = r.credit.min(c);
                            }
                        }
                    }
                }
            }
            if f.echo {
                echo = Some(LinkId {
                    session: usize::from(s.channel),
                    link: li,
                });
            }
        }
        if let Some(id) = echo {
            let credit = match self.link(id).map(|l| &l.kind) {
                Some(LinkKind::Sender(s)) => s.credit,
                Some(LinkKind::Receiver(r)) => r.credit,
                None => 0,
            };
            self.queue_link_flow(id, credit);
        }
    }

    fn on_transfer(&mut self, channel: u16, t: Transfer, payload: Bytes) {
        let mut settle_collected = None;
        let Some(s) = self.session_by_remote(channel) else {
            return;
        };
        s.next_incoming_id = s.next_incoming_id.wrapping_add(1);
        s.incoming_window = s.incoming_window.saturating_sub(1);
        let Some(l) = s
            .links
            .iter_mut()
            .find(|l| l.remote_handle == Some(t.handle))
        else {
            return;
        };
        let LinkKind::Receiver(r) = &mut l.kind else {
            return;
        };
        if let Some(id) = t.delivery_id
            && r.partial.is_none()
        {
            r.current_delivery = id;
        }
        let first_frame = r.partial.is_none();
        if first_frame {
            r.credit = r.credit.saturating_sub(1);
            r.delivery_count = r.delivery_count.wrapping_add(1);
        }
        if t.aborted {
            r.partial = None;
            return;
        }
        let settled = t.settled.unwrap_or(false);
        let whole = if t.more || !first_frame {
            let (_, st, buf) = r
                .partial
                .get_or_insert_with(|| (r.current_delivery, settled, BytesMut::new()));
            *st |= settled;
            buf.extend_from_slice(&payload);
            if t.more {
                return;
            }
            match r.partial.take() {
                Some((_, st, buf)) => (st, buf.freeze()),
                None => return,
            }
        } else {
            (settled, payload)
        };
        let (settled, body) = whole;
        let id = r.current_delivery;
        r.received += 1;
        r.last_delivery = Some(Instant::now());
        if r.collect {
            r.inbox.push(body);
            if !settled {
                settle_collected = Some(id);
            }
        } else {
            if r.work.as_ref().is_some_and(|w| w.measure_latency) {
                let now = now_ns();
                if let Ok(m) = Message::decode(&body)
                    && let Some(sent) = m
                        .application_properties
                        .as_deref()
                        .and_then(|p| keybus_amqp::map_get(p, STAMP_PROPERTY))
                        .and_then(Value::as_i64)
                {
                    let us = (now.saturating_sub(sent) / 1000).clamp(0, i64::from(u32::MAX));
                    r.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            if settled {
                // Pre-settled (receive-and-delete): nothing to complete.
                r.completed += 1;
                if let Some(t) = r.work.as_ref().and_then(|w| w.tally.as_ref()) {
                    t.completed.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                match r.pending.last_mut() {
                    Some((_, last)) if last.wrapping_add(1) == id => *last = id,
                    _ => r.pending.push((id, id)),
                }
            }
        }
        if let Some(id) = settle_collected {
            let ch = s.channel;
            let d = Disposition {
                role: Role::Receiver,
                first: id,
                last: None,
                settled: true,
                state: Some(DeliveryState::Accepted),
                batchable: false,
            };
            self.frame(ch, Performative::Disposition(d));
        }
    }

    fn on_disposition(&mut self, channel: u16, d: &Disposition) {
        let Some(s) = self.session_by_remote(channel) else {
            return;
        };
        let last = d.last.unwrap_or(d.first);
        let span = u64::from(last.wrapping_sub(d.first)) + 1;
        match d.role {
            // The broker as receiver: about our outgoing deliveries.
            Role::Receiver => {
                if !d.settled {
                    return;
                }
                let Some(li) = s.sender_index() else { return };
                let Some(Link {
                    kind: LinkKind::Sender(snd),
                    ..
                }) = s.links.get_mut(li)
                else {
                    return;
                };
                let ok = matches!(d.state, Some(DeliveryState::Accepted) | None);
                let mut id = d.first;
                for _ in 0..span.min(1 << 20) {
                    let idx = id.wrapping_sub(snd.unsettled_base) as usize;
                    if let Some(slot) = snd.unsettled.get_mut(idx)
                        && !*slot
                    {
                        *slot = true;
                        snd.outstanding = snd.outstanding.saturating_sub(1);
                        snd.settled_total += 1;
                        if ok {
                            snd.accepted += 1;
                        } else {
                            snd.rejected += 1;
                            snd.last_error = Some(state_text(&d.state));
                        }
                    }
                    id = id.wrapping_add(1);
                }
                while snd.unsettled.front() == Some(&true) {
                    snd.unsettled.pop_front();
                    snd.unsettled_base = snd.unsettled_base.wrapping_add(1);
                }
            }
            // The broker as sender: the settled echo of our completions.
            Role::Sender => {
                if !d.settled {
                    return;
                }
                let Some(li) = s.receiver_index() else { return };
                let Some(Link {
                    kind: LinkKind::Receiver(r),
                    ..
                }) = s.links.get_mut(li)
                else {
                    return;
                };
                let n = span.min(r.awaiting_echo);
                r.awaiting_echo -= n;
                if matches!(d.state, Some(DeliveryState::Accepted)) {
                    r.completed += n;
                    if let Some(t) = r.work.as_ref().and_then(|w| w.tally.as_ref()) {
                        t.completed.fetch_add(n, Ordering::Relaxed);
                    }
                } else {
                    r.complete_errors += n;
                    r.last_error = Some(state_text(&d.state));
                }
            }
        }
    }

    /// Send `close` and wait (briefly) for the broker's.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.close_sent = true;
        self.frame(0, Performative::Close(Close::default()));
        self.flush().await?;
        let deadline = Instant::now() + Duration::from_secs(2);
        match self
            .run_until(deadline, "close", |c| c.closed.is_some())
            .await
        {
            Ok(()) | Err(ClientError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Write one delivery (split into frames of at most `max_frame` bytes); returns the frame count.
fn write_transfer(
    out: &mut BytesMut,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: u64,
    payload: &[u8],
    max_frame: usize,
) -> u32 {
    let first = Transfer {
        handle,
        delivery_id: Some(delivery_id),
        delivery_tag: Some(Bytes::copy_from_slice(&tag.to_be_bytes())),
        message_format: Some(0),
        ..Default::default()
    };
    let overhead = 8 + Performative::Transfer(first.clone()).encoded_size() + 2;
    if payload.len() + overhead <= max_frame {
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(first), payload, out);
        return 1;
    }
    let chunk = max_frame.saturating_sub(overhead).max(1);
    let mut frames = 0;
    let mut rest = payload;
    let mut t = first;
    loop {
        let n = chunk.min(rest.len());
        let (head, tail) = rest.split_at(n);
        t.more = !tail.is_empty();
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(t.clone()), head, out);
        frames += 1;
        rest = tail;
        if rest.is_empty() {
            return frames;
        }
        t = Transfer {
            handle,
            ..Default::default()
        };
    }
}

/// Write message `seq` of `template` as one delivery, without an intermediate copy when it
/// fits one frame.
#[allow(clippy::too_many_arguments)]
fn write_templated_transfer(
    out: &mut BytesMut,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: u64,
    template: &MessageTemplate,
    seq: u64,
    max_frame: usize,
) -> u32 {
    // transfer performative is < 40 bytes for these fields.
    if template.len() + 8 + 48 <= max_frame {
        let t = Transfer {
            handle,
            delivery_id: Some(delivery_id),
            delivery_tag: Some(Bytes::copy_from_slice(&tag.to_be_bytes())),
            message_format: Some(0),
            ..Default::default()
        };
        let start = out.len();
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(t), &[], out);
        template.write(seq, out);
        let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
        if let Some(h) = out.get_mut(start..start + 4) {
            h.copy_from_slice(&size.to_be_bytes());
        }
        return 1;
    }
    let mut payload = BytesMut::with_capacity(template.len());
    template.write(seq, &mut payload);
    write_transfer(out, channel, handle, delivery_id, tag, &payload, max_frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_string() {
        let e = Endpoint::parse(
            "Endpoint=sb://127.0.0.1:40123;SharedAccessKeyName=Root;SharedAccessKey=abc=;UseDevelopmentEmulator=true;",
        )
        .unwrap();
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.port, 40123);
        assert_eq!(e.key.as_deref(), Some("abc="));
        assert_eq!(e.audience("q"), "sb://127.0.0.1:40123/q");
        let e = Endpoint::parse("Endpoint=sb://localhost/;SharedAccessKeyName=a;SharedAccessKey=b")
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 5672));
        assert!(Endpoint::parse("SharedAccessKeyName=a").is_err());
    }

    #[test]
    fn token_format() {
        let t = sas_token("sb://localhost:5672/q1", "root", "secret", 1_700_003_600);
        assert!(t.starts_with("SharedAccessSignature sr=sb%3A%2F%2Flocalhost%3A5672%2Fq1&sig="));
        assert!(t.ends_with("&se=1700003600&skn=root"));
    }

    #[test]
    fn template_patches_id_and_stamp() {
        let t = MessageTemplate::new(1024, true);
        let mut out = BytesMut::new();
        t.write(0xabc, &mut out);
        let m = Message::decode(&out.freeze()).unwrap();
        let id = m.properties.clone().unwrap().message_id.unwrap();
        assert_eq!(id.as_str(), Some("kb-0000000000000abc"));
        let p = m.application_properties.clone().unwrap();
        assert!(
            keybus_amqp::map_get(&p, STAMP_PROPERTY)
                .and_then(Value::as_i64)
                .is_some()
        );
        assert_eq!(m.data_sections().unwrap()[0].len(), 1024);
    }

    #[test]
    fn split_transfer() {
        let mut out = BytesMut::new();
        let payload = vec![7u8; 3000];
        let n = write_transfer(&mut out, 3, 0, 9, 1, &payload, 1024);
        assert!(n >= 3);
        let mut buf = out.freeze();
        let mut got = Vec::new();
        while !buf.is_empty() {
            let (f, used) = keybus_amqp::decode_frame_bytes(&buf, 1024)
                .unwrap()
                .unwrap();
            if let FrameBody::Amqp { payload, .. } = f.body {
                got.extend_from_slice(&payload);
            }
            buf = buf.slice(used..);
        }
        assert_eq!(got, payload);
    }
}
