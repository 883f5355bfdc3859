//! Session state: one AMQP session (its channels, transfer windows and links).

use keybus_amqp::Flow;

use crate::connection::INCOMING_WINDOW;
use crate::link::{Link, LinkKind};

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) channel: u16,
    pub(crate) remote_channel: Option<u16>,
    pub(crate) next_outgoing_id: u32,
    /// Transfers the broker still accepts on this session.
    pub(crate) remote_incoming_window: u32,
    pub(crate) next_incoming_id: u32,
    /// What is left of the incoming window we advertised.
    pub(crate) incoming_window: u32,
    pub(crate) ended: bool,
    pub(crate) links: Vec<Link>,
}

impl Session {
    pub(crate) fn sender_index(&self) -> Option<usize> {
        self.links
            .iter()
            .position(|l| matches!(l.kind, LinkKind::Sender(_)))
    }
    pub(crate) fn receiver_index(&self) -> Option<usize> {
        self.links
            .iter()
            .position(|l| matches!(l.kind, LinkKind::Receiver(_)))
    }
    pub(crate) fn session_flow(&self) -> Flow {
        Flow {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: u32::MAX,
            ..Default::default()
        }
    }
}
