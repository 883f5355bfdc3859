//! Request handling: authorisation, paging, the conversion of descriptions into entity
//! definitions (defaults are Azure's; an update replaces every settable property and keeps
//! those fixed at creation), and the calls into the broker's lifecycle methods.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keybus_core::{
    EntityDefinition, EntityKind, QueueProperties, RuleDefinition, SubscriptionDefinition,
    TopicProperties,
};

use super::xml::{self, Body, Ctx, Fields, RuleBody};
use super::{Target, check_new_name, parse_target};
use crate::http::common::{HttpError, Need, authorize, bad, host_of};
use crate::runtime::Broker;
use crate::runtime::lifecycle::EntityView;
use keybus_auth::Principal;

const ENTRY: &str = "application/atom+xml;type=entry;charset=utf-8";
const FEED: &str = "application/atom+xml;type=feed;charset=utf-8";
/// The API version written into ids and links when the client names none.
const API_VERSION: &str = "2021-05";
/// Page size when `$top` is absent, and the largest page.
const PAGE: usize = 100;

/// The query parameters the API reads.
#[derive(Debug, Default)]
struct Query {
    skip: Option<usize>,
    top: Option<usize>,
    api_version: Option<String>,
}

fn parse_query(q: Option<&str>) -> Result<Query, HttpError> {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let num = |name: &str| {
            v.parse::<usize>()
                .map_err(|_| bad(format!("{name} must be a non-negative integer, not '{v}'")))
        };
        match k.as_ref() {
            "$skip" => out.skip = Some(num("$skip")?),
            "$top" => {
                let top = num("$top")?;
                if top == 0 {
                    return Err(bad("$top must be at least 1"));
                }
                out.top = Some(top.min(PAGE));
            }
            "api-version" => {
                if v.is_empty()
                    || v.len() > 32
                    || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(bad(format!("invalid api-version '{v}'")));
                }
                out.api_version = Some(v.into_owned());
            }
            _ => {}
        }
    }
    Ok(out)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serve one management request.
pub(crate) async fn dispatch(
    broker: &Broker,
    peer: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let target = parse_target(uri.path())?;
    let query = parse_query(uri.query())?;
    let host = host_of(headers, uri);
    let base = format!("https://{host}");
    let ctx = Ctx {
        base: &base,
        host: &host,
        started_at: broker.started_at(),
        api_version: query.api_version.as_deref().unwrap_or(API_VERSION),
        namespace: &broker.config().namespace,
    };
    let path = target.auth_path();
    match *method {
        Method::GET | Method::HEAD => {
            let need = if target == Target::NamespaceInfo {
                Need::Any
            } else {
                Need::Read
            };
            authorize(broker, peer, headers, &host, &path, need)?;
            get(broker, &ctx, &target, &query)
        }
        Method::PUT => {
            let grant = authorize(broker, peer, headers, &host, &path, Need::Manage)?;
            put(broker, &ctx, headers, &grant, &target, &body).await
        }
        Method::DELETE => {
            authorize(broker, peer, headers, &host, &path, Need::Manage)?;
            delete(broker, &target).await
        }
        _ => Err(HttpError::MethodNotAllowed(format!(
            "{method} is not supported: use GET, PUT or DELETE"
        ))),
    }
}

// ------------------------------------------------------------------ reading

fn entity_entry(ctx: &Ctx, v: &EntityView, whole: bool) -> String {
    let (name, created, updated, content) = match v {
        EntityView::Queue(q) => (
            &q.name,
            q.props.meta.created_at,
            q.props.meta.updated_at,
            xml::queue_description(ctx, q),
        ),
        EntityView::Topic(t) => (
            &t.name,
            t.props.meta.created_at,
            t.props.meta.updated_at,
            xml::topic_description(ctx, t),
        ),
    };
    if whole {
        xml::entry(ctx, name, name, created, updated, &content)
    } else {
        xml::entry_element(ctx, name, name, created, updated, &content)
    }
}

fn subscription_entry(
    ctx: &Ctx,
    v: &crate::runtime::lifecycle::SubscriptionView,
    whole: bool,
) -> String {
    let path = format!("{}/Subscriptions/{}", v.topic, v.name);
    let content = xml::subscription_description(ctx, v);
    let (c, u) = (v.props.meta.created_at, v.props.meta.updated_at);
    if whole {
        xml::entry(ctx, &path, &v.name, c, u, &content)
    } else {
        xml::entry_element(ctx, &path, &v.name, c, u, &content)
    }
}

fn rule_entry(ctx: &Ctx, topic: &str, sub: &str, r: &RuleDefinition, whole: bool) -> String {
    let path = format!("{topic}/Subscriptions/{sub}/Rules/{}", r.name);
    let content = xml::rule_description(ctx, r);
    if whole {
        xml::entry(ctx, &path, &r.name, r.created_at, r.created_at, &content)
    } else {
        xml::entry_element(ctx, &path, &r.name, r.created_at, r.created_at, &content)
    }
}

/// One page of a list, with a `next` link when more follow.
fn page<T>(
    ctx: &Ctx,
    path: &str,
    title: &str,
    query: &Query,
    items: Vec<T>,
    entry: impl Fn(&T) -> String,
) -> Response {
    let skip = query.skip.unwrap_or(0);
    let top = query.top.unwrap_or(PAGE);
    let total = items.len();
    let entries: Vec<String> = items.iter().skip(skip).take(top).map(entry).collect();
    let end = skip.saturating_add(entries.len());
    let next = (end < total && !entries.is_empty()).then(|| {
        format!(
            "{path}?%24skip={end}&%24top={top}&api-version={}",
            ctx.api_version
        )
    });
    respond(
        StatusCode::OK,
        FEED,
        xml::feed(ctx, path, title, &entries, next),
    )
}

fn get(broker: &Broker, ctx: &Ctx, target: &Target, query: &Query) -> Result<Response, HttpError> {
    match target {
        Target::NamespaceInfo => Ok(respond(
            StatusCode::OK,
            ENTRY,
            xml::entry(
                ctx,
                "$namespaceinfo",
                ctx.namespace,
                broker.started_at(),
                broker.started_at(),
                &xml::namespace_info(ctx),
            ),
        )),
        Target::List { topics } => {
            let (path, title) = if *topics {
                ("$Resources/Topics", "Topics")
            } else {
                ("$Resources/Queues", "Queues")
            };
            let views = broker.entity_views(*topics);
            Ok(page(ctx, path, title, query, views, |v| {
                entity_entry(ctx, v, false)
            }))
        }
        Target::Entity(p) => {
            let v = broker.entity_view(p).ok_or_else(|| {
                HttpError::NotFound(format!("The messaging entity '{p}' could not be found."))
            })?;
            Ok(respond(StatusCode::OK, ENTRY, entity_entry(ctx, &v, true)))
        }
        Target::Subscriptions(t) => {
            let views = broker.subscription_views(t)?;
            let path = format!("{t}/Subscriptions");
            Ok(page(ctx, &path, "Subscriptions", query, views, |v| {
                subscription_entry(ctx, v, false)
            }))
        }
        Target::Subscription(t, s) => {
            let v = broker.subscription_view(t, s)?;
            Ok(respond(
                StatusCode::OK,
                ENTRY,
                subscription_entry(ctx, &v, true),
            ))
        }
        Target::Rules(t, s) => {
            let view = broker.subscription_view(t, s)?;
            let rules = broker.rule_list(t, s)?;
            let path = format!("{}/Subscriptions/{}/Rules", view.topic, view.name);
            Ok(page(ctx, &path, "Rules", query, rules, |r| {
                rule_entry(ctx, &view.topic, &view.name, r, false)
            }))
        }
        Target::Rule(t, s, r) => {
            let view = broker.subscription_view(t, s)?;
            let rule = broker
                .rule_list(t, s)?
                .into_iter()
                .find(|x| x.name.eq_ignore_ascii_case(r))
                .ok_or_else(|| {
                    HttpError::NotFound(format!(
                        "The messaging entity '{t}/Subscriptions/{s}/Rules/{r}' could not be found."
                    ))
                })?;
            Ok(respond(
                StatusCode::OK,
                ENTRY,
                rule_entry(ctx, &view.topic, &view.name, &rule, true),
            ))
        }
    }
}

// ------------------------------------------------------------------ writing

/// Queue (or subscription) properties from a description: Azure's defaults for what is
/// absent; `fixed` (on update) keeps what cannot change when the client leaves it out.
fn queue_props(
    f: &Fields,
    max_message_size: u64,
    fixed: Option<&QueueProperties>,
) -> QueueProperties {
    let base = QueueProperties {
        max_message_size,
        ..Default::default()
    };
    let base = match fixed {
        Some(old) => base.keeping_fixed(old),
        None => base,
    };
    f.settings.queue(base)
}

fn topic_props(
    f: &Fields,
    max_message_size: u64,
    fixed: Option<&TopicProperties>,
) -> TopicProperties {
    let base = TopicProperties {
        max_message_size,
        ..Default::default()
    };
    let base = match fixed {
        Some(old) => base.keeping_fixed(old),
        None => base,
    };
    f.settings.topic(base)
}

fn rule_def(name: &str, body: RuleBody) -> Result<RuleDefinition, HttpError> {
    if let Some(n) = &body.name
        && !n.eq_ignore_ascii_case(name)
    {
        return Err(bad(format!(
            "the rule's <Name> '{n}' differs from the name '{name}' in the path"
        )));
    }
    Ok(RuleDefinition {
        name: name.to_string(),
        filter: body.filter,
        action: body.action,
        created_at: 0,
    })
}

/// Forwarding into an entity needs rights there too: the request's own token covers it
/// (`Manage` on the namespace or that path), or the SDK's supplementary token does.
fn authorize_forward(
    broker: &Broker,
    headers: &HeaderMap,
    grant: &Principal,
    host: &str,
    dest: Option<&str>,
    supplementary: &str,
) -> Result<(), HttpError> {
    let Some(dest) = dest else {
        return Ok(());
    };
    let lower = dest.to_ascii_lowercase();
    let now = broker.now();
    let may_send = |p: &Principal| {
        let auth = &broker.auth();
        auth.decide(p, keybus_auth::Right::Send, &lower, now).allow
            || auth
                .decide(p, keybus_auth::Right::Manage, &lower, now)
                .allow
    };
    if may_send(grant) {
        return Ok(());
    }
    let token = headers.get(supplementary).and_then(|v| v.to_str().ok());
    // The JavaScript SDK signs the supplementary token for the bare host (no scheme).
    let ok = token.is_some_and(|t| {
        let t = t.strip_prefix("Bearer ").unwrap_or(t);
        [format!("sb://{host}/{dest}"), format!("{host}/{dest}")]
            .iter()
            .any(|aud| {
                // The token was checked against the destination's audience: for a SAS token
                // its rights on what it signs for decide, for a JWT the policy on `dest`.
                broker
                    .auth()
                    .verify(t, aud, broker.policies(), now)
                    .is_ok_and(|(p, _)| match &p.sas {
                        Some(s) => s.rights.iter().any(|r| {
                            matches!(r, keybus_auth::Right::Manage | keybus_auth::Right::Send)
                        }),
                        None => may_send(&p),
                    })
            })
    });
    if ok {
        Ok(())
    } else {
        Err(HttpError::Unauthorized(format!(
            "Unauthorized: forwarding to '{dest}' needs a token for it (the request's token or the {supplementary} header)"
        )))
    }
}

async fn put(
    broker: &Broker,
    ctx: &Ctx<'_>,
    headers: &HeaderMap,
    grant: &Principal,
    target: &Target,
    body: &Bytes,
) -> Result<Response, HttpError> {
    let update = headers.contains_key(header::IF_MATCH);
    let body = xml::read_entry(&xml::parse(body)?)?;
    let ns_max = broker.config().max_message_size;
    let forwards = |to: Option<&str>, dlq: Option<&str>| -> Result<(), HttpError> {
        authorize_forward(
            broker,
            headers,
            grant,
            ctx.host,
            to,
            "ServiceBusSupplementaryAuthorization",
        )?;
        authorize_forward(
            broker,
            headers,
            grant,
            ctx.host,
            dlq,
            "ServiceBusDlqSupplementaryAuthorization",
        )
    };
    let status = if update {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    match target {
        Target::Entity(path) => {
            let current = update.then(|| broker.entity_view(path)).flatten();
            if update && current.is_none() {
                return Err(HttpError::NotFound(format!(
                    "The messaging entity '{path}' could not be found."
                )));
            }
            let kind = match (&body, &current) {
                (Body::Queue(f), None) => EntityKind::Queue(queue_props(f, ns_max, None)),
                (Body::Queue(f), Some(EntityView::Queue(q))) => {
                    EntityKind::Queue(queue_props(f, ns_max, Some(&q.props)))
                }
                (Body::Topic(f), None) => EntityKind::Topic(topic_props(f, ns_max, None)),
                (Body::Topic(f), Some(EntityView::Topic(t))) => {
                    EntityKind::Topic(topic_props(f, ns_max, Some(&t.props)))
                }
                (Body::Queue(_), Some(EntityView::Topic(_))) => {
                    return Err(bad(format!(
                        "'{path}' is a topic: update it with a TopicDescription"
                    )));
                }
                (Body::Topic(_), Some(EntityView::Queue(_))) => {
                    return Err(bad(format!(
                        "'{path}' is a queue: update it with a QueueDescription"
                    )));
                }
                _ => {
                    return Err(bad(format!(
                        "PUT /{path} takes a QueueDescription or a TopicDescription"
                    )));
                }
            };
            if let EntityKind::Queue(p) = &kind {
                forwards(
                    p.forward_to.as_deref(),
                    p.forward_dead_lettered_messages_to.as_deref(),
                )?;
            }
            let def = EntityDefinition {
                name: path.clone(),
                kind,
            };
            if update {
                broker.update_entity(def).await?;
            } else {
                check_new_name(path, true)?;
                broker.create_entity(def).await?;
            }
            let v = broker.entity_view(path).ok_or_else(|| {
                HttpError::NotFound(format!("The messaging entity '{path}' could not be found."))
            })?;
            Ok(respond(status, ENTRY, entity_entry(ctx, &v, true)))
        }
        Target::Subscription(t, s) => {
            let Body::Subscription(f) = &body else {
                return Err(bad(format!(
                    "PUT /{t}/Subscriptions/{s} takes a SubscriptionDescription"
                )));
            };
            let current = if update {
                Some(broker.subscription_view(t, s)?)
            } else {
                None
            };
            let properties = queue_props(f, ns_max, current.as_ref().map(|c| &c.props));
            forwards(
                properties.forward_to.as_deref(),
                properties.forward_dead_lettered_messages_to.as_deref(),
            )?;
            let rules = match (&f.default_rule, update) {
                (Some(r), false) => {
                    let name = r.name.clone().unwrap_or_else(|| "$Default".into());
                    super::paths::check_child("rule", &name, true)?;
                    if !name.eq_ignore_ascii_case("$Default") {
                        check_new_name(&name, false)?;
                    }
                    vec![rule_def(&name, r.clone())?]
                }
                _ => vec![RuleDefinition::default_rule()],
            };
            let sd = SubscriptionDefinition {
                topic: t.clone(),
                name: s.clone(),
                properties,
                dead_lettering_on_filter_evaluation_exceptions: f
                    .settings
                    .dead_lettering_on_filter_evaluation_exceptions
                    .unwrap_or(false),
                rules,
            };
            let def = EntityDefinition {
                name: format!("{t}/Subscriptions/{s}"),
                kind: EntityKind::Subscription(sd),
            };
            if update {
                broker.update_entity(def).await?;
            } else {
                check_new_name(s, false)?;
                broker.create_entity(def).await?;
            }
            let v = broker.subscription_view(t, s)?;
            Ok(respond(status, ENTRY, subscription_entry(ctx, &v, true)))
        }
        Target::Rule(t, s, r) => {
            let Body::Rule(rb) = body else {
                return Err(bad(format!(
                    "PUT /{t}/Subscriptions/{s}/Rules/{r} takes a RuleDescription"
                )));
            };
            let def = rule_def(r, rb)?;
            let stored = if update {
                broker.update_rule(t, s, def).await?
            } else {
                if !r.eq_ignore_ascii_case("$Default") {
                    check_new_name(r, false)?;
                }
                broker.create_rule(t, s, def).await?
            };
            let view = broker.subscription_view(t, s)?;
            Ok(respond(
                status,
                ENTRY,
                rule_entry(ctx, &view.topic, &view.name, &stored, true),
            ))
        }
        Target::NamespaceInfo
        | Target::List { .. }
        | Target::Subscriptions(_)
        | Target::Rules(..) => Err(HttpError::MethodNotAllowed(
            "PUT needs a queue, topic, subscription or rule path".into(),
        )),
    }
}

async fn delete(broker: &Broker, target: &Target) -> Result<Response, HttpError> {
    match target {
        Target::Entity(p) => broker.delete_entity(p).await?,
        Target::Subscription(t, s) => broker.delete_subscription(t, s).await?,
        Target::Rule(t, s, r) => broker.delete_rule(t, s, r).await?,
        Target::NamespaceInfo
        | Target::List { .. }
        | Target::Subscriptions(_)
        | Target::Rules(..) => {
            return Err(HttpError::MethodNotAllowed(
                "DELETE needs a queue, topic, subscription or rule path".into(),
            ));
        }
    }
    Ok(StatusCode::OK.into_response())
}
