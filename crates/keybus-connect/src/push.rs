//! One push: POST the request to the target and read how it ended (status, `Retry-After`,
//! the start of the body), or that it timed out or found no target.

use std::time::Duration;

use crate::request::PushRequest;
use crate::verdict::{BODY_EXCERPT, PushResult};

/// The text of an error and its causes (reqwest's own text omits why a connect failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// POST `req` to `target` with `client` (whose timeout bounds the whole exchange), with
/// `Authorization: Bearer` when a `bearer` token is given.
pub async fn push(
    client: &reqwest::Client,
    target: &str,
    req: PushRequest,
    bearer: Option<String>,
) -> PushResult {
    let mut builder = client
        .post(target)
        .header("content-type", req.content_type.as_str());
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let Some(t) = bearer {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = match builder.body(req.body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return PushResult::Timeout,
        Err(e) => return PushResult::Failed(chain(&e)),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    // The start of the body only; what is not read is dropped with the connection.
    while body.len() < BODY_EXCERPT {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(BODY_EXCERPT);
    PushResult::Response {
        status,
        retry_after,
        body,
    }
}
