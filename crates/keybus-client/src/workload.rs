//! Bulk workloads for load generation (what `keybus bench` runs): send N pre-encoded
//! messages with at most M unsettled, optionally paced; or receive with a credit window and
//! complete every message. The engine runs them inside [`Connection::run_until`]; the
//! counters on the links tell the caller what happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keybus_amqp::{BytesMut, Message, Properties, Value};

use crate::connection::Connection;
use crate::link::{LinkId, LinkKind};

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
    pub(crate) fn write(&self, seq: u64, out: &mut BytesMut) {
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

impl Connection {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
