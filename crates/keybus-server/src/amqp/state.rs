//! The connection's state, data only: the connection ([`Conn`]), its sessions, links and
//! credentials, and the peer it serves. Behaviour lives in the files beside it (`connection`,
//! `attach`, `receive`, `send`, `settle`, `reply`, `access`, `cbs`, `management`,
//! `sessions`), which depend on this module and never on each other's items.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use keybus_amqp::{AmqpError, Attach, BytesMut, DecodeError, Flow, Performative};
use keybus_core::{IncomingMessage, ReceiveMode, SubQueue};
use tokio::sync::mpsc;

use super::errors::{self, error};
use super::events::ConnEvent;
use crate::runtime::admission::Permit;
use crate::runtime::{Broker, Entity};
use keybus_auth::Principal;
use keybus_auth::Right;

/// Credit we grant to client senders, topped up when half is used.
pub(crate) const SENDER_CREDIT: u32 = 1000;

/// What a link is attached to.
pub(crate) enum LinkKind {
    /// Client sends messages to an entity; with send-via, `via` is the entity the link was
    /// attached to (the one its transactions are bound to) and `entity` the destination.
    EntityIn {
        entity: Arc<Entity>,
        via: Option<Arc<Entity>>,
    },
    /// Client receives messages from an entity (sub-queue).
    EntityOut {
        entity: Arc<Entity>,
        subscription: Option<String>,
        sub: SubQueue,
        mode: ReceiveMode,
        credit: u32,
        delivery_count: u32,
        waiting: bool,
        unsettled: u32,
        /// Set for session receivers.
        session: Option<SessionBinding>,
    },
    /// Requests to `$cbs`.
    CbsIn,
    /// `declare` and `discharge` sent to the transaction coordinator.
    Coordinator,
    /// Requests to `<entity>/$management`.
    MgmtIn {
        entity: Arc<Entity>,
        subscription: Option<String>,
        sub: SubQueue,
    },
    /// Responses from `$cbs` or `$management` (`node` is the normalised node address).
    ReplyOut {
        node: String,
        target: Option<String>,
        next_tag: u64,
    },
}

/// The session of a session receiver link.
pub(crate) enum SessionBinding {
    /// A next-available attach still looking for a session: its reply is deferred.
    Waiting(Box<Attach>),
    /// The link holds this session's lock.
    Held(SessionGuard),
}

/// A held session lock; dropping it (detach, session end, connection loss) releases the
/// session, so it never outlives its link.
pub(crate) struct SessionGuard {
    pub id: String,
    pub holder: u64,
    pub(crate) entity: Arc<Entity>,
    pub(crate) subscription: Option<String>,
    pub(crate) clock: Arc<dyn keybus_core::Clock>,
}

impl SessionGuard {
    pub(super) fn new(
        id: String,
        holder: u64,
        entity: Arc<Entity>,
        subscription: Option<String>,
        clock: Arc<dyn keybus_core::Clock>,
    ) -> SessionGuard {
        SessionGuard {
            id,
            holder,
            entity,
            subscription,
            clock,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let now = self.clock.now();
        let mut st = self.entity.lock();
        st.remove_session_link(self.holder);
        if let Some(q) = st.receiver(self.subscription.as_deref()) {
            q.release_session(&self.id, self.holder, now);
        }
        if let Some(fut) = self.entity.submit(&mut st)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(err) = fut.await {
                    tracing::error!(%err, "store commit failed releasing a session");
                }
            });
        }
        st.wake();
    }
}

/// A partly received multi-frame transfer.
pub(crate) struct Partial {
    pub(crate) delivery_id: u32,
    pub(crate) format: u32,
    pub(crate) settled: bool,
    pub(crate) buf: BytesMut,
    pub(crate) oversize: bool,
    /// The transaction the transfer joins (its `transactional-state`), as sent.
    pub(crate) txn: Option<keybus_amqp::Bytes>,
}

/// One attached link.
pub(crate) struct Link {
    /// Counts the link in `keybus_active_links` while it lives.
    pub(crate) _gauge: crate::runtime::metrics::LinkGauge,
    pub name: String,
    pub kind: LinkKind,
    pub generation: u64,
    /// The entity path and right that authorised the attach (re-checked on token expiry).
    pub auth: Option<(String, Right)>,
    pub(crate) partial: Option<Partial>,
    /// For links the client sends on: credit left and the client's delivery count.
    pub(crate) in_credit: u32,
    pub(crate) in_count: u32,
}

/// A send waiting for the end of the input batch so its store write can share a commit.
pub(crate) struct PendingSend {
    pub channel: u16,
    pub delivery_id: u32,
    pub settled: bool,
    pub entity: Arc<Entity>,
    pub result: Result<Vec<IncomingMessage>, (&'static str, String)>,
}

/// Sessions advertise a window this large and re-open it when half is used.
pub(crate) const SESSION_WINDOW: u32 = 1 << 20;

/// A fatal connection error: we send `close` with it and hang up.
#[derive(Debug)]
pub(crate) struct ConnError(pub AmqpError);

impl From<DecodeError> for ConnError {
    fn from(e: DecodeError) -> Self {
        ConnError(error(errors::DECODE_ERROR, e.to_string()))
    }
}

/// One AMQP session.
pub(crate) struct Session {
    pub channel: u16,
    pub next_outgoing_id: u32,
    pub next_incoming_id: u32,
    pub incoming_window: u32,
    pub remote_incoming_window: u32,
    pub links: HashMap<u32, Link>,
    pub next_delivery_id: u32,
    /// Deliveries sent unsettled on this session: delivery-id → (link handle, lock token).
    pub unsettled: HashMap<u32, Unsettled>,
    pub cross_entity: CrossEntity,
}

/// Cross-entity transactions on a session, as the Java SDK's `enableCrossEntityTransactions()`
/// asks for them: every link on one session, the transaction coordinator attached first. The
/// first entity linked after it is the "via" entity, and every sender link on the session to
/// another entity sends via it (as an attach with `com.microsoft:transfer-destination-address`
/// does).
pub(crate) enum CrossEntity {
    /// No coordinator came before the session's first entity link.
    Off,
    /// A coordinator came first; no entity is linked yet.
    Awaiting,
    /// The via entity.
    Via(Arc<Entity>),
}

/// A delivery sent unsettled: (link handle, lock token, entity, subscription).
pub(crate) type Unsettled = (
    u32,
    keybus_core::LockToken,
    Arc<crate::runtime::Entity>,
    Option<String>,
);

/// Failed `put-token`s tolerated on one connection before it is closed (brute force).
pub(crate) const MAX_FAILED_TOKENS: u32 = 20;

/// A verified credential on a connection, good for `resource` and below until it expires.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    /// The CBS `name` it was put for.
    pub audience: String,
    /// Lower-case host-less path it covers (`""` = the namespace).
    pub resource: String,
    pub principal: Arc<Principal>,
    pub expires_at_ms: i64,
}

/// The connection state owned by its task.
pub(crate) struct Conn {
    pub broker: Arc<Broker>,
    pub out: BytesMut,
    pub peer_max_frame: u32,
    pub max_frame: u32,
    pub sessions: HashMap<u16, Session>,
    /// Credentials put on `$cbs` (and the client certificate's identity), by audience.
    pub bindings: Vec<Binding>,
    /// The auth generation and time the links were last checked against.
    pub auth_checked: (u64, i64),
    /// Failed `put-token`s on this connection (it is closed after [`MAX_FAILED_TOKENS`]).
    pub failed_tokens: u32,
    /// Set to close the connection with this error after the current frame.
    pub close_with: Option<keybus_amqp::AmqpError>,
    /// When the connection opened, and whether a token was ever accepted on it (a
    /// connection that presents none within `limits.token_timeout_ms` is closed).
    pub opened_at: Instant,
    pub authenticated: bool,
    /// The socket's admission permit: it leaves the unauthenticated budget with the first
    /// valid token.
    pub permit: Option<Arc<crate::runtime::admission::Permit>>,
    /// For audit lines: a connection id and the peer address.
    pub id: String,
    pub peer: String,
    pub tx: mpsc::UnboundedSender<ConnEvent>,
    pub next_generation: u64,
    pub hostname: String,
    pub pending_sends: Vec<PendingSend>,
    /// A sender link's credit ran low while the store was busy and was not topped up;
    /// `restore_credit` gives it back once the store admits sends again.
    pub credit_withheld: bool,
    /// Store commits this connection waits for, each finishing its sends or settlements
    /// and yielding what to write back. Polled by the connection's own task: no task is
    /// spawned per commit, and one already durable is answered in the same turn.
    pub commits: FuturesUnordered<Commit>,
    pub closed: bool,
    /// The transactions this connection declared (closing it rolls them back: their work
    /// is dropped with it) and the entity each is bound to.
    pub transactions: keybus_core::Transactions,
    pub txn_entities: HashMap<keybus_core::TxnId, Arc<Entity>>,
    /// The deliveries whose settlement joined a transaction, by (channel, delivery id): a
    /// rollback gives them back to their session, so the receiver can settle them again.
    pub txn_unsettled: HashMap<keybus_core::TxnId, Vec<(u16, u32, Unsettled)>>,
}

/// A store commit in flight and what it yields once durable (or failed).
pub(crate) type Commit =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<ConnEvent>> + Send>>;

impl Conn {
    pub(crate) fn write(&mut self, channel: u16, p: Performative) {
        keybus_amqp::encode_amqp_frame(channel, &p, &[], &mut self.out);
    }

    /// Wait for `commit` on this connection's task.
    pub(crate) fn await_commit(
        &mut self,
        commit: impl std::future::Future<Output = Vec<ConnEvent>> + Send + 'static,
    ) {
        self.commits.push(Box::pin(commit));
    }
}

/// A session `flow` frame (no link fields).
pub(crate) fn session_flow(s: &Session) -> Flow {
    Flow {
        next_incoming_id: Some(s.next_incoming_id),
        incoming_window: s.incoming_window,
        next_outgoing_id: s.next_outgoing_id,
        outgoing_window: SESSION_WINDOW,
        ..Default::default()
    }
}

/// Who is on the other end of a connection: its address and, with mTLS, the SPIFFE ID of its
/// verified client certificate.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub addr: String,
    pub spiffe: Option<String>,
    /// The socket's admission permit (freed when the last clone is dropped).
    pub permit: Option<Arc<Permit>>,
}

impl Peer {
    pub(crate) fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            spiffe: None,
            permit: None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}
