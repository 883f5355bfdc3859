//! One AMQP connection: TCP connect (optionally TLS, see `stream.rs`), the SASL ANONYMOUS and
//! AMQP open handshake, and the I/O loop that drives everything else.
//!
//! A [`Connection`] owns its `TcpStream` and is driven by whoever holds it (no background
//! tasks, no channels on the hot path): [`Connection::run_until`] writes every frame it can
//! (see `produce.rs`), flushes them in one `write_all`, then reads whatever arrived in one
//! big chunk and processes all complete frames (see `input.rs`), until the caller's
//! condition holds. Each link gets its own AMQP session, so a disposition's delivery-id
//! range always belongs to the single sender (or receiver) link of that session; only the
//! request-response pairs (`$cbs`, `$management`) share a session between a sender and a
//! receiver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybus_amqp::{
    AMQP_HEADER, Bytes, BytesMut, Close, FrameBody, Open, Performative, SASL_HEADER, SaslFrameBody,
    SaslInit, Symbol,
};
use tokio::net::TcpStream;

use crate::endpoint::Endpoint;
use crate::error::ClientError;
use crate::link::{Link, LinkId, LinkKind, ReceiverLink, SenderLink};
use crate::session::Session;
use crate::stream::Stream;

/// Largest frame we accept (and advertise).
pub(crate) const LOCAL_MAX_FRAME: u32 = 1024 * 1024;
/// Session incoming window we advertise; refreshed when half is used.
pub(crate) const INCOMING_WINDOW: u32 = 65_536;
/// Outgoing bytes generated before we stop producing and flush.
pub(crate) const WRITE_BUDGET: usize = 256 * 1024;
/// How often a waiting `run_until` wakes up to re-check its condition.
const TICK: Duration = Duration::from_millis(20);
/// Size of one socket read (buffer kept at least this free).
const READ_CHUNK: usize = 256 * 1024;

/// One AMQP connection (see the module docs).
pub struct Connection {
    pub(crate) stream: Stream,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    pub(crate) remote_max_frame: u32,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) last_write: Instant,
    pub(crate) opened: bool,
    pub(crate) closed: Option<String>,
    pub(crate) close_sent: bool,
    pub(crate) sessions: Vec<Session>,
    /// Request-response link pairs (sender, receiver) by node address (`$cbs`,
    /// `<entity>/$management`).
    pub(crate) rpc: HashMap<String, (LinkId, LinkId)>,
    pub(crate) rpc_seq: u64,
    pub(crate) endpoint: Endpoint,
    /// Frames read (for diagnostics).
    pub frames_in: u64,
}

impl Connection {
    /// TCP connect, SASL ANONYMOUS, AMQP open.
    pub async fn connect(
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Connection::connect_with(endpoint, None, timeout).await
    }

    /// TCP connect, TLS with `tls` (its roots decide which servers are trusted; the
    /// endpoint's host is the name checked), SASL ANONYMOUS, AMQP open: AMQPS.
    pub async fn connect_tls(
        endpoint: &Endpoint,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Connection::connect_with(endpoint, Some(tls), timeout).await
    }

    async fn connect_with(
        endpoint: &Endpoint,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let deadline = Instant::now() + timeout;
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
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(config) => {
                match tokio::time::timeout_at(
                    deadline.into(),
                    Stream::tls(stream, &endpoint.host, config),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(err)) => return Err(ClientError::Tls { addr, err }),
                    Err(_) => {
                        return Err(ClientError::Tls {
                            addr,
                            err: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            ),
                        });
                    }
                }
            }
        };
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
            rpc: HashMap::new(),
            rpc_seq: 0,
            endpoint: endpoint.clone(),
            frames_in: 0,
        };
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
            container_id: format!("keybus-client-{}", uuid::Uuid::new_v4().simple()),
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

    pub(crate) async fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), ClientError> {
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

    pub(crate) async fn read_exact_header(
        &mut self,
        deadline: Instant,
    ) -> Result<[u8; 8], ClientError> {
        self.fill(8, deadline).await?;
        let mut h = [0u8; 8];
        h.copy_from_slice(&self.rbuf.split_to(8));
        Ok(h)
    }

    pub(crate) async fn read_sasl(
        &mut self,
        deadline: Instant,
    ) -> Result<SaslFrameBody, ClientError> {
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

    pub(crate) async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.last_write = Instant::now();
        }
        Ok(())
    }

    pub(crate) fn frame(&mut self, channel: u16, p: Performative) {
        keybus_amqp::encode_amqp_frame(channel, &p, &[], &mut self.wbuf);
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

    /// The connection's failure, or the first detach not reported yet (the link is then
    /// retired: it fails one run, not every later one).
    pub(crate) fn check_failed(&mut self) -> Result<(), ClientError> {
        if let Some(c) = &self.closed {
            return Err(ClientError::Closed(format!(": {c}")));
        }
        for l in self.sessions.iter_mut().flat_map(|s| &mut s.links) {
            if l.retired {
                continue;
            }
            if let Some(e) = &l.detached {
                l.retired = true;
                return Err(ClientError::Detached {
                    name: format!("{} ({})", l.name, l.address),
                    error: e.clone(),
                });
            }
        }
        Ok(())
    }

    /// Wait until the broker attached `link` (and, for a sender, gave it credit).
    pub async fn wait_attached(
        &mut self,
        link: LinkId,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.wait_ready(&[link], timeout).await
    }

    /// Detach `link` (closing it) and wait for the broker's detach. A session receiver's
    /// session lock is released.
    pub async fn close_link(&mut self, link: LinkId, timeout: Duration) -> Result<(), ClientError> {
        let Some((channel, handle)) = self
            .sessions
            .get(link.session)
            .and_then(|s| Some((s.channel, s.links.get(link.link)?.handle)))
        else {
            return Ok(());
        };
        if let Some(l) = self.link_mut(link) {
            l.retired = true;
        }
        self.frame(
            channel,
            Performative::Detach(keybus_amqp::Detach {
                handle,
                closed: true,
                error: None,
            }),
        );
        let deadline = Instant::now() + timeout;
        self.run_until(deadline, "the detach", move |c| {
            c.link(link).is_none_or(|l| l.detached.is_some())
        })
        .await
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
    pub(crate) fn next_due(&self) -> Option<Instant> {
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
