//! The overview: every queue, topic and subscription the principal may read, with active,
//! dead-letter, scheduled and deferred counts and size, read from the state machines
//! (`Queue::counts`, as `/metrics` and the management API do). Paged by entity (only a
//! page's entities are locked and rendered, so 10,000 entities cost a sort of names, not a
//! table), filtered by a name substring, and kept live by a server-sent event stream
//! (`/console/events`) that sends the page's counts when they change.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use keybus_auth::Principal;
use keybus_core::{QueueCounts, QueueStats};
use maud::{Markup, html};
use percent_encoding::utf8_percent_encode;
use serde_json::json;

use super::Console;
use super::access::can_read;
use super::error::ConsoleError;
use super::form::query;
use super::guard::{self, OverTls};
use super::layout::page as shell;
use super::rates::Rates;
use super::signin;
use crate::http::common::UNRESERVED;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::{Broker, Entity};

/// Entities per page.
pub(super) const PAGE_SIZE: usize = 50;
/// How often the event stream looks at the page's counts.
const LIVE_EVERY: Duration = Duration::from_millis(250);

/// One row of the table: an entity path and, for a queue or subscription, its counts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    /// The lower-case path (`q`, `t`, `t/subscriptions/s`).
    pub(super) path: String,
    pub(super) kind: &'static str,
    pub(super) counts: Option<QueueCounts>,
    /// Its activity counters (for the rates).
    pub(super) stats: Option<QueueStats>,
}

/// The entities `p` may read whose path contains `filter`, by name.
fn visible(broker: &Broker, p: &Principal, filter: &str) -> Vec<Arc<Entity>> {
    let filter = filter.to_ascii_lowercase();
    let mut list: Vec<(String, Arc<Entity>)> = broker
        .entity_list()
        .into_iter()
        .map(|e| (e.name.to_ascii_lowercase(), e))
        .filter(|(n, _)| n.contains(&filter))
        .collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list.into_iter()
        .filter(|(n, _)| can_read(broker, p, n))
        .map(|(_, e)| e)
        .collect()
}

/// The rows of `entities` (a topic's subscriptions follow it).
pub(super) fn rows(entities: &[Arc<Entity>]) -> Vec<Row> {
    let mut out = Vec::with_capacity(entities.len());
    for e in entities {
        let path = e.name.to_ascii_lowercase();
        let st = e.lock();
        if st.deleted {
            continue;
        }
        match st.machine.as_topic() {
            Some(t) => {
                out.push(Row {
                    path: path.clone(),
                    kind: "topic",
                    counts: None,
                    stats: None,
                });
                let mut subs: Vec<_> = t
                    .subscriptions()
                    .map(|s| {
                        (
                            format!(
                                "{path}/subscriptions/{}",
                                s.definition.name.to_ascii_lowercase()
                            ),
                            s.queue.counts(),
                            s.queue.stats(),
                        )
                    })
                    .collect();
                subs.sort_by(|a, b| a.0.cmp(&b.0));
                out.extend(subs.into_iter().map(|(path, c, stats)| Row {
                    path,
                    kind: "subscription",
                    counts: Some(c),
                    stats: Some(stats),
                }));
            }
            None => out.push(Row {
                path,
                kind: "queue",
                counts: st.receiver_ref(None).map(|q| q.counts()),
                stats: st.receiver_ref(None).map(|q| q.stats()),
            }),
        }
    }
    out
}

/// The page `page` (from 0) of what `p` may see.
fn page_of(broker: &Broker, p: &Principal, filter: &str, page: usize) -> (Vec<Row>, usize) {
    let all = visible(broker, p, filter);
    let total = all.len();
    let start = page.saturating_mul(PAGE_SIZE).min(total);
    let end = start.saturating_add(PAGE_SIZE).min(total);
    (rows(all.get(start..end).unwrap_or(&[])), total)
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

fn cells(r: &Row) -> Markup {
    let c = r.counts.unwrap_or_default();
    let k = &r.path;
    html! {
        @if r.counts.is_some() {
            td.num data-k=(k) data-f="active" { (c.active) }
            td.num data-k=(k) data-f="dead_letter" { (c.dead_letter) }
            td.num data-k=(k) data-f="scheduled" { (c.scheduled) }
            td.num data-k=(k) data-f="deferred" { (c.deferred) }
            td.num data-k=(k) data-f="size" { (c.size_bytes) }
            td.num data-k=(k) data-f="in_rate" { "…" }
            td.num data-k=(k) data-f="out_rate" { "…" }
        } @else {
            td.num.muted colspan="7" { "messages are in its subscriptions" }
        }
    }
}

fn table(rows: &[Row], live_url: &str) -> Markup {
    html! {
        table #entities data-live=(live_url) {
            caption.muted { "Counts update live." }
            thead {
                tr {
                    th scope="col" { "Entity" }
                    th scope="col" { "Kind" }
                    th.num scope="col" { "Active" }
                    th.num scope="col" { "Dead-letter" }
                    th.num scope="col" { "Scheduled" }
                    th.num scope="col" { "Deferred" }
                    th.num scope="col" { "Size (bytes)" }
                    th.num scope="col" { "In /s" }
                    th.num scope="col" { "Out /s" }
                }
            }
            tbody {
                @for r in rows {
                    tr {
                        th scope="row" {
                            @if r.counts.is_some() {
                                a href={ "/console/browse?e=" (enc(&r.path)) } { (r.path) }
                            } @else {
                                (r.path)
                            }
                        }
                        td { (r.kind) }
                        (cells(r))
                    }
                }
            }
        }
    }
}

/// `GET /console/`: the overview, the sign-in form, or the one-time token's exchange.
pub(super) async fn page(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    tls: OverTls,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let peer = peer_text(&peer);
    if let Some(token) = query(&uri, "token") {
        return match signin::redeem(&broker, &console, &peer, &token, tls.is_some()) {
            Ok(r) => r,
            Err(e) => {
                let mut r = shell(
                    "Sign in",
                    None,
                    html! { p.error role="alert" { (e.to_string()) } (signin::form()) },
                );
                *r.status_mut() = e.status();
                r
            }
        };
    }
    let Ok((_, session)) = guard::session(&console, &headers, broker.now()) else {
        return shell("Sign in", None, signin::form());
    };
    let filter = query(&uri, "q").unwrap_or_default();
    let page_no: usize = query(&uri, "page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let (rows, total) = page_of(&broker, &session.principal, &filter, page_no);
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let live = format!("/console/events?page={page_no}&q={}", enc(&filter));
    let link = |n: usize| format!("/console/?page={n}&q={}", enc(&filter));
    let content = html! {
        h1 { "Entities" }
        form method="get" action="/console/" {
            label for="q" { "Filter by name" }
            input #q type="text" name="q" value=(filter);
            button type="submit" { "Filter" }
        }
        p.muted { (total) " entities · page " (page_no + 1) " of " (pages) }
        (table(&rows, &live))
        nav.pager aria-label="pages" {
            @if page_no > 0 { a href=(link(page_no - 1)) { "Previous page" } }
            @if page_no + 1 < pages { a href=(link(page_no + 1)) { "Next page" } }
        }
    };
    shell("Entities", Some(&session), content)
}

/// The JSON of an event: the rows with counts, and their rates at `now`.
pub(super) fn counts_json(rows: &[Row], rates: &mut Rates, now: i64) -> String {
    let list: Vec<_> = rows
        .iter()
        .filter_map(|r| {
            let c = r.counts?;
            let rate = rates.observe(&r.path, r.stats.unwrap_or_default(), now);
            Some(
                json!({"k": r.path, "active": c.active, "dead_letter": c.dead_letter,
                "scheduled": c.scheduled, "deferred": c.deferred, "size": c.size_bytes,
                "in_rate": format!("{:.1}", rate.incoming),
                "out_rate": format!("{:.1}", rate.outgoing)}),
            )
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// What one event stream watches and what it sent last.
struct Watch {
    broker: Arc<Broker>,
    console: Arc<Console>,
    /// The session; the stream ends with it.
    id: String,
    entities: Vec<Arc<Entity>>,
    rates: Rates,
    last: Option<String>,
    first: bool,
}

/// `GET /console/events?page=&q=`: the page's counts as server-sent events, sent when they
/// change (and once at the start); the stream ends with the session.
pub(super) async fn events(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let (id, session) = guard::session(&console, &headers, broker.now())?;
    let filter = query(&uri, "q").unwrap_or_default();
    let page_no: usize = query(&uri, "page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let entities = {
        let all = visible(&broker, &session.principal, &filter);
        let start = page_no.saturating_mul(PAGE_SIZE).min(all.len());
        let end = start.saturating_add(PAGE_SIZE).min(all.len());
        all.get(start..end).unwrap_or(&[]).to_vec()
    };
    let state = Watch {
        broker,
        console,
        id,
        entities,
        rates: Rates::default(),
        last: None,
        first: true,
    };
    let stream = futures_util::stream::unfold(state, |mut w| async move {
        if !w.first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        w.first = false;
        loop {
            let now = w.broker.now();
            w.console.sessions.get(&w.id, now)?;
            let data = counts_json(&rows(&w.entities), &mut w.rates, now);
            if w.last.as_deref() != Some(data.as_str()) {
                let ev = Event::default().event("counts").data(data.clone());
                w.last = Some(data);
                return Some((Ok::<_, Infallible>(ev), w));
            }
            tokio::time::sleep(LIVE_EVERY).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_only_rows_with_counts() {
        let rows = vec![
            Row {
                path: "t".into(),
                kind: "topic",
                counts: None,
                stats: None,
            },
            Row {
                path: "q".into(),
                kind: "queue",
                counts: Some(QueueCounts {
                    active: 2,
                    dead_letter: 1,
                    ..QueueCounts::default()
                }),
                stats: None,
            },
        ];
        assert_eq!(
            counts_json(&rows, &mut Rates::default(), 0),
            r#"[{"active":2,"dead_letter":1,"deferred":0,"in_rate":"0.0","k":"q","out_rate":"0.0","scheduled":0,"size":0}]"#
        );
    }
}
