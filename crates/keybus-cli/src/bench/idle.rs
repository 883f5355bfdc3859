//! The `idle` scenario: hold `--idle-connections` connections open the way SDK clients keep
//! them (a CBS token, one peek-lock receiver with credit on a queue, heartbeats), send
//! nothing for `--idle-secs`, and measure what the broker spends meanwhile: its CPU time as a
//! share of one core, and its resident memory (sampled every second).

use std::time::{Duration, Instant};

use keybus_client::{Connection, LinkId, RecvWork};

use super::scenario::Measure;
use super::{Bench, BenchError, ctx, procfs};

/// How long the connections sit after setup before the measurement starts, so the setup's
/// own work is not counted (at most the measured time itself).
const SETTLE: Duration = Duration::from_secs(2);
/// How often resident memory is sampled during the measurement.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

impl Bench {
    /// One receiver connection on `queue`, with its credit granted.
    async fn idle_connection(
        &self,
        i: usize,
        queue: &str,
    ) -> Result<(Connection, LinkId), BenchError> {
        let mut c = Connection::connect(&self.endpoint, self.setup_timeout)
            .await
            .map_err(ctx(format!("idle connection {i}")))?;
        c.put_token(queue, self.setup_timeout)
            .await
            .map_err(ctx(format!("authorizing '{queue}' on idle connection {i}")))?;
        let id = c.open_receiver(queue);
        c.wait_ready(&[id], self.setup_timeout)
            .await
            .map_err(ctx(format!("attaching a receiver to '{queue}'")))?;
        c.set_recv_work(
            id,
            RecvWork {
                credit_window: self.args.credit.max(1),
                tally: None,
                measure_latency: false,
            },
        );
        c.run_until(
            Instant::now() + self.setup_timeout,
            "granting credit",
            |_| true,
        )
        .await
        .map_err(ctx("granting credit"))?;
        Ok((c, id))
    }

    pub(super) async fn idle_phase(
        &mut self,
        queues: &[String],
        rep: usize,
    ) -> Result<Vec<Measure>, BenchError> {
        let Some(pid) = self.meters.broker_pid.clone() else {
            return Err(BenchError::Usage(
                "the idle scenario measures the broker: pass --broker-pid".into(),
            ));
        };
        let n = self.args.idle_connections.max(1);
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let q = queues
                .get(i % queues.len().max(1))
                .map(String::as_str)
                .unwrap_or_default();
            conns.push(self.idle_connection(i, q).await?);
        }
        let secs = Duration::from_secs(self.args.idle_secs.max(1));
        let settle = SETTLE.min(secs);
        let end = Instant::now() + settle + secs;
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|(mut c, id)| {
                tokio::spawn(async move {
                    let r = c
                        .run_until(end, "idle", move |_| Instant::now() >= end)
                        .await;
                    (c, id, r)
                })
            })
            .collect();
        tokio::time::sleep(settle).await;
        let cpu_before = procfs::cpu_us(&pid, self.meters.clk_tck);
        let start = Instant::now();
        let mut rss_max = 0u64;
        let mut rss_last = None;
        let measure_end = start + secs;
        loop {
            if let Some(m) = procfs::memory(&pid) {
                rss_max = rss_max.max(m.rss_kib);
                rss_last = Some(m.rss_kib);
            }
            let now = Instant::now();
            if now >= measure_end {
                break;
            }
            tokio::time::sleep(MEMORY_EVERY.min(measure_end - now)).await;
        }
        let cpu_after = procfs::cpu_us(&pid, self.meters.clk_tck);
        let elapsed_us = start.elapsed().as_secs_f64() * 1e6;
        let mut failed = None;
        let mut received = 0;
        let mut done = Vec::with_capacity(tasks.len());
        for t in tasks {
            let (c, id, r) = t
                .await
                .map_err(|e| BenchError::Failed(format!("idle connection task failed: {e}")))?;
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
            received += c.receiver(id).map_or(0, |r| r.received);
            done.push(c);
        }
        Self::close_all(done).await;
        if let Some(e) = failed {
            return Err(BenchError::Client {
                context: "an idle connection".into(),
                source: e,
            });
        }
        if received > 0 {
            eprintln!(
                "keybus bench: idle receivers got {received} message(s); the queues were not empty"
            );
        }
        let (Some(a), Some(b), Some(rss_last)) = (cpu_after, cpu_before, rss_last) else {
            return Err(BenchError::Failed(format!(
                "cannot read /proc/{pid}/stat or /proc/{pid}/status"
            )));
        };
        let mb = |kib: u64| kib as f64 / 1024.0;
        let fig = |metric, unit, value| Measure {
            scenario: "idle",
            metric,
            unit,
            rep,
            value,
        };
        Ok(vec![
            fig(
                "broker CPU",
                "% of one core",
                a.saturating_sub(b) as f64 / elapsed_us * 100.0,
            ),
            fig("broker RSS at end", "MB", mb(rss_last)),
            fig("broker RSS max", "MB", mb(rss_max)),
            fig("idle connections", "count", n as f64),
        ])
    }
}
