//! `keybus bench`: drive a running broker over AMQP 1.0 and report throughput, latency and
//! the broker's CPU time per message.
//!
//! Phases (each run for every `--queue-counts` entry, `--repeat` times):
//!
//! * **send** — durable send throughput: every message waits for the broker's settled
//!   `accepted` disposition; up to `--inflight` unsettled deliveries per link, links spread
//!   over `--connections` connections. Fills the queues.
//! * **receive** — receive-and-complete throughput: peek-lock receivers with
//!   `--credit` credit complete every message (unsettled `accepted` disposition) and a
//!   message counts when the broker's settled echo arrives. Drains what `send` filled.
//! * **latency** — end-to-end latency at a fixed total rate (`--rate` msg/s for
//!   `--latency-secs`): senders stamp the send time into an application property, peek-lock
//!   receivers (in this process, same clock) record receive time − send time and complete.
//!
//! Scenario phases (run alone, not mixed with the three above; see docs/benchmarks.md):
//!
//! * **idle** — `--idle-connections` idle SDK-like connections for `--idle-secs`: the
//!   broker's CPU share and resident memory (`idle.rs`).
//! * **depth** — fill the first queue with `--messages` messages: the broker's resident
//!   memory holding them (`depth.rs`).
//! * **first-receive** — a fresh connection's time to its first delivery from the first
//!   queue, e.g. right after a restart (`depth.rs`, `scripts/bench-depth.sh`).
//!
//! `keybus bench config` prints a broker configuration declaring many entities (`config.rs`).
//!
//! Broker CPU time per message comes from `/proc/PID/stat` (utime + stime) before and after
//! each phase; the client's own CPU time per message is reported too, since client and
//! broker usually share the machine.

pub mod config;
mod depth;
mod idle;
pub mod procfs;
pub mod scenario;
mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybus_client::{
    ClientError, Connection, Endpoint, LinkId, MessageTemplate, Pacing, RecvWork, SendWork, Tally,
};
use scenario::Measure;
use stats::{Fanout, PhaseRun, Summary};

/// Benchmark phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Phase {
    /// Durable send throughput.
    Send,
    /// Peek-lock receive + complete throughput (drains what `send` filled).
    Receive,
    /// End-to-end latency at a fixed rate.
    Latency,
    /// Scenario: fill the first queue with `--messages` messages, report the broker's RSS.
    Depth,
    /// Scenario: time a fresh connection's first delivery from the first queue.
    FirstReceive,
    /// Scenario: idle connections; the broker's CPU share and RSS over `--idle-secs`.
    Idle,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Send => "send",
            Phase::Receive => "receive",
            Phase::Latency => "latency",
            Phase::Depth => "depth",
            Phase::FirstReceive => "first-receive",
            Phase::Idle => "idle",
        }
    }

    /// A scenario phase reports broker figures (`scenario::Measure`), not a throughput run.
    fn is_scenario(self) -> bool {
        matches!(self, Phase::Depth | Phase::FirstReceive | Phase::Idle)
    }
}

/// Subcommands of `keybus bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Print a broker configuration (TOML for `keybus serve --config`) declaring queues
    /// `bench-1`..`bench-N` and topics `bench-topic-1`..`bench-topic-M` with subscriptions.
    Config(config::ConfigArgs),
}

/// Arguments of `keybus bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Connection string printed by `keybus serve` (Endpoint=sb://HOST:PORT;SharedAccessKeyName=..;SharedAccessKey=..);
    /// required except for `bench config`.
    #[arg(long, env = "KEYBUS_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// Existing queues to use (declare them in the broker's config file).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bench-1,bench-2,bench-3,bench-4,bench-5,bench-6,bench-7,bench-8"
    )]
    pub queues: Vec<String>,
    /// Run every phase with the first N queues, for each N listed (`0` alone: no queue runs).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub queue_counts: Vec<usize>,
    /// Topic scenarios, after the queue ones: `NAME:N` sends to topic NAME and receives and
    /// completes from all its N subscriptions `s1`..`sN` concurrently, whose rules must let
    /// every bench message through (see crates/keybus-cli/bench.toml). Same phases as queues;
    /// receive and latency also report deliveries (messages × N).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Phases to run, in order (`receive` drains what `send` filled, so it needs `send`).
    #[arg(long, value_delimiter = ',', default_value = "send,receive,latency")]
    pub phases: Vec<Phase>,
    /// Messages per send / receive phase (spread evenly over the queues).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Body size in bytes (one `data` section).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Total send rate of the latency phase, messages per second (spread over the queues).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Duration of the latency phase in seconds.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// AMQP connections per phase (links are spread over them; each queue gets at least one link).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Unsettled sends allowed per sender link.
    #[arg(long, default_value_t = 1000)]
    pub inflight: u32,
    /// Link credit kept outstanding per receiver link.
    #[arg(long, default_value_t = 1000)]
    pub credit: u32,
    /// Broker process id, for its CPU time (default: the process listening on the endpoint's port, if visible).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Run each phase K times; report the median and the min–max spread.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Idle scenario: connections held open (each with a CBS token and one receiver on a
    /// queue of `--queues`, round-robin).
    #[arg(long, default_value_t = 100)]
    pub idle_connections: usize,
    /// Idle scenario: seconds measured.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Give up on a phase after this many seconds beyond its expected duration.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench: {0}")]
    Usage(String),
    #[error("bench: {context}: {source}")]
    Client {
        context: String,
        #[source]
        source: ClientError,
    },
    #[error("bench: {0}")]
    Failed(String),
}

fn ctx(context: impl Into<String>) -> impl FnOnce(ClientError) -> BenchError {
    let context = context.into();
    move |source| BenchError::Client { context, source }
}

use procfs::{clk_tck, cpu_us};

/// The pid of the process listening on TCP `port` (via /proc/net/tcp* socket inodes).
fn find_listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && lport == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// CPU meters sampled around a phase.
struct Meters {
    broker_pid: Option<String>,
    clk_tck: u64,
}

struct Sample {
    broker: Option<u64>,
    client: Option<u64>,
    at: Instant,
}

impl Meters {
    fn sample(&self) -> Sample {
        Sample {
            broker: self
                .broker_pid
                .as_deref()
                .and_then(|p| cpu_us(p, self.clk_tck)),
            client: cpu_us("self", self.clk_tck),
            at: Instant::now(),
        }
    }
}

/// Split `total` into `parts` near-equal shares.
fn shares(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

struct Bench {
    args: BenchArgs,
    endpoint: Endpoint,
    meters: Meters,
    setup_timeout: Duration,
    /// Messages each queue holds because of our send phases.
    filled: BTreeMap<String, u64>,
    /// What the current runs drive, for the report.
    target: String,
}

/// One link of a phase: which connection, which queue, its id once opened.
struct Placement {
    conn: usize,
    queue: usize,
    id: Option<LinkId>,
}

type Joined = Result<(Connection, Result<(), ClientError>, Instant), tokio::task::JoinError>;

impl Bench {
    async fn connect(&self, n: usize) -> Result<Vec<Connection>, BenchError> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let c = Connection::connect(&self.endpoint, self.setup_timeout)
                .await
                .map_err(ctx(format!(
                    "connection {i} to {}:{}",
                    self.endpoint.host, self.endpoint.port
                )))?;
            conns.push(c);
        }
        Ok(conns)
    }

    /// Authorize every queue a connection uses, open the links, wait for attach (and credit).
    async fn open_links(
        &self,
        conns: &mut [Connection],
        queues: &[String],
        placements: &mut [Placement],
        sender: bool,
    ) -> Result<(), BenchError> {
        for (ci, conn) in conns.iter_mut().enumerate() {
            let mut authorized: Vec<usize> = Vec::new();
            for p in placements.iter_mut().filter(|p| p.conn == ci) {
                let q = queues.get(p.queue).map(String::as_str).unwrap_or_default();
                if !authorized.contains(&p.queue) {
                    conn.put_token(q, self.setup_timeout)
                        .await
                        .map_err(ctx(format!("authorizing '{q}'")))?;
                    authorized.push(p.queue);
                }
                p.id = Some(if sender {
                    conn.open_sender(q)
                } else {
                    conn.open_receiver(q)
                });
            }
            let ids: Vec<LinkId> = placements
                .iter()
                .filter(|p| p.conn == ci)
                .filter_map(|p| p.id)
                .collect();
            conn.wait_ready(&ids, self.setup_timeout)
                .await
                .map_err(ctx("opening links"))?;
        }
        Ok(())
    }

    /// Throughput layout: each queue gets ceil(connections / queues) links, link j on
    /// connection j % connections.
    fn layout(&self, nq: usize) -> (usize, Vec<Placement>) {
        let nc = self.args.connections.max(1);
        let per_queue = nc.div_ceil(nq).max(1);
        let placements = (0..nq * per_queue)
            .map(|j| Placement {
                conn: j % nc,
                queue: j / per_queue,
                id: None,
            })
            .collect();
        (nc, placements)
    }

    /// Run every connection to completion concurrently; returns them and the time the last finished.
    async fn run_all(
        &self,
        conns: Vec<Connection>,
        what: &'static str,
        budget: Duration,
    ) -> Result<(Vec<Connection>, Instant), BenchError> {
        let deadline = Instant::now() + budget;
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let r = c.run_until(deadline, what, Connection::work_done).await;
                    (c, r, Instant::now())
                })
            })
            .collect();
        let mut out = Vec::new();
        let mut end = Instant::now();
        let mut first_err = None;
        for t in tasks {
            let j: Joined = t.await;
            match j {
                Ok((c, r, at)) => {
                    end = end.max(at);
                    if let Err(e) = r {
                        first_err.get_or_insert(e);
                    }
                    out.push(c);
                }
                Err(e) => return Err(BenchError::Failed(format!("{what} task failed: {e}"))),
            }
        }
        if let Some(e) = first_err {
            return Err(BenchError::Client {
                context: format!("{what} phase"),
                source: e,
            });
        }
        Ok((out, end))
    }

    async fn close_all(conns: Vec<Connection>) {
        for c in conns {
            let _ = c.close().await;
        }
    }

    /// The record of one run. `count` is what the phase counted (sends accepted, deliveries
    /// completed); `fanout` is `Some(subscriptions)` when those were a topic's deliveries,
    /// which are then also reported per published message (count / subscriptions).
    #[allow(clippy::too_many_arguments)]
    fn run_record(
        &self,
        phase: Phase,
        nq: usize,
        rep: usize,
        count: u64,
        fanout: Option<usize>,
        before: &Sample,
        after: &Sample,
    ) -> PhaseRun {
        let secs = after.at.duration_since(before.at).as_secs_f64();
        let per = |n: f64, a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if n > 0.0 => Some(a.saturating_sub(b) as f64 / n),
            _ => None,
        };
        let subs = fanout.unwrap_or(1).max(1);
        let messages_f = count as f64 / subs as f64;
        let messages = count / subs as u64;
        let per_msg = |a: Option<u64>, b: Option<u64>| per(messages_f, a, b);
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        PhaseRun {
            phase: phase.name(),
            target: self.target.clone(),
            queues: nq,
            rep,
            messages,
            secs,
            rate: per_sec(messages_f),
            broker_cpu_us: per_msg(after.broker, before.broker),
            fanout: fanout.map(|subscriptions| Fanout {
                subscriptions,
                deliveries: count,
                rate: per_sec(count as f64),
                broker_cpu_us: per(count as f64, after.broker, before.broker),
            }),
            client_cpu_us: per_msg(after.client, before.client),
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            errors: 0,
        }
    }

    async fn send_phase(&mut self, queues: &[String], rep: usize) -> Result<PhaseRun, BenchError> {
        let nq = queues.len();
        let (nc, mut placements) = self.layout(nq);
        let mut conns = self.connect(nc).await?;
        self.open_links(&mut conns, queues, &mut placements, true)
            .await?;
        let template = Arc::new(MessageTemplate::new(self.args.size, false));
        let per_queue = shares(self.args.messages, nq);
        let mut assigned: Vec<(usize, LinkId, u64)> = Vec::new();
        for (qi, &qn) in per_queue.iter().enumerate() {
            let links: Vec<&Placement> = placements.iter().filter(|p| p.queue == qi).collect();
            for (p, n) in links.iter().zip(shares(qn, links.len())) {
                if let Some(id) = p.id {
                    assigned.push((p.conn, id, n));
                }
            }
        }
        let before = self.meters.sample();
        for &(ci, id, n) in &assigned {
            if let Some(c) = conns.get_mut(ci) {
                c.set_send_work(
                    id,
                    SendWork {
                        count: n,
                        max_inflight: self.args.inflight.max(1),
                        pacing: None,
                        template: template.clone(),
                    },
                );
            }
        }
        let budget = Duration::from_secs(self.args.timeout_secs);
        let (conns, end) = self.run_all(conns, "send", budget).await?;
        let mut after = self.meters.sample();
        after.at = end;
        let (mut accepted, mut rejected, mut last_error) = (0, 0, None);
        for p in &placements {
            let Some(s) = p.id.and_then(|id| conns.get(p.conn)?.sender(id)) else {
                continue;
            };
            accepted += s.accepted;
            rejected += s.rejected;
            if s.last_error.is_some() {
                last_error.clone_from(&s.last_error);
            }
            if let Some(q) = queues.get(p.queue) {
                *self.filled.entry(q.clone()).or_default() += s.accepted;
            }
        }
        Self::close_all(conns).await;
        let mut run = self.run_record(Phase::Send, nq, rep, accepted, None, &before, &after);
        run.errors = rejected;
        if rejected > 0 {
            eprintln!(
                "keybus bench: {rejected} sends were not accepted (last: {})",
                last_error.unwrap_or_default()
            );
        }
        Ok(run)
    }

    /// Receive and complete what the send phases left in `queues` (a topic's subscriptions
    /// for `fanout: Some(subscriptions)`).
    async fn receive_phase(
        &mut self,
        queues: &[String],
        rep: usize,
        fanout: Option<usize>,
    ) -> Result<PhaseRun, BenchError> {
        let nq = queues.len();
        let (nc, mut placements) = self.layout(nq);
        let mut conns = self.connect(nc).await?;
        self.open_links(&mut conns, queues, &mut placements, false)
            .await?;
        let tallies: Vec<Arc<Tally>> = queues
            .iter()
            .map(|q| Tally::new(self.filled.get(q).copied().unwrap_or(0)))
            .collect();
        let before = self.meters.sample();
        for p in &placements {
            if let (Some(id), Some(c), Some(t)) =
                (p.id, conns.get_mut(p.conn), tallies.get(p.queue))
            {
                c.set_recv_work(
                    id,
                    RecvWork {
                        credit_window: self.args.credit.max(1),
                        tally: Some(t.clone()),
                        measure_latency: false,
                    },
                );
            }
        }
        let budget = Duration::from_secs(self.args.timeout_secs);
        let (conns, end) = self.run_all(conns, "receive", budget).await?;
        let mut after = self.meters.sample();
        after.at = end;
        let (mut completed, mut errors, mut last_error) = (0, 0, None);
        for p in &placements {
            let Some(r) = p.id.and_then(|id| conns.get(p.conn)?.receiver(id)) else {
                continue;
            };
            completed += r.completed;
            errors += r.complete_errors;
            if r.last_error.is_some() {
                last_error.clone_from(&r.last_error);
            }
            if let Some(q) = queues.get(p.queue) {
                let f = self.filled.entry(q.clone()).or_default();
                *f = f.saturating_sub(r.completed);
            }
        }
        Self::close_all(conns).await;
        let mut run = self.run_record(Phase::Receive, nq, rep, completed, fanout, &before, &after);
        run.errors = errors;
        if errors > 0 {
            eprintln!(
                "keybus bench: {errors} completions failed (last: {})",
                last_error.unwrap_or_default()
            );
        }
        Ok(run)
    }

    /// Latency at a fixed rate: senders to `targets` (the queues, or one topic), receivers
    /// on `sources` (the same queues, or all the topic's subscriptions: `fanout` =
    /// `Some(subscriptions)`, every delivery's latency counts).
    async fn latency_phase(
        &mut self,
        targets: &[String],
        sources: &[String],
        rep: usize,
        fanout: Option<usize>,
    ) -> Result<PhaseRun, BenchError> {
        let nq = targets.len().max(1);
        let nr = sources.len();
        let nc = self.args.connections.max(1);
        let mut conns = self.connect(nc).await?;
        // Receiver i on connection i % nc, sender j on connection (j + 1) % nc: with queues,
        // each queue's sender and receiver are on different connections.
        let mut rplace: Vec<Placement> = (0..nr)
            .map(|i| Placement {
                conn: i % nc,
                queue: i,
                id: None,
            })
            .collect();
        let mut splace: Vec<Placement> = (0..targets.len())
            .map(|i| Placement {
                conn: (i + 1) % nc,
                queue: i,
                id: None,
            })
            .collect();
        self.open_links(&mut conns, sources, &mut rplace, false)
            .await?;
        self.open_links(&mut conns, targets, &mut splace, true)
            .await?;
        let rate_q = f64::from(self.args.rate.max(1)) / nq as f64;
        let count_q = ((rate_q * self.args.latency_secs as f64).round() as u64).max(1);
        // Every source receives everything one target is sent.
        let tallies: Vec<Arc<Tally>> = (0..nr).map(|_| Tally::new(count_q)).collect();
        for p in &rplace {
            if let (Some(id), Some(c), Some(t)) =
                (p.id, conns.get_mut(p.conn), tallies.get(p.queue))
            {
                c.set_recv_work(
                    id,
                    RecvWork {
                        credit_window: self.args.credit.max(1),
                        tally: Some(t.clone()),
                        measure_latency: true,
                    },
                );
            }
        }
        // Grant the receivers' credit before the first send.
        for c in &mut conns {
            c.run_until(
                Instant::now() + self.setup_timeout,
                "granting credit",
                |_| true,
            )
            .await
            .map_err(ctx("granting credit"))?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let template = Arc::new(MessageTemplate::new(self.args.size, true));
        let before = self.meters.sample();
        let interval = Duration::from_secs_f64(1.0 / rate_q);
        let t0 = Instant::now();
        for p in &splace {
            // Stagger the queues' schedules so the total rate is even, not bursts of `nq`.
            let pacing = Pacing {
                start: t0 + interval.mul_f64(p.queue as f64 / nq as f64),
                interval,
            };
            if let (Some(id), Some(c)) = (p.id, conns.get_mut(p.conn)) {
                c.set_send_work(
                    id,
                    SendWork {
                        count: count_q,
                        max_inflight: self.args.inflight.max(1),
                        pacing: Some(pacing),
                        template: template.clone(),
                    },
                );
            }
        }
        let budget = Duration::from_secs(self.args.latency_secs + self.args.timeout_secs);
        let (conns, end) = self.run_all(conns, "latency", budget).await?;
        let mut after = self.meters.sample();
        after.at = end;
        let mut lat: Vec<u32> = Vec::new();
        let (mut completed, mut errors) = (0, 0);
        for p in &rplace {
            if let Some(r) = p.id.and_then(|id| conns.get(p.conn)?.receiver(id)) {
                lat.extend_from_slice(&r.latencies_us);
                completed += r.completed;
                errors += r.complete_errors;
            }
        }
        for p in &splace {
            if let Some(s) = p.id.and_then(|id| conns.get(p.conn)?.sender(id)) {
                errors += s.rejected;
            }
        }
        Self::close_all(conns).await;
        let mut run = self.run_record(Phase::Latency, nr, rep, completed, fanout, &before, &after);
        run.errors = errors;
        lat.sort_unstable();
        run.p50_ms = stats::percentile(&lat, 0.50).map(|us| f64::from(us) / 1000.0);
        run.p99_ms = stats::percentile(&lat, 0.99).map(|us| f64::from(us) / 1000.0);
        run.max_ms = lat.last().map(|&us| f64::from(us) / 1000.0);
        if lat.len() as u64 != completed {
            eprintln!(
                "keybus bench: {} of {completed} latency messages carried no timestamp",
                completed - lat.len() as u64
            );
        }
        Ok(run)
    }

    /// Remove messages left in the queues (e.g. by an interrupted run): receive and complete
    /// until nothing arrives for half a second.
    async fn drain_leftovers(&mut self, queues: &[String]) -> Result<u64, BenchError> {
        let mut conns = self.connect(1).await?;
        let mut placements: Vec<Placement> = (0..queues.len())
            .map(|i| Placement {
                conn: 0,
                queue: i,
                id: None,
            })
            .collect();
        self.open_links(&mut conns, queues, &mut placements, false)
            .await?;
        let Some(mut conn) = conns.pop() else {
            return Ok(0);
        };
        let ids: Vec<LinkId> = placements.iter().filter_map(|p| p.id).collect();
        for &id in &ids {
            conn.set_recv_work(
                id,
                RecvWork {
                    credit_window: 500,
                    tally: None,
                    measure_latency: false,
                },
            );
        }
        let start = Instant::now();
        let quiet = Duration::from_millis(500);
        let deadline = start + Duration::from_secs(self.args.timeout_secs);
        let check = ids.clone();
        conn.run_until(deadline, "draining leftover messages", move |c| {
            let now = Instant::now();
            check.iter().all(|&id| {
                c.receiver(id).is_none_or(|r| {
                    r.awaiting_echo == 0
                        && now.duration_since(r.last_delivery.unwrap_or(start)) >= quiet
                })
            })
        })
        .await
        .map_err(ctx("draining"))?;
        let drained = ids
            .iter()
            .filter_map(|&id| conn.receiver(id))
            .map(|r| r.completed)
            .sum();
        let _ = conn.close().await;
        Ok(drained)
    }
}

/// A topic scenario: the topic and how many subscriptions (`s1`..`sN`) it has.
struct TopicScenario {
    name: String,
    subs: usize,
}

impl TopicScenario {
    fn subscriptions(&self) -> Vec<String> {
        (1..=self.subs)
            .map(|i| format!("{}/Subscriptions/s{i}", self.name))
            .collect()
    }
}

fn parse_topics(specs: &[String]) -> Result<Vec<TopicScenario>, BenchError> {
    specs
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bad = || {
                BenchError::Usage(format!(
                    "--topics entry '{s}' must be NAME:N with N subscriptions s1..sN (N ≥ 1)"
                ))
            };
            let (name, n) = s.rsplit_once(':').ok_or_else(bad)?;
            let subs: usize = n.parse().map_err(|_| bad())?;
            if name.is_empty() || subs == 0 {
                return Err(bad());
            }
            Ok(TopicScenario {
                name: name.to_string(),
                subs,
            })
        })
        .collect()
}

/// Entry point of `keybus bench`.
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    run_and_collect(args).await.map(|_| ())
}

/// [`run`], returning the figures of the scenario phases it printed (none for the
/// throughput phases and `bench config`).
pub async fn run_and_collect(args: BenchArgs) -> Result<Vec<Measure>, BenchError> {
    if let Some(BenchCommand::Config(c)) = &args.command {
        config::run(c);
        return Ok(Vec::new());
    }
    let Some(cs) = &args.connection_string else {
        return Err(BenchError::Usage(
            "--connection-string (or KEYBUS_CONNECTION_STRING) is required".into(),
        ));
    };
    let endpoint = Endpoint::parse(cs).map_err(|e| BenchError::Usage(e.to_string()))?;
    let queues: Vec<String> = args
        .queues
        .iter()
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .collect();
    if queues.is_empty() {
        return Err(BenchError::Usage("--queues is empty".into()));
    }
    let mut counts: Vec<usize> = args
        .queue_counts
        .iter()
        .copied()
        .filter(|&n| n > 0)
        .collect();
    counts.dedup();
    let topics = parse_topics(&args.topics)?;
    let scenarios = args.phases.iter().filter(|p| p.is_scenario()).count();
    // Scenario phases use `--queues` directly, not `--queue-counts`.
    if scenarios == 0
        && let Some(&n) = counts.iter().find(|&&n| n > queues.len())
    {
        return Err(BenchError::Usage(format!(
            "--queue-counts asks for {n} queues but --queues lists {}",
            queues.len()
        )));
    }
    if scenarios > 0 && scenarios < args.phases.len() {
        return Err(BenchError::Usage(
            "--phases: idle, depth and first-receive run alone, not with send, receive or latency"
                .into(),
        ));
    }
    if scenarios == 0 && counts.is_empty() && topics.is_empty() {
        return Err(BenchError::Usage(
            "nothing to run: --queue-counts and --topics are empty".into(),
        ));
    }
    if args.phases.contains(&Phase::Receive) && !args.phases.contains(&Phase::Send) {
        return Err(BenchError::Usage(
            "the receive phase drains what the send phase filled: add `send` to --phases".into(),
        ));
    }
    if args.size == 0 || args.size > 100 * 1024 * 1024 {
        return Err(BenchError::Usage(
            "--size must be between 1 and 104857600".into(),
        ));
    }
    let mut phases = args.phases.clone();
    phases.sort();
    phases.dedup();
    let repeat = args.repeat.max(1);

    let clk = clk_tck();
    let (broker_pid, pid_note) = match args.broker_pid {
        Some(p) => (Some(p), format!("broker pid {p}")),
        None => match find_listener(endpoint.port) {
            Some(p) => (
                Some(p),
                format!(
                    "broker pid {p} (the process listening on port {})",
                    endpoint.port
                ),
            ),
            None => (
                None,
                "broker CPU not measured (pass --broker-pid)".to_string(),
            ),
        },
    };
    if let Some(p) = broker_pid
        && cpu_us(&p.to_string(), clk).is_none()
    {
        return Err(BenchError::Usage(format!("cannot read /proc/{p}/stat")));
    }
    let meters = Meters {
        broker_pid: broker_pid.map(|p| p.to_string()),
        clk_tck: clk,
    };
    let mut bench = Bench {
        args: args.clone(),
        endpoint,
        meters,
        setup_timeout: Duration::from_secs(10),
        filled: BTreeMap::new(),
        target: String::new(),
    };
    if scenarios > 0 {
        return run_scenarios(&mut bench, &queues, &phases, repeat, &pid_note).await;
    }
    let max_q = counts.iter().copied().max().unwrap_or(0);
    let mut all = queues.get(..max_q).unwrap_or(&queues).to_vec();
    for t in &topics {
        all.extend(t.subscriptions());
    }
    eprintln!(
        "keybus bench: {pid_note}; draining leftovers from {} queue(s)",
        all.len()
    );
    let drained = bench.drain_leftovers(&all).await?;
    if drained > 0 {
        eprintln!("keybus bench: removed {drained} leftover message(s)");
    }

    let mut runs: Vec<PhaseRun> = Vec::new();
    for &n in &counts {
        let qs = queues.get(..n).unwrap_or(&queues).to_vec();
        bench.target = format!("{n} queue{}", if n == 1 { "" } else { "s" });
        for rep in 0..repeat {
            for &phase in &phases {
                let r = match phase {
                    Phase::Send => bench.send_phase(&qs, rep).await?,
                    Phase::Receive => bench.receive_phase(&qs, rep, None).await?,
                    Phase::Latency => bench.latency_phase(&qs, &qs, rep, None).await?,
                    // Scenario phases run alone (`run_scenarios`).
                    Phase::Depth | Phase::FirstReceive | Phase::Idle => continue,
                };
                eprintln!("keybus bench: {}", r.one_line());
                runs.push(r);
            }
            // Whatever a failed receive left behind must not leak into the next run.
            if bench.filled.values().any(|&v| v > 0) && phases.contains(&Phase::Receive) {
                let left: u64 = bench.filled.values().sum();
                return Err(BenchError::Failed(format!(
                    "{left} message(s) sent but not received"
                )));
            }
        }
    }
    for t in &topics {
        bench.target = format!(
            "topic {} ({} sub{})",
            t.name,
            t.subs,
            if t.subs == 1 { "" } else { "s" }
        );
        let topic = std::slice::from_ref(&t.name);
        let subs = t.subscriptions();
        for rep in 0..repeat {
            for &phase in &phases {
                let r = match phase {
                    Phase::Send => {
                        let r = bench.send_phase(topic, rep).await?;
                        // Every subscription got a copy of every accepted message.
                        let sent = bench.filled.remove(&t.name).unwrap_or(0);
                        for sub in &subs {
                            *bench.filled.entry(sub.clone()).or_default() += sent;
                        }
                        r
                    }
                    Phase::Receive => bench.receive_phase(&subs, rep, Some(t.subs)).await?,
                    Phase::Latency => bench.latency_phase(topic, &subs, rep, Some(t.subs)).await?,
                    Phase::Depth | Phase::FirstReceive | Phase::Idle => continue,
                };
                eprintln!("keybus bench: {}", r.one_line());
                runs.push(r);
            }
            if bench.filled.values().any(|&v| v > 0) && phases.contains(&Phase::Receive) {
                let left: u64 = bench.filled.values().sum();
                return Err(BenchError::Failed(format!(
                    "{left} message(s) sent but not received"
                )));
            }
        }
    }
    let summaries = Summary::of(&runs);
    let cfg = stats::Config {
        size: args.size,
        messages: args.messages,
        connections: args.connections.max(1),
        inflight: args.inflight,
        credit: args.credit,
        rate: args.rate,
        latency_secs: args.latency_secs,
        repeat,
        broker_pid,
        note: pid_note,
    };
    if args.json {
        println!("{}", stats::json(&cfg, &runs, &summaries));
    } else {
        print!("{}", stats::table(&cfg, &summaries));
    }
    Ok(Vec::new())
}

/// The scenario phases, `repeat` times each in `phases` order; prints the figures.
async fn run_scenarios(
    bench: &mut Bench,
    queues: &[String],
    phases: &[Phase],
    repeat: usize,
    note: &str,
) -> Result<Vec<Measure>, BenchError> {
    let first = queues.first().cloned().unwrap_or_default();
    if phases.contains(&Phase::Depth) {
        if repeat > 1 {
            return Err(BenchError::Usage(
                "--phases depth fills the queue once: use --repeat 1 (restart the broker between runs)"
                    .into(),
            ));
        }
        eprintln!("keybus bench: {note}; draining leftovers from '{first}'");
        let drained = bench.drain_leftovers(std::slice::from_ref(&first)).await?;
        if drained > 0 {
            eprintln!("keybus bench: removed {drained} leftover message(s)");
        }
    } else {
        eprintln!("keybus bench: {note}");
    }
    bench.target = "1 queue".into();
    let mut measures = Vec::new();
    for rep in 0..repeat {
        for &phase in phases {
            let ms = match phase {
                Phase::Idle => bench.idle_phase(queues, rep).await?,
                Phase::Depth => bench.depth_phase(&first, rep).await?,
                Phase::FirstReceive => bench.first_receive_phase(&first, rep).await?,
                Phase::Send | Phase::Receive | Phase::Latency => Vec::new(),
            };
            for m in &ms {
                eprintln!(
                    "keybus bench: {} run {}: {} = {:.2} {}",
                    m.scenario,
                    rep + 1,
                    m.metric,
                    m.value,
                    m.unit
                );
            }
            measures.extend(ms);
        }
    }
    let sums = scenario::summarise(&measures);
    if bench.args.json {
        println!("{}", scenario::json(note, &measures, &sums));
    } else {
        print!("{}", scenario::table(note, &sums));
    }
    Ok(measures)
}
