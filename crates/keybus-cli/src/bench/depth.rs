//! The queue-depth scenarios. `depth` fills the first `--queues` queue with `--messages`
//! durable messages (the send phase, one queue) and reports the broker's resident memory
//! holding them; `first-receive` times a fresh connection's first delivery from that queue
//! (run it after restarting the broker on the same data dir: `scripts/bench-depth.sh`).

use std::time::Instant;

use keybus_client::{Connection, RecvWork, Tally};

use super::scenario::Measure;

/// How long after the fill the settled resident memory is read.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(12);
use super::{Bench, BenchError, ctx, procfs};

impl Bench {
    pub(super) async fn depth_phase(
        &mut self,
        queue: &str,
        rep: usize,
    ) -> Result<Vec<Measure>, BenchError> {
        let run = self.send_phase(&[queue.to_string()], rep).await?;
        eprintln!("keybus bench: {}", run.one_line());
        if run.errors > 0 {
            return Err(BenchError::Failed(format!(
                "{} of the depth sends were not accepted",
                run.errors
            )));
        }
        let fig = |metric, unit, value| Measure {
            scenario: "depth",
            metric,
            unit,
            rep,
            value,
        };
        let mut out = vec![
            fig("messages queued", "count", run.messages as f64),
            fig("fill rate", "msg/s", run.rate),
        ];
        if let Some(m) = self.meters.broker_pid.as_deref().and_then(procfs::memory) {
            out.push(fig(
                "broker RSS after fill",
                "MB",
                m.rss_kib as f64 / 1024.0,
            ));
            out.push(fig("broker RSS peak", "MB", m.peak_kib as f64 / 1024.0));
            // What the queue costs at rest: after the allocator's decay time has returned the
            // fill's freed buffers (jemalloc `dirty_decay_ms`, 10 s).
            tokio::time::sleep(SETTLE).await;
            if let Some(m) = self.meters.broker_pid.as_deref().and_then(procfs::memory) {
                out.push(fig("broker RSS settled", "MB", m.rss_kib as f64 / 1024.0));
            }
        }
        Ok(out)
    }

    /// Connect, authorize, attach a peek-lock receiver with credit 1 and wait for its first
    /// delivery (which is then completed).
    pub(super) async fn first_receive_phase(
        &mut self,
        queue: &str,
        rep: usize,
    ) -> Result<Vec<Measure>, BenchError> {
        let t0 = Instant::now();
        let mut c = Connection::connect(&self.endpoint, self.setup_timeout)
            .await
            .map_err(ctx("connecting for the first receive"))?;
        c.put_token(queue, self.setup_timeout)
            .await
            .map_err(ctx(format!("authorizing '{queue}'")))?;
        let id = c.open_receiver(queue);
        c.wait_ready(&[id], self.setup_timeout)
            .await
            .map_err(ctx(format!("attaching a receiver to '{queue}'")))?;
        let attached = t0.elapsed();
        c.set_recv_work(
            id,
            RecvWork {
                credit_window: 1,
                tally: Some(Tally::new(1)),
                measure_latency: false,
            },
        );
        let deadline = Instant::now() + std::time::Duration::from_secs(self.args.timeout_secs);
        c.run_until(deadline, "the first delivery", move |c| {
            c.receiver(id).is_some_and(|r| r.received > 0)
        })
        .await
        .map_err(ctx(format!("receiving from '{queue}'")))?;
        let first = t0.elapsed();
        let _ = c.close().await;
        let fig = |metric, value: std::time::Duration| Measure {
            scenario: "first-receive",
            metric,
            unit: "ms",
            rep,
            value: value.as_secs_f64() * 1000.0,
        };
        let mut out = vec![
            fig("connect + token + attach", attached),
            fig("connect to first delivery", first),
        ];
        if let Some(m) = self.meters.broker_pid.as_deref().and_then(procfs::memory) {
            out.push(Measure {
                scenario: "first-receive",
                metric: "broker RSS",
                unit: "MB",
                rep,
                value: m.rss_kib as f64 / 1024.0,
            });
        }
        Ok(out)
    }
}
