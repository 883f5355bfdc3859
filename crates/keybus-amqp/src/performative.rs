//! Connection, session and link performatives (AMQP 1.0 §2.7) and the
//! composite types they carry (error, terminus, delivery states).

use bytes::{Bytes, BytesMut};

use crate::codec::{self, DescribedList, F, Fields};
use crate::{Dec, DecodeError, Symbol, Value};

type Result<T> = std::result::Result<T, DecodeError>;
type Fieldmap = Vec<(Value, Value)>;

/// Descriptor codes of the performatives and composite types.
pub mod codes {
    pub const OPEN: u64 = 0x10;
    pub const BEGIN: u64 = 0x11;
    pub const ATTACH: u64 = 0x12;
    pub const FLOW: u64 = 0x13;
    pub const TRANSFER: u64 = 0x14;
    pub const DISPOSITION: u64 = 0x15;
    pub const DETACH: u64 = 0x16;
    pub const END: u64 = 0x17;
    pub const CLOSE: u64 = 0x18;
    pub const ERROR: u64 = 0x1d;
    pub const RECEIVED: u64 = 0x23;
    pub const ACCEPTED: u64 = 0x24;
    pub const REJECTED: u64 = 0x25;
    pub const RELEASED: u64 = 0x26;
    pub const MODIFIED: u64 = 0x27;
    pub const SOURCE: u64 = 0x28;
    pub const TARGET: u64 = 0x29;
}

pub(crate) fn req<T>(v: Option<T>, performative: &'static str, field: &'static str) -> Result<T> {
    v.ok_or(DecodeError::InvalidField {
        performative,
        field,
    })
}

fn u_(o: Option<u32>) -> F<'static> {
    o.map_or(F::Null, F::Uint)
}
fn s_(o: &Option<String>) -> F<'_> {
    o.as_deref().map_or(F::Null, F::Str)
}
fn sym_(o: &Option<Symbol>) -> F<'_> {
    o.as_ref().map_or(F::Null, |s| F::Sym(s.as_str()))
}
fn syms_(o: &Option<Vec<Symbol>>) -> F<'_> {
    o.as_deref().map_or(F::Null, F::Syms)
}
fn map_(o: &Option<Fieldmap>) -> F<'_> {
    o.as_deref().map_or(F::Null, F::Map)
}
fn bin_(o: &Option<Bytes>) -> F<'_> {
    o.as_deref().map_or(F::Null, F::Bin)
}
fn ob_(o: Option<bool>) -> F<'static> {
    o.map_or(F::Null, F::Bool)
}
/// A boolean with default `false`: `false` is sent as null (equivalent per spec).
fn flag(b: bool) -> F<'static> {
    if b { F::Bool(true) } else { F::Null }
}
fn err_(o: &Option<AmqpError>) -> F<'_> {
    o.as_ref().map_or(F::Null, |e| F::Nested(e))
}
fn state_(o: &Option<DeliveryState>) -> F<'_> {
    o.as_ref().map_or(F::Null, |s| F::Nested(s))
}

/// Link role; on the wire a boolean (`false` = sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    #[default]
    Sender,
    Receiver,
}

impl Role {
    pub fn as_bool(self) -> bool {
        self == Role::Receiver
    }
    pub fn from_bool(b: bool) -> Role {
        if b { Role::Receiver } else { Role::Sender }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum SenderSettleMode {
    Unsettled = 0,
    Settled = 1,
    #[default]
    Mixed = 2,
}

impl SenderSettleMode {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Unsettled),
            1 => Some(Self::Settled),
            2 => Some(Self::Mixed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ReceiverSettleMode {
    #[default]
    First = 0,
    Second = 1,
}

impl ReceiverSettleMode {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::First),
            1 => Some(Self::Second),
            _ => None,
        }
    }
}

/// `error` (descriptor 0x1d).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AmqpError {
    pub condition: Symbol,
    pub description: Option<String>,
    pub info: Option<Fieldmap>,
}

impl AmqpError {
    pub fn new(condition: &str, description: impl Into<String>) -> Self {
        AmqpError {
            condition: Symbol::from(condition),
            description: Some(description.into()),
            info: None,
        }
    }
}

impl DescribedList for AmqpError {
    fn code(&self) -> u64 {
        codes::ERROR
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            F::Sym(self.condition.as_str()),
            s_(&self.description),
            // Always three fields: Python's sender reads `error[2]` without a length check.
            self.info.as_deref().map_or(F::Map(&[]), F::Map),
        ])
    }
}

fn decode_error(dec: &mut Dec<'_>, code: u64, perf: &'static str) -> Result<AmqpError> {
    if code != codes::ERROR {
        return Err(DecodeError::InvalidField {
            performative: perf,
            field: "error",
        });
    }
    let mut f = Fields::open(dec, "error")?;
    let condition = req(f.symbol("condition")?, "error", "condition")?;
    let description = f.string("description")?;
    // An empty info map is what we send for "none" (see `with_fields`).
    let info = f.map("info")?.filter(|m| !m.is_empty());
    f.finish()?;
    Ok(AmqpError {
        condition,
        description,
        info,
    })
}

/// Delivery states / outcomes (§3.4).
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryState {
    Received {
        section_number: u32,
        section_offset: u64,
    },
    Accepted,
    Rejected {
        error: Option<AmqpError>,
    },
    Released,
    Modified {
        delivery_failed: Option<bool>,
        undeliverable_here: Option<bool>,
        message_annotations: Option<Fieldmap>,
    },
}

impl DescribedList for DeliveryState {
    fn code(&self) -> u64 {
        match self {
            DeliveryState::Received { .. } => codes::RECEIVED,
            DeliveryState::Accepted => codes::ACCEPTED,
            DeliveryState::Rejected { .. } => codes::REJECTED,
            DeliveryState::Released => codes::RELEASED,
            DeliveryState::Modified { .. } => codes::MODIFIED,
        }
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        match self {
            DeliveryState::Received {
                section_number,
                section_offset,
            } => f(&[F::Uint(*section_number), F::Ulong(*section_offset)]),
            DeliveryState::Accepted | DeliveryState::Released => f(&[]),
            DeliveryState::Rejected { error } => f(&[err_(error)]),
            DeliveryState::Modified {
                delivery_failed,
                undeliverable_here,
                message_annotations,
            } => f(&[
                ob_(*delivery_failed),
                ob_(*undeliverable_here),
                map_(message_annotations),
            ]),
        }
    }
}

impl DeliveryState {
    /// Decode a delivery state from a complete described value.
    pub fn decode(input: &mut &[u8]) -> Result<DeliveryState> {
        let mut dec = Dec::new(input);
        if dec.u8()? != 0x00 {
            return Err(DecodeError::InvalidField {
                performative: "delivery-state",
                field: "<descriptor>",
            });
        }
        let d = dec.descriptor()?;
        let code = d.code().unwrap_or(u64::MAX);
        let s = decode_state(&mut dec, code, "delivery-state")?;
        *input = input.get(dec.pos()..).unwrap_or_default();
        Ok(s)
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        codec::encode_described_list(self, buf);
    }
}

pub(crate) fn decode_state(
    dec: &mut Dec<'_>,
    code: u64,
    perf: &'static str,
) -> Result<DeliveryState> {
    Ok(match code {
        codes::RECEIVED => {
            let mut f = Fields::open(dec, "received")?;
            let section_number = req(f.uint("section-number")?, "received", "section-number")?;
            let section_offset = req(f.ulong("section-offset")?, "received", "section-offset")?;
            f.finish()?;
            DeliveryState::Received {
                section_number,
                section_offset,
            }
        }
        codes::ACCEPTED => {
            Fields::open(dec, "accepted")?.finish()?;
            DeliveryState::Accepted
        }
        codes::REJECTED => {
            let mut f = Fields::open(dec, "rejected")?;
            let error = f.described("error", |d, c| decode_error(d, c, "rejected"))?;
            f.finish()?;
            DeliveryState::Rejected { error }
        }
        codes::RELEASED => {
            Fields::open(dec, "released")?.finish()?;
            DeliveryState::Released
        }
        codes::MODIFIED => {
            let mut f = Fields::open(dec, "modified")?;
            let delivery_failed = f.bool("delivery-failed")?;
            let undeliverable_here = f.bool("undeliverable-here")?;
            let message_annotations = f.map("message-annotations")?;
            f.finish()?;
            DeliveryState::Modified {
                delivery_failed,
                undeliverable_here,
                message_annotations,
            }
        }
        _ => {
            return Err(DecodeError::InvalidField {
                performative: perf,
                field: "state",
            });
        }
    })
}

/// `source` terminus (descriptor 0x28).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    pub address: Option<String>,
    pub durable: u32,
    pub expiry_policy: Option<Symbol>,
    pub timeout: u32,
    pub dynamic: bool,
    pub dynamic_node_properties: Option<Fieldmap>,
    pub distribution_mode: Option<Symbol>,
    pub filter: Option<Fieldmap>,
    pub default_outcome: Option<Value>,
    pub outcomes: Option<Vec<Symbol>>,
    pub capabilities: Option<Vec<Symbol>>,
}

impl DescribedList for Source {
    fn code(&self) -> u64 {
        codes::SOURCE
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            s_(&self.address),
            F::Uint(self.durable),
            sym_(&self.expiry_policy),
            F::Uint(self.timeout),
            flag(self.dynamic),
            map_(&self.dynamic_node_properties),
            sym_(&self.distribution_mode),
            map_(&self.filter),
            self.default_outcome.as_ref().map_or(F::Null, F::Val),
            syms_(&self.outcomes),
            syms_(&self.capabilities),
        ])
    }
}

fn decode_source(dec: &mut Dec<'_>, code: u64) -> Result<Source> {
    if code != codes::SOURCE {
        return Err(DecodeError::InvalidField {
            performative: "attach",
            field: "source",
        });
    }
    let mut f = Fields::open(dec, "source")?;
    let s = Source {
        address: f.address("address")?,
        durable: f.uint("durable")?.unwrap_or(0),
        expiry_policy: f.symbol("expiry-policy")?,
        timeout: f.uint("timeout")?.unwrap_or(0),
        dynamic: f.bool("dynamic")?.unwrap_or(false),
        dynamic_node_properties: f.map("dynamic-node-properties")?,
        distribution_mode: f.symbol("distribution-mode")?,
        filter: f.map("filter")?,
        default_outcome: f.value()?,
        outcomes: f.symbols("outcomes")?,
        capabilities: f.symbols("capabilities")?,
    };
    f.finish()?;
    Ok(s)
}

/// `target` terminus (descriptor 0x29).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    pub address: Option<String>,
    pub durable: u32,
    pub expiry_policy: Option<Symbol>,
    pub timeout: u32,
    pub dynamic: bool,
    pub dynamic_node_properties: Option<Fieldmap>,
    pub capabilities: Option<Vec<Symbol>>,
}

impl DescribedList for Target {
    fn code(&self) -> u64 {
        codes::TARGET
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            s_(&self.address),
            F::Uint(self.durable),
            sym_(&self.expiry_policy),
            F::Uint(self.timeout),
            flag(self.dynamic),
            map_(&self.dynamic_node_properties),
            syms_(&self.capabilities),
        ])
    }
}

fn decode_target(dec: &mut Dec<'_>, code: u64) -> Result<Target> {
    if code != codes::TARGET {
        return Err(DecodeError::InvalidField {
            performative: "attach",
            field: "target",
        });
    }
    let mut f = Fields::open(dec, "target")?;
    let t = Target {
        address: f.address("address")?,
        durable: f.uint("durable")?.unwrap_or(0),
        expiry_policy: f.symbol("expiry-policy")?,
        timeout: f.uint("timeout")?.unwrap_or(0),
        dynamic: f.bool("dynamic")?.unwrap_or(false),
        dynamic_node_properties: f.map("dynamic-node-properties")?,
        capabilities: f.symbols("capabilities")?,
    };
    f.finish()?;
    Ok(t)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub container_id: String,
    pub hostname: Option<String>,
    /// Default `u32::MAX`.
    pub max_frame_size: u32,
    /// Default 65535.
    pub channel_max: u16,
    /// Milliseconds.
    pub idle_time_out: Option<u32>,
    pub outgoing_locales: Option<Vec<Symbol>>,
    pub incoming_locales: Option<Vec<Symbol>>,
    pub offered_capabilities: Option<Vec<Symbol>>,
    pub desired_capabilities: Option<Vec<Symbol>>,
    pub properties: Option<Fieldmap>,
}

impl Default for Open {
    fn default() -> Self {
        Open {
            container_id: String::new(),
            hostname: None,
            max_frame_size: u32::MAX,
            channel_max: u16::MAX,
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }
}

impl DescribedList for Open {
    fn code(&self) -> u64 {
        codes::OPEN
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            F::Str(&self.container_id),
            s_(&self.hostname),
            F::Uint(self.max_frame_size),
            F::Ushort(self.channel_max),
            u_(self.idle_time_out),
            syms_(&self.outgoing_locales),
            syms_(&self.incoming_locales),
            syms_(&self.offered_capabilities),
            syms_(&self.desired_capabilities),
            map_(&self.properties),
        ])
    }
}

fn decode_open(dec: &mut Dec<'_>) -> Result<Open> {
    const P: &str = "open";
    let mut f = Fields::open(dec, P)?;
    let o = Open {
        container_id: req(f.string("container-id")?, P, "container-id")?,
        hostname: f.string("hostname")?,
        max_frame_size: f.uint("max-frame-size")?.unwrap_or(u32::MAX),
        channel_max: f.ushort("channel-max")?.unwrap_or(u16::MAX),
        idle_time_out: f.uint("idle-time-out")?,
        outgoing_locales: f.symbols("outgoing-locales")?,
        incoming_locales: f.symbols("incoming-locales")?,
        offered_capabilities: f.symbols("offered-capabilities")?,
        desired_capabilities: f.symbols("desired-capabilities")?,
        properties: f.map("properties")?,
    };
    f.finish()?;
    Ok(o)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Begin {
    pub remote_channel: Option<u16>,
    pub next_outgoing_id: u32,
    pub incoming_window: u32,
    pub outgoing_window: u32,
    /// Default `u32::MAX`.
    pub handle_max: u32,
    pub offered_capabilities: Option<Vec<Symbol>>,
    pub desired_capabilities: Option<Vec<Symbol>>,
    pub properties: Option<Fieldmap>,
}

impl Default for Begin {
    fn default() -> Self {
        Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 0,
            outgoing_window: 0,
            handle_max: u32::MAX,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }
}

impl DescribedList for Begin {
    fn code(&self) -> u64 {
        codes::BEGIN
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            self.remote_channel.map_or(F::Null, F::Ushort),
            F::Uint(self.next_outgoing_id),
            F::Uint(self.incoming_window),
            F::Uint(self.outgoing_window),
            F::Uint(self.handle_max),
            syms_(&self.offered_capabilities),
            syms_(&self.desired_capabilities),
            map_(&self.properties),
        ])
    }
}

fn decode_begin(dec: &mut Dec<'_>) -> Result<Begin> {
    const P: &str = "begin";
    let mut f = Fields::open(dec, P)?;
    let b = Begin {
        remote_channel: f.ushort("remote-channel")?,
        next_outgoing_id: req(f.uint("next-outgoing-id")?, P, "next-outgoing-id")?,
        incoming_window: req(f.uint("incoming-window")?, P, "incoming-window")?,
        outgoing_window: req(f.uint("outgoing-window")?, P, "outgoing-window")?,
        handle_max: f.uint("handle-max")?.unwrap_or(u32::MAX),
        offered_capabilities: f.symbols("offered-capabilities")?,
        desired_capabilities: f.symbols("desired-capabilities")?,
        properties: f.map("properties")?,
    };
    f.finish()?;
    Ok(b)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attach {
    pub name: String,
    pub handle: u32,
    pub role: Role,
    pub snd_settle_mode: SenderSettleMode,
    pub rcv_settle_mode: ReceiverSettleMode,
    pub source: Option<Source>,
    pub target: Option<Target>,
    pub unsettled: Option<Fieldmap>,
    pub incomplete_unsettled: bool,
    pub initial_delivery_count: Option<u32>,
    pub max_message_size: Option<u64>,
    pub offered_capabilities: Option<Vec<Symbol>>,
    pub desired_capabilities: Option<Vec<Symbol>>,
    pub properties: Option<Fieldmap>,
}

impl DescribedList for Attach {
    fn code(&self) -> u64 {
        codes::ATTACH
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            F::Str(&self.name),
            F::Uint(self.handle),
            F::Bool(self.role.as_bool()),
            F::Ubyte(self.snd_settle_mode as u8),
            F::Ubyte(self.rcv_settle_mode as u8),
            self.source.as_ref().map_or(F::Null, |s| F::Nested(s)),
            self.target.as_ref().map_or(F::Null, |t| F::Nested(t)),
            map_(&self.unsettled),
            flag(self.incomplete_unsettled),
            u_(self.initial_delivery_count),
            self.max_message_size.map_or(F::Null, F::Ulong),
            syms_(&self.offered_capabilities),
            syms_(&self.desired_capabilities),
            map_(&self.properties),
        ])
    }
}

fn decode_attach(dec: &mut Dec<'_>) -> Result<Attach> {
    const P: &str = "attach";
    let mut f = Fields::open(dec, P)?;
    let name = req(f.string("name")?, P, "name")?;
    let handle = req(f.uint("handle")?, P, "handle")?;
    let role = Role::from_bool(req(f.bool("role")?, P, "role")?);
    let snd_settle_mode = match f.ubyte("snd-settle-mode")? {
        None => SenderSettleMode::default(),
        Some(v) => req(SenderSettleMode::from_u8(v), P, "snd-settle-mode")?,
    };
    let rcv_settle_mode = match f.ubyte("rcv-settle-mode")? {
        None => ReceiverSettleMode::default(),
        Some(v) => req(ReceiverSettleMode::from_u8(v), P, "rcv-settle-mode")?,
    };
    let a = Attach {
        name,
        handle,
        role,
        snd_settle_mode,
        rcv_settle_mode,
        source: f.described("source", decode_source)?,
        target: f.described("target", decode_target)?,
        unsettled: f.map("unsettled")?,
        incomplete_unsettled: f.bool("incomplete-unsettled")?.unwrap_or(false),
        initial_delivery_count: f.uint("initial-delivery-count")?,
        max_message_size: f.ulong("max-message-size")?,
        offered_capabilities: f.symbols("offered-capabilities")?,
        desired_capabilities: f.symbols("desired-capabilities")?,
        properties: f.map("properties")?,
    };
    f.finish()?;
    Ok(a)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Flow {
    pub next_incoming_id: Option<u32>,
    pub incoming_window: u32,
    pub next_outgoing_id: u32,
    pub outgoing_window: u32,
    pub handle: Option<u32>,
    pub delivery_count: Option<u32>,
    pub link_credit: Option<u32>,
    pub available: Option<u32>,
    pub drain: bool,
    pub echo: bool,
    pub properties: Option<Fieldmap>,
}

impl DescribedList for Flow {
    fn code(&self) -> u64 {
        codes::FLOW
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            u_(self.next_incoming_id),
            F::Uint(self.incoming_window),
            F::Uint(self.next_outgoing_id),
            F::Uint(self.outgoing_window),
            u_(self.handle),
            u_(self.delivery_count),
            u_(self.link_credit),
            u_(self.available),
            flag(self.drain),
            flag(self.echo),
            map_(&self.properties),
        ])
    }
}

fn decode_flow(dec: &mut Dec<'_>) -> Result<Flow> {
    const P: &str = "flow";
    let mut f = Fields::open(dec, P)?;
    let fl = Flow {
        next_incoming_id: f.uint("next-incoming-id")?,
        incoming_window: req(f.uint("incoming-window")?, P, "incoming-window")?,
        next_outgoing_id: req(f.uint("next-outgoing-id")?, P, "next-outgoing-id")?,
        outgoing_window: req(f.uint("outgoing-window")?, P, "outgoing-window")?,
        handle: f.uint("handle")?,
        delivery_count: f.uint("delivery-count")?,
        link_credit: f.uint("link-credit")?,
        available: f.uint("available")?,
        drain: f.bool("drain")?.unwrap_or(false),
        echo: f.bool("echo")?.unwrap_or(false),
        properties: f.map("properties")?,
    };
    f.finish()?;
    Ok(fl)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transfer {
    pub handle: u32,
    pub delivery_id: Option<u32>,
    pub delivery_tag: Option<Bytes>,
    pub message_format: Option<u32>,
    pub settled: Option<bool>,
    pub more: bool,
    pub rcv_settle_mode: Option<ReceiverSettleMode>,
    pub state: Option<DeliveryState>,
    pub resume: bool,
    pub aborted: bool,
    pub batchable: bool,
}

impl DescribedList for Transfer {
    fn code(&self) -> u64 {
        codes::TRANSFER
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            F::Uint(self.handle),
            u_(self.delivery_id),
            bin_(&self.delivery_tag),
            u_(self.message_format),
            ob_(self.settled),
            flag(self.more),
            self.rcv_settle_mode.map_or(F::Null, |m| F::Ubyte(m as u8)),
            state_(&self.state),
            flag(self.resume),
            flag(self.aborted),
            flag(self.batchable),
        ])
    }
}

fn decode_transfer(dec: &mut Dec<'_>) -> Result<Transfer> {
    const P: &str = "transfer";
    let mut f = Fields::open(dec, P)?;
    let handle = req(f.uint("handle")?, P, "handle")?;
    let delivery_id = f.uint("delivery-id")?;
    let delivery_tag = f.binary("delivery-tag")?;
    let message_format = f.uint("message-format")?;
    let settled = f.bool("settled")?;
    let more = f.bool("more")?.unwrap_or(false);
    let rcv_settle_mode = match f.ubyte("rcv-settle-mode")? {
        None => None,
        Some(v) => Some(req(ReceiverSettleMode::from_u8(v), P, "rcv-settle-mode")?),
    };
    let t = Transfer {
        handle,
        delivery_id,
        delivery_tag,
        message_format,
        settled,
        more,
        rcv_settle_mode,
        state: f.described("state", |d, c| decode_state(d, c, P))?,
        resume: f.bool("resume")?.unwrap_or(false),
        aborted: f.bool("aborted")?.unwrap_or(false),
        batchable: f.bool("batchable")?.unwrap_or(false),
    };
    f.finish()?;
    Ok(t)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disposition {
    pub role: Role,
    pub first: u32,
    pub last: Option<u32>,
    pub settled: bool,
    pub state: Option<DeliveryState>,
    pub batchable: bool,
}

impl DescribedList for Disposition {
    fn code(&self) -> u64 {
        codes::DISPOSITION
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[
            F::Bool(self.role.as_bool()),
            F::Uint(self.first),
            u_(self.last),
            flag(self.settled),
            state_(&self.state),
            flag(self.batchable),
        ])
    }
}

fn decode_disposition(dec: &mut Dec<'_>) -> Result<Disposition> {
    const P: &str = "disposition";
    let mut f = Fields::open(dec, P)?;
    let d = Disposition {
        role: Role::from_bool(req(f.bool("role")?, P, "role")?),
        first: req(f.uint("first")?, P, "first")?,
        last: f.uint("last")?,
        settled: f.bool("settled")?.unwrap_or(false),
        state: f.described("state", |d, c| decode_state(d, c, P))?,
        batchable: f.bool("batchable")?.unwrap_or(false),
    };
    f.finish()?;
    Ok(d)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detach {
    pub handle: u32,
    pub closed: bool,
    pub error: Option<AmqpError>,
}

impl DescribedList for Detach {
    fn code(&self) -> u64 {
        codes::DETACH
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[F::Uint(self.handle), flag(self.closed), err_(&self.error)])
    }
}

fn decode_detach(dec: &mut Dec<'_>) -> Result<Detach> {
    const P: &str = "detach";
    let mut f = Fields::open(dec, P)?;
    let d = Detach {
        handle: req(f.uint("handle")?, P, "handle")?,
        closed: f.bool("closed")?.unwrap_or(false),
        error: f.described("error", |d, c| decode_error(d, c, P))?,
    };
    f.finish()?;
    Ok(d)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct End {
    pub error: Option<AmqpError>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Close {
    pub error: Option<AmqpError>,
}

struct ErrorOnly<'a>(u64, &'a Option<AmqpError>);

impl DescribedList for ErrorOnly<'_> {
    fn code(&self) -> u64 {
        self.0
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        f(&[err_(self.1)])
    }
}

fn decode_error_only(dec: &mut Dec<'_>, p: &'static str) -> Result<Option<AmqpError>> {
    let mut f = Fields::open(dec, p)?;
    let e = f.described("error", |d, c| decode_error(d, c, p))?;
    f.finish()?;
    Ok(e)
}

/// Any AMQP performative.
#[derive(Debug, Clone, PartialEq)]
// The variants are part of the public API; boxing would change it.
#[allow(clippy::large_enum_variant)]
pub enum Performative {
    Open(Open),
    Begin(Begin),
    Attach(Attach),
    Flow(Flow),
    Transfer(Transfer),
    Disposition(Disposition),
    Detach(Detach),
    End(End),
    Close(Close),
}

macro_rules! perf_from {
    ($($v:ident),*) => {
        $(impl From<$v> for Performative {
            fn from(x: $v) -> Self {
                Performative::$v(x)
            }
        })*
    };
}
perf_from!(
    Open,
    Begin,
    Attach,
    Flow,
    Transfer,
    Disposition,
    Detach,
    End,
    Close
);

impl Performative {
    /// The performative's name as in the spec (`"open"`, `"transfer"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Performative::Open(_) => "open",
            Performative::Begin(_) => "begin",
            Performative::Attach(_) => "attach",
            Performative::Flow(_) => "flow",
            Performative::Transfer(_) => "transfer",
            Performative::Disposition(_) => "disposition",
            Performative::Detach(_) => "detach",
            Performative::End(_) => "end",
            Performative::Close(_) => "close",
        }
    }

    fn with_list<R>(&self, f: impl FnOnce(&dyn DescribedList) -> R) -> R {
        match self {
            Performative::Open(x) => f(x),
            Performative::Begin(x) => f(x),
            Performative::Attach(x) => f(x),
            Performative::Flow(x) => f(x),
            Performative::Transfer(x) => f(x),
            Performative::Disposition(x) => f(x),
            Performative::Detach(x) => f(x),
            Performative::End(x) => f(&ErrorOnly(codes::END, &x.error)),
            Performative::Close(x) => f(&ErrorOnly(codes::CLOSE, &x.error)),
        }
    }

    /// Append the performative (a described list, trailing nulls trimmed).
    pub fn encode(&self, buf: &mut BytesMut) {
        self.with_list(|l| codec::encode_described_list(l, buf))
    }

    pub fn encoded_size(&self) -> usize {
        self.with_list(codec::described_list_size)
    }

    /// Decode a performative from the front of `input`, advancing it.
    pub fn decode(input: &mut &[u8]) -> Result<Performative> {
        let mut dec = Dec::new(input);
        let p = Self::decode_from(&mut dec)?;
        *input = input.get(dec.pos()..).unwrap_or_default();
        Ok(p)
    }

    pub(crate) fn decode_from(dec: &mut Dec<'_>) -> Result<Performative> {
        let offset = dec.pos();
        if dec.u8()? != 0x00 {
            return Err(DecodeError::InvalidFrame(format!(
                "expected a described performative at offset {offset}"
            )));
        }
        let d = dec.descriptor()?;
        let code = d
            .code()
            .ok_or(DecodeError::InvalidDescriptor { offset: offset + 1 })?;
        Ok(match code {
            codes::OPEN => Performative::Open(decode_open(dec)?),
            codes::BEGIN => Performative::Begin(decode_begin(dec)?),
            codes::ATTACH => Performative::Attach(decode_attach(dec)?),
            codes::FLOW => Performative::Flow(decode_flow(dec)?),
            codes::TRANSFER => Performative::Transfer(decode_transfer(dec)?),
            codes::DISPOSITION => Performative::Disposition(decode_disposition(dec)?),
            codes::DETACH => Performative::Detach(decode_detach(dec)?),
            codes::END => Performative::End(End {
                error: decode_error_only(dec, "end")?,
            }),
            codes::CLOSE => Performative::Close(Close {
                error: decode_error_only(dec, "close")?,
            }),
            c => return Err(DecodeError::UnknownPerformative(c)),
        })
    }
}
