//! What a push's result means for its message: complete on 2xx; dead-letter (reason
//! `PushRejected`, the status and the start of the response body in the description) on the
//! statuses that say the message itself is wrong; abandon with a retry delay on everything
//! that may pass later (408, 429, 5xx, timeouts, connection errors). Pure: the retry delay
//! is computed from the attempt number and the response's `Retry-After`, time passed in.

use std::time::{Duration, SystemTime};

use crate::config::Backoff;

/// The dead-letter reason of a message its target refused.
pub const PUSH_REJECTED: &str = "PushRejected";
/// How much of a refusing response's body the dead-letter description keeps.
pub const BODY_EXCERPT: usize = 512;

/// Statuses that dead-letter: the target says this message will never be accepted.
const REJECTING: &[u16] = &[400, 404, 409, 410, 413, 415, 422];

/// What becomes of a pushed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered: complete the message.
    Complete,
    /// Refused for good: dead-letter with [`PUSH_REJECTED`] and this description.
    Reject { description: String },
    /// Not delivered this time: abandon, and push nothing to this target for `after`.
    Retry { after: Duration, why: String },
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// The target answered.
    Response {
        status: u16,
        /// `Retry-After` as sent, if any.
        retry_after: Option<String>,
        /// The start of the body (at most [`BODY_EXCERPT`] bytes read).
        body: Vec<u8>,
    },
    /// No answer in time.
    Timeout,
    /// No answer at all (DNS, TLS, refused, reset): the error's text.
    Failed(String),
}

/// The delay before attempt `attempt + 1` (attempt 1 is the first retry):
/// `initial x 2^(attempt-1)`, at most `max`.
pub fn backoff(b: Backoff, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    b.initial.saturating_mul(factor).min(b.max)
}

/// `Retry-After` (seconds or an HTTP date) as a delay from `now`; a date in the past is no
/// delay; anything unreadable is ignored.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The verdict on `result`, the `attempt`-th consecutive failure of its target if it failed.
/// A `Retry-After` larger than the backoff wins, up to `max`.
pub fn verdict(result: &PushResult, b: Backoff, attempt: u32, now: SystemTime) -> Verdict {
    let wait = backoff(b, attempt);
    match result {
        PushResult::Response { status, .. } if (200..300).contains(status) => Verdict::Complete,
        PushResult::Response { status, body, .. } if REJECTING.contains(status) => {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)]);
            let excerpt = excerpt.trim();
            Verdict::Reject {
                description: if excerpt.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {excerpt}")
                },
            }
        }
        PushResult::Response {
            status,
            retry_after: hint,
            ..
        } => {
            let hinted = hint.as_deref().and_then(|h| retry_after(h, now));
            let after = hinted.map_or(wait, |h| h.max(wait).min(b.max));
            Verdict::Retry {
                after,
                why: format!("HTTP {status}"),
            }
        }
        PushResult::Timeout => Verdict::Retry {
            after: wait,
            why: "timed out".into(),
        },
        PushResult::Failed(e) => Verdict::Retry {
            after: wait,
            why: e.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    fn response(status: u16, retry: Option<&str>, body: &str) -> PushResult {
        PushResult::Response {
            status,
            retry_after: retry.map(str::to_string),
            body: body.as_bytes().to_vec(),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn two_hundreds_complete() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(
                verdict(&response(s, None, ""), B, 1, now()),
                Verdict::Complete
            );
        }
    }

    #[test]
    fn refusals_dead_letter_with_status_and_body_start() {
        for s in [400, 404, 409, 410, 413, 415, 422] {
            let Verdict::Reject { description } =
                verdict(&response(s, None, "  bad order  "), B, 1, now())
            else {
                panic!("{s} dead-letters")
            };
            assert_eq!(description, format!("HTTP {s}: bad order"));
        }
        assert_eq!(
            verdict(&response(422, None, ""), B, 1, now()),
            Verdict::Reject {
                description: "HTTP 422".into()
            }
        );
        let long = "x".repeat(4 * BODY_EXCERPT);
        let Verdict::Reject { description } = verdict(&response(400, None, &long), B, 1, now())
        else {
            panic!("400 dead-letters")
        };
        assert_eq!(description.len(), "HTTP 400: ".len() + BODY_EXCERPT);
    }

    #[test]
    fn transient_failures_retry_with_exponential_backoff() {
        for s in [408, 429, 500, 502, 503, 504, 301, 401, 403] {
            assert!(matches!(
                verdict(&response(s, None, ""), B, 1, now()),
                Verdict::Retry { .. }
            ));
        }
        let after = |attempt| match verdict(&PushResult::Timeout, B, attempt, now()) {
            Verdict::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(1), Duration::from_millis(100));
        assert_eq!(after(2), Duration::from_millis(200));
        assert_eq!(after(4), Duration::from_millis(800));
        assert_eq!(after(10), Duration::from_secs(5));
        assert_eq!(after(200), Duration::from_secs(5));
        let Verdict::Retry { why, .. } = verdict(
            &PushResult::Failed("connection refused".into()),
            B,
            1,
            now(),
        ) else {
            panic!("a failed connection retries")
        };
        assert_eq!(why, "connection refused");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let after = |hint: &str| match verdict(&response(503, Some(hint), ""), B, 1, now()) {
            Verdict::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after("2"), Duration::from_secs(2));
        assert_eq!(after("3600"), Duration::from_secs(5));
        // Shorter than the backoff: the backoff wins.
        assert_eq!(after("0"), Duration::from_millis(100));
        assert_eq!(after("soon"), Duration::from_millis(100));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(3));
        assert_eq!(after(&date), Duration::from_secs(3));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(3));
        assert_eq!(retry_after(&past, now()), Some(Duration::ZERO));
    }
}
