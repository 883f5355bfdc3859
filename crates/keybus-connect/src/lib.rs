//! keybus-connect: `keybus connect --config connectors.toml`, a process of its own that is a
//! CLIENT of a Service Bus namespace (keybus, or Azure Service Bus: nothing keybus-specific
//! on the wire) and pushes each message of a queue or subscription to an HTTP service.
//!
//! Files, one idea each: `config` (the connector file), `credential` (the connector's own
//! identity toward the namespace: connection string, managed identity, workload identity),
//! `bearer` (the token presented to a target for its audience), `request` (a message as an HTTP request: REST receive headers and CloudEvents), `verdict`
//! (a push's result as complete, dead-letter or retry, and the backoff), `push` (one HTTP
//! POST), `pump` (one connector's receive, push, settle and lock-renewal loop), `session` (a
//! session-enabled source: one session at a time per worker, in order),
//! `supervisor` (start, reload and stop the connectors), `status` (states on stdout and for
//! `/health`), `metrics`, `http` (`/health` and `/metrics`), `http_client`.
//!
//! It is built on `keybus-client` and never depends on the broker's crates.

mod bearer;
mod config;
mod credential;
mod http;
mod http_client;
mod metrics;
mod pump;
mod push;
mod request;
mod session;
mod status;
mod supervisor;
mod verdict;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use config::{Config, ConfigError};

/// `keybus connect`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The connector file.
    pub config: PathBuf,
    /// Where `/health` and `/metrics` listen (port 0 picks one).
    pub bind: IpAddr,
    pub http_port: u16,
}

/// Why `keybus connect` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {err}")]
    Listen {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("{0}")]
    Client(#[from] http_client::ClientBuildError),
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
}

/// Run the connectors of `opts.config` until SIGTERM or SIGINT (a clean stop: what is in
/// flight finishes or is abandoned); SIGHUP reloads the file (a bad file is reported and
/// the running connectors are kept).
pub async fn run(opts: Options) -> Result<(), ConnectError> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = Config::load(&opts.config)?;
    let mut term = signal(SignalKind::terminate()).map_err(ConnectError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ConnectError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ConnectError::Signals)?;
    let metrics = metrics::Metrics::default();
    let board = status::Board::default();
    let addr = SocketAddr::new(opts.bind, opts.http_port);
    let (local, server) = http::serve(addr, board.clone(), metrics.clone())
        .await
        .map_err(|err| ConnectError::Listen { addr, err })?;
    let server = tokio::spawn(server);
    println!("keybus connect: http listening on {local} (/health, /metrics)");
    let mut supervisor = supervisor::Supervisor::new(metrics, board);
    supervisor.apply(config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => { println!("keybus connect: SIGTERM: stopping"); break; }
            _ = int.recv() => { println!("keybus connect: SIGINT: stopping"); break; }
            _ = hup.recv() => match Config::load(&opts.config) {
                Ok(c) => {
                    println!("keybus connect: SIGHUP: reloading {}", opts.config.display());
                    if let Err(e) = supervisor.apply(c).await {
                        println!("keybus connect: SIGHUP: {e}; keeping the running connectors");
                    }
                }
                Err(e) => println!("keybus connect: SIGHUP: {e}; keeping the running connectors"),
            },
        }
    }
    supervisor.stop_all().await;
    server.abort();
    println!("keybus connect: stopped");
    Ok(())
}
