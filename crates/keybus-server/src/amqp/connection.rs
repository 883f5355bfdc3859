//! One AMQP connection: protocol headers and SASL, then a single task that owns all sessions
//! and links, reads frames, reacts to entity events and writes through one batching buffer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use keybus_amqp::{
    AMQP_HEADER, Begin, Bytes, BytesMut, Close, End, Flow, Frame, FrameBody, Open, Performative,
    ProtocolHeader, SASL_HEADER, SaslFrameBody, SaslMechanisms, SaslOutcome, Symbol,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::errors::{self, error};
use super::events::ConnEvent;
use super::state::{
    Binding, Conn, ConnError, CrossEntity, Peer, SESSION_WINDOW, Session, session_flow,
};
use crate::runtime::Broker;
use keybus_auth::Principal;

/// We send an empty frame when we have been silent this long (JS/.NET need < 60 s).
const HEARTBEAT: Duration = Duration::from_secs(15);

static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Conn {
    fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnError> {
        match frame.body {
            FrameBody::Empty => Ok(()),
            FrameBody::Sasl(_) => Err(ConnError(error(
                errors::FRAMING_ERROR,
                "SASL frame after SASL",
            ))),
            FrameBody::Amqp {
                performative,
                payload,
            } => match performative {
                Performative::Open(_) => {
                    Err(ConnError(error(errors::NOT_ALLOWED, "open received twice")))
                }
                Performative::Close(_) => {
                    self.write(0, Performative::Close(Close { error: None }));
                    self.closed = true;
                    Ok(())
                }
                Performative::Begin(b) => self.on_begin(frame.channel, b),
                Performative::End(_) => {
                    if let Some(s) = self.sessions.remove(&frame.channel) {
                        self.write(s.channel, Performative::End(End { error: None }));
                    }
                    Ok(())
                }
                other => {
                    if !self.sessions.contains_key(&frame.channel) {
                        return Err(ConnError(error(
                            errors::NOT_ALLOWED,
                            format!("frame on channel {} without a session", frame.channel),
                        )));
                    }
                    self.on_session_frame(frame.channel, other, payload)
                }
            },
        }
    }

    fn on_begin(&mut self, channel: u16, b: Begin) -> Result<(), ConnError> {
        if self.sessions.contains_key(&channel) {
            return Err(ConnError(error(
                errors::NOT_ALLOWED,
                "channel already in use",
            )));
        }
        let limit = self.broker.config().limits.max_sessions_per_connection;
        let reply = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 1,
            incoming_window: SESSION_WINDOW,
            outgoing_window: SESSION_WINDOW,
            handle_max: self
                .broker
                .config()
                .limits
                .max_links_per_session
                .saturating_sub(1) as u32,
            ..Default::default()
        };
        self.write(channel, Performative::Begin(reply));
        if self.sessions.len() >= limit {
            self.write(
                channel,
                Performative::End(End {
                    error: Some(error(
                        errors::RESOURCE_LIMIT,
                        format!("the connection already has the maximum of {limit} sessions"),
                    )),
                }),
            );
            return Ok(());
        }
        self.sessions.insert(
            channel,
            Session {
                channel,
                next_outgoing_id: 1,
                next_incoming_id: b.next_outgoing_id,
                incoming_window: SESSION_WINDOW,
                remote_incoming_window: b.incoming_window,
                links: HashMap::new(),
                next_delivery_id: 0,
                unsettled: HashMap::new(),
                cross_entity: CrossEntity::Off,
            },
        );
        Ok(())
    }

    /// Session-level part of an incoming `flow`.
    pub(crate) fn on_session_flow(&mut self, channel: u16, f: &Flow) {
        let mut unblocked = Vec::new();
        if let Some(s) = self.sessions.get_mut(&channel) {
            let was_blocked = s.remote_incoming_window == 0;
            let next_in = f.next_incoming_id.unwrap_or(1);
            s.remote_incoming_window = next_in
                .wrapping_add(f.incoming_window)
                .wrapping_sub(s.next_outgoing_id);
            if was_blocked && s.remote_incoming_window > 0 {
                unblocked = s.links.keys().copied().collect();
            }
            if f.handle.is_none() && f.echo {
                let flow = session_flow(s);
                self.write(channel, Performative::Flow(flow));
            }
        }
        // Receivers that stopped at a closed session window resume now.
        for handle in unblocked {
            self.pump(channel, handle);
        }
    }

    /// Count an incoming transfer frame against our session window; re-open it when low.
    pub(crate) fn count_incoming_transfer(&mut self, channel: u16) {
        let mut reopen = None;
        if let Some(s) = self.sessions.get_mut(&channel) {
            s.next_incoming_id = s.next_incoming_id.wrapping_add(1);
            s.incoming_window = s.incoming_window.saturating_sub(1);
            if s.incoming_window < SESSION_WINDOW / 2 {
                s.incoming_window = SESSION_WINDOW;
                reopen = Some(session_flow(s));
            }
        }
        if let Some(flow) = reopen {
            self.write(channel, Performative::Flow(flow));
        }
    }

    fn handle_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Wake {
                channel,
                handle,
                generation,
            } => self.on_wake(channel, handle, generation),
            ConnEvent::SendsDone { channel, results } => self.on_sends_done(channel, results),
            ConnEvent::SettlesDone { channel, results } => self.on_settles_done(channel, results),
            ev @ ConnEvent::TxnDone { .. } => self.handle_txn_event(ev),
            ConnEvent::Reply {
                channel,
                handle,
                message,
            } => self.send_reply(channel, handle, &message),
            ConnEvent::SessionLost {
                channel,
                handle,
                generation,
                session,
            } => self.on_session_lost(channel, handle, generation, &session),
            ConnEvent::SessionTimeout {
                channel,
                handle,
                generation,
            } => self.on_session_timeout(channel, handle, generation),
        }
    }

    pub(super) fn on_session_frame(
        &mut self,
        channel: u16,
        p: Performative,
        payload: Bytes,
    ) -> Result<(), ConnError> {
        match p {
            Performative::Attach(a) => self.on_attach(channel, a),
            Performative::Detach(d) => {
                self.on_detach(channel, d);
                Ok(())
            }
            Performative::Flow(f) => {
                self.on_session_flow(channel, &f);
                self.on_link_flow(channel, &f);
                Ok(())
            }
            Performative::Transfer(t) => {
                self.count_incoming_transfer(channel);
                self.on_transfer(channel, t, payload)
            }
            Performative::Disposition(d) => {
                self.on_disposition(channel, d);
                Ok(())
            }
            _ => Err(ConnError(error(
                errors::NOT_ALLOWED,
                "unexpected performative",
            ))),
        }
    }
}

/// Pop one complete frame from the input buffer.
fn next_frame(inbuf: &mut BytesMut, max: u32) -> Result<Option<Frame>, ConnError> {
    let Some(size) = inbuf
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return Ok(None);
    };
    if size < 8 {
        return Err(ConnError(error(
            errors::FRAMING_ERROR,
            format!("frame size {size} is below 8"),
        )));
    }
    if size > max {
        return Err(ConnError(error(
            errors::FRAMING_ERROR,
            format!("frame size {size} exceeds the negotiated max-frame-size {max}"),
        )));
    }
    if inbuf.len() < size as usize {
        return Ok(None);
    }
    let bytes: Bytes = inbuf.split_to(size as usize).freeze();
    match keybus_amqp::decode_frame_bytes(&bytes, max)? {
        Some((frame, _)) => Ok(Some(frame)),
        None => Err(ConnError(error(errors::FRAMING_ERROR, "incomplete frame"))),
    }
}

async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<()> {
    buf.reserve(64 * 1024);
    let n = r.read_buf(buf).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<[u8; 8]> {
    while buf.len() < 8 {
        read_more(r, buf).await?;
    }
    let h = buf.split_to(8);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h);
    Ok(out)
}

/// Negotiate headers and SASL (`MSSBCBS`, `ANONYMOUS`; or no SASL layer at all). Returns false
/// if the peer spoke something else (we answered with our header and hang up).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    inbuf: &mut BytesMut,
) -> std::io::Result<bool> {
    let header = read_header(io, inbuf).await?;
    match keybus_amqp::parse_protocol_header(&header) {
        Ok(ProtocolHeader::Amqp) => {
            io.write_all(&AMQP_HEADER).await?;
            return Ok(true);
        }
        Ok(ProtocolHeader::Sasl) => {}
        Ok(ProtocolHeader::Tls) | Err(_) => {
            io.write_all(&SASL_HEADER).await?;
            return Ok(false);
        }
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&SASL_HEADER);
    let mechs = SaslMechanisms {
        mechanisms: vec![Symbol::from("MSSBCBS"), Symbol::from("ANONYMOUS")],
    };
    keybus_amqp::encode_frame(
        0,
        &FrameBody::Sasl(SaslFrameBody::Mechanisms(mechs)),
        &mut out,
    );
    io.write_all(&out).await?;
    let init = loop {
        match next_frame(inbuf, 64 * 1024) {
            Ok(Some(f)) => break f,
            Ok(None) => read_more(io, inbuf).await?,
            Err(_) => return Ok(false),
        }
    };
    let code = match init.body {
        FrameBody::Sasl(SaslFrameBody::Init(i))
            if matches!(i.mechanism.as_str(), "ANONYMOUS" | "MSSBCBS" | "EXTERNAL") =>
        {
            0
        }
        _ => 1,
    };
    let mut out = BytesMut::new();
    keybus_amqp::encode_frame(
        0,
        &FrameBody::Sasl(SaslFrameBody::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })),
        &mut out,
    );
    io.write_all(&out).await?;
    if code != 0 {
        return Ok(false);
    }
    let header = read_header(io, inbuf).await?;
    if header != AMQP_HEADER {
        io.write_all(&AMQP_HEADER).await?;
        return Ok(false);
    }
    io.write_all(&AMQP_HEADER).await?;
    Ok(true)
}

/// Serve one accepted connection until it closes. Never panics on peer input.
pub(crate) async fn serve_connection<S>(broker: Arc<Broker>, mut io: S, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let deadline = broker.admission().deadlines.handshake;
    match tokio::time::timeout(deadline, handshake(&mut io, &mut inbuf)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false) | Err(_)) => {
            tracing::debug!(%peer, "handshake failed");
            let _ = io.shutdown().await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "protocol header and SASL not done within the deadline");
            let _ = io.shutdown().await;
            return;
        }
    }
    if peer.spiffe.is_some()
        && let Some(p) = &peer.permit
    {
        p.authenticate();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let max_frame = broker.config().limits.max_frame_size;
    let mut conn = Conn {
        broker: broker.clone(),
        out: BytesMut::with_capacity(64 * 1024),
        peer_max_frame: 512,
        max_frame,
        sessions: HashMap::new(),
        bindings: peer
            .spiffe
            .as_deref()
            .map(|id| Binding {
                audience: "mtls".into(),
                resource: String::new(),
                principal: Arc::new(Principal::from_spiffe(id)),
                expires_at_ms: i64::MAX,
            })
            .into_iter()
            .collect(),
        auth_checked: (broker.auth().generation(), broker.now()),
        failed_tokens: 0,
        close_with: None,
        opened_at: Instant::now(),
        authenticated: peer.spiffe.is_some(),
        permit: peer.permit.clone(),
        id: format!("c-{}", NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)),
        peer: peer.addr.clone(),
        tx,
        next_generation: 1,
        hostname: String::new(),
        pending_sends: Vec::new(),
        transactions: keybus_core::Transactions::new(),
        txn_entities: std::collections::HashMap::new(),
        txn_unsettled: std::collections::HashMap::new(),
        credit_withheld: false,
        commits: Default::default(),
        closed: false,
    };
    let open = broker.connection_opened();
    let result = run(&mut conn, &mut io, &mut inbuf, rx).await;
    // Commits in flight still finish their sends (publishing or forgetting the messages);
    // there is nobody left to answer.
    while conn.commits.next().await.is_some() {}
    drop(open);
    if let Err(ConnError(err)) = result {
        tracing::debug!(%peer, condition = %err.condition.as_str(), "closing connection with error");
        conn.write(0, Performative::Close(Close { error: Some(err) }));
        let _ = io.write_all(&conn.out).await;
    } else {
        let _ = io.write_all(&conn.out).await;
    }
    let _ = io.shutdown().await;
}

impl Conn {
    /// Answer the commits that are already durable (or failed), in this turn.
    fn answer_durable_commits(&mut self) {
        while let Some(Some(events)) = self.commits.next().now_or_never() {
            for ev in events {
                self.handle_event(ev);
            }
        }
    }
}

async fn run<S>(
    conn: &mut Conn,
    io: &mut S,
    inbuf: &mut BytesMut,
    mut rx: mpsc::UnboundedReceiver<ConnEvent>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The first frame must be `open`, within `limits.open_timeout_ms`.
    let open_deadline = tokio::time::Instant::now() + conn.broker.admission().deadlines.open;
    let open = loop {
        match next_frame(inbuf, conn.max_frame)? {
            Some(Frame {
                body: FrameBody::Empty,
                ..
            }) => continue,
            Some(Frame {
                body:
                    FrameBody::Amqp {
                        performative: Performative::Open(o),
                        ..
                    },
                ..
            }) => break o,
            Some(_) => {
                return Err(ConnError(error(
                    errors::NOT_ALLOWED,
                    "the first frame must be open",
                )));
            }
            None => match tokio::time::timeout_at(open_deadline, read_more(io, inbuf)).await {
                Ok(r) => r.map_err(|_| ConnError(error(errors::FRAMING_ERROR, "eof")))?,
                Err(_) => {
                    tracing::debug!(peer = %conn.peer, "no open within the deadline");
                    return Ok(());
                }
            },
        }
    };
    let idle_ms = conn.broker.config().limits.idle_timeout_ms;
    conn.peer_max_frame = open.max_frame_size.max(512);
    conn.hostname = open.hostname.clone().unwrap_or_else(|| "localhost".into());
    conn.write(
        0,
        Performative::Open(Open {
            container_id: format!("keybus-{}", conn.broker.config().namespace),
            hostname: None,
            max_frame_size: conn.max_frame,
            channel_max: 65_535
                .min(conn.broker.config().limits.max_sessions_per_connection as u32 * 4)
                as u16,
            idle_time_out: (idle_ms > 0).then_some(idle_ms),
            ..Default::default()
        }),
    );
    let peer_idle = open
        .idle_time_out
        .filter(|t| *t > 0)
        .map(|t| Duration::from_millis(u64::from(t)));
    // We close a connection that stays silent for the idle time-out we announced.
    let our_idle = (idle_ms > 0).then(|| Duration::from_millis(u64::from(idle_ms)));
    let heartbeat_every = peer_idle.map_or(HEARTBEAT, |p| (p / 2).min(HEARTBEAT));
    // Tick at half the heartbeat period so silence never exceeds 1.5 periods.
    // At least every second, so expired tokens and policy changes detach links promptly.
    let mut ticker = tokio::time::interval((heartbeat_every / 2).min(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_in = Instant::now();
    let mut last_out = Instant::now();
    loop {
        while let Some(frame) = next_frame(inbuf, conn.max_frame)? {
            conn.handle_frame(frame)?;
            if let Some(err) = conn.close_with.take() {
                conn.flush_sends();
                return Err(ConnError(err));
            }
            if conn.closed {
                break;
            }
        }
        conn.flush_sends();
        conn.answer_durable_commits();
        // Every turn (a read, a finished commit, the ticker at least each second) gives
        // withheld sender credit back once the store has caught up.
        conn.restore_credit();
        if !conn.out.is_empty() {
            io.write_all(&conn.out)
                .await
                .map_err(|_| ConnError(error(errors::FRAMING_ERROR, "write failed")))?;
            conn.out.clear();
            last_out = Instant::now();
        }
        if conn.closed {
            return Ok(());
        }
        tokio::select! {
            r = read_more(io, inbuf) => {
                if r.is_err() {
                    return Ok(());
                }
                last_in = Instant::now();
            }
            Some(events) = conn.commits.next(), if !conn.commits.is_empty() => {
                for ev in events {
                    conn.handle_event(ev);
                }
            }
            ev = rx.recv() => {
                if let Some(ev) = ev {
                    conn.handle_event(ev);
                    while let Ok(ev) = rx.try_recv() {
                        conn.handle_event(ev);
                    }
                }
            }
            _ = ticker.tick() => {
                if our_idle.is_some_and(|idle| last_in.elapsed() > idle) {
                    return Err(ConnError(error("amqp:resource-limit-exceeded", "idle timeout: no frames received")));
                }
                if last_out.elapsed() >= heartbeat_every {
                    keybus_amqp::encode_empty_frame(&mut conn.out);
                }
                conn.check_access();
                if let Some(err) = conn.close_with.take() {
                    conn.flush_sends();
                    return Err(ConnError(err));
                }
                conn.detach_gone_links();
                conn.expire_transactions();
            }
        }
    }
}
