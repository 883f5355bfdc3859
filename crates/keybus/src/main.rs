//! The `keybus` binary: `serve` runs the broker, `connect` runs connectors (a client of a
//! namespace that pushes messages to HTTP services), `bench` drives a running broker, `audit
//! verify` checks an audit log.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, with background threads purging dirty pages after `dirty_decay_ms` (10 s), gives
/// freed memory back to the OS, so RSS falls back after bursts of connections (glibc malloc
/// kept hundreds of MB of freed per-connection buffers; mimalloc purged only when the owning
/// worker thread allocated again).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "keybus",
    version,
    about = "A self-hosted message broker that speaks Azure Service Bus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Push the messages of queues and subscriptions to HTTP services, as a client of a
    /// namespace (keybus or Azure Service Bus). Stops cleanly on SIGTERM, reloads on SIGHUP.
    Connect(ConnectArgs),
    /// Measure a running broker over AMQP 1.0 (`bench config`: print a broker configuration
    /// for the benchmark's entities).
    Bench(keybus_cli::bench::BenchArgs),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log and its rotated archives (FILE.N.gz .. FILE.1.gz): every line's
    /// HMAC, and the sequence and chain across files. Exits non-zero at the first bad line.
    Verify {
        /// The log (e.g. keybus-data/audit.jsonl).
        file: PathBuf,
        /// The chain's key; default `audit-key` beside FILE (the data dir).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

fn audit_verify(file: &std::path::Path, key: Option<PathBuf>) -> Result<(), String> {
    use keybus_auth::audit;
    let key_path = key.unwrap_or_else(|| {
        file.parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("audit-key")
    });
    let key = audit::read_key(&key_path)
        .map_err(|e| format!("cannot read the audit key {}: {e}", key_path.display()))?;
    match audit::verify_files(file, &key) {
        Ok(r) => {
            for (f, n) in &r.files {
                println!("{}: {n} lines", f.display());
            }
            println!(
                "OK: {} lines in {} files, seq {}..{}, {} torn tails marked",
                r.lines,
                r.files.len(),
                r.first_seq.unwrap_or(0),
                r.last_seq.unwrap_or(0),
                r.torn_marked
            );
            Ok(())
        }
        Err(e) => Err(format!("audit log verification FAILED: {e}")),
    }
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// The connector file (TOML): the namespace and credential, and each connector's source
    /// and target.
    #[arg(long, env = "KEYBUS_CONNECT_CONFIG")]
    config: PathBuf,
    /// Port of `/health` and `/metrics` (0 picks a free one).
    #[arg(long, env = "KEYBUS_CONNECT_HTTP_PORT", default_value_t = 5310)]
    http_port: u16,
    /// Address `/health` and `/metrics` bind to.
    #[arg(long, env = "KEYBUS_CONNECT_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// keybus TOML file or the Service Bus emulator's Config.json.
    #[arg(long, env = "KEYBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long, env = "KEYBUS_DATA_DIR", default_value = "./keybus-data")]
    data_dir: PathBuf,
    /// Keep nothing on disk.
    #[arg(long, env = "KEYBUS_IN_MEMORY")]
    in_memory: bool,
    /// Plain AMQP port (0 picks a free one).
    #[arg(long, env = "KEYBUS_AMQP_PORT", default_value_t = 5672)]
    amqp_port: u16,
    /// HTTP port (0 picks a free one).
    #[arg(long, env = "KEYBUS_HTTP_PORT", default_value_t = 5300)]
    http_port: u16,
    /// Address both listeners bind to.
    #[arg(long, env = "KEYBUS_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// TLS certificate chain (PEM); with --tls-key, adds AMQPS and HTTPS listeners.
    #[arg(
        long,
        env = "KEYBUS_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "dev_tls"
    )]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KEYBUS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Create (once) a local CA and a server certificate in the data dir, and serve TLS with them.
    #[arg(long, env = "KEYBUS_DEV_TLS")]
    dev_tls: bool,
    /// AMQPS port when TLS is on (0 picks a free one).
    #[arg(long, env = "KEYBUS_AMQPS_PORT", default_value_t = 5671)]
    amqps_port: u16,
    /// HTTPS port when TLS is on (0 picks a free one).
    #[arg(long, env = "KEYBUS_HTTPS_PORT", default_value_t = 5443)]
    https_port: u16,
    /// Trust bundle (PEM) for client certificates on AMQPS: mTLS, the certificate's SPIFFE ID
    /// becomes the principal. Clients without a certificate still connect (with tokens).
    #[arg(long, env = "KEYBUS_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Access policy (TOML): token issuers, principals, role grants, the token service's
    /// registrations, audit settings. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "KEYBUS_POLICY")]
    policy: Option<PathBuf>,
    /// Audit log (JSON Lines); default `<data-dir>/audit.jsonl` (none with --in-memory).
    #[arg(long, env = "KEYBUS_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
}

/// The log filter unless `KEYBUS_LOG` or `RUST_LOG` sets one: keybus's own lines at `info`,
/// its dependencies' (the storage engine's start-up chatter) from `warn` on.
const DEFAULT_LOG: &str =
    "warn,keybus=info,keybus_server=info,keybus_store=info,keybus_core=info,keybus_auth=info";

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what service managers and container runtimes
/// send): the broker stops accepting, writes what its audit log holds and exits 0.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let how = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = terminated => "SIGTERM",
    };
    println!("keybus: {how}: stopping");
}

fn main() -> ExitCode {
    // Everything keybus creates (the store's files, keys, logs) is for its owner only: files
    // 0600, directories 0700, including the files the storage engine creates itself.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYBUS_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keybus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => {
                let opts = keybus_server::ServeOptions {
                    config: a.config,
                    data_dir: a.data_dir,
                    in_memory: a.in_memory,
                    amqp_port: a.amqp_port,
                    http_port: a.http_port,
                    bind: a.bind,
                    tls: match (a.tls_cert, a.tls_key, a.dev_tls) {
                        (Some(cert), Some(key), _) => {
                            Some(keybus_server::TlsSource::Files { cert, key })
                        }
                        (_, _, true) => Some(keybus_server::TlsSource::Dev),
                        _ => None,
                    },
                    amqps_port: a.amqps_port,
                    https_port: a.https_port,
                    policy: a.policy,
                    tls_client_ca: a.tls_client_ca,
                    audit_log: a.audit_log,
                };
                let shutdown = stop_signal();
                keybus_server::serve(opts, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Connect(a) => keybus_connect::run(keybus_connect::Options {
                config: a.config,
                bind: a.bind,
                http_port: a.http_port,
            })
            .await
            .map_err(|e| e.to_string()),
            Command::Bench(a) => keybus_cli::bench::run(a).await.map_err(|e| e.to_string()),
            Command::Audit(AuditCommand::Verify { file, key }) => audit_verify(&file, key),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybus: {e}");
            ExitCode::FAILURE
        }
    }
}
