//! Link state: what the connection keeps per sender and receiver link, and the deliveries a
//! receiver holds for its caller.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use keybus_amqp::{Bytes, BytesMut, DeliveryState, Message, Source};

use crate::error::Refusal;
use crate::workload::{RecvWork, SendWork};

/// Identifies a link: index of its session in the connection, index of the link in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId {
    pub session: usize,
    pub link: usize,
}

#[derive(Debug, Default)]
pub struct SenderLink {
    /// Link credit granted by the broker and not yet used.
    pub credit: u32,
    pub delivery_count: u32,
    pub(crate) next_tag: u64,
    /// Unsettled window: `unsettled[i]` is delivery id `unsettled_base + i`, `true` once settled.
    pub(crate) unsettled_base: u32,
    pub(crate) unsettled: VecDeque<bool>,
    pub outstanding: u32,
    pub work: Option<SendWork>,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
    /// Settled deliveries of an outgoing message (CBS requests) seen so far.
    pub settled_total: u64,
    /// Outcomes of single sends by delivery id (links without a workload only), taken by
    /// the caller that waits for them.
    pub(crate) outcomes: HashMap<u32, Option<DeliveryState>>,
}

/// What a receiver link does with the deliveries it gets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Complete each one (a bench workload).
    #[default]
    Work,
    /// Keep the payload and settle it at once (replies of a request-response pair).
    Reply,
    /// Keep the delivery for the caller, who settles it (see `receiver.rs`).
    Hold,
}

/// One message a receiver got and holds for its caller.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The delivery id, which dispositions refer to.
    pub delivery_id: u32,
    /// The delivery tag (the lock token in peek-lock mode).
    pub tag: Bytes,
    /// Pre-settled by the broker (receive-and-delete).
    pub settled: bool,
    /// The message as it came (encoded sections).
    pub raw: Bytes,
    /// The decoded message.
    pub message: Message,
}

#[derive(Debug, Default)]
pub struct ReceiverLink {
    pub(crate) intake: Intake,
    /// Replies of a request-response pair (`Intake::Reply`).
    pub inbox: Vec<Bytes>,
    /// Deliveries the caller has not taken yet (`Intake::Hold`).
    pub(crate) held: VecDeque<Delivery>,
    /// Settled echoes of the caller's dispositions by delivery id (`Intake::Hold`).
    pub(crate) echoes: HashMap<u32, Option<DeliveryState>>,
    pub work: Option<RecvWork>,
    /// Credit we granted and the broker has not used.
    pub credit: u32,
    pub delivery_count: u32,
    /// Multi-frame delivery in progress: (delivery id, settled, payload so far).
    pub(crate) partial: Option<(u32, bool, BytesMut)>,
    pub(crate) current_delivery: u32,
    pub(crate) current_tag: Bytes,
    /// Completions (`accepted`, unsettled) waiting to be written, as inclusive id ranges.
    pub(crate) pending: Vec<(u32, u32)>,
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
    pub(crate) handle: u32,
    pub(crate) remote_handle: Option<u32>,
    pub attached: bool,
    /// Why the link ended (set once; a refusal's detach reason replaces the placeholder of
    /// its null terminus).
    pub detached: Option<Refusal>,
    /// The detach was reported to a caller, or the caller closed the link: the link no
    /// longer fails the connection's runs.
    pub(crate) retired: bool,
    /// The source the broker attached with (a session receiver's locked session id is in
    /// its filter).
    pub remote_source: Option<Source>,
    pub kind: LinkKind,
}
