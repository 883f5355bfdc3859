//! The descriptions a `PUT` body holds (queue, topic, subscription, rule), each element
//! checked against the elements Service Bus defines for it and each value against its type.

use keybus_core::{
    CorrelationFilter, EntitySettings, EntityStatus, FilterDefinition, SimpleValue, limited,
};

use super::dom::Element;
use super::{ATOM, SB, XSI};
use crate::http::common::{HttpError, bad};

/// What a `PUT` body describes.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Queue(Fields),
    Topic(Fields),
    Subscription(Fields),
    Rule(RuleBody),
}

/// The settable properties of a queue, topic or subscription description, as given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fields {
    pub settings: EntitySettings,
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
pub(super) enum Role {
    Set,
    /// Read-only (runtime counts, times, availability): what a client echoes back from a
    /// `GET` is accepted and ignored.
    Ignore,
}

pub(super) const QUEUE_ELEMENTS: &[(&str, Role)] = &[
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

pub(super) const TOPIC_ELEMENTS: &[(&str, Role)] = &[
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

pub(super) const SUBSCRIPTION_ELEMENTS: &[(&str, Role)] = &[
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
pub fn read_entry(root: &Element) -> Result<Body, HttpError> {
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

pub(super) fn read_fields(desc: &Element, allowed: &[(&str, Role)]) -> Result<Fields, HttpError> {
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
            "LockDuration" => f.settings.lock_duration_ms = Some(duration(c)?),
            "MaxSizeInMegabytes" => {
                f.settings.max_size_bytes = Some(
                    number(c)?
                        .checked_mul(1024 * 1024)
                        .ok_or_else(|| bad("MaxSizeInMegabytes is out of range"))?,
                )
            }
            "RequiresDuplicateDetection" => {
                f.settings.requires_duplicate_detection = Some(boolean(c)?)
            }
            "RequiresSession" => f.settings.requires_session = Some(boolean(c)?),
            "DefaultMessageTimeToLive" => {
                f.settings.default_message_ttl_ms = Some(limited(duration(c)?))
            }
            "DeadLetteringOnMessageExpiration" => {
                f.settings.dead_lettering_on_message_expiration = Some(boolean(c)?)
            }
            "DeadLetteringOnFilterEvaluationExceptions" => {
                f.settings.dead_lettering_on_filter_evaluation_exceptions = Some(boolean(c)?)
            }
            "DuplicateDetectionHistoryTimeWindow" => {
                f.settings.duplicate_detection_window_ms = Some(duration(c)?)
            }
            "MaxDeliveryCount" => {
                f.settings.max_delivery_count = Some(
                    u32::try_from(number(c)?)
                        .map_err(|_| bad("MaxDeliveryCount is out of range"))?,
                )
            }
            "EnableBatchedOperations" => f.settings.enable_batched_operations = Some(boolean(c)?),
            "Status" => {
                f.settings.status = Some(EntityStatus::parse(v()?).ok_or_else(|| {
                    bad(format!(
                        "Status '{}' is not one of Active, Disabled, SendDisabled, ReceiveDisabled",
                        c.text.trim()
                    ))
                })?)
            }
            "ForwardTo" => f.settings.forward_to = entity_ref(v()?),
            "ForwardDeadLetteredMessagesTo" => {
                f.settings.forward_dead_lettered_messages_to = entity_ref(v()?)
            }
            "UserMetadata" => {
                let s = v()?;
                f.settings.user_metadata = (!s.is_empty()).then(|| s.to_string());
            }
            "AutoDeleteOnIdle" => f.settings.auto_delete_on_idle_ms = Some(limited(duration(c)?)),
            "EnablePartitioning" => f.settings.enable_partitioning = Some(boolean(c)?),
            "EnableExpress" => f.settings.enable_express = Some(boolean(c)?),
            "SupportOrdering" => f.settings.support_ordering = Some(boolean(c)?),
            "MaxMessageSizeInKilobytes" => {
                f.settings.max_message_size = Some(kilobytes(number(c)?)?)
            }
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
pub(super) fn entity_ref(v: &str) -> Option<String> {
    let path = keybus_core::address::strip_authority(v).trim_end_matches('/');
    (!path.is_empty()).then(|| path.to_string())
}

pub(super) fn boolean(el: &Element) -> Result<bool, HttpError> {
    let v = el.value()?;
    if v.eq_ignore_ascii_case("true") || v == "1" {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") || v == "0" {
        Ok(false)
    } else {
        Err(bad(format!("{} must be true or false, not '{v}'", el.name)))
    }
}

pub(super) fn number(el: &Element) -> Result<u64, HttpError> {
    let v = el.value()?;
    v.parse::<u64>().map_err(|_| {
        bad(format!(
            "{} must be a non-negative integer, not '{v}'",
            el.name
        ))
    })
}

pub(super) fn duration(el: &Element) -> Result<i64, HttpError> {
    let v = el.value()?;
    crate::config::parse_iso8601_ms(v).ok_or_else(|| {
        bad(format!(
            "{} must be an ISO 8601 duration such as PT1M, not '{v}'",
            el.name
        ))
    })
}

/// `MaxMessageSizeInKilobytes` in bytes: 1 KB to 100 MB.
fn kilobytes(kb: u64) -> Result<u64, HttpError> {
    if !(1..=102_400).contains(&kb) {
        return Err(bad(format!(
            "MaxMessageSizeInKilobytes {kb} is out of range (1 to 102400)"
        )));
    }
    Ok(kb * 1024)
}

/// The type named by an `xsi:type` attribute, without its prefix.
pub(super) fn xsi_type(el: &Element) -> Option<&str> {
    el.attr(XSI, "type")
        .map(|t| t.rsplit_once(':').map_or(t, |(_, local)| local))
}

pub(super) fn read_rule(desc: &Element) -> Result<RuleBody, HttpError> {
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
pub(super) fn no_parameters(el: &Element) -> Result<(), HttpError> {
    el.no_text()?;
    if el.children.is_empty() {
        Ok(())
    } else {
        Err(bad(
            "SQL filter and action parameters are not supported: write the values into the expression",
        ))
    }
}

pub(super) fn read_filter(el: &Element) -> Result<FilterDefinition, HttpError> {
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
            let mut f = CorrelationFilter::default();
            for c in &el.children {
                if c.ns != SB {
                    return Err(unexpected(c));
                }
                let text = || -> Result<Option<String>, HttpError> {
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
            let empty = f.is_empty();
            if empty {
                return Err(bad(
                    "a CorrelationFilter needs at least one system or application property",
                ));
            }
            Ok(FilterDefinition::Correlation(f))
        }
        other => Err(bad(format!(
            "unsupported filter type '{other}': use SqlFilter, CorrelationFilter, TrueFilter or FalseFilter"
        ))),
    }
}

pub(super) fn read_key_values(el: &Element) -> Result<Vec<(String, SimpleValue)>, HttpError> {
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

pub(super) fn simple_value(el: &Element) -> Result<SimpleValue, HttpError> {
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

pub(super) fn read_action(el: &Element) -> Result<Option<String>, HttpError> {
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
