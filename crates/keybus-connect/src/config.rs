//! The connector file (`connectors.toml`): the namespace and how the connector authenticates
//! to it, and each connector's source and HTTP target. Read into [`Config`], checked as a
//! whole (a bad file is refused with its cause; on SIGHUP the running connectors are kept).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Requests in flight per target unless the file says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// The most requests in flight one connector may have.
pub const MAX_CONCURRENCY: usize = 1024;

/// Why a connector file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Toml { path: String, err: toml::de::Error },
    #[error("[namespace]: {0}")]
    Namespace(String),
    #[error("connector '{name}': {why}")]
    Connector { name: String, why: String },
    #[error("connector '{0}' is declared twice")]
    Duplicate(String),
    #[error("the file declares no [[connectors]]")]
    Empty,
}

/// How the connector authenticates to the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// SAS from a connection string (its `SharedAccessKeyName` names the principal).
    ConnectionString(String),
    /// The managed identity endpoint (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER`), optionally
    /// for one of several identities by client id.
    ManagedIdentity { client_id: Option<String> },
    /// Workload identity federation: the federated token file (`AZURE_FEDERATED_TOKEN_FILE`)
    /// exchanged at the authority (`AZURE_AUTHORITY_HOST`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`) for an access token.
    WorkloadIdentity { client_id: Option<String> },
}

/// The namespace and the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `sb://host[:port]` (from the connection string, or `endpoint`).
    pub endpoint: String,
    pub credential: Credential,
    /// Extra trusted roots (PEM) for HTTPS: the token service and the targets (say, keybus's
    /// `--dev-tls` CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// AMQPS (TLS, port 5671 unless the endpoint names one): the default, except for a
    /// connection string with `UseDevelopmentEmulator=true`.
    pub tls: bool,
}

/// Where a connector receives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Queue(String),
    Subscription { topic: String, subscription: String },
}

impl Source {
    /// The entity path links and CBS audiences name.
    pub fn path(&self) -> String {
        match self {
            Source::Queue(q) => q.clone(),
            Source::Subscription {
                topic,
                subscription,
            } => format!("{topic}/subscriptions/{subscription}"),
        }
    }
}

/// Retry backoff of a target that failed: `initial x 2^(attempt-1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// One connector: a source and the HTTP target its messages are pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    pub name: String,
    pub source: Source,
    /// `http://` or `https://` URL the messages are POSTed to.
    pub target: String,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// How long one request may take before it counts as failed (and is abandoned).
    pub timeout: Duration,
    pub backoff: Backoff,
    /// The source is session-enabled: each session is pushed in order, one request in flight
    /// per session, `concurrency` sessions at a time.
    pub sessions: bool,
    /// Present `Authorization: Bearer <token>` with a token for this audience, minted for
    /// the connector's identity by its token service.
    pub audience: Option<String>,
    /// A client certificate chain and key (PEM files) presented to the target (mTLS).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A whole connector file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub namespace: Namespace,
    pub connectors: Vec<Connector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNamespace {
    connection_string: Option<String>,
    endpoint: Option<String>,
    credential: Option<String>,
    client_id: Option<String>,
    ca_file: Option<std::path::PathBuf>,
    tls: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnector {
    name: String,
    queue: Option<String>,
    topic: Option<String>,
    subscription: Option<String>,
    target: String,
    concurrency: Option<usize>,
    timeout: Option<String>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    sessions: Option<bool>,
    audience: Option<String>,
    client_cert: Option<std::path::PathBuf>,
    client_key: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    namespace: FileNamespace,
    #[serde(default)]
    connectors: Vec<FileConnector>,
}

impl Config {
    /// Read and check the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: shown.clone(),
            err,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Toml { err, .. } => ConfigError::Toml { path: shown, err },
            other => other,
        })
    }

    /// Parse and check a file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|err| ConfigError::Toml {
            path: "connectors file".into(),
            err,
        })?;
        let namespace = namespace(file.namespace)?;
        if file.connectors.is_empty() {
            return Err(ConfigError::Empty);
        }
        let identity = !matches!(namespace.credential, Credential::ConnectionString(_));
        let mut names = HashSet::new();
        let mut connectors = Vec::new();
        for c in file.connectors {
            if !names.insert(c.name.clone()) {
                return Err(ConfigError::Duplicate(c.name));
            }
            let c = connector(c)?;
            if c.audience.is_some() && !identity {
                return Err(ConfigError::Connector {
                    name: c.name,
                    why: "audience needs a token service: credential = \"managed_identity\" or \"workload_identity\"".into(),
                });
            }
            connectors.push(c);
        }
        Ok(Config {
            namespace,
            connectors,
        })
    }
}

fn namespace(n: FileNamespace) -> Result<Namespace, ConfigError> {
    let ca_file = n.ca_file.clone();
    let emulator = n.connection_string.as_deref().is_some_and(|cs| {
        cs.split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("UseDevelopmentEmulator=true"))
    });
    let tls = n.tls.unwrap_or(!emulator);
    namespace_credential(n).map(|(endpoint, credential)| Namespace {
        endpoint,
        credential,
        ca_file,
        tls,
    })
}

fn namespace_credential(n: FileNamespace) -> Result<(String, Credential), ConfigError> {
    let bad = |why: &str| ConfigError::Namespace(why.to_string());
    match (n.connection_string, n.endpoint, n.credential.as_deref()) {
        (Some(cs), None, None) => {
            let e = keybus_client::Endpoint::parse(&cs)
                .map_err(|e| ConfigError::Namespace(format!("connection_string: {e}")))?;
            if n.client_id.is_some() {
                return Err(bad("client_id goes with a managed or workload identity"));
            }
            Ok((e.uri_base, Credential::ConnectionString(cs)))
        }
        (Some(_), _, _) => Err(bad(
            "give either connection_string, or endpoint with credential",
        )),
        (None, Some(endpoint), Some(kind)) => {
            let credential = match kind {
                "managed_identity" => Credential::ManagedIdentity {
                    client_id: n.client_id,
                },
                "workload_identity" => Credential::WorkloadIdentity {
                    client_id: n.client_id,
                },
                other => {
                    return Err(ConfigError::Namespace(format!(
                        "credential '{other}' is not managed_identity or workload_identity"
                    )));
                }
            };
            let authority = endpoint
                .strip_prefix("sb://")
                .ok_or_else(|| bad("endpoint must be sb://host[:port]"))?
                .trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(bad("endpoint must be sb://host[:port]"));
            }
            Ok((format!("sb://{authority}"), credential))
        }
        (None, Some(_), None) => Err(bad(
            "endpoint needs credential = \"managed_identity\" or \"workload_identity\"",
        )),
        (None, None, _) => Err(bad("give connection_string, or endpoint with credential")),
    }
}

fn duration(
    name: &str,
    field: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = v else { return Ok(default) };
    let d = humantime::parse_duration(&text).map_err(|e| ConfigError::Connector {
        name: name.to_string(),
        why: format!("{field} '{text}': {e}"),
    })?;
    if d.is_zero() {
        return Err(ConfigError::Connector {
            name: name.to_string(),
            why: format!("{field} must be more than zero"),
        });
    }
    Ok(d)
}

fn connector(c: FileConnector) -> Result<Connector, ConfigError> {
    let name = c.name;
    let bad = |why: String| ConfigError::Connector {
        name: name.clone(),
        why,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        return Err(bad("a name is letters, digits, '-', '_' and '.'".into()));
    }
    let source = match (c.queue, c.topic, c.subscription) {
        (Some(q), None, None) if !q.is_empty() => Source::Queue(q),
        (None, Some(topic), Some(subscription))
            if !topic.is_empty() && !subscription.is_empty() =>
        {
            Source::Subscription {
                topic,
                subscription,
            }
        }
        _ => {
            return Err(bad(
                "the source is either queue, or topic with subscription".into(),
            ));
        }
    };
    let url =
        reqwest::Url::parse(&c.target).map_err(|e| bad(format!("target '{}': {e}", c.target)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(format!("target '{}' is not an http(s) URL", c.target)));
    }
    let concurrency = c.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(bad(format!("concurrency must be 1 to {MAX_CONCURRENCY}")));
    }
    let timeout = duration(&name, "timeout", c.timeout, Duration::from_secs(30))?;
    let initial = duration(
        &name,
        "retry_initial",
        c.retry_initial,
        Duration::from_secs(1),
    )?;
    let max = duration(&name, "retry_max", c.retry_max, Duration::from_secs(60))?;
    if max < initial {
        return Err(bad("retry_max is less than retry_initial".into()));
    }
    Ok(Connector {
        name: name.clone(),
        source,
        target: c.target,
        concurrency,
        timeout,
        backoff: Backoff { initial, max },
        sessions: c.sessions.unwrap_or(false),
        audience: match c.audience {
            Some(a) if a.is_empty() || a.chars().any(char::is_whitespace) => {
                return Err(bad(format!("audience '{a}' is not an audience")));
            }
            other => other,
        },
        client_cert: match (c.client_cert, c.client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(bad("client_cert and client_key go together".into())),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const CS: &str = "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=pusher;SharedAccessKey=k=";

    fn with_connectors(body: &str) -> String {
        format!("[namespace]\nconnection_string = \"{CS}\"\n\n{body}")
    }

    #[test]
    fn a_queue_and_a_subscription_with_defaults_and_overrides() {
        let c = Config::parse(&with_connectors(
            r#"
[[connectors]]
name = "orders"
queue = "orders"
target = "http://127.0.0.1:8000/hooks/orders"

[[connectors]]
name = "audit"
topic = "events"
subscription = "audit"
target = "https://audit.example/hook"
concurrency = 4
timeout = "5s"
retry_initial = "200ms"
retry_max = "10s"
sessions = true
"#,
        ))
        .unwrap();
        assert_eq!(c.namespace.endpoint, "sb://127.0.0.1:5672");
        assert_eq!(
            c.namespace.credential,
            Credential::ConnectionString(CS.into())
        );
        let [orders, audit] = c.connectors.as_slice() else {
            panic!("two connectors")
        };
        assert_eq!(orders.source.path(), "orders");
        assert_eq!(orders.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(orders.timeout, Duration::from_secs(30));
        assert!(!orders.sessions);
        assert!(audit.sessions);
        assert_eq!(audit.source.path(), "events/subscriptions/audit");
        assert_eq!(audit.concurrency, 4);
        assert_eq!(
            audit.backoff,
            Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn identities_name_an_sb_endpoint() {
        let c = Config::parse(
            r#"
[namespace]
endpoint = "sb://keybus.local:5671/"
credential = "managed_identity"
client_id = "pusher"
ca_file = "/etc/keybus/ca.pem"

[[connectors]]
name = "a"
queue = "q"
target = "http://x/"
audience = "api://orders-hook"
"#,
        )
        .unwrap();
        assert_eq!(
            c.connectors[0].audience.as_deref(),
            Some("api://orders-hook")
        );
        assert_eq!(c.namespace.endpoint, "sb://keybus.local:5671");
        assert_eq!(
            c.namespace.ca_file.as_deref(),
            Some(Path::new("/etc/keybus/ca.pem"))
        );
        assert_eq!(
            c.namespace.credential,
            Credential::ManagedIdentity {
                client_id: Some("pusher".into())
            }
        );
        let wi = Config::parse(
            "[namespace]\nendpoint = \"sb://h\"\ncredential = \"workload_identity\"\n[[connectors]]\nname = \"a\"\nqueue = \"q\"\ntarget = \"http://x/\"\n",
        )
        .unwrap();
        assert_eq!(
            wi.namespace.credential,
            Credential::WorkloadIdentity { client_id: None }
        );
        assert!(c.namespace.tls && wi.namespace.tls);
        let plain = |ns: &str| {
            Config::parse(&format!(
                "[namespace]\n{ns}\n[[connectors]]\nname = \"a\"\nqueue = \"q\"\ntarget = \"http://x/\"\n"
            ))
            .unwrap()
            .namespace
            .tls
        };
        assert!(!plain(&format!(
            "connection_string = \"{CS};UseDevelopmentEmulator=true\""
        )));
        assert!(!plain(
            "endpoint = \"sb://h:5672\"\ncredential = \"managed_identity\"\ntls = false"
        ));
    }

    #[test]
    fn refusals_name_their_cause() {
        let err = |text: &str| Config::parse(text).unwrap_err().to_string();
        assert!(err("[namespace]\nendpoint = \"sb://h\"\n").contains("credential"));
        assert!(
            err("[namespace]\nendpoint = \"sb://h\"\ncredential = \"password\"\n")
                .contains("'password'")
        );
        assert!(err(&with_connectors("")).contains("no [[connectors]]"));
        let one = |extra: &str| {
            err(&with_connectors(&format!(
                "[[connectors]]\nname = \"c\"\ntarget = \"http://x/\"\n{extra}"
            )))
        };
        assert!(one("").contains("either queue, or topic with subscription"));
        assert!(one("queue = \"q\"\ntopic = \"t\"\n").contains("either queue"));
        assert!(one("queue = \"q\"\nconcurrency = 0\n").contains("concurrency"));
        assert!(one("queue = \"q\"\ntimeout = \"soon\"\n").contains("timeout 'soon'"));
        assert!(
            one("queue = \"q\"\nretry_initial = \"1m\"\nretry_max = \"1s\"\n")
                .contains("retry_max")
        );
        assert!(one("queue = \"q\"\nsurprise = 1\n").contains("surprise"));
        assert!(one("queue = \"q\"\naudience = \"api://x\"\n").contains("needs a token service"));
        assert!(one("queue = \"q\"\nclient_cert = \"c.pem\"\n").contains("go together"));
        assert!(
            err(&with_connectors(
                "[[connectors]]\nname = \"c\"\nqueue = \"q\"\ntarget = \"ftp://x/\"\n"
            ))
            .contains("not an http(s) URL")
        );
        assert!(
            err(&with_connectors(
                "[[connectors]]\nname = \"c\"\nqueue = \"q\"\ntarget = \"http://x/\"\n[[connectors]]\nname = \"c\"\nqueue = \"r\"\ntarget = \"http://x/\"\n"
            ))
            .contains("declared twice")
        );
    }
}
