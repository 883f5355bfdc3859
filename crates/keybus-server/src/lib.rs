//! keybus-server: the running broker.
//!
//! # Design
//! Wires the pieces together: configuration, the store backend, the [`runtime::Broker`]
//! (entity registry over the sans-I/O core), the AMQP listener with one task per connection,
//! the HTTP listener (`/health`), the housekeeper that drives lock expiry, schedules and TTL
//! as their deadlines come, and the forwarder. [`serve`] is the whole server; `main` only parses flags.

// Modules are not public by default: what is `pub` is what other crates and the integration
// tests use.
#![warn(unreachable_pub)]

pub(crate) mod amqp;
pub mod config;
pub mod http;
pub(crate) mod http_metrics;
pub mod runtime;

use runtime::{admission, tls};

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use keybus_core::{Store, SystemClock};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::runtime::{Broker, forwarding, housekeeping};
use keybus_auth::{Right, SasPolicy, audit, policy, sts};

/// Where TLS certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM certificate chain and private key.
    Files { cert: PathBuf, key: PathBuf },
    /// A development CA and server certificate created (once) in the data directory.
    Dev,
}

/// Options of `keybus serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub in_memory: bool,
    pub amqp_port: u16,
    pub http_port: u16,
    pub bind: IpAddr,
    /// With TLS, AMQPS and HTTPS listeners are added beside the plain ones.
    pub tls: Option<TlsSource>,
    pub amqps_port: u16,
    pub https_port: u16,
    /// Access policy file (see docs/identity.md).
    pub policy: Option<PathBuf>,
    /// Trust bundle for client certificates on AMQPS (mTLS; SPIFFE IDs become principals).
    pub tls_client_ca: Option<PathBuf>,
    /// Audit log file; default `<data-dir>/audit.jsonl` unless in memory.
    pub audit_log: Option<PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            config: None,
            data_dir: PathBuf::from("./keybus-data"),
            in_memory: false,
            amqp_port: 5672,
            http_port: 5300,
            bind: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            tls: None,
            amqps_port: 5671,
            https_port: 5443,
            policy: None,
            tls_client_ca: None,
            audit_log: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] keybus_core::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Write a new file readable by its owner only (mode 0600 from creation on).
fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Create the data dir for its owner only (0700). An existing data dir that group or others
/// can enter is restricted to 0700, with a warning (log and stdout) naming the command that
/// also restricts what earlier versions left in it.
fn prepare_data_dir(dir: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let what = || format!("creating {}", dir.display());
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                let fix = format!("chmod -R go-rwx {}", dir.display());
                tracing::warn!(
                    data_dir = %dir.display(),
                    mode = format!("{mode:04o}"),
                    fix = %fix,
                    "the data dir was accessible by group or others; restricted it to 0700"
                );
                println!(
                    "keybus: WARNING: the data dir {} had mode {mode:04o} (group or others could \
                     read keys and messages); it is now 0700. Files in it may still be \
                     readable by others: run `{fix}`",
                    dir.display()
                );
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err(format!("restricting {}", dir.display())))?;
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(what())),
    }
}

/// The default policy when the config declares none: a generated key kept in the data dir.
fn default_policies(opts: &ServeOptions) -> Result<Vec<SasPolicy>, ServeError> {
    let generate = || {
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let key = if opts.in_memory {
        generate()
    } else {
        let path = opts.data_dir.join("sas-key");
        match std::fs::read_to_string(&path) {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => {
                let k = generate();
                write_private(&path, format!("{k}\n").as_bytes())
                    .map_err(io_err(format!("writing {}", path.display())))?;
                k
            }
        }
    };
    if !opts.in_memory {
        // The namespace's root Manage key: for the owner only (earlier versions wrote 0644).
        let path = opts.data_dir.join("sas-key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("restricting {}", path.display())))?;
    }
    Ok(vec![SasPolicy {
        name: config::EMULATOR_POLICY.into(),
        key,
        rights: vec![Right::Manage, Right::Send, Right::Listen],
        scope: String::new(),
    }])
}

/// A started broker: its bound addresses and the connection string it printed.
pub struct Running {
    pub amqp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// With TLS: the AMQPS and HTTPS addresses and the certificate files in use.
    pub amqps_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub tls_files: Option<tls::TlsFiles>,
    pub connection_string: String,
    /// The web console's address with its one-time sign-in token.
    pub console_url: String,
    pub broker: Arc<Broker>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop accepting and stop background work (open connections end with the runtime), and
    /// wait until the audit lines recorded so far are written.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        self.broker.auth().audit.flush();
    }
}

/// Run the broker until `shutdown` resolves.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let running = start(opts).await?;
    if let (Some(a), Some(h)) = (running.amqps_addr, running.https_addr) {
        println!("keybus: amqps listening on {a}");
        println!("keybus: https listening on {h}");
    }
    if let Some(ca) = running.tls_files.as_ref().and_then(|f| f.ca.as_ref()) {
        println!(
            "keybus: development CA at {0}: trust it in clients (Python: connection_verify=\"{0}\"; Node: NODE_EXTRA_CA_CERTS={0}; curl: --cacert {0})",
            ca.display()
        );
    }
    let b = &running.broker.admission().budgets;
    println!(
        "keybus: open-file limit {} (soft raised to hard); max_connections {} ({} unauthenticated, {} per address), max_http_connections {} + {} for probes",
        b.nofile
            .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        b.max_connections,
        b.max_unauthenticated,
        b.max_unauthenticated_per_address,
        b.max_http,
        b.http_reserved
    );
    println!("keybus: amqp listening on {}", running.amqp_addr);
    println!("keybus: http listening on {}", running.http_addr);
    println!("keybus: connection string: {}", running.connection_string);
    println!("keybus: console: {}", running.console_url);
    shutdown.await;
    running.stop();
    tracing::info!("keybus stopped");
    Ok(())
}

/// The access policy, audit log and token service the options ask for.
fn open_auth(opts: &ServeOptions) -> Result<keybus_auth::Auth, ServeError> {
    let policy = match &opts.policy {
        Some(p) => policy::Policy::load(p)?,
        None => policy::Policy::default(),
    };
    let audit_path = opts
        .audit_log
        .clone()
        .or_else(|| policy.file.audit.path.clone())
        .or_else(|| (!opts.in_memory).then(|| opts.data_dir.join("audit.jsonl")));
    let audit = match &audit_path {
        Some(p) => {
            let a = &policy.file.audit;
            let mut o = audit::AuditOptions::default();
            o.max_bytes = a.max_bytes.unwrap_or(o.max_bytes);
            o.keep = a.keep.unwrap_or(o.keep);
            if let Some(age) = &a.max_age {
                o.max_age = policy::parse_duration("audit.max_age", age)?;
            }
            // The chain's key lives outside the log (a broker without a data dir keeps a
            // random one for its lifetime).
            let key = (!opts.in_memory).then(|| opts.data_dir.join("audit-key"));
            audit::Audit::open(p, key.as_deref(), o)
                .map_err(io_err(format!("opening the audit log {}", p.display())))?
        }
        None => audit::Audit::disabled(),
    };
    let sts = if opts.in_memory {
        sts::TokenService::in_memory()
    } else {
        sts::TokenService::open(&opts.data_dir.join("sts"))
            .map_err(io_err("opening the token service keys"))?
    };
    Ok(keybus_auth::Auth::new(
        policy,
        opts.policy.clone(),
        audit,
        sts,
    ))
}

/// Reload the policy on SIGHUP and whenever its file changes (checked every second).
async fn watch_policy(broker: Arc<Broker>) {
    let Some(path) = broker.auth().policy_path.clone() else {
        return;
    };
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = signalled => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let now = modified(&path);
        if forced || now != last {
            last = now;
            // Errors are logged and audited; the previous policy stays.
            let _ = broker.auth().reload();
        }
    }
}

/// Open the store, load the entities, bind both listeners and start serving.
pub async fn start(opts: ServeOptions) -> Result<Running, ServeError> {
    let config = match &opts.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    start_with(opts, config).await
}

/// [`start`] with an already loaded configuration (used by tests).
pub async fn start_with(opts: ServeOptions, config: Config) -> Result<Running, ServeError> {
    start_with_store(opts, config, |store| store).await
}

/// [`start_with`], the store opened as `opts` say being passed through `wrap` first (tests
/// put a store that lags behind in front of the real one).
pub async fn start_with_store(
    opts: ServeOptions,
    config: Config,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> Result<Running, ServeError> {
    start_with_clock(opts, config, Arc::new(SystemClock), wrap).await
}

/// [`start_with_store`] on the broker clock `clock` (tests pass a `ManualClock` to move
/// time forward without waiting).
pub async fn start_with_clock(
    opts: ServeOptions,
    config: Config,
    clock: Arc<dyn keybus_core::Clock>,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> Result<Running, ServeError> {
    admission::raise_nofile();
    let store: Arc<dyn Store> = if opts.in_memory {
        Arc::new(keybus_store::MemStore::new())
    } else {
        prepare_data_dir(&opts.data_dir)?;
        keybus_store::open_embedded(&opts.data_dir)?
    };
    let store = wrap(store);
    let policies = if config.policies.is_empty() {
        default_policies(&opts)?
    } else {
        config.policies.clone()
    };
    let auth = Arc::new(open_auth(&opts)?);
    let broker = Broker::open_with_auth(config, policies, store, clock, auth).await?;

    let amqp = TcpListener::bind(SocketAddr::new(opts.bind, opts.amqp_port))
        .await
        .map_err(io_err(format!("binding AMQP port {}", opts.amqp_port)))?;
    let http_listener = TcpListener::bind(SocketAddr::new(opts.bind, opts.http_port))
        .await
        .map_err(io_err(format!("binding HTTP port {}", opts.http_port)))?;
    let amqp_addr = amqp.local_addr().map_err(io_err("AMQP listener"))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(io_err("HTTP listener"))?;
    let host = if opts.bind.is_unspecified() {
        "localhost".to_string()
    } else {
        opts.bind.to_string()
    };
    let policy = broker
        .policies()
        .first()
        .ok_or_else(|| config::ConfigError::Invalid("no SAS policy".into()))?;
    let connection_string = format!(
        "Endpoint=sb://{host}:{};SharedAccessKeyName={};SharedAccessKey={};UseDevelopmentEmulator=true;",
        amqp_addr.port(),
        policy.name,
        policy.key
    );
    tracing::info!(
        entities = broker.entity_list().len(),
        in_memory = opts.in_memory,
        "keybus started"
    );

    // The console's one-time token: its address is printed with the connection string.
    let console = Arc::new(http::console::Console::new());
    let console_ip = if opts.bind.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        opts.bind
    };
    let console_url = format!(
        "http://{}/console/?token={}",
        SocketAddr::new(console_ip, http_addr.port()),
        console.take_one_time_token().unwrap_or_default()
    );
    let ticker = tokio::spawn(housekeeping::run(broker.clone()));
    let mut tasks = Vec::new();
    let (mut amqps_addr, mut https_addr, mut tls_files) = (None, None, None);
    if let Some(source) = &opts.tls {
        let files = match source {
            TlsSource::Files { cert, key } => tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: None,
            },
            TlsSource::Dev => tls::dev_files(&opts.data_dir, &[])?,
        };
        let t = tls::Tls::load(files.clone(), opts.tls_client_ca.as_deref())?;
        let amqps = TcpListener::bind(SocketAddr::new(opts.bind, opts.amqps_port))
            .await
            .map_err(io_err(format!("binding AMQPS port {}", opts.amqps_port)))?;
        let https = TcpListener::bind(SocketAddr::new(opts.bind, opts.https_port))
            .await
            .map_err(io_err(format!("binding HTTPS port {}", opts.https_port)))?;
        amqps_addr = Some(amqps.local_addr().map_err(io_err("AMQPS listener"))?);
        https_addr = Some(https.local_addr().map_err(io_err("HTTPS listener"))?);
        tls_files = Some(files);
        tasks.push(tokio::spawn(amqp::serve_tls(
            amqps,
            tokio_rustls::TlsAcceptor::from(t.amqp.clone()),
            broker.clone(),
        )));
        tasks.push(tokio::spawn(http::serve_tls(
            https,
            tokio_rustls::TlsAcceptor::from(t.http.clone()),
            broker.clone(),
            console.clone(),
        )));
    }
    // The token service's issuer and accepted hosts, unless the policy sets `sts.public_url`.
    let https_port = https_addr.map_or(opts.https_port, |a| a.port());
    broker
        .auth()
        .sts
        .set_default_public(sts::PublicNames::for_bind(opts.bind, https_port));
    let forwarder = tokio::spawn(forwarding::run(broker.clone()));
    tasks.push(tokio::spawn(watch_policy(broker.clone())));
    let http_task = tokio::spawn(http::serve(http_listener, broker.clone(), console.clone()));
    let accept = {
        let broker = broker.clone();
        tokio::spawn(async move {
            loop {
                match amqp.accept().await {
                    Ok((sock, addr)) => {
                        let Some((sock, permit)) =
                            amqp::admit(&broker, sock, addr, admission::Listener::Amqp)
                        else {
                            continue;
                        };
                        let _ = sock.set_nodelay(true);
                        let peer = amqp::Peer {
                            permit: Some(Arc::new(permit)),
                            ..amqp::Peer::new(addr.to_string())
                        };
                        tokio::spawn(amqp::serve_socket(broker.clone(), sock, peer));
                    }
                    Err(e) => {
                        tracing::warn!(%e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    tasks.extend([ticker, forwarder, http_task, accept]);
    Ok(Running {
        amqp_addr,
        http_addr,
        amqps_addr,
        https_addr,
        tls_files,
        connection_string,
        console_url,
        broker,
        tasks,
    })
}
