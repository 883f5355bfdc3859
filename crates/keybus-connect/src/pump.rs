//! One connector at work: connect to the namespace with its own credential, peek-lock
//! receive from the source, push each message to the target in a task of its own (at most
//! `concurrency` in flight), and settle each by its verdict. One task owns the AMQP
//! connection (the client is driven by its holder): it receives, settles, renews the locks
//! of slow pushes and refreshes the CBS token; push tasks only report back over a channel.
//!
//! Nothing is lost: a message is settled only by its verdict; a failed target pauses the
//! pushes for the backoff (the failed message is abandoned, so the broker's delivery count
//! and max delivery count apply; during the pause the link has no credit and what it still
//! brings is released, so no message waits out a pause under its lock); a lost connection
//! drops the locks, which run out and give the messages to the next receiver. On stop, no
//! more credit is granted, held deliveries that were never pushed are released, pushes in
//! flight may finish until their timeout and whatever is still in flight then is abandoned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keybus_client::{ClientError, Connection, Delivery, LinkId, Outcome, ReceiverOptions, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::bearer::Bearer;
use crate::config::Connector;
use crate::credential::{ConnectFailure, CredentialError, Credentials};
use crate::metrics::{Counted, Metrics};
use crate::push::push;
use crate::request::{Origin, push_request};
use crate::status::{Board, State};
use crate::verdict::{PUSH_REJECTED, PushResult, Verdict, backoff, verdict};

/// How long connecting, attaching and each settlement may take.
pub(crate) const SETUP: Duration = Duration::from_secs(10);
/// How long one turn of the loop waits for deliveries (the longest a finished push waits to
/// be settled).
pub(crate) const TURN: Duration = Duration::from_millis(20);

/// How long an idle connector waits for a delivery before it looks at its stop signal,
/// token and locks again.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// Why a connection to the source ended.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Credential(#[from] CredentialError),
    #[error("{0}")]
    Connect(#[from] ConnectFailure),
}

/// A push in flight.
struct InFlight {
    delivery: Delivery,
    task: JoinHandle<()>,
    /// The lock's expiry (ms since the epoch) and when it was last set.
    locked_until: Option<i64>,
    lock_since: i64,
}

/// A push's end, reported by its task.
struct Pushed {
    delivery_id: u32,
    result: PushResult,
    elapsed: Duration,
}

pub(crate) fn now_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Is a lock held since `since` until `until` due for renewal at `now` (half its time gone)?
pub fn renew_due(since: i64, until: i64, now: i64) -> bool {
    now >= since + (until - since) / 2
}

pub(crate) fn locked_until(d: &Delivery) -> Option<i64> {
    d.annotation("x-opt-locked-until")
        .and_then(Value::as_timestamp)
}

/// One connector's worker.
pub struct Pump {
    pub cfg: Connector,
    pub credentials: Arc<Credentials>,
    pub http: reqwest::Client,
    pub metrics: Metrics,
    pub board: Board,
    /// The token presented to the target, if the connector names an audience.
    pub bearer: Option<Arc<Bearer>>,
}

/// The state of one connection's loop.
struct Turns {
    link: LinkId,
    entity: String,
    inflight: HashMap<u32, InFlight>,
    tx: mpsc::UnboundedSender<Pushed>,
    rx: mpsc::UnboundedReceiver<Pushed>,
    /// Consecutive transient failures of the target.
    failures: u32,
    paused_until: Option<Instant>,
}

impl Pump {
    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Run until `stop` turns true (or its sender goes), reconnecting with backoff: one
    /// connection for a plain source, `concurrency` for a session-enabled one (each pushing
    /// one session at a time, see `session.rs`).
    pub async fn run(self, stop: watch::Receiver<bool>) {
        if self.cfg.sessions {
            let me = Arc::new(self);
            let workers: Vec<JoinHandle<()>> = (0..me.cfg.concurrency)
                .map(|_| {
                    let (me, stop) = (me.clone(), stop.clone());
                    tokio::spawn(async move { me.reconnecting(stop).await })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
            me.finish();
        } else {
            self.reconnecting(stop).await;
            self.finish();
        }
    }

    fn finish(&self) {
        self.metrics.set_up(self.name(), false);
        self.board.set(self.name(), State::Stopped);
    }

    async fn reconnecting(&self, mut stop: watch::Receiver<bool>) {
        let mut attempt = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            self.board.set(self.name(), State::Connecting);
            let ended = if self.cfg.sessions {
                self.session_connection(&mut stop, &mut attempt).await
            } else {
                self.connection(&mut stop, &mut attempt).await
            };
            match ended {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.set_up(self.name(), false);
                    if !self.cfg.sessions {
                        // (Session workers share the gauge and step it themselves.)
                        self.metrics.set_in_flight(self.name(), 0);
                    }
                    attempt = attempt.saturating_add(1);
                    let wait = backoff(self.cfg.backoff, attempt);
                    tracing::warn!(connector = self.name(), error = %e, "source connection ended");
                    self.board
                        .set(self.name(), State::Disconnected { why: e.to_string() });
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        changed = stop.changed() => if changed.is_err() { break },
                    }
                }
            }
        }
    }

    /// Connect with the connector's credential and authorise `entity`: the connection and
    /// when to put a fresh token.
    pub(crate) async fn open(
        &self,
        entity: &str,
    ) -> Result<(Connection, String, SystemTime), PumpError> {
        let endpoint = self.credentials.endpoint()?;
        let mut conn = self.credentials.connect(SETUP).await?;
        let audience = endpoint.audience(entity);
        let refresh_at = self.put_token(&mut conn, &audience).await?;
        Ok((conn, audience, refresh_at))
    }

    pub(crate) async fn put_token(
        &self,
        conn: &mut Connection,
        audience: &str,
    ) -> Result<SystemTime, PumpError> {
        let now = SystemTime::now();
        let token = self.credentials.token(audience, now).await?;
        conn.put_token_for(audience, &token.value, SETUP).await?;
        Ok(token.refresh_at(now))
    }

    /// One connection: `Ok` when stopped cleanly, an error when it broke.
    async fn connection(
        &self,
        stop: &mut watch::Receiver<bool>,
        attempt: &mut u32,
    ) -> Result<(), PumpError> {
        let entity = self.cfg.source.path();
        let (mut conn, audience, mut refresh_at) = self.open(&entity).await?;
        let link = conn
            .create_receiver(&entity, &ReceiverOptions::default(), SETUP)
            .await?;
        self.board.set(self.name(), State::Running);
        self.metrics.set_up(self.name(), true);
        *attempt = 0;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut t = Turns {
            link,
            entity,
            inflight: HashMap::new(),
            tx,
            rx,
            failures: 0,
            paused_until: None,
        };
        let result = self
            .turns(&mut conn, &mut t, stop, &audience, &mut refresh_at)
            .await;
        for f in t.inflight.values() {
            f.task.abort();
        }
        if result.is_ok() {
            let _ = conn.close_link(link, SETUP).await;
            let _ = conn.close().await;
        }
        result
    }

    async fn turns(
        &self,
        conn: &mut Connection,
        t: &mut Turns,
        stop: &mut watch::Receiver<bool>,
        audience: &str,
        refresh_at: &mut SystemTime,
    ) -> Result<(), PumpError> {
        let mut drain_until: Option<Instant> = None;
        loop {
            while let Ok(p) = t.rx.try_recv() {
                self.settle(conn, t, p).await?;
            }
            self.metrics.set_in_flight(self.name(), t.inflight.len());
            if drain_until.is_none() && *stop.borrow() {
                conn.stop_credit(t.link);
                drain_until = Some(Instant::now() + self.cfg.timeout + Duration::from_secs(1));
                self.board.set(self.name(), State::Draining);
            }
            if let Some(deadline) = drain_until {
                self.release_held(conn, t).await?;
                if t.inflight.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    for (_, f) in t.inflight.drain() {
                        f.task.abort();
                        let _ = conn
                            .settle(t.link, &f.delivery, Outcome::Abandon, SETUP)
                            .await;
                        self.metrics.outcome(self.name(), Counted::Abandon);
                    }
                    return Ok(());
                }
                idle(conn, TURN).await?;
                continue;
            }
            if SystemTime::now() >= *refresh_at {
                *refresh_at = self.put_token(conn, audience).await?;
            }
            self.renew_locks(conn, t).await?;
            let paused = t.paused_until.is_some_and(|u| Instant::now() < u);
            let free = self.cfg.concurrency.saturating_sub(t.inflight.len());
            if paused {
                // Nothing waits out the pause under a lock: what the outstanding credit
                // brings goes back at once, its delivery count unchanged.
                if conn.receiver(t.link).is_some_and(|r| r.credit > 0) {
                    conn.stop_credit(t.link);
                }
                self.release_held(conn, t).await?;
                idle(conn, TURN).await?;
                continue;
            }
            if free == 0 {
                idle(conn, TURN).await?;
                continue;
            }
            if t.paused_until.take().is_some() {
                self.board.set(self.name(), State::Running);
            }
            // Idle: wait longer for the first delivery (it returns the moment one is here);
            // busy: come back within a turn to settle what finished.
            let wait = if t.inflight.is_empty() {
                IDLE_WAIT
            } else {
                TURN
            };
            for d in conn.receive_any(t.link, free, wait).await? {
                self.start(t, d);
            }
        }
    }

    /// Start pushing `d` in a task of its own (unless its lock already ran out while it
    /// waited: then the broker gives it to a receiver again).
    fn start(&self, t: &mut Turns, d: Delivery) {
        let until = locked_until(&d);
        let now = now_ms(SystemTime::now());
        if until.is_some_and(|u| u <= now) {
            return;
        }
        let (tx, id) = (t.tx.clone(), d.delivery_id);
        let work = self.push_of(&d, &t.entity);
        let task = tokio::spawn(async move {
            let (result, elapsed) = work.await;
            let _ = tx.send(Pushed {
                delivery_id: id,
                result,
                elapsed,
            });
        });
        t.inflight.insert(
            d.delivery_id,
            InFlight {
                delivery: d,
                task,
                locked_until: until,
                lock_since: now,
            },
        );
    }

    /// The push of `d` (counted as a delivery), to run in a task: its result and duration.
    pub(crate) fn push_of(
        &self,
        d: &Delivery,
        entity: &str,
    ) -> impl Future<Output = (PushResult, Duration)> + Send + 'static {
        self.metrics.delivered(self.name());
        let req = push_request(
            &d.message,
            d.lock_token(),
            Origin {
                namespace: self.credentials.namespace(),
                entity,
            },
        );
        let (http, target) = (self.http.clone(), self.cfg.target.clone());
        let bearer = self.bearer.clone();
        async move {
            let started = Instant::now();
            let token = match bearer {
                None => None,
                Some(b) => match b.get(SystemTime::now()).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        let failed = PushResult::Failed(format!("no bearer token: {e}"));
                        return (failed, started.elapsed());
                    }
                },
            };
            let result = push(&http, &target, req, token).await;
            (result, started.elapsed())
        }
    }

    /// The settlement of a push's result, the `failures`-th consecutive failure of the
    /// target if it failed (updated), and how long to pause the target.
    pub(crate) fn judge(
        &self,
        result: &PushResult,
        elapsed: Duration,
        failures: &mut u32,
    ) -> (Outcome, Counted, Option<Duration>) {
        self.metrics.latency(self.name(), elapsed.as_secs_f64());
        let attempt = failures.saturating_add(1);
        match verdict(result, self.cfg.backoff, attempt, SystemTime::now()) {
            Verdict::Complete => {
                *failures = 0;
                (Outcome::Complete, Counted::Complete, None)
            }
            Verdict::Reject { description } => {
                *failures = 0;
                tracing::info!(connector = self.name(), %description, "push rejected: dead-lettering");
                (
                    Outcome::DeadLetter {
                        reason: Some(PUSH_REJECTED.to_string()),
                        description: Some(description),
                    },
                    Counted::DeadLetter,
                    None,
                )
            }
            Verdict::Retry { after, why } => {
                *failures = attempt;
                self.metrics.retried(self.name());
                self.board.set(
                    self.name(),
                    State::Retrying {
                        why,
                        after_ms: after.as_millis(),
                    },
                );
                (Outcome::Abandon, Counted::Abandon, Some(after))
            }
        }
    }

    /// Settle `d` on `link` and count it; a refused settlement (the lock was lost) is counted
    /// and otherwise ignored: the broker delivers the message again.
    pub(crate) async fn settle_counted(
        &self,
        conn: &mut Connection,
        link: LinkId,
        d: &Delivery,
        outcome: Outcome,
        counted: Counted,
    ) -> Result<(), PumpError> {
        match conn.settle(link, d, outcome, SETUP).await {
            Ok(()) => self.metrics.outcome(self.name(), counted),
            Err(ClientError::Rejected(r)) => {
                tracing::warn!(connector = self.name(), refusal = %r, "settlement refused (lock lost): the message will be delivered again");
                self.metrics.outcome(self.name(), Counted::LockLost);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Settle a finished push by its verdict.
    async fn settle(
        &self,
        conn: &mut Connection,
        t: &mut Turns,
        p: Pushed,
    ) -> Result<(), PumpError> {
        let Some(f) = t.inflight.remove(&p.delivery_id) else {
            return Ok(());
        };
        let (outcome, counted, pause) = self.judge(&p.result, p.elapsed, &mut t.failures);
        if let Some(after) = pause {
            t.paused_until = Some(Instant::now() + after);
        }
        self.settle_counted(conn, t.link, &f.delivery, outcome, counted)
            .await
    }

    /// Release what the link holds and never started (stopping).
    async fn release_held(&self, conn: &mut Connection, t: &mut Turns) -> Result<(), PumpError> {
        for d in conn.take_held(t.link) {
            match conn.settle(t.link, &d, Outcome::Release, SETUP).await {
                Ok(()) | Err(ClientError::Rejected(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Renew the locks of pushes that have used half their lock time.
    async fn renew_locks(&self, conn: &mut Connection, t: &mut Turns) -> Result<(), PumpError> {
        let now = now_ms(SystemTime::now());
        let due: Vec<(u32, [u8; 16])> = t
            .inflight
            .iter()
            .filter(|(_, f)| {
                f.locked_until
                    .is_some_and(|u| renew_due(f.lock_since, u, now))
            })
            .filter_map(|(id, f)| Some((*id, f.delivery.lock_token()?)))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let tokens: Vec<[u8; 16]> = due.iter().map(|(_, tok)| *tok).collect();
        match conn.renew_lock(&t.entity, &tokens, SETUP).await {
            Ok(expirations) => {
                for ((id, _), until) in due.iter().zip(expirations) {
                    if let Some(f) = t.inflight.get_mut(id) {
                        f.locked_until = Some(until);
                        f.lock_since = now;
                    }
                }
            }
            Err(ClientError::Management { description, .. }) => {
                tracing::warn!(connector = self.name(), %description, "lock renewal refused");
                for (id, _) in &due {
                    if let Some(f) = t.inflight.get_mut(id) {
                        // Do not ask again for this lock.
                        f.locked_until = None;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// Drive the connection for `wait` without asking for deliveries.
pub(crate) async fn idle(conn: &mut Connection, wait: Duration) -> Result<(), ClientError> {
    match conn
        .run_until(Instant::now() + wait, "an idle turn", |_| false)
        .await
    {
        Ok(()) | Err(ClientError::Timeout { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::renew_due;

    #[test]
    fn locks_are_renewed_half_way() {
        assert!(!renew_due(1_000, 31_000, 15_999));
        assert!(renew_due(1_000, 31_000, 16_000));
        assert!(renew_due(1_000, 31_000, 40_000));
    }
}
