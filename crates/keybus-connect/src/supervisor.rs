//! The running connectors: started from a file, changed on reload (a connector whose
//! definition changed, or every one when the namespace changed, is stopped and started
//! anew; others keep running untouched), stopped together at the end.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bearer::Bearer;
use crate::config::{Config, Connector, Namespace};
use crate::credential::Credentials;
use crate::http_client::{self, ClientBuildError, ClientIdentity};
use crate::metrics::Metrics;
use crate::pump::Pump;
use crate::status::Board;

struct Running {
    cfg: Connector,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The connectors of the current file.
pub struct Supervisor {
    namespace: Option<(Namespace, Arc<Credentials>)>,
    running: HashMap<String, Running>,
    metrics: Metrics,
    board: Board,
}

impl Supervisor {
    pub fn new(metrics: Metrics, board: Board) -> Supervisor {
        Supervisor {
            namespace: None,
            running: HashMap::new(),
            metrics,
            board,
        }
    }

    /// Make the running connectors those of `config`. On an error (a file that cannot be
    /// read, a bad certificate) nothing changed.
    pub async fn apply(&mut self, config: Config) -> Result<(), ClientBuildError> {
        let same_namespace = self
            .namespace
            .as_ref()
            .is_some_and(|(n, _)| *n == config.namespace);
        let extra_ca = match &config.namespace.ca_file {
            Some(path) => Some(read(path)?),
            None => None,
        };
        let credentials = match (&self.namespace, same_namespace) {
            (Some((_, c)), true) => c.clone(),
            _ => {
                let http = http_client::build(
                    std::time::Duration::from_secs(30),
                    extra_ca.as_deref(),
                    None,
                )?;
                let amqp_tls = match config.namespace.tls {
                    true => Some(Arc::new(http_client::tls_config(extra_ca.as_deref())?)),
                    false => None,
                };
                Arc::new(Credentials::new(config.namespace.clone(), http, amqp_tls))
            }
        };
        let keep: Vec<String> = config
            .connectors
            .iter()
            .filter(|c| same_namespace && self.running.get(&c.name).is_some_and(|r| r.cfg == **c))
            .map(|c| c.name.clone())
            .collect();
        // Everything that can fail (files, TLS set-up) happens before anything stops, so a
        // reload that fails leaves the running connectors as they were.
        let mut fresh = Vec::new();
        for c in config.connectors {
            if keep.contains(&c.name) {
                continue;
            }
            let identity = match &c.client_cert {
                Some((cert, key)) => Some(ClientIdentity {
                    cert_pem: read(cert)?,
                    key_pem: read(key)?,
                }),
                None => None,
            };
            let bearer = c
                .audience
                .clone()
                .map(|a| Arc::new(Bearer::new(credentials.clone(), a)));
            fresh.push(Pump {
                bearer,
                http: http_client::build(c.timeout, extra_ca.as_deref(), identity.as_ref())?,
                cfg: c,
                credentials: credentials.clone(),
                metrics: self.metrics.clone(),
                board: self.board.clone(),
            });
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                stop(r).await;
            }
        }
        for pump in fresh {
            let cfg = pump.cfg.clone();
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(pump.run(rx));
            self.running.insert(
                cfg.name.clone(),
                Running {
                    cfg,
                    stop: tx,
                    task,
                },
            );
        }
        self.namespace = Some((config.namespace, credentials));
        Ok(())
    }

    /// Stop every connector (each finishes or abandons what it has in flight).
    pub async fn stop_all(&mut self) {
        let all: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        for r in all {
            let _ = r.task.await;
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientBuildError> {
    std::fs::read(path).map_err(|err| ClientBuildError::File {
        path: path.display().to_string(),
        err,
    })
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let _ = r.task.await;
}
