//! A session-enabled source: each worker (a connection of its own) locks the next available
//! session and pushes its messages one at a time, in order, settling each before it takes
//! the next; a transient failure waits out the backoff inside the session (so order holds)
//! and a session that has nothing for a while is let go for the next one. The session lock
//! is renewed while a push or a backoff takes half its time.

use std::time::{Duration, Instant, SystemTime};

use keybus_client::{ClientError, Connection, LinkId, ReceiverOptions, SessionFilter};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pump::{Pump, PumpError, SETUP, locked_until, now_ms, renew_due};
use crate::status::State;
use crate::verdict::PushResult;

/// How long a next-available attach may wait for a session (the broker answers within its
/// own 60 s by default).
const ACCEPT: Duration = Duration::from_secs(75);
/// A session with nothing to push for this long is let go.
const IDLE: Duration = Duration::from_secs(1);

/// The session a worker holds and its lock.
struct Held {
    link: LinkId,
    id: String,
    locked_until: Option<i64>,
    lock_since: i64,
}

/// The connection's CBS audience and when its token is due for a fresh one.
struct Auth {
    audience: String,
    refresh_at: SystemTime,
}

impl Pump {
    /// One connection of a session worker: `Ok` when stopped cleanly.
    pub(crate) async fn session_connection(
        &self,
        stop: &mut watch::Receiver<bool>,
        attempt: &mut u32,
    ) -> Result<(), PumpError> {
        let entity = self.cfg.source.path();
        let (mut conn, audience, refresh_at) = self.open(&entity).await?;
        let mut auth = Auth {
            audience,
            refresh_at,
        };
        self.board.set(self.name(), State::Running);
        self.metrics.set_up(self.name(), true);
        *attempt = 0;
        let mut failures = 0u32;
        let options = ReceiverOptions {
            session: Some(SessionFilter::NextAvailable),
            ..Default::default()
        };
        loop {
            if *stop.borrow() {
                let _ = conn.close().await;
                return Ok(());
            }
            self.refresh(&mut conn, &mut auth).await?;
            let attached = tokio::select! {
                r = conn.create_receiver(&entity, &options, ACCEPT) => r,
                _ = stop.changed() => return Ok(()),
            };
            let link = match attached {
                Ok(link) => link,
                // No session became available in time: ask again.
                Err(ClientError::Detached { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(id) = conn.locked_session(link) else {
                let _ = conn.close_link(link, SETUP).await;
                continue;
            };
            let mut held = Held {
                link,
                id,
                locked_until: None,
                lock_since: now_ms(SystemTime::now()),
            };
            match self
                .one_session(&mut conn, &mut held, &mut auth, stop, &mut failures)
                .await
            {
                Ok(()) => {}
                // The session lock was lost: its messages go to the next holder.
                Err(PumpError::Client(ClientError::Detached { error, .. })) => {
                    tracing::warn!(connector = self.name(), session = %held.id, %error, "session lost");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let _ = conn.close_link(held.link, SETUP).await;
        }
    }

    /// Push the held session's messages in order until it is idle or the worker stops.
    async fn one_session(
        &self,
        conn: &mut Connection,
        held: &mut Held,
        auth: &mut Auth,
        stop: &watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Result<(), PumpError> {
        let entity = self.cfg.source.path();
        loop {
            self.refresh(conn, auth).await?;
            if *stop.borrow() {
                conn.stop_credit(held.link);
                for d in conn.take_held(held.link) {
                    let _ = conn
                        .settle(held.link, &d, keybus_client::Outcome::Release, SETUP)
                        .await;
                }
                return Ok(());
            }
            let Some(d) = conn.receive(held.link, 1, IDLE).await?.into_iter().next() else {
                return Ok(());
            };
            if let Some(u) = locked_until(&d) {
                held.locked_until = Some(u);
                held.lock_since = now_ms(SystemTime::now());
            }
            self.metrics.in_flight_step(self.name(), true);
            let mut task = tokio::spawn(self.push_of(&d, &entity));
            let pushed = self.await_push(conn, held, auth, &mut task).await;
            self.metrics.in_flight_step(self.name(), false);
            if pushed.is_err() {
                task.abort();
            }
            let (result, elapsed) = pushed?;
            let (outcome, counted, pause) = self.judge(&result, elapsed, failures);
            self.settle_counted(conn, held.link, &d, outcome, counted)
                .await?;
            if let Some(after) = pause {
                let until = Instant::now() + after;
                while Instant::now() < until && !*stop.borrow() {
                    tokio::time::sleep(crate::pump::TURN).await;
                    self.keep_session(conn, held, auth).await?;
                }
                if !*stop.borrow() {
                    self.board.set(self.name(), State::Running);
                }
            }
        }
    }

    /// Wait for the push `task`, keeping the session meanwhile.
    async fn await_push(
        &self,
        conn: &mut Connection,
        held: &mut Held,
        auth: &mut Auth,
        task: &mut JoinHandle<(PushResult, Duration)>,
    ) -> Result<(PushResult, Duration), PumpError> {
        loop {
            tokio::select! {
                r = &mut *task => return Ok(r.unwrap_or((
                    PushResult::Failed("the push task ended early".into()),
                    Duration::ZERO,
                ))),
                () = tokio::time::sleep(crate::pump::TURN) => self.keep_session(conn, held, auth).await?,
            }
        }
    }

    /// Put a fresh token once the current one is half-way to expiry.
    async fn refresh(&self, conn: &mut Connection, auth: &mut Auth) -> Result<(), PumpError> {
        if SystemTime::now() >= auth.refresh_at {
            auth.refresh_at = self.put_token(conn, &auth.audience).await?;
        }
        Ok(())
    }

    /// Drive the connection, refresh the token when due and renew the session lock once
    /// half its time is gone.
    async fn keep_session(
        &self,
        conn: &mut Connection,
        held: &mut Held,
        auth: &mut Auth,
    ) -> Result<(), PumpError> {
        self.refresh(conn, auth).await?;
        let entity = self.cfg.source.path();
        let now = now_ms(SystemTime::now());
        if let Some(until) = held.locked_until
            && renew_due(held.lock_since, until, now)
        {
            held.locked_until = conn.renew_session_lock(&entity, &held.id, SETUP).await?;
            held.lock_since = now;
        }
        crate::pump::idle(conn, Duration::ZERO).await?;
        Ok(())
    }
}
