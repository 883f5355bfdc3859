//! Browse an entity or its dead-letter queue: messages in sequence order from a sequence
//! number, without locking or counting a delivery. Messages are read only through the
//! queue's peek (`Queue::peek`, the code `$management`'s `peek-message` uses), so where a
//! body lives is the queue's business. Each message shows its system properties, its
//! application properties (a dead letter's reason and description first) and its body
//! (`body.rs`). The page offers send, redrive and purge only to a principal the policy
//! allows them.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keybus_amqp::{Message, Value, map_get};
use keybus_auth::Right;
use keybus_core::SubQueue;
use maud::{Markup, html};
use percent_encoding::utf8_percent_encode;

use super::Console;
use super::access::{can, enforce_read};
use super::body::{show, value_text};
use super::error::ConsoleError;
use super::form::query;
use super::guard;
use super::layout::page as shell;
use super::sessions::Session;
use super::signin;
use crate::http::common::UNRESERVED;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

/// Messages per page, by default and at most.
const PAGE: usize = 20;
const MAX_PAGE: usize = 200;

/// One peeked message, decoded for display.
#[derive(Debug, Clone)]
pub(super) struct Peeked {
    pub(super) sequence_number: i64,
    pub(super) message: Message,
}

fn annotation<'a>(m: &'a Message, key: &str) -> Option<&'a Value> {
    m.message_annotations.as_ref().and_then(|a| map_get(a, key))
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A path split into its entity, its subscription and whether it names the dead-letter
/// queue (`…/$deadletterqueue`).
pub(super) struct Target {
    pub(super) path: String,
    pub(super) entity: Arc<crate::runtime::Entity>,
    pub(super) subscription: Option<String>,
}

/// Resolve an entity path the console was given (a queue or a subscription).
pub(super) fn target(broker: &Broker, path: &str) -> Result<Target, ConsoleError> {
    let path = path.trim_matches('/').to_ascii_lowercase();
    let (entity, subscription) = broker
        .resolve(&path)
        .ok_or_else(|| ConsoleError::NotFound(format!("there is no entity '{path}'")))?;
    if subscription.is_none() && entity.lock().machine.is_topic() {
        return Err(ConsoleError::BadRequest(format!(
            "'{path}' is a topic: its messages are in its subscriptions"
        )));
    }
    Ok(Target {
        path,
        entity,
        subscription,
    })
}

/// Peek up to `count` messages of `sub` from sequence number `from`.
pub(super) fn peek(
    broker: &Broker,
    t: &Target,
    sub: SubQueue,
    from: i64,
    count: usize,
) -> Result<Vec<Peeked>, ConsoleError> {
    let now = broker.now();
    let raw = {
        let st = t.entity.lock();
        let q = st
            .receiver_ref(t.subscription.as_deref())
            .ok_or_else(|| ConsoleError::NotFound(format!("there is no entity '{}'", t.path)))?;
        q.peek(sub, from, count, None, now).map_err(|e| {
            ConsoleError::Unavailable(format!("the store could not read the messages back: {e}"))
        })?
    };
    Ok(raw
        .iter()
        .filter_map(|b| Message::decode(b).ok())
        .map(|message| Peeked {
            sequence_number: annotation(&message, "x-opt-sequence-number")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            message,
        })
        .collect())
}

fn state(m: &Message) -> &'static str {
    match annotation(m, "x-opt-message-state").and_then(Value::as_i64) {
        Some(1) => "deferred",
        Some(2) => "scheduled",
        _ => "active",
    }
}

/// What a message's own buttons may do (on the main queue).
#[derive(Clone, Copy)]
struct Actions<'a> {
    path: &'a str,
    /// Cancel a scheduled message (Send on a queue).
    cancel: bool,
    /// Receive and complete a deferred message (Listen).
    take: bool,
}

fn message(p: &Peeked, selectable: bool, actions: Actions<'_>) -> Markup {
    let m = &p.message;
    let props = m.properties.clone().unwrap_or_default();
    let app = m.application_properties.clone().unwrap_or_default();
    let reason = map_get(&app, "DeadLetterReason").map(value_text);
    let description = map_get(&app, "DeadLetterErrorDescription").map(value_text);
    let body = show(m);
    let seq = p.sequence_number;
    html! {
        article.msg data-seq=(seq) {
            h2 {
                @if selectable {
                    input type="checkbox" name="seq" value=(seq) id={ "sel-" (seq) } form="redrive-form";
                    label for={ "sel-" (seq) } { "Message " (seq) }
                } @else {
                    "Message " (seq)
                }
            }
            @if reason.is_some() || description.is_some() {
                p.error.dead-letter {
                    "Dead-letter reason: " span.reason { (reason.clone().unwrap_or_default()) }
                    @if let Some(d) = &description { " — " span.description { (d) } }
                }
            }
            dl {
                dt { "Sequence number" } dd { (seq) }
                dt { "State" } dd { (state(m)) }
                @if let Some(t) = annotation(m, "x-opt-enqueued-time").and_then(|v| match v { Value::Timestamp(t) => Some(*t), _ => None }) {
                    dt { "Enqueued" } dd { (time(t)) }
                }
                dt { "Delivery count" } dd { (m.header.as_ref().and_then(|h| h.delivery_count).unwrap_or(0)) }
                @if let Some(v) = &props.message_id { dt { "Message id" } dd.message-id { (value_text(v)) } }
                @if let Some(v) = &props.correlation_id { dt { "Correlation id" } dd { (value_text(v)) } }
                @if let Some(v) = &props.group_id { dt { "Session id" } dd { (v) } }
                @if let Some(v) = &props.content_type { dt { "Content type" } dd { (v.0) } }
                @if let Some(v) = &props.subject { dt { "Subject" } dd { (v) } }
                @if let Some(v) = &props.to { dt { "To" } dd { (v) } }
                @if let Some(v) = &props.reply_to { dt { "Reply to" } dd { (v) } }
                @if let Some(ttl) = m.header.as_ref().and_then(|h| h.ttl) { dt { "Time to live" } dd { (ttl) " ms" } }
                @for (k, v) in &app {
                    @let key = value_text(k);
                    @if key != "DeadLetterReason" && key != "DeadLetterErrorDescription" {
                        dt { "app: " (key) } dd { (value_text(v)) }
                    }
                }
            }
            p.muted { "Body (" (body.label()) ")" }
            pre.body { (body.text()) }
            @if actions.cancel && state(m) == "scheduled" {
                button type="button" hx-post={ "/console/cancel?e=" (enc(actions.path)) "&seq=" (seq) } hx-target="#messages" {
                    "Cancel scheduled message " (seq)
                }
            }
            @if actions.take && state(m) == "deferred" {
                button type="button" hx-post={ "/console/deferred?e=" (enc(actions.path)) "&seq=" (seq) } hx-target="#messages" {
                    "Receive and complete deferred message " (seq)
                }
            }
        }
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The send form (a queue or topic the principal may send to).
fn send_form(path: &str) -> Markup {
    html! {
        section.panel #send {
            h2 { "Send a test message" }
            form hx-post={ "/console/send?e=" (enc(path)) } hx-target="#messages" {
                label for="s-body" { "Body" }
                textarea #s-body name="body" {}
                label for="s-ct" { "Content type" }
                input #s-ct type="text" name="content_type" placeholder="application/json";
                label for="s-mid" { "Message id" }
                input #s-mid type="text" name="message_id";
                label for="s-sid" { "Session id" }
                input #s-sid type="text" name="session_id";
                label for="s-cid" { "Correlation id" }
                input #s-cid type="text" name="correlation_id";
                label for="s-props" { "Application properties (one key=value a line)" }
                textarea #s-props name="properties" {}
                label for="s-n" { "Repeat (times)" }
                input #s-n type="number" name="repeat" value="1" min="1" max="1000";
                button type="submit" { "Send" }
            }
        }
    }
}

fn purge_form(path: &str, dlq: bool) -> Markup {
    let what = if dlq {
        "every message of its dead-letter queue"
    } else {
        "every message (active, deferred and scheduled)"
    };
    html! {
        section.panel #purge {
            h2 { "Purge" }
            form hx-post={ "/console/purge?e=" (enc(path)) "&dlq=" (u8::from(dlq)) } hx-target="#messages" {
                label for="p-confirm" { "Type " code { (path) } " to purge " (what) }
                input #p-confirm type="text" name="confirm" autocomplete="off";
                button.danger type="submit" { "Purge" }
            }
        }
    }
}

fn redrive_form(path: &str) -> Markup {
    html! {
        section.panel #redrive {
            h2 { "Redrive" }
            p.muted { "Move dead letters back to " code { (path) } " (one store batch: they leave the dead-letter queue and enter the entity together)." }
            form #redrive-form hx-post={ "/console/redrive?e=" (enc(path)) } hx-target="#messages" {
                button type="submit" name="which" value="selected" { "Redrive selected" }
                " "
                button type="submit" name="which" value="all" { "Redrive all" }
            }
        }
    }
}

/// `GET /console/browse?e=<path>&dlq=1&from=<seq>&n=<count>`.
pub(super) async fn page(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Ok((_, session)) = guard::session(&console, &headers, broker.now()) else {
        return shell("Sign in", None, signin::form());
    };
    let peer = peer_text(&peer);
    match render(&broker, &session, &peer, &uri) {
        Ok(r) => r,
        Err(e) => {
            // A whole page, with the error where the messages would be.
            let mut r = shell(
                "Browse",
                Some(&session),
                html! { h1 { "Browse" } p.error role="alert" { (e.to_string()) } },
            );
            *r.status_mut() = e.status();
            r
        }
    }
}

/// The browse page of the entity the query names.
fn render(
    broker: &Broker,
    session: &Session,
    peer: &str,
    uri: &Uri,
) -> Result<Response, ConsoleError> {
    let p = &session.principal;
    let path = query(uri, "e").unwrap_or_default();
    let dlq = query(uri, "dlq").is_some_and(|v| v == "1");
    let from: i64 = query(uri, "from").and_then(|v| v.parse().ok()).unwrap_or(0);
    let count: usize = query(uri, "n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(PAGE)
        .clamp(1, MAX_PAGE);
    let t = target(broker, &path)?;
    enforce_read(broker, peer, p, "console.browse", &t.path)?;
    let sub = if dlq {
        SubQueue::DeadLetter
    } else {
        SubQueue::Main
    };
    let msgs = peek(broker, &t, sub, from, count)?;
    let next = msgs.last().map(|m| m.sequence_number.saturating_add(1));
    let send_path = match &t.subscription {
        Some(_) => t
            .path
            .split("/subscriptions/")
            .next()
            .unwrap_or(&t.path)
            .to_string(),
        None => t.path.clone(),
    };
    let may_send = can(broker, p, Right::Send, &send_path);
    let may_manage = can(broker, p, Right::Manage, &t.path);
    let actions = Actions {
        path: &t.path,
        cancel: !dlq && t.subscription.is_none() && may_send,
        take: !dlq && can(broker, p, Right::Listen, &t.path),
    };
    let base = format!("/console/browse?e={}", enc(&t.path));
    let title = if dlq {
        format!("{} (dead-letter queue)", t.path)
    } else {
        t.path.clone()
    };
    let content = html! {
        h1 { (title) }
        nav.pager aria-label="queues" {
            a href=(base) aria-current=[(!dlq).then_some("page")] { "Messages" }
            a href={ (base) "&dlq=1" } aria-current=[dlq.then_some("page")] { "Dead-letter queue" }
        }
        form method="get" action="/console/browse" {
            input type="hidden" name="e" value=(t.path);
            @if dlq { input type="hidden" name="dlq" value="1"; }
            label for="from" { "From sequence number" }
            input #from type="number" name="from" value=(from) min="0";
            button type="submit" { "Show" }
        }
        @if dlq && may_manage { (redrive_form(&t.path)) }
        section #peeked aria-label="messages" {
            @if msgs.is_empty() {
                p.muted.empty { "No messages from sequence number " (from) "." }
            }
            @for m in &msgs { (message(m, dlq && may_manage, actions)) }
        }
        @if let Some(n) = next {
            nav.pager aria-label="pages" {
                a href={ (base) @if dlq { "&dlq=1" } "&from=" (n) } { "Next messages" }
            }
        }
        @if !dlq && may_send { (send_form(&send_path)) }
        @if may_manage { (purge_form(&t.path, dlq)) }
    };
    Ok(shell(&title, Some(session), content))
}
