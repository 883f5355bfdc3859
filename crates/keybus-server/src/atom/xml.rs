//! ATOM/XML (de)serialisation for the management API, with `quick-xml`.
//!
//! Reading: a request body becomes a small namespace-resolved element tree ([`parse`]:
//! bounded depth and size, no DTDs, predefined and character references only), then an
//! [`Body`]: the description inside `<entry><content>`, each element checked against the
//! elements Service Bus defines for that description (unknown or misplaced ones are refused,
//! read-only ones the SDKs echo back on update are accepted and ignored), each value against
//! its type. Writing: entries and feeds in the shape the SDKs parse (the Python client
//! resolves namespaces; the JavaScript client reads some prefixes literally: `i:type`,
//! `d6p1:` value types, one `xmlns:` declaration on `CountDetails`).

use std::fmt::Write;

use keybus_core::{EntityStatus, FilterDefinition, RuleDefinition, SimpleValue};
use quick_xml::NsReader;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use super::AtomError;
use crate::admin::{QueueView, SubscriptionView, TopicView};

pub const ATOM: &str = "http://www.w3.org/2005/Atom";
pub const SB: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const SB2011: &str = "http://schemas.microsoft.com/netservices/2011/06/servicebus";
pub const XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// Deepest element nesting accepted (a rule with correlation properties needs 8).
const MAX_DEPTH: usize = 32;
/// Most elements in one document.
const MAX_ELEMENTS: usize = 10_000;

/// `TimeSpan.MaxValue`, the duration Service Bus reports for "never" / "unlimited".
pub const TIMESPAN_MAX: &str = "P10675199DT2H48M5.4775807S";
/// Durations at least this long (ms) mean "unlimited" (`TimeSpan.MaxValue`, ~29,227 years,
/// written with fewer fraction digits by some clients).
const UNLIMITED_MS: i64 = 922_337_203_685_000;

fn bad(msg: impl Into<String>) -> AtomError {
    AtomError::BadRequest(msg.into())
}

/// One element with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// Namespace URI; empty when unbound.
    pub ns: String,
    pub name: String,
    /// `(namespace, local name, value)`; namespace declarations are not attributes.
    pub attrs: Vec<(String, String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, ns: &str, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, l, _)| n == ns && l == name)
            .map(|(_, _, v)| v.as_str())
    }

    fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    fn label(&self) -> String {
        if self.ns.is_empty() {
            self.name.clone()
        } else {
            format!("{{{}}}{}", self.ns, self.name)
        }
    }

    /// The text of a leaf element (trimmed); an element with children is not a value.
    fn value(&self) -> Result<&str, AtomError> {
        if !self.children.is_empty() {
            return Err(bad(format!(
                "<{}> must hold a value, not elements",
                self.name
            )));
        }
        Ok(self.text.trim())
    }

    /// Non-whitespace text beside child elements is refused.
    fn no_text(&self) -> Result<(), AtomError> {
        if self.text.trim().is_empty() {
            Ok(())
        } else {
            Err(bad(format!("<{}> must not hold text", self.name)))
        }
    }
}

fn resolved(res: ResolveResult<'_>) -> Result<String, AtomError> {
    match res {
        ResolveResult::Bound(ns) => String::from_utf8(ns.into_inner().to_vec())
            .map_err(|_| bad("a namespace URI is not UTF-8")),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(bad(format!(
            "the namespace prefix '{}' is not declared",
            String::from_utf8_lossy(&p)
        ))),
    }
}

/// Parse a document into its root element. Refuses DTDs, processing instructions, unknown
/// entities, undeclared prefixes, mismatched tags, more than one root and oversized trees.
pub fn parse(body: &[u8]) -> Result<Element, AtomError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let (ns, event) = {
            let (res, event) = reader
                .read_resolved_event()
                .map_err(|e| bad(format!("malformed XML: {e}")))?;
            let ns = match &event {
                Event::Start(_) | Event::Empty(_) => resolved(res)?,
                _ => String::new(),
            };
            (ns, event)
        };
        let (start, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::Eof => break,
            other => {
                other_event(other, &mut stack, &mut root)?;
                continue;
            }
        };
        count += 1;
        if count > MAX_ELEMENTS {
            return Err(bad("the document has too many elements"));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(bad("the document is nested too deeply"));
        }
        if root.is_some() && stack.is_empty() {
            return Err(bad("the document has more than one root element"));
        }
        let name = std::str::from_utf8(start.local_name().into_inner())
            .map_err(|_| bad("an element name is not UTF-8"))?
            .to_string();
        let mut attrs = Vec::new();
        for a in start.attributes() {
            let a = a.map_err(|err| bad(format!("malformed attribute: {err}")))?;
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let (ares, local) = reader.resolve_attribute(a.key);
            let ans = resolved(ares)?;
            let local = std::str::from_utf8(local.into_inner())
                .map_err(|_| bad("an attribute name is not UTF-8"))?
                .to_string();
            let value = a
                .decode_and_unescape_value(reader.decoder())
                .map_err(|err| bad(format!("malformed attribute value: {err}")))?
                .into_owned();
            attrs.push((ans, local, value));
        }
        let el = Element {
            ns,
            name,
            attrs,
            children: Vec::new(),
            text: String::new(),
        };
        if empty {
            close(&mut stack, &mut root, el);
        } else {
            stack.push(el);
        }
    }
    if !stack.is_empty() {
        return Err(bad("malformed XML: the document ends inside an element"));
    }
    root.ok_or_else(|| bad("the body holds no XML element"))
}

/// Events other than start tags and the end of the document.
fn other_event(
    event: Event<'_>,
    stack: &mut Vec<Element>,
    root: &mut Option<Element>,
) -> Result<(), AtomError> {
    match event {
        Event::End(_) => {
            let el = stack
                .pop()
                .ok_or_else(|| bad("malformed XML: unexpected end tag"))?;
            close(stack, root, el);
        }
        Event::Text(t) => {
            let s = t
                .xml_content()
                .map_err(|e| bad(format!("malformed text: {e}")))?;
            push_text(stack, &s)?;
        }
        Event::CData(t) => {
            let s = t
                .xml_content()
                .map_err(|e| bad(format!("malformed CDATA: {e}")))?;
            push_text(stack, &s)?;
        }
        Event::GeneralRef(r) => {
            let name = r
                .decode()
                .map_err(|e| bad(format!("malformed reference: {e}")))?;
            let raw = format!("&{name};");
            let s = quick_xml::escape::unescape(&raw)
                .map_err(|_| bad(format!("unknown entity reference {raw}")))?;
            push_text(stack, &s)?;
        }
        Event::Decl(_) | Event::Comment(_) | Event::Start(_) | Event::Empty(_) | Event::Eof => {}
        Event::PI(_) => return Err(bad("processing instructions are not accepted")),
        Event::DocType(_) => return Err(bad("document type declarations are not accepted")),
    }
    Ok(())
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn push_text(stack: &mut [Element], s: &str) -> Result<(), AtomError> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None => Err(bad("text outside the root element")),
    }
}

// ------------------------------------------------------------------ descriptions

/// What a `PUT` body describes.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Queue(Fields),
    Topic(Fields),
    Subscription(Fields),
    Rule(RuleBody),
}

/// The settable properties of a queue, topic or subscription description, as given
/// (`None`: the element was absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fields {
    pub lock_duration_ms: Option<i64>,
    pub max_size_in_megabytes: Option<u64>,
    pub requires_duplicate_detection: Option<bool>,
    pub requires_session: Option<bool>,
    /// `Some(None)`: unlimited.
    pub default_message_ttl_ms: Option<Option<i64>>,
    pub dead_lettering_on_message_expiration: Option<bool>,
    pub dead_lettering_on_filter_evaluation_exceptions: Option<bool>,
    pub duplicate_detection_window_ms: Option<i64>,
    pub max_delivery_count: Option<u32>,
    pub enable_batched_operations: Option<bool>,
    pub status: Option<EntityStatus>,
    /// Entity paths (the SDKs send `sb://host/name`); empty elements are absent.
    pub forward_to: Option<String>,
    pub forward_dead_lettered_messages_to: Option<String>,
    pub user_metadata: Option<String>,
    /// `Some(None)`: never.
    pub auto_delete_on_idle_ms: Option<Option<i64>>,
    pub enable_partitioning: Option<bool>,
    pub enable_express: Option<bool>,
    pub support_ordering: Option<bool>,
    pub max_message_size_in_kilobytes: Option<u64>,
    /// A subscription's first rule (`DefaultRuleDescription`).
    pub default_rule: Option<RuleBody>,
}

/// A `RuleDescription` (or a subscription's `DefaultRuleDescription`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleBody {
    pub name: Option<String>,
    pub filter: FilterDefinition,
    pub action: Option<String>,
}

/// How an element of a description is treated.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Set,
    /// Read-only (runtime counts, times, availability): what a client echoes back from a
    /// `GET` is accepted and ignored.
    Ignore,
}

const QUEUE_ELEMENTS: &[(&str, Role)] = &[
    ("LockDuration", Role::Set),
    ("MaxSizeInMegabytes", Role::Set),
    ("RequiresDuplicateDetection", Role::Set),
    ("RequiresSession", Role::Set),
    ("DefaultMessageTimeToLive", Role::Set),
    ("DeadLetteringOnMessageExpiration", Role::Set),
    ("DuplicateDetectionHistoryTimeWindow", Role::Set),
    ("MaxDeliveryCount", Role::Set),
    ("EnableBatchedOperations", Role::Set),
    ("SizeInBytes", Role::Ignore),
    ("MessageCount", Role::Ignore),
    ("IsAnonymousAccessible", Role::Ignore),
    ("AuthorizationRules", Role::Set),
    ("Status", Role::Set),
    ("ForwardTo", Role::Set),
    ("UserMetadata", Role::Set),
    ("CreatedAt", Role::Ignore),
    ("UpdatedAt", Role::Ignore),
    ("AccessedAt", Role::Ignore),
    ("SupportOrdering", Role::Ignore),
    ("CountDetails", Role::Ignore),
    ("AutoDeleteOnIdle", Role::Set),
    ("EnablePartitioning", Role::Set),
    ("EntityAvailabilityStatus", Role::Ignore),
    ("ForwardDeadLetteredMessagesTo", Role::Set),
    ("EnableExpress", Role::Set),
    ("MaxMessageSizeInKilobytes", Role::Set),
    ("SkippedUpdate", Role::Ignore),
];

const TOPIC_ELEMENTS: &[(&str, Role)] = &[
    ("DefaultMessageTimeToLive", Role::Set),
    ("MaxSizeInMegabytes", Role::Set),
    ("RequiresDuplicateDetection", Role::Set),
    ("DuplicateDetectionHistoryTimeWindow", Role::Set),
    ("EnableBatchedOperations", Role::Set),
    ("SizeInBytes", Role::Ignore),
    ("FilteringMessagesBeforePublishing", Role::Ignore),
    ("IsAnonymousAccessible", Role::Ignore),
    ("AuthorizationRules", Role::Set),
    ("Status", Role::Set),
    ("CreatedAt", Role::Ignore),
    ("UpdatedAt", Role::Ignore),
    ("AccessedAt", Role::Ignore),
    ("SupportOrdering", Role::Set),
    ("CountDetails", Role::Ignore),
    ("SubscriptionCount", Role::Ignore),
    ("SqlFilterCount", Role::Ignore),
    ("CorrelationFilterCount", Role::Ignore),
    ("AutoDeleteOnIdle", Role::Set),
    ("EnablePartitioning", Role::Set),
    ("EntityAvailabilityStatus", Role::Ignore),
    ("EnableSubscriptionPartitioning", Role::Ignore),
    ("EnableExpress", Role::Set),
    ("UserMetadata", Role::Set),
    ("MaxMessageSizeInKilobytes", Role::Set),
    ("SkippedUpdate", Role::Ignore),
];

const SUBSCRIPTION_ELEMENTS: &[(&str, Role)] = &[
    ("LockDuration", Role::Set),
    ("RequiresSession", Role::Set),
    ("DefaultMessageTimeToLive", Role::Set),
    ("DeadLetteringOnMessageExpiration", Role::Set),
    ("DeadLetteringOnFilterEvaluationExceptions", Role::Set),
    ("DefaultRuleDescription", Role::Set),
    ("MessageCount", Role::Ignore),
    ("MaxDeliveryCount", Role::Set),
    ("EnableBatchedOperations", Role::Set),
    ("Status", Role::Set),
    ("ForwardTo", Role::Set),
    ("CreatedAt", Role::Ignore),
    ("UpdatedAt", Role::Ignore),
    ("AccessedAt", Role::Ignore),
    ("CountDetails", Role::Ignore),
    ("UserMetadata", Role::Set),
    ("ForwardDeadLetteredMessagesTo", Role::Set),
    ("AutoDeleteOnIdle", Role::Set),
    ("EntityAvailabilityStatus", Role::Ignore),
    ("SizeInBytes", Role::Ignore),
    ("SkippedUpdate", Role::Ignore),
];

/// Read the description a `PUT` body carries.
pub fn read_entry(root: &Element) -> Result<Body, AtomError> {
    if !root.is(ATOM, "entry") {
        return Err(bad(format!(
            "the body must be an Atom <entry>, not {}",
            root.label()
        )));
    }
    root.no_text()?;
    let mut content = None;
    for c in &root.children {
        if c.ns != ATOM {
            return Err(bad(format!("unexpected element {} in <entry>", c.label())));
        }
        match c.name.as_str() {
            "content" if content.is_none() => content = Some(c),
            "content" => return Err(bad("<entry> holds more than one <content>")),
            "id" | "title" | "updated" | "published" | "author" | "link" | "category"
            | "summary" | "contributor" | "rights" => {}
            _ => {
                return Err(bad(format!("unexpected element {} in <entry>", c.label())));
            }
        }
    }
    let content = content.ok_or_else(|| bad("the <entry> has no <content>"))?;
    content.no_text()?;
    let [desc] = content.children.as_slice() else {
        return Err(bad("<content> must hold exactly one description element"));
    };
    if desc.ns != SB {
        return Err(bad(format!(
            "unexpected element {} in <content>: descriptions are in the namespace {SB}",
            desc.label()
        )));
    }
    match desc.name.as_str() {
        "QueueDescription" => read_fields(desc, QUEUE_ELEMENTS).map(Body::Queue),
        "TopicDescription" => read_fields(desc, TOPIC_ELEMENTS).map(Body::Topic),
        "SubscriptionDescription" => {
            read_fields(desc, SUBSCRIPTION_ELEMENTS).map(Body::Subscription)
        }
        "RuleDescription" => read_rule(desc).map(Body::Rule),
        other => Err(bad(format!(
            "unexpected description <{other}>: expected QueueDescription, TopicDescription, SubscriptionDescription or RuleDescription"
        ))),
    }
}

fn read_fields(desc: &Element, allowed: &[(&str, Role)]) -> Result<Fields, AtomError> {
    desc.no_text()?;
    let mut f = Fields::default();
    let mut seen: Vec<&str> = Vec::new();
    for c in &desc.children {
        let role = (c.ns == SB)
            .then(|| allowed.iter().find(|(n, _)| *n == c.name).map(|(_, r)| *r))
            .flatten()
            .ok_or_else(|| {
                bad(format!(
                    "unexpected element {} in <{}>",
                    c.label(),
                    desc.name
                ))
            })?;
        if seen.contains(&c.name.as_str()) {
            return Err(bad(format!("<{}> is given twice", c.name)));
        }
        seen.push(&c.name);
        if role == Role::Ignore {
            continue;
        }
        let v = || c.value();
        match c.name.as_str() {
            "LockDuration" => f.lock_duration_ms = Some(duration(c)?),
            "MaxSizeInMegabytes" => f.max_size_in_megabytes = Some(number(c)?),
            "RequiresDuplicateDetection" => f.requires_duplicate_detection = Some(boolean(c)?),
            "RequiresSession" => f.requires_session = Some(boolean(c)?),
            "DefaultMessageTimeToLive" => f.default_message_ttl_ms = Some(limit(duration(c)?)),
            "DeadLetteringOnMessageExpiration" => {
                f.dead_lettering_on_message_expiration = Some(boolean(c)?)
            }
            "DeadLetteringOnFilterEvaluationExceptions" => {
                f.dead_lettering_on_filter_evaluation_exceptions = Some(boolean(c)?)
            }
            "DuplicateDetectionHistoryTimeWindow" => {
                f.duplicate_detection_window_ms = Some(duration(c)?)
            }
            "MaxDeliveryCount" => {
                f.max_delivery_count = Some(
                    u32::try_from(number(c)?)
                        .map_err(|_| bad("MaxDeliveryCount is out of range"))?,
                )
            }
            "EnableBatchedOperations" => f.enable_batched_operations = Some(boolean(c)?),
            "Status" => {
                f.status = Some(EntityStatus::parse(v()?).ok_or_else(|| {
                    bad(format!(
                        "Status '{}' is not one of Active, Disabled, SendDisabled, ReceiveDisabled",
                        c.text.trim()
                    ))
                })?)
            }
            "ForwardTo" => f.forward_to = entity_ref(v()?),
            "ForwardDeadLetteredMessagesTo" => {
                f.forward_dead_lettered_messages_to = entity_ref(v()?)
            }
            "UserMetadata" => {
                let s = v()?;
                f.user_metadata = (!s.is_empty()).then(|| s.to_string());
            }
            "AutoDeleteOnIdle" => f.auto_delete_on_idle_ms = Some(limit(duration(c)?)),
            "EnablePartitioning" => f.enable_partitioning = Some(boolean(c)?),
            "EnableExpress" => f.enable_express = Some(boolean(c)?),
            "SupportOrdering" => f.support_ordering = Some(boolean(c)?),
            "MaxMessageSizeInKilobytes" => f.max_message_size_in_kilobytes = Some(number(c)?),
            "AuthorizationRules" => {
                c.no_text()?;
                if !c.children.is_empty() {
                    return Err(bad(
                        "entity-level authorization rules are not supported: use the namespace's SAS policies",
                    ));
                }
            }
            "DefaultRuleDescription" => f.default_rule = Some(read_rule(c)?),
            other => {
                return Err(bad(format!("unexpected element <{other}>")));
            }
        }
    }
    Ok(f)
}

/// `ForwardTo` values: `sb://host/path`, `https://host/path` or a bare path.
fn entity_ref(v: &str) -> Option<String> {
    let path = keybus_core::address::strip_authority(v).trim_end_matches('/');
    (!path.is_empty()).then(|| path.to_string())
}

fn boolean(el: &Element) -> Result<bool, AtomError> {
    let v = el.value()?;
    if v.eq_ignore_ascii_case("true") || v == "1" {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") || v == "0" {
        Ok(false)
    } else {
        Err(bad(format!("{} must be true or false, not '{v}'", el.name)))
    }
}

fn number(el: &Element) -> Result<u64, AtomError> {
    let v = el.value()?;
    v.parse::<u64>().map_err(|_| {
        bad(format!(
            "{} must be a non-negative integer, not '{v}'",
            el.name
        ))
    })
}

fn duration(el: &Element) -> Result<i64, AtomError> {
    let v = el.value()?;
    crate::config::parse_iso8601_ms(v).ok_or_else(|| {
        bad(format!(
            "{} must be an ISO 8601 duration such as PT1M, not '{v}'",
            el.name
        ))
    })
}

/// `TimeSpan.MaxValue` (and anything as long) means unlimited.
fn limit(ms: i64) -> Option<i64> {
    (ms < UNLIMITED_MS).then_some(ms)
}

/// The type named by an `xsi:type` attribute, without its prefix.
fn xsi_type(el: &Element) -> Option<&str> {
    el.attr(XSI, "type")
        .map(|t| t.rsplit_once(':').map_or(t, |(_, local)| local))
}

fn read_rule(desc: &Element) -> Result<RuleBody, AtomError> {
    desc.no_text()?;
    let mut name = None;
    let mut filter = None;
    let mut action = None;
    let mut seen: Vec<&str> = Vec::new();
    for c in &desc.children {
        if c.ns != SB {
            return Err(bad(format!(
                "unexpected element {} in <{}>",
                c.label(),
                desc.name
            )));
        }
        if seen.contains(&c.name.as_str()) {
            return Err(bad(format!("<{}> is given twice", c.name)));
        }
        seen.push(&c.name);
        match c.name.as_str() {
            "Filter" => filter = Some(read_filter(c)?),
            "Action" => action = read_action(c)?,
            "Name" => {
                let v = c.value()?;
                name = (!v.is_empty()).then(|| v.to_string());
            }
            "CreatedAt" => {}
            _ => {
                return Err(bad(format!(
                    "unexpected element {} in <{}>",
                    c.label(),
                    desc.name
                )));
            }
        }
    }
    Ok(RuleBody {
        name,
        filter: filter.unwrap_or(FilterDefinition::True),
        action,
    })
}

/// Parameters are accepted only when empty (keybus's SQL filters take none).
fn no_parameters(el: &Element) -> Result<(), AtomError> {
    el.no_text()?;
    if el.children.is_empty() {
        Ok(())
    } else {
        Err(bad(
            "SQL filter and action parameters are not supported: write the values into the expression",
        ))
    }
}

fn read_filter(el: &Element) -> Result<FilterDefinition, AtomError> {
    el.no_text()?;
    let kind = xsi_type(el).ok_or_else(|| {
        bad("<Filter> needs an i:type (SqlFilter, CorrelationFilter, TrueFilter or FalseFilter)")
    })?;
    let unexpected = |c: &Element| bad(format!("unexpected element {} in a {kind}", c.label()));
    match kind {
        "SqlFilter" | "TrueFilter" | "FalseFilter" => {
            let mut expr = None;
            for c in &el.children {
                if c.ns != SB {
                    return Err(unexpected(c));
                }
                match c.name.as_str() {
                    "SqlExpression" => expr = Some(c.value()?.to_string()),
                    "Parameters" => no_parameters(c)?,
                    "CompatibilityLevel" | "RequiresPreprocessing" => {}
                    _ => return Err(unexpected(c)),
                }
            }
            match kind {
                "TrueFilter" => Ok(FilterDefinition::True),
                "FalseFilter" => Ok(FilterDefinition::False),
                _ => match expr {
                    Some(e) if !e.trim().is_empty() => Ok(FilterDefinition::Sql(e)),
                    _ => Err(bad("a SqlFilter needs a non-empty <SqlExpression>")),
                },
            }
        }
        "CorrelationFilter" => {
            let mut f = CorrelationFields::default();
            for c in &el.children {
                if c.ns != SB {
                    return Err(unexpected(c));
                }
                let text = || -> Result<Option<String>, AtomError> {
                    let v = c.value()?;
                    Ok((!v.is_empty()).then(|| v.to_string()))
                };
                match c.name.as_str() {
                    "CorrelationId" => f.correlation_id = text()?,
                    "MessageId" => f.message_id = text()?,
                    "To" => f.to = text()?,
                    "ReplyTo" => f.reply_to = text()?,
                    "Label" => f.label = text()?,
                    "SessionId" => f.session_id = text()?,
                    "ReplyToSessionId" => f.reply_to_session_id = text()?,
                    "ContentType" => f.content_type = text()?,
                    "Properties" => f.properties = read_key_values(c)?,
                    _ => return Err(unexpected(c)),
                }
            }
            let empty = f.properties.is_empty()
                && [
                    &f.correlation_id,
                    &f.message_id,
                    &f.to,
                    &f.reply_to,
                    &f.label,
                    &f.session_id,
                    &f.reply_to_session_id,
                    &f.content_type,
                ]
                .iter()
                .all(|v| v.is_none());
            if empty {
                return Err(bad(
                    "a CorrelationFilter needs at least one system or application property",
                ));
            }
            Ok(FilterDefinition::Correlation {
                correlation_id: f.correlation_id,
                message_id: f.message_id,
                to: f.to,
                reply_to: f.reply_to,
                label: f.label,
                session_id: f.session_id,
                reply_to_session_id: f.reply_to_session_id,
                content_type: f.content_type,
                properties: f.properties,
            })
        }
        other => Err(bad(format!(
            "unsupported filter type '{other}': use SqlFilter, CorrelationFilter, TrueFilter or FalseFilter"
        ))),
    }
}

#[derive(Default)]
struct CorrelationFields {
    correlation_id: Option<String>,
    message_id: Option<String>,
    to: Option<String>,
    reply_to: Option<String>,
    label: Option<String>,
    session_id: Option<String>,
    reply_to_session_id: Option<String>,
    content_type: Option<String>,
    properties: Vec<(String, SimpleValue)>,
}

fn read_key_values(el: &Element) -> Result<Vec<(String, SimpleValue)>, AtomError> {
    el.no_text()?;
    let mut out: Vec<(String, SimpleValue)> = Vec::new();
    for kv in &el.children {
        if !kv.is(SB, "KeyValueOfstringanyType") {
            return Err(bad(format!(
                "unexpected element {} in <Properties>",
                kv.label()
            )));
        }
        kv.no_text()?;
        let mut key = None;
        let mut value = None;
        for c in &kv.children {
            match (c.ns.as_str(), c.name.as_str()) {
                (SB, "Key") if key.is_none() => key = Some(c.value()?.to_string()),
                (SB, "Value") if value.is_none() => value = Some(simple_value(c)?),
                _ => {
                    return Err(bad(format!(
                        "unexpected element {} in <KeyValueOfstringanyType>",
                        c.label()
                    )));
                }
            }
        }
        let (Some(key), Some(value)) = (key, value) else {
            return Err(bad(
                "a <KeyValueOfstringanyType> needs a <Key> and a <Value>",
            ));
        };
        if key.is_empty() {
            return Err(bad("a correlation filter property needs a non-empty name"));
        }
        if out.iter().any(|(k, _)| k == &key) {
            return Err(bad(format!(
                "the correlation filter property '{key}' is given twice"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn simple_value(el: &Element) -> Result<SimpleValue, AtomError> {
    let kind = xsi_type(el).unwrap_or("string");
    let v = el.value()?;
    let wrong = || bad(format!("'{v}' is not a valid {kind}"));
    Ok(match kind {
        "string" => SimpleValue::String(el.text.clone()),
        "int" | "long" | "short" | "byte" | "unsignedInt" | "unsignedShort" | "unsignedByte" => {
            SimpleValue::Long(v.parse().map_err(|_| wrong())?)
        }
        "double" | "float" | "decimal" => {
            let d: f64 = v.parse().map_err(|_| wrong())?;
            if !d.is_finite() {
                return Err(wrong());
            }
            SimpleValue::Double(d)
        }
        "boolean" => SimpleValue::Bool(match v {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(wrong()),
        }),
        other => {
            return Err(bad(format!(
                "correlation filter properties of type '{other}' are not supported (string, int, long, double, boolean)"
            )));
        }
    })
}

fn read_action(el: &Element) -> Result<Option<String>, AtomError> {
    el.no_text()?;
    match xsi_type(el) {
        None | Some("EmptyRuleAction") => {
            if let Some(c) = el.children.first() {
                return Err(bad(format!(
                    "unexpected element {} in an EmptyRuleAction",
                    c.label()
                )));
            }
            Ok(None)
        }
        Some("SqlRuleAction") => {
            let mut expr = None;
            for c in &el.children {
                match (c.ns.as_str(), c.name.as_str()) {
                    (SB, "SqlExpression") => expr = Some(c.value()?.to_string()),
                    (SB, "Parameters") => no_parameters(c)?,
                    (SB, "CompatibilityLevel") | (SB, "RequiresPreprocessing") => {}
                    _ => {
                        return Err(bad(format!(
                            "unexpected element {} in a SqlRuleAction",
                            c.label()
                        )));
                    }
                }
            }
            match expr {
                Some(e) if !e.trim().is_empty() => Ok(Some(e)),
                _ => Err(bad("a SqlRuleAction needs a non-empty <SqlExpression>")),
            }
        }
        Some(other) => Err(bad(format!(
            "unsupported rule action type '{other}': use SqlRuleAction or EmptyRuleAction"
        ))),
    }
}

// ------------------------------------------------------------------ writing

/// Format ms since the epoch as ISO 8601 UTC (`2024-05-01T12:00:00.123Z`).
pub fn fmt_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// "Never" in the `AccessedAt` sense.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// Format a duration in ms as ISO 8601 (`PT1M`, `P1DT2H`, `PT0.5S`); `None` is unlimited.
pub fn fmt_duration(ms: Option<i64>) -> String {
    let Some(ms) = ms.filter(|ms| *ms >= 0) else {
        return TIMESPAN_MAX.to_string();
    };
    let days = ms / 86_400_000;
    let h = ms / 3_600_000 % 24;
    let m = ms / 60_000 % 60;
    let s = ms / 1000 % 60;
    let frac = ms % 1000;
    let mut out = String::from("P");
    if days > 0 {
        let _ = write!(out, "{days}D");
    }
    if h > 0 || m > 0 || s > 0 || frac > 0 || days == 0 {
        out.push('T');
        if h > 0 {
            let _ = write!(out, "{h}H");
        }
        if m > 0 {
            let _ = write!(out, "{m}M");
        }
        if s > 0 || frac > 0 || (h == 0 && m == 0) {
            if frac > 0 {
                let f = format!("{frac:03}");
                let _ = write!(out, "{s}.{}S", f.trim_end_matches('0'));
            } else {
                let _ = write!(out, "{s}S");
            }
        }
    }
    out
}

/// Where an entry lives and what the writer needs beside the entity.
pub struct Ctx<'a> {
    /// `https://host[:port]` for ids and links.
    pub base: &'a str,
    /// `host[:port]`, for `ForwardTo` URLs (`sb://host/path`).
    pub host: &'a str,
    /// Shown for times the broker does not know (entities from a config file).
    pub started_at: i64,
    pub api_version: &'a str,
    pub namespace: &'a str,
}

impl Ctx<'_> {
    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}?api-version={}",
            self.base,
            url_path(path),
            url_query(self.api_version)
        )
    }

    fn time(&self, ms: i64) -> String {
        fmt_time(if ms > 0 { ms } else { self.started_at })
    }

    fn forward(&self, path: &Option<String>) -> Option<String> {
        path.as_ref().map(|p| format!("sb://{}/{}", self.host, p))
    }
}

/// Percent-encode an entity path for a URL (slashes kept).
fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/' | b'$') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn url_query(v: &str) -> String {
    url_path(v).replace('/', "%2F").replace('$', "%24")
}

fn el(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", escape(value));
}

fn opt(out: &mut String, name: &str, value: &Option<String>) {
    if let Some(v) = value {
        el(out, name, v);
    }
}

fn flag(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// One Atom entry (without the XML declaration, so that feeds can hold it).
pub fn entry_element(
    ctx: &Ctx,
    path: &str,
    title: &str,
    created: i64,
    updated: i64,
    content: &str,
) -> String {
    let url = ctx.url(path);
    let mut out = String::with_capacity(content.len() + 512);
    let _ = write!(
        out,
        "<entry xmlns=\"{ATOM}\"><id>{id}</id><title type=\"text\">{title}</title><published>{p}</published><updated>{u}</updated><author><name>{ns}</name></author><link rel=\"self\" href=\"{id}\"/><content type=\"application/xml\">{content}</content></entry>",
        id = escape(url.as_str()),
        title = escape(title),
        p = ctx.time(created),
        u = ctx.time(updated),
        ns = escape(ctx.namespace),
    );
    out
}

const DECL: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>";

/// A document holding one entry.
pub fn entry(
    ctx: &Ctx,
    path: &str,
    title: &str,
    created: i64,
    updated: i64,
    content: &str,
) -> String {
    format!(
        "{DECL}{}",
        entry_element(ctx, path, title, created, updated, content)
    )
}

/// A feed (a page of a list); `next` is the path and query of the next page.
pub fn feed(
    ctx: &Ctx,
    path: &str,
    title: &str,
    entries: &[String],
    next: Option<String>,
) -> String {
    let url = ctx.url(path);
    let mut out = String::new();
    let _ = write!(
        out,
        "{DECL}<feed xmlns=\"{ATOM}\"><title type=\"text\">{}</title><id>{}</id><updated>{}</updated><link rel=\"self\" href=\"{}\"/>",
        escape(title),
        escape(url.as_str()),
        fmt_time(ctx.started_at.max(0)),
        escape(url.as_str())
    );
    if let Some(next) = next {
        let _ = write!(
            out,
            "<link rel=\"next\" href=\"{}\"/>",
            escape(format!("{}/{next}", ctx.base).as_str())
        );
    }
    for e in entries {
        out.push_str(e);
    }
    out.push_str("</feed>");
    out
}

fn count_details(out: &mut String, active: u64, dead: u64, scheduled: u64) {
    let _ = write!(
        out,
        "<CountDetails xmlns:d2p1=\"{SB2011}\"><d2p1:ActiveMessageCount>{active}</d2p1:ActiveMessageCount><d2p1:DeadLetterMessageCount>{dead}</d2p1:DeadLetterMessageCount><d2p1:ScheduledMessageCount>{scheduled}</d2p1:ScheduledMessageCount><d2p1:TransferMessageCount>0</d2p1:TransferMessageCount><d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount></CountDetails>"
    );
}

fn open(out: &mut String, name: &str) {
    let _ = write!(out, "<{name} xmlns=\"{SB}\" xmlns:i=\"{XSI}\">");
}

fn kb(bytes: u64) -> String {
    (bytes / 1024).to_string()
}

fn mb(bytes: u64) -> String {
    (bytes / (1024 * 1024)).to_string()
}

pub fn queue_description(ctx: &Ctx, v: &QueueView) -> String {
    let p = &v.props;
    let c = &v.counts;
    let mut o = String::with_capacity(2048);
    open(&mut o, "QueueDescription");
    el(
        &mut o,
        "LockDuration",
        &fmt_duration(Some(p.lock_duration_ms)),
    );
    el(&mut o, "MaxSizeInMegabytes", &mb(p.max_size_bytes));
    el(
        &mut o,
        "RequiresDuplicateDetection",
        flag(p.requires_duplicate_detection),
    );
    el(&mut o, "RequiresSession", flag(p.requires_session));
    el(
        &mut o,
        "DefaultMessageTimeToLive",
        &fmt_duration(p.default_message_ttl_ms),
    );
    el(
        &mut o,
        "DeadLetteringOnMessageExpiration",
        flag(p.dead_lettering_on_message_expiration),
    );
    el(
        &mut o,
        "DuplicateDetectionHistoryTimeWindow",
        &fmt_duration(Some(p.duplicate_detection_window_ms)),
    );
    el(
        &mut o,
        "MaxDeliveryCount",
        &p.max_delivery_count.to_string(),
    );
    el(
        &mut o,
        "EnableBatchedOperations",
        flag(p.meta.enable_batched_operations),
    );
    el(&mut o, "SizeInBytes", &c.size_bytes.to_string());
    el(
        &mut o,
        "MessageCount",
        &(c.active + c.deferred + c.scheduled + c.dead_letter).to_string(),
    );
    el(&mut o, "IsAnonymousAccessible", "false");
    o.push_str("<AuthorizationRules/>");
    el(&mut o, "Status", p.meta.status.as_str());
    opt(&mut o, "ForwardTo", &ctx.forward(&p.forward_to));
    opt(&mut o, "UserMetadata", &p.meta.user_metadata);
    el(&mut o, "CreatedAt", &ctx.time(p.meta.created_at));
    el(&mut o, "UpdatedAt", &ctx.time(p.meta.updated_at));
    el(&mut o, "AccessedAt", &accessed(v.accessed_at));
    el(&mut o, "SupportOrdering", "true");
    count_details(&mut o, c.active + c.deferred, c.dead_letter, c.scheduled);
    el(
        &mut o,
        "AutoDeleteOnIdle",
        &fmt_duration(p.meta.auto_delete_on_idle_ms),
    );
    el(
        &mut o,
        "EnablePartitioning",
        flag(p.meta.enable_partitioning),
    );
    el(&mut o, "EntityAvailabilityStatus", "Available");
    opt(
        &mut o,
        "ForwardDeadLetteredMessagesTo",
        &ctx.forward(&p.forward_dead_lettered_messages_to),
    );
    el(&mut o, "EnableExpress", flag(p.meta.enable_express));
    el(&mut o, "MaxMessageSizeInKilobytes", &kb(p.max_message_size));
    o.push_str("</QueueDescription>");
    o
}

fn accessed(ms: i64) -> String {
    if ms > 0 {
        fmt_time(ms)
    } else {
        NEVER.to_string()
    }
}

pub fn topic_description(ctx: &Ctx, v: &TopicView) -> String {
    let p = &v.props;
    let mut o = String::with_capacity(2048);
    open(&mut o, "TopicDescription");
    el(
        &mut o,
        "DefaultMessageTimeToLive",
        &fmt_duration(p.default_message_ttl_ms),
    );
    el(&mut o, "MaxSizeInMegabytes", &mb(p.max_size_bytes));
    el(
        &mut o,
        "RequiresDuplicateDetection",
        flag(p.requires_duplicate_detection),
    );
    el(
        &mut o,
        "DuplicateDetectionHistoryTimeWindow",
        &fmt_duration(Some(p.duplicate_detection_window_ms)),
    );
    el(
        &mut o,
        "EnableBatchedOperations",
        flag(p.meta.enable_batched_operations),
    );
    el(&mut o, "SizeInBytes", &v.size_bytes.to_string());
    el(&mut o, "FilteringMessagesBeforePublishing", "false");
    el(&mut o, "IsAnonymousAccessible", "false");
    o.push_str("<AuthorizationRules/>");
    el(&mut o, "Status", p.meta.status.as_str());
    opt(&mut o, "UserMetadata", &p.meta.user_metadata);
    el(&mut o, "CreatedAt", &ctx.time(p.meta.created_at));
    el(&mut o, "UpdatedAt", &ctx.time(p.meta.updated_at));
    el(&mut o, "AccessedAt", &accessed(v.accessed_at));
    el(&mut o, "SupportOrdering", flag(p.support_ordering));
    count_details(&mut o, 0, 0, v.scheduled);
    el(&mut o, "SubscriptionCount", &v.subscriptions.to_string());
    el(
        &mut o,
        "AutoDeleteOnIdle",
        &fmt_duration(p.meta.auto_delete_on_idle_ms),
    );
    el(
        &mut o,
        "EnablePartitioning",
        flag(p.meta.enable_partitioning),
    );
    el(&mut o, "EntityAvailabilityStatus", "Available");
    el(&mut o, "EnableSubscriptionPartitioning", "false");
    el(&mut o, "EnableExpress", flag(p.meta.enable_express));
    el(&mut o, "MaxMessageSizeInKilobytes", &kb(p.max_message_size));
    o.push_str("</TopicDescription>");
    o
}

pub fn subscription_description(ctx: &Ctx, v: &SubscriptionView) -> String {
    let p = &v.props;
    let c = &v.counts;
    let mut o = String::with_capacity(2048);
    open(&mut o, "SubscriptionDescription");
    el(
        &mut o,
        "LockDuration",
        &fmt_duration(Some(p.lock_duration_ms)),
    );
    el(&mut o, "RequiresSession", flag(p.requires_session));
    el(
        &mut o,
        "DefaultMessageTimeToLive",
        &fmt_duration(p.default_message_ttl_ms),
    );
    el(
        &mut o,
        "DeadLetteringOnMessageExpiration",
        flag(p.dead_lettering_on_message_expiration),
    );
    el(
        &mut o,
        "DeadLetteringOnFilterEvaluationExceptions",
        flag(v.dead_lettering_on_filter_evaluation_exceptions),
    );
    el(
        &mut o,
        "MessageCount",
        &(c.active + c.deferred + c.scheduled + c.dead_letter).to_string(),
    );
    el(
        &mut o,
        "MaxDeliveryCount",
        &p.max_delivery_count.to_string(),
    );
    el(
        &mut o,
        "EnableBatchedOperations",
        flag(p.meta.enable_batched_operations),
    );
    el(&mut o, "Status", p.meta.status.as_str());
    opt(&mut o, "ForwardTo", &ctx.forward(&p.forward_to));
    el(&mut o, "CreatedAt", &ctx.time(p.meta.created_at));
    el(&mut o, "UpdatedAt", &ctx.time(p.meta.updated_at));
    el(&mut o, "AccessedAt", &accessed(v.accessed_at));
    count_details(&mut o, c.active + c.deferred, c.dead_letter, c.scheduled);
    opt(&mut o, "UserMetadata", &p.meta.user_metadata);
    opt(
        &mut o,
        "ForwardDeadLetteredMessagesTo",
        &ctx.forward(&p.forward_dead_lettered_messages_to),
    );
    el(
        &mut o,
        "AutoDeleteOnIdle",
        &fmt_duration(p.meta.auto_delete_on_idle_ms),
    );
    el(&mut o, "EntityAvailabilityStatus", "Available");
    o.push_str("</SubscriptionDescription>");
    o
}

fn sql(o: &mut String, expr: &str) {
    el(o, "SqlExpression", expr);
    el(o, "CompatibilityLevel", "20");
}

pub fn rule_description(ctx: &Ctx, r: &RuleDefinition) -> String {
    let mut o = String::with_capacity(1024);
    open(&mut o, "RuleDescription");
    match &r.filter {
        FilterDefinition::True => {
            o.push_str("<Filter i:type=\"TrueFilter\">");
            sql(&mut o, "1=1");
        }
        FilterDefinition::False => {
            o.push_str("<Filter i:type=\"FalseFilter\">");
            sql(&mut o, "1=0");
        }
        FilterDefinition::Sql(e) => {
            o.push_str("<Filter i:type=\"SqlFilter\">");
            sql(&mut o, e);
        }
        FilterDefinition::Correlation {
            correlation_id,
            message_id,
            to,
            reply_to,
            label,
            session_id,
            reply_to_session_id,
            content_type,
            properties,
        } => {
            o.push_str("<Filter i:type=\"CorrelationFilter\">");
            opt(&mut o, "CorrelationId", correlation_id);
            opt(&mut o, "MessageId", message_id);
            opt(&mut o, "To", to);
            opt(&mut o, "ReplyTo", reply_to);
            opt(&mut o, "Label", label);
            opt(&mut o, "SessionId", session_id);
            opt(&mut o, "ReplyToSessionId", reply_to_session_id);
            opt(&mut o, "ContentType", content_type);
            o.push_str("<Properties>");
            for (k, v) in properties {
                let (kind, text) = match v {
                    SimpleValue::String(s) => ("string", s.clone()),
                    SimpleValue::Long(n) if i32::try_from(*n).is_ok() => ("int", n.to_string()),
                    SimpleValue::Long(n) => ("long", n.to_string()),
                    SimpleValue::Double(d) => ("double", d.to_string()),
                    SimpleValue::Bool(b) => ("boolean", flag(*b).to_string()),
                };
                let _ = write!(
                    o,
                    "<KeyValueOfstringanyType><Key>{}</Key><Value i:type=\"d6p1:{kind}\" xmlns:d6p1=\"{XSD}\">{}</Value></KeyValueOfstringanyType>",
                    escape(k.as_str()),
                    escape(text.as_str())
                );
            }
            o.push_str("</Properties>");
        }
    }
    o.push_str("</Filter>");
    match &r.action {
        Some(a) => {
            o.push_str("<Action i:type=\"SqlRuleAction\">");
            sql(&mut o, a);
            o.push_str("</Action>");
        }
        None => o.push_str("<Action i:type=\"EmptyRuleAction\"/>"),
    }
    el(&mut o, "CreatedAt", &ctx.time(r.created_at));
    el(&mut o, "Name", &r.name);
    o.push_str("</RuleDescription>");
    o
}

pub fn namespace_info(ctx: &Ctx) -> String {
    let mut o = String::new();
    open(&mut o, "NamespaceInfo");
    el(&mut o, "CreatedTime", &fmt_time(ctx.started_at));
    el(&mut o, "MessagingSKU", "Standard");
    el(&mut o, "ModifiedTime", &fmt_time(ctx.started_at));
    el(&mut o, "Name", ctx.namespace);
    el(&mut o, "NamespaceType", "Messaging");
    o.push_str("</NamespaceInfo>");
    o
}

/// The error body Service Bus sends (`<Error><Code/><Detail/></Error>`).
pub fn error(code: u16, detail: &str) -> String {
    format!(
        "{DECL}<Error><Code>{code}</Code><Detail>{}</Detail></Error>",
        escape(detail)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn entry_of(desc: &str) -> String {
        format!(
            "<entry xmlns=\"{ATOM}\"><content type=\"application/xml\">{desc}</content></entry>"
        )
    }

    fn read(xml: &str) -> Result<Body, AtomError> {
        read_entry(&parse(xml.as_bytes())?)
    }

    fn err(xml: &str) -> String {
        match read(xml) {
            Err(AtomError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn python_queue_body_with_prefixes() {
        // What azure-servicebus 7.15 sends: Atom prefixed, the description in the default ns.
        let xml = format!(
            "<?xml version='1.0' encoding='utf-8'?>\n<ns0:entry xmlns:ns0=\"{ATOM}\" xmlns=\"{SB}\"><ns0:content type=\"application/xml\"><QueueDescription><LockDuration>PT30S</LockDuration><MaxSizeInMegabytes>2048</MaxSizeInMegabytes><RequiresSession>true</RequiresSession><DefaultMessageTimeToLive>PT1H</DefaultMessageTimeToLive><MaxDeliveryCount>5</MaxDeliveryCount><AutoDeleteOnIdle>{TIMESPAN_MAX}</AutoDeleteOnIdle><ForwardTo>sb://127.0.0.1:5300/other</ForwardTo><UserMetadata>a &amp; b &#x3C;c&gt;</UserMetadata><Status>SendDisabled</Status><CountDetails xmlns:d2p1=\"{SB2011}\"><d2p1:ActiveMessageCount>1</d2p1:ActiveMessageCount></CountDetails><MaxMessageSizeInKilobytes>1024</MaxMessageSizeInKilobytes></QueueDescription></ns0:content></ns0:entry>"
        );
        let Body::Queue(f) = read(&xml).unwrap() else {
            panic!()
        };
        assert_eq!(f.lock_duration_ms, Some(30_000));
        assert_eq!(f.max_size_in_megabytes, Some(2048));
        assert_eq!(f.requires_session, Some(true));
        assert_eq!(f.default_message_ttl_ms, Some(Some(3_600_000)));
        assert_eq!(f.max_delivery_count, Some(5));
        assert_eq!(f.auto_delete_on_idle_ms, Some(None));
        assert_eq!(f.forward_to.as_deref(), Some("other"));
        assert_eq!(f.user_metadata.as_deref(), Some("a & b <c>"));
        assert_eq!(f.status, Some(EntityStatus::SendDisabled));
        assert_eq!(f.max_message_size_in_kilobytes, Some(1024));
        assert_eq!(f.requires_duplicate_detection, None);
    }

    #[test]
    fn js_rule_bodies() {
        let xml = entry_of(&format!(
            "<RuleDescription xmlns=\"{SB}\" xmlns:i=\"{XSI}\"><Filter p4:type=\"CorrelationFilter\" xmlns:p4=\"{XSI}\"><CorrelationId>cid</CorrelationId><Label>lbl</Label><Properties><KeyValueOfstringanyType><Key>s</Key><Value p4:type=\"l28:string\" xmlns:l28=\"{XSD}\">v</Value></KeyValueOfstringanyType><KeyValueOfstringanyType><Key>n</Key><Value p4:type=\"l28:double\" xmlns:l28=\"{XSD}\">3</Value></KeyValueOfstringanyType><KeyValueOfstringanyType><Key>b</Key><Value p4:type=\"l28:boolean\" xmlns:l28=\"{XSD}\">true</Value></KeyValueOfstringanyType></Properties></Filter><Action p4:type=\"SqlRuleAction\" xmlns:p4=\"{XSI}\"><SqlExpression>SET b = &apos;x&apos;</SqlExpression></Action><Name>r2</Name></RuleDescription>"
        ));
        let Body::Rule(r) = read(&xml).unwrap() else {
            panic!()
        };
        assert_eq!(r.name.as_deref(), Some("r2"));
        assert_eq!(r.action.as_deref(), Some("SET b = 'x'"));
        let FilterDefinition::Correlation {
            correlation_id,
            label,
            properties,
            ..
        } = r.filter
        else {
            panic!()
        };
        assert_eq!(correlation_id.as_deref(), Some("cid"));
        assert_eq!(label.as_deref(), Some("lbl"));
        assert_eq!(
            properties,
            vec![
                ("s".to_string(), SimpleValue::String("v".into())),
                ("n".to_string(), SimpleValue::Double(3.0)),
                ("b".to_string(), SimpleValue::Bool(true)),
            ]
        );
        let t = entry_of(&format!(
            "<RuleDescription xmlns=\"{SB}\" xmlns:xsi=\"{XSI}\"><Filter xsi:type=\"TrueFilter\"><SqlExpression>1=1</SqlExpression><CompatibilityLevel>20</CompatibilityLevel><RequiresPreprocessing>true</RequiresPreprocessing></Filter><Action xsi:type=\"EmptyRuleAction\" /><Name>r3</Name></RuleDescription>"
        ));
        let Body::Rule(r) = read(&t).unwrap() else {
            panic!()
        };
        assert_eq!(r.filter, FilterDefinition::True);
        assert_eq!(r.action, None);
    }

    #[test]
    fn malformed_and_misplaced_input_is_refused() {
        assert!(err("").contains("no XML element"));
        assert!(err("<entry").contains("malformed"));
        assert!(err("<a></b>").contains("malformed"));
        assert!(err("<a>").contains("ends inside"));
        assert!(err("<a/><b/>").contains("more than one root"));
        assert!(
            err("<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><a>&e;</a>")
                .contains("document type")
        );
        assert!(err(&format!("<entry xmlns=\"{ATOM}\">&e;</entry>")).contains("unknown entity"));
        assert!(err("<p:entry/>").contains("not declared"));
        assert!(err("<entry/>").contains("Atom <entry>"));
        assert!(err(&format!("<entry xmlns=\"{ATOM}\"/>")).contains("no <content>"));
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        assert!(err(&deep).contains("too deeply"));
        // An element of another description, or in the wrong namespace.
        assert!(
            err(&entry_of(&format!(
                "<TopicDescription xmlns=\"{SB}\"><LockDuration>PT1M</LockDuration></TopicDescription>"
            )))
            .contains("unexpected element")
        );
        assert!(
            err(&entry_of(&format!(
                "<QueueDescription xmlns=\"{SB}\"><Bogus>1</Bogus></QueueDescription>"
            )))
            .contains("Bogus")
        );
        assert!(
            err(&entry_of(
                "<QueueDescription xmlns=\"urn:other\"></QueueDescription>"
            ))
            .contains("namespace")
        );
        assert!(
            err(&format!(
                "<entry xmlns=\"{ATOM}\"><QueueDescription xmlns=\"{SB}\"/><content/></entry>"
            ))
            .contains("unexpected element")
        );
        assert!(
            err(&entry_of(&format!(
                "<QueueDescription xmlns=\"{SB}\"><LockDuration>PT1M</LockDuration><LockDuration>PT1M</LockDuration></QueueDescription>"
            )))
            .contains("twice")
        );
        // Wrong types.
        for (el, v) in [
            ("LockDuration", "60"),
            ("LockDuration", "-PT1M"),
            ("MaxDeliveryCount", "ten"),
            ("MaxDeliveryCount", "-1"),
            ("MaxDeliveryCount", "99999999999"),
            ("RequiresSession", "yes"),
            ("Status", "Sleeping"),
            ("MaxSizeInMegabytes", "1.5"),
        ] {
            let m = err(&entry_of(&format!(
                "<QueueDescription xmlns=\"{SB}\"><{el}>{v}</{el}></QueueDescription>"
            )));
            assert!(m.contains(el), "{el}={v}: {m}");
        }
        assert!(
            err(&entry_of(&format!(
                "<QueueDescription xmlns=\"{SB}\"><LockDuration><x/></LockDuration></QueueDescription>"
            )))
            .contains("must hold a value")
        );
        assert!(
            err(&entry_of(&format!(
                "<QueueDescription xmlns=\"{SB}\"><AuthorizationRules><AuthorizationRule/></AuthorizationRules></QueueDescription>"
            )))
            .contains("authorization rules")
        );
        // Rules.
        let rule = |inner: &str| {
            entry_of(&format!(
                "<RuleDescription xmlns=\"{SB}\" xmlns:i=\"{XSI}\">{inner}</RuleDescription>"
            ))
        };
        assert!(err(&rule("<Filter><SqlExpression>a</SqlExpression></Filter>")).contains("i:type"));
        assert!(err(&rule("<Filter i:type=\"SqlFilter\"/>")).contains("SqlExpression"));
        assert!(err(&rule("<Filter i:type=\"BogusFilter\"/>")).contains("unsupported"));
        assert!(err(&rule("<Filter i:type=\"CorrelationFilter\"/>")).contains("at least one"));
        assert!(
            err(&rule(
                "<Filter i:type=\"SqlFilter\"><SqlExpression>a = @p</SqlExpression><Parameters><KeyValueOfstringanyType/></Parameters></Filter>"
            ))
            .contains("parameters")
        );
        assert!(
            err(&rule(&format!(
                "<Filter i:type=\"CorrelationFilter\"><Properties><KeyValueOfstringanyType><Key>k</Key><Value i:type=\"d:dateTime\" xmlns:d=\"{XSD}\">2020-01-01T00:00:00Z</Value></KeyValueOfstringanyType></Properties></Filter>"
            )))
            .contains("not supported")
        );
        assert!(
            err(&rule(&format!(
                "<Filter i:type=\"CorrelationFilter\"><Properties><KeyValueOfstringanyType><Key>k</Key><Value i:type=\"d:int\" xmlns:d=\"{XSD}\">x</Value></KeyValueOfstringanyType></Properties></Filter>"
            )))
            .contains("not a valid int")
        );
        assert!(err(&rule("<Action i:type=\"SqlRuleAction\"/>")).contains("SqlExpression"));
        assert!(err(&rule("<Action i:type=\"Other\"/>")).contains("unsupported"));
        assert!(err(&rule("<Nope/>")).contains("unexpected"));
    }

    #[test]
    fn durations_and_times_are_formatted() {
        assert_eq!(fmt_duration(Some(60_000)), "PT1M");
        assert_eq!(fmt_duration(Some(30_000)), "PT30S");
        assert_eq!(fmt_duration(Some(0)), "PT0S");
        assert_eq!(fmt_duration(Some(500)), "PT0.5S");
        assert_eq!(fmt_duration(Some(90_061_000)), "P1DT1H1M1S");
        assert_eq!(fmt_duration(Some(14 * 86_400_000)), "P14D");
        assert_eq!(fmt_duration(None), TIMESPAN_MAX);
        for ms in [1, 999, 1_000, 61_001, 86_400_000, 7 * 86_400_000 + 5] {
            assert_eq!(
                crate::config::parse_iso8601_ms(&fmt_duration(Some(ms))),
                Some(ms)
            );
        }
        assert_eq!(
            limit(crate::config::parse_iso8601_ms(TIMESPAN_MAX).unwrap()),
            None
        );
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(1_709_251_200_123), "2024-03-01T00:00:00.123Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn written_rules_read_back() {
        let ctx = Ctx {
            base: "https://localhost",
            host: "localhost",
            started_at: 1,
            api_version: "2021-05",
            namespace: "ns",
        };
        let r = RuleDefinition {
            name: "r<1>".into(),
            filter: FilterDefinition::Correlation {
                correlation_id: Some("a&b".into()),
                message_id: None,
                to: None,
                reply_to: None,
                label: None,
                session_id: None,
                reply_to_session_id: None,
                content_type: None,
                properties: vec![
                    ("i".into(), SimpleValue::Long(7)),
                    ("l".into(), SimpleValue::Long(1 << 40)),
                    ("s".into(), SimpleValue::String("x'y".into())),
                ],
            },
            action: Some("SET a = 'b'".into()),
            created_at: 0,
        };
        let doc = entry(
            &ctx,
            "t/Subscriptions/s/Rules/r",
            "r",
            1,
            1,
            &rule_description(&ctx, &r),
        );
        let Body::Rule(back) = read(&doc).unwrap() else {
            panic!()
        };
        assert_eq!(back.name.as_deref(), Some("r<1>"));
        assert_eq!(back.filter, r.filter);
        assert_eq!(back.action, r.action);
    }
}
