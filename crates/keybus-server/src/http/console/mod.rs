//! The web console under `/console/` on the HTTP and HTTPS ports: server-rendered HTML
//! (maud) with htmx, both embedded in the binary (`assets.rs`), no inline script or style.
//!
//! One idea per file: `sessions.rs` the one-time sign-in token and the session table;
//! `guard.rs` the security headers, cookies and the CSRF check; `signin.rs` signing in and
//! out; `access.rs` every decision through `keybus_auth::Auth` (the same decision code as
//! AMQP and REST, audited); `layout.rs` the page shell; `overview.rs` the entity table and its
//! live counts (server-sent events), `rates.rs` their in/out rates; `browse.rs` peeking an
//! entity or its dead-letter queue through the queue's peek (the code `$management` peek
//! uses); `body.rs` how a body is shown; `send.rs` test messages; `redrive.rs` and `purge.rs`
//! the dead-letter and purge actions over the queue's own operations; `scheduled.rs`
//! cancelling a scheduled message and `deferred.rs` receiving and completing a deferred one;
//! `form.rs` form decoding; `error.rs` the console's errors.

mod access;
mod assets;
mod body;
mod browse;
mod deferred;
mod error;
mod form;
mod guard;
mod layout;
mod overview;
mod purge;
mod rates;
mod redrive;
mod scheduled;
mod send;
mod sessions;
mod signin;

use std::sync::Arc;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use crate::runtime::Broker;
use sessions::Sessions;

/// The console's state: its sessions and the one-time sign-in token.
pub struct Console {
    sessions: Sessions,
}

impl Console {
    /// A console with a fresh one-time token (see [`Console::take_one_time_token`]).
    pub fn new() -> Console {
        Console {
            sessions: Sessions::new(),
        }
    }

    /// The one-time token `keybus serve` prints in the console address (exchanged once for a
    /// session as the local owner), handed out once: afterwards only its SHA-256 is kept.
    pub fn take_one_time_token(&self) -> Option<String> {
        self.sessions.take_one_time_token()
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

/// The console's routes (full paths under `/console/`).
pub fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/events", get(overview::events))
        .route("/console/signin", post(signin::sign_in))
        .route("/console/signout", post(signin::sign_out))
        .route("/console/browse", get(browse::page))
        .route("/console/send", post(send::send))
        .route("/console/redrive", post(redrive::redrive))
        .route("/console/purge", post(purge::purge))
        .route("/console/cancel", post(scheduled::cancel))
        .route("/console/deferred", post(deferred::take))
        .route("/console/static/{file}", get(assets::serve))
        .layer(axum::middleware::map_response(guard::secure_headers))
}
