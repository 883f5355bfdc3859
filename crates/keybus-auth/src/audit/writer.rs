//! The writer thread: it owns the [`Sink`] and takes what [`super::Audit`] hands it from a
//! bounded queue. Each turn it takes what is queued (at most [`TURN`] messages), adds their
//! lines to the batch, writes the batch with one `write_all` and then answers the flushes it
//! took. With the ticker on it also sweeps due summaries every second (or summary
//! interval, if shorter) by the wall clock. When
//! the queue's sender is gone it writes every pending summary and stops.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use super::Event;
use super::line::now_ms;
use super::sink::Sink;

/// Messages taken in one turn, before the batch is written.
const TURN: usize = 4096;
/// How often the ticker sweeps summaries (or once per summary interval, if shorter).
const TICK_MS: i64 = 1000;

/// What the writer is asked to do, in queue order.
pub(super) enum Msg {
    /// An event decided at a time (ms since the epoch). Boxed: the queue's slots stay small.
    Record(Box<Event>, i64),
    /// Write the summaries due at a time.
    Sweep(i64),
    /// Answer once everything queued before is written.
    Flush(SyncSender<()>),
    /// Run on the sink, in queue order (tests reach the sink's file and chain this way).
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut Sink) + Send>),
}

/// The thread's loop; returns when the sender is dropped and the queue is empty.
pub(super) fn run(mut sink: Sink, queue: Receiver<Msg>, ticker: bool) {
    let tick = TICK_MS.min(sink.summary_interval_ms());
    let mut next_tick = now_ms() + tick;
    loop {
        let first = if ticker {
            let wait = u64::try_from(next_tick - now_ms()).unwrap_or(0);
            match queue.recv_timeout(Duration::from_millis(wait)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match queue.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        };
        let mut flushes = Vec::new();
        // Empty, or the sender gone (the next `recv` ends the loop).
        let rest = std::iter::from_fn(|| queue.try_recv().ok());
        for msg in first.into_iter().chain(rest).take(TURN) {
            match msg {
                Msg::Record(ev, now) => sink.record(*ev, now),
                Msg::Sweep(now) => sink.sweep(now, false),
                Msg::Flush(done) => flushes.push(done),
                #[cfg(test)]
                Msg::Run(f) => f(&mut sink),
            }
        }
        if ticker {
            let now = now_ms();
            if now >= next_tick {
                sink.sweep(now, false);
                next_tick = now + tick;
            }
        }
        sink.flush(now_ms());
        for done in flushes {
            let _ = done.send(());
        }
    }
    sink.close(now_ms());
}
