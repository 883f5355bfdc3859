//! Opening sessions and attaching links: senders, receivers (peek-lock or
//! receive-and-delete, optionally on a session), and the links of request-response pairs.

use keybus_amqp::{
    Attach, AttachTarget, Begin, Performative, ReceiverSettleMode, Role, SenderSettleMode, Source,
    Symbol, Target, Value,
};

use crate::connection::{Connection, INCOMING_WINDOW};
use crate::link::{Intake, Link, LinkId, LinkKind, ReceiverLink, SenderLink};
use crate::session::Session;

/// How a receiver takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveMode {
    /// The broker locks each message until the receiver settles it.
    #[default]
    PeekLock,
    /// The broker sends messages pre-settled and deletes them.
    ReceiveAndDelete,
}

/// Which session a receiver asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFilter {
    /// This session id.
    Id(String),
    /// The next session with messages that no one holds.
    NextAvailable,
}

/// Options of a receiver link.
#[derive(Debug, Clone, Default)]
pub struct ReceiverOptions {
    pub mode: ReceiveMode,
    /// A session receiver (`com.microsoft:session-filter`), or a plain one.
    pub session: Option<SessionFilter>,
}

/// The source filter key a session receiver attaches with.
pub const SESSION_FILTER: &str = "com.microsoft:session-filter";

impl Connection {
    pub(crate) fn new_session(&mut self) -> usize {
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

    pub(crate) fn add_link(
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
            retired: false,
            remote_source: None,
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

    pub(crate) fn attach_sender(&mut self, session: usize, address: &str) -> LinkId {
        self.attach_sender_via(session, address, None)
    }

    /// A sender link to `address`; with `destination`, a send-via link: its messages go to
    /// `destination` through `address` (the attach property
    /// `com.microsoft:transfer-destination-address`).
    pub(crate) fn attach_sender_via(
        &mut self,
        session: usize,
        address: &str,
        destination: Option<&str>,
    ) -> LinkId {
        let name = format!("kb-snd-{}", uuid::Uuid::new_v4().simple());
        let properties = destination.map(|d| {
            vec![(
                Value::Symbol(Symbol::from("com.microsoft:transfer-destination-address")),
                Value::String(d.to_string()),
            )]
        });
        let attach = Attach {
            name: name.clone(),
            role: Role::Sender,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Source {
                address: Some(name.clone()),
                ..Default::default()
            }),
            target: Some(AttachTarget::Node(Target {
                address: Some(address.to_string()),
                ..Default::default()
            })),
            initial_delivery_count: Some(0),
            properties,
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

    /// Open a session with a peek-lock receiver link on `address` that completes what it
    /// gets (no credit until a [`crate::RecvWork`] is set).
    pub fn open_receiver(&mut self, address: &str) -> LinkId {
        let session = self.new_session();
        self.attach_receiver(session, address, Intake::Work, &ReceiverOptions::default())
    }

    pub(crate) fn attach_receiver(
        &mut self,
        session: usize,
        address: &str,
        intake: Intake,
        options: &ReceiverOptions,
    ) -> LinkId {
        let (snd_settle_mode, rcv_settle_mode) = match options.mode {
            ReceiveMode::PeekLock => (SenderSettleMode::Unsettled, ReceiverSettleMode::Second),
            ReceiveMode::ReceiveAndDelete => (SenderSettleMode::Settled, ReceiverSettleMode::First),
        };
        let filter = options.session.as_ref().map(|f| {
            let id = match f {
                SessionFilter::Id(id) => Value::String(id.clone()),
                SessionFilter::NextAvailable => Value::Null,
            };
            vec![(Value::Symbol(Symbol::from(SESSION_FILTER)), id)]
        });
        let name = format!("kb-rcv-{}", uuid::Uuid::new_v4().simple());
        let attach = Attach {
            name: name.clone(),
            role: Role::Receiver,
            snd_settle_mode,
            rcv_settle_mode,
            source: Some(Source {
                address: Some(address.to_string()),
                filter,
                ..Default::default()
            }),
            target: Some(AttachTarget::Node(Target {
                address: Some(name.clone()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let kind = LinkKind::Receiver(ReceiverLink {
            intake,
            ..Default::default()
        });
        self.add_link(session, name, address.to_string(), kind, attach)
    }
}
