//! The connector's own identity toward the namespace: a token for a CBS audience, from a
//! connection string (SAS), the managed identity endpoint (`IDENTITY_ENDPOINT` with
//! `X-IDENTITY-HEADER: $IDENTITY_HEADER`, as the SDKs call it) or workload identity
//! federation (the file `AZURE_FEDERATED_TOKEN_FILE` exchanged at
//! `$AZURE_AUTHORITY_HOST/$AZURE_TENANT_ID/oauth2/v2.0/token`). Never the broker's root key
//! unless the file says so.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use keybus_client::{ClientError, Connection, Endpoint};
use serde_json::Value as Json;

use crate::config::{Credential, Namespace};

/// The resource (and `<resource>/.default` scope) Service Bus tokens are asked for.
pub const SERVICE_BUS_RESOURCE: &str = "https://servicebus.azure.net/";
/// AMQPS's port when the endpoint names none.
const AMQPS_PORT: u16 = 5671;
/// The App Service managed identity API version the SDKs send.
const MI_API_VERSION: &str = "2019-08-01";

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the environment has no {0} (needed for the {1})")]
    MissingEnv(&'static str, &'static str),
    #[error("cannot read the federated token file {path}: {err}")]
    TokenFile { path: String, err: std::io::Error },
    #[error("token request to {url}: {why}")]
    Request { url: String, why: String },
    #[error("token request to {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "a connection string has no token service (a bearer audience needs a managed or workload identity)"
    )]
    NoTokenService,
    #[error("bad connection string: {0}")]
    Endpoint(#[from] keybus_client::EndpointError),
}

/// Why the namespace could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("{0}")]
    Endpoint(#[from] CredentialError),
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// A token and when to get a new one.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub expires: SystemTime,
}

impl Token {
    /// Half-way to expiry: when the connector puts a fresh token.
    pub fn refresh_at(&self, obtained: SystemTime) -> SystemTime {
        let life = self
            .expires
            .duration_since(obtained)
            .unwrap_or(Duration::ZERO);
        obtained + life / 2
    }
}

/// The namespace's address and the way to it and to tokens for it.
pub struct Credentials {
    namespace: Namespace,
    http: reqwest::Client,
    /// AMQPS's TLS configuration (`None`: plain AMQP).
    amqp_tls: Option<Arc<rustls::ClientConfig>>,
}

fn env(name: &'static str, what: &'static str) -> Result<String, CredentialError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(CredentialError::MissingEnv(name, what))
}

impl Credentials {
    pub fn new(
        namespace: Namespace,
        http: reqwest::Client,
        amqp_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Credentials {
        Credentials {
            namespace,
            http,
            amqp_tls,
        }
    }

    /// Connect to the namespace: AMQPS with the configured roots, or plain AMQP.
    pub async fn connect(&self, timeout: Duration) -> Result<Connection, ConnectFailure> {
        let endpoint = self.endpoint()?;
        Ok(match &self.amqp_tls {
            Some(tls) => Connection::connect_tls(&endpoint, tls.clone(), timeout).await?,
            None => Connection::connect(&endpoint, timeout).await?,
        })
    }

    /// The namespace, `sb://host[:port]`.
    pub fn namespace(&self) -> &str {
        &self.namespace.endpoint
    }

    /// What `Connection::connect` needs: host and port (and, for a connection string, its
    /// key).
    pub fn endpoint(&self) -> Result<Endpoint, CredentialError> {
        let mut e = match &self.namespace.credential {
            Credential::ConnectionString(cs) => Endpoint::parse(cs)?,
            // An identity: the same parser over a placeholder signature (never sent; tokens
            // come from `token`).
            _ => Endpoint::parse(&format!(
                "Endpoint={};SharedAccessSignature=none",
                self.namespace.endpoint
            ))?,
        };
        if self.namespace.tls && !names_port(&e.uri_base) {
            e.port = AMQPS_PORT;
        }
        Ok(e)
    }

    /// A token for `audience` (`sb://host/entity`).
    pub async fn token(&self, audience: &str, now: SystemTime) -> Result<Token, CredentialError> {
        match &self.namespace.credential {
            Credential::ConnectionString(_) => {
                let e = self.endpoint()?;
                Ok(Token {
                    value: e.token(audience),
                    // `Endpoint::token` signs for a day.
                    expires: now + Duration::from_secs(24 * 3600),
                })
            }
            Credential::ManagedIdentity { .. } | Credential::WorkloadIdentity { .. } => {
                self.identity_token(SERVICE_BUS_RESOURCE, now).await
            }
        }
    }

    /// A token of the connector's identity for `resource` (an audience): Service Bus, or a
    /// service the connector pushes to. A connection string has no token service.
    pub async fn identity_token(
        &self,
        resource: &str,
        now: SystemTime,
    ) -> Result<Token, CredentialError> {
        match &self.namespace.credential {
            Credential::ConnectionString(_) => Err(CredentialError::NoTokenService),
            Credential::ManagedIdentity { client_id } => {
                self.managed_identity(client_id.as_deref(), resource, now)
                    .await
            }
            Credential::WorkloadIdentity { client_id } => {
                self.workload_identity(client_id.as_deref(), resource, now)
                    .await
            }
        }
    }

    async fn managed_identity(
        &self,
        client_id: Option<&str>,
        resource: &str,
        now: SystemTime,
    ) -> Result<Token, CredentialError> {
        const WHAT: &str = "managed identity";
        let endpoint = env("IDENTITY_ENDPOINT", WHAT)?;
        let secret = env("IDENTITY_HEADER", WHAT)?;
        let mut url = reqwest::Url::parse(&endpoint).map_err(|e| CredentialError::Request {
            url: endpoint.clone(),
            why: e.to_string(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", MI_API_VERSION);
            q.append_pair("resource", resource);
            if let Some(id) = client_id {
                q.append_pair("client_id", id);
            }
        }
        let request = self.http.get(url).header("x-identity-header", secret);
        let json = self.send(&endpoint, request).await?;
        token_from(&endpoint, &json, now)
    }

    async fn workload_identity(
        &self,
        client_id: Option<&str>,
        resource: &str,
        now: SystemTime,
    ) -> Result<Token, CredentialError> {
        const WHAT: &str = "workload identity";
        let file = env("AZURE_FEDERATED_TOKEN_FILE", WHAT)?;
        let tenant = env("AZURE_TENANT_ID", WHAT)?;
        let client_id = match client_id {
            Some(c) => c.to_string(),
            None => env("AZURE_CLIENT_ID", WHAT)?,
        };
        let authority = std::env::var("AZURE_AUTHORITY_HOST")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "https://login.microsoftonline.com/".into());
        let assertion =
            std::fs::read_to_string(&file).map_err(|err| CredentialError::TokenFile {
                path: file.clone(),
                err,
            })?;
        let url = format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        );
        let form = form_body(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("scope", &scope(resource)),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.trim()),
        ]);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        let json = self.send(&url, request).await?;
        token_from(&url, &json, now)
    }

    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Json, CredentialError> {
        let failed = |why: String| CredentialError::Request {
            url: url.to_string(),
            why,
        };
        let resp = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(CredentialError::Refused {
                url: url.to_string(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| failed(format!("not JSON: {e}")))
    }
}

/// Does `sb://host[:port]` name a port (an IPv6 host is in brackets)?
fn names_port(uri_base: &str) -> bool {
    let authority = uri_base.strip_prefix("sb://").unwrap_or(uri_base);
    authority
        .rsplit_once(':')
        .is_some_and(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
}

/// The `.default` scope of `resource` (`https://servicebus.azure.net/` gives
/// `https://servicebus.azure.net/.default`, `api://x` gives `api://x/.default`).
fn scope(resource: &str) -> String {
    if resource.ends_with('/') {
        format!("{resource}.default")
    } else {
        format!("{resource}/.default")
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").ok();
    if let Some(u) = url.as_mut() {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    url.and_then(|u| u.query().map(str::to_string))
        .unwrap_or_default()
}

/// The token of a managed identity (`expires_on`, seconds since the epoch, as a string or a
/// number) or token endpoint (`expires_in`, seconds) answer.
fn token_from(url: &str, json: &Json, now: SystemTime) -> Result<Token, CredentialError> {
    let bad = |why: &str| CredentialError::Request {
        url: url.to_string(),
        why: why.to_string(),
    };
    let value = json
        .get("access_token")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("the answer has no access_token"))?
        .to_string();
    let secs = |k: &str| {
        json.get(k).and_then(|v| match v {
            Json::String(s) => s.parse::<u64>().ok(),
            other => other.as_u64(),
        })
    };
    let expires = match (secs("expires_on"), secs("expires_in")) {
        (Some(on), _) => SystemTime::UNIX_EPOCH + Duration::from_secs(on),
        (None, Some(inn)) => now + Duration::from_secs(inn),
        (None, None) => return Err(bad("the answer has neither expires_on nor expires_in")),
    };
    Ok(Token { value, expires })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_from_both_answer_shapes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mi = token_from(
            "u",
            &json!({"access_token": "a", "expires_on": "4600"}),
            now,
        )
        .unwrap();
        assert_eq!(mi.value, "a");
        assert_eq!(
            mi.expires,
            SystemTime::UNIX_EPOCH + Duration::from_secs(4600)
        );
        assert_eq!(
            mi.refresh_at(now),
            SystemTime::UNIX_EPOCH + Duration::from_secs(2800)
        );
        let entra = token_from("u", &json!({"access_token": "b", "expires_in": 60}), now).unwrap();
        assert_eq!(entra.expires, now + Duration::from_secs(60));
        assert!(
            token_from("u", &json!({"expires_in": 60}), now)
                .unwrap_err()
                .to_string()
                .contains("no access_token")
        );
    }

    #[test]
    fn endpoints_name_their_port_or_not() {
        assert!(names_port("sb://127.0.0.1:5672"));
        assert!(names_port("sb://[::1]:5671"));
        assert!(!names_port("sb://contoso.servicebus.windows.net"));
        assert!(!names_port("sb://[::1]"));
    }

    #[test]
    fn scopes_of_resources() {
        assert_eq!(
            scope(SERVICE_BUS_RESOURCE),
            "https://servicebus.azure.net/.default"
        );
        assert_eq!(scope("api://orders-hook"), "api://orders-hook/.default");
    }

    #[test]
    fn form_bodies_are_url_encoded() {
        assert_eq!(
            form_body(&[
                ("scope", "https://servicebus.azure.net/.default"),
                ("a", "b c")
            ]),
            "scope=https%3A%2F%2Fservicebus.azure.net%2F.default&a=b+c"
        );
    }
}
