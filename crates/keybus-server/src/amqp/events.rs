//! What reaches a connection task from outside its socket: entity wake-ups, durable sends
//! and settlements, session-lock loss, `$management`/`$cbs` replies. [`LinkWaker`] is how a
//! receiver link registers with the runtime ([`crate::runtime::Wake`]): the link's identity
//! (channel, handle, generation) stays here.

use keybus_amqp::{Bytes, DeliveryState};
use tokio::sync::mpsc;

use crate::runtime::{Signal, Wake};

/// The outcome of one send: `Err((condition, description))` is refused.
pub(crate) type SendResult = Result<(), (&'static str, String)>;

/// Events delivered to a connection task from elsewhere (entities, commit waiters).
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// Messages may be available for the receiver link (`channel`, `handle`, generation).
    Wake {
        channel: u16,
        handle: u32,
        generation: u64,
    },
    /// Sends became durable (or failed): settle these deliveries.
    SendsDone {
        channel: u16,
        results: Vec<(u32, SendResult)>,
    },
    /// A transaction was discharged (its commit durable, or refused): answer these
    /// coordinator deliveries.
    TxnDone {
        channel: u16,
        results: Vec<(u32, SendResult)>,
    },
    /// Settlements became durable: echo these states.
    SettlesDone {
        channel: u16,
        results: Vec<(u32, DeliveryState)>,
    },
    /// The session lock of a receiver link ran out: detach it with `session-lock-lost`.
    SessionLost {
        channel: u16,
        handle: u32,
        generation: u64,
        session: String,
    },
    /// A next-available session receiver found no session in time: refuse its attach.
    SessionTimeout {
        channel: u16,
        handle: u32,
        generation: u64,
    },
    /// A `$management` or `$cbs` response to send on (`channel`, `handle`).
    Reply {
        channel: u16,
        handle: u32,
        message: Bytes,
    },
}

/// One receiver link, as the runtime's waiters reach it.
#[derive(Debug)]
pub(crate) struct LinkWaker {
    pub tx: mpsc::UnboundedSender<ConnEvent>,
    pub channel: u16,
    pub handle: u32,
    pub generation: u64,
}

impl Wake for LinkWaker {
    fn wake(&self, signal: Signal) {
        let (channel, handle, generation) = (self.channel, self.handle, self.generation);
        let _ = self.tx.send(match signal {
            Signal::Ready => ConnEvent::Wake {
                channel,
                handle,
                generation,
            },
            Signal::SessionLost(session) => ConnEvent::SessionLost {
                channel,
                handle,
                generation,
                session,
            },
        });
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
