//! Entries and feeds in the shape the SDKs parse: descriptions of queues, topics,
//! subscriptions, rules and the namespace, inside Atom entries and feeds.

use std::fmt::Write;

use keybus_core::{FilterDefinition, RuleDefinition, SimpleValue};
use percent_encoding::utf8_percent_encode;

use super::builder::Xml;
use super::{ATOM, SB, SB2011, TIMESPAN_MAX, XSD, XSI};
use crate::http::common::{ENTITY_PATH, UNRESERVED};
use crate::runtime::lifecycle::{QueueView, SubscriptionView, TopicView};

/// Format ms since the epoch as RFC 3339 UTC (`2024-05-01T12:00:00.123Z`); times before
/// the epoch are written as the epoch.
pub fn fmt_time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0).unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
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
    pub(super) fn url(&self, path: &str) -> String {
        format!(
            "{}/{}?api-version={}",
            self.base,
            utf8_percent_encode(path, ENTITY_PATH),
            utf8_percent_encode(self.api_version, UNRESERVED)
        )
    }

    pub(super) fn time(&self, ms: i64) -> String {
        fmt_time(if ms > 0 { ms } else { self.started_at })
    }

    pub(super) fn forward(&self, path: &Option<String>) -> Option<String> {
        path.as_ref().map(|p| format!("sb://{}/{}", self.host, p))
    }
}

pub(super) fn flag(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// One Atom entry around `content` (a description written by this module); `document`
/// puts the XML declaration first (a feed holds entries without one).
fn write_entry(
    ctx: &Ctx,
    document: bool,
    path: &str,
    title: &str,
    (created, updated): (i64, i64),
    content: &str,
) -> String {
    let url = ctx.url(path);
    let mut o = if document {
        Xml::document()
    } else {
        Xml::new()
    };
    o.start("entry", &[("xmlns", ATOM)]);
    o.el("id", &url);
    o.text_el("title", &[("type", "text")], title);
    o.el("published", &ctx.time(created));
    o.el("updated", &ctx.time(updated));
    o.start("author", &[]);
    o.el("name", ctx.namespace);
    o.end("author");
    o.empty("link", &[("rel", "self"), ("href", &url)]);
    o.start("content", &[("type", "application/xml")]);
    o.fragment(content);
    o.end("content");
    o.end("entry");
    o.finish()
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
    write_entry(ctx, false, path, title, (created, updated), content)
}

/// A document holding one entry.
pub fn entry(
    ctx: &Ctx,
    path: &str,
    title: &str,
    created: i64,
    updated: i64,
    content: &str,
) -> String {
    write_entry(ctx, true, path, title, (created, updated), content)
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
    let mut o = Xml::document();
    o.start("feed", &[("xmlns", ATOM)]);
    o.text_el("title", &[("type", "text")], title);
    o.el("id", &url);
    o.el("updated", &fmt_time(ctx.started_at.max(0)));
    o.empty("link", &[("rel", "self"), ("href", &url)]);
    if let Some(next) = next {
        o.empty(
            "link",
            &[("rel", "next"), ("href", &format!("{}/{next}", ctx.base))],
        );
    }
    for e in entries {
        o.fragment(e);
    }
    o.end("feed");
    o.finish()
}

pub(super) fn count_details(o: &mut Xml, active: u64, dead: u64, scheduled: u64) {
    o.start("CountDetails", &[("xmlns:d2p1", SB2011)]);
    for (name, n) in [
        ("d2p1:ActiveMessageCount", active),
        ("d2p1:DeadLetterMessageCount", dead),
        ("d2p1:ScheduledMessageCount", scheduled),
        ("d2p1:TransferMessageCount", 0),
        ("d2p1:TransferDeadLetterMessageCount", 0),
    ] {
        o.el(name, &n.to_string());
    }
    o.end("CountDetails");
}

pub(super) fn kb(bytes: u64) -> String {
    (bytes / 1024).to_string()
}

pub(super) fn mb(bytes: u64) -> String {
    (bytes / (1024 * 1024)).to_string()
}

pub fn queue_description(ctx: &Ctx, v: &QueueView) -> String {
    let p = &v.props;
    let c = &v.counts;
    let mut o = Xml::new();
    o.start("QueueDescription", &[("xmlns", SB), ("xmlns:i", XSI)]);
    o.el("LockDuration", &fmt_duration(Some(p.lock_duration_ms)));
    o.el("MaxSizeInMegabytes", &mb(p.max_size_bytes));
    o.el(
        "RequiresDuplicateDetection",
        flag(p.requires_duplicate_detection),
    );
    o.el("RequiresSession", flag(p.requires_session));
    o.el(
        "DefaultMessageTimeToLive",
        &fmt_duration(p.default_message_ttl_ms),
    );
    o.el(
        "DeadLetteringOnMessageExpiration",
        flag(p.dead_lettering_on_message_expiration),
    );
    o.el(
        "DuplicateDetectionHistoryTimeWindow",
        &fmt_duration(Some(p.duplicate_detection_window_ms)),
    );
    o.el("MaxDeliveryCount", &p.max_delivery_count.to_string());
    o.el(
        "EnableBatchedOperations",
        flag(p.meta.enable_batched_operations),
    );
    o.el("SizeInBytes", &c.size_bytes.to_string());
    o.el(
        "MessageCount",
        &(c.active + c.deferred + c.scheduled + c.dead_letter).to_string(),
    );
    o.el("IsAnonymousAccessible", "false");
    o.empty("AuthorizationRules", &[]);
    o.el("Status", p.meta.status.as_str());
    o.opt("ForwardTo", &ctx.forward(&p.forward_to));
    o.opt("UserMetadata", &p.meta.user_metadata);
    o.el("CreatedAt", &ctx.time(p.meta.created_at));
    o.el("UpdatedAt", &ctx.time(p.meta.updated_at));
    o.el("AccessedAt", &accessed(v.accessed_at));
    o.el("SupportOrdering", "true");
    count_details(&mut o, c.active + c.deferred, c.dead_letter, c.scheduled);
    o.el(
        "AutoDeleteOnIdle",
        &fmt_duration(p.meta.auto_delete_on_idle_ms),
    );
    o.el("EnablePartitioning", flag(p.meta.enable_partitioning));
    o.el("EntityAvailabilityStatus", "Available");
    o.opt(
        "ForwardDeadLetteredMessagesTo",
        &ctx.forward(&p.forward_dead_lettered_messages_to),
    );
    o.el("EnableExpress", flag(p.meta.enable_express));
    o.el("MaxMessageSizeInKilobytes", &kb(p.max_message_size));
    o.end("QueueDescription");
    o.finish()
}

pub(super) fn accessed(ms: i64) -> String {
    if ms > 0 {
        fmt_time(ms)
    } else {
        NEVER.to_string()
    }
}

pub fn topic_description(ctx: &Ctx, v: &TopicView) -> String {
    let p = &v.props;
    let mut o = Xml::new();
    o.start("TopicDescription", &[("xmlns", SB), ("xmlns:i", XSI)]);
    o.el(
        "DefaultMessageTimeToLive",
        &fmt_duration(p.default_message_ttl_ms),
    );
    o.el("MaxSizeInMegabytes", &mb(p.max_size_bytes));
    o.el(
        "RequiresDuplicateDetection",
        flag(p.requires_duplicate_detection),
    );
    o.el(
        "DuplicateDetectionHistoryTimeWindow",
        &fmt_duration(Some(p.duplicate_detection_window_ms)),
    );
    o.el(
        "EnableBatchedOperations",
        flag(p.meta.enable_batched_operations),
    );
    o.el("SizeInBytes", &v.size_bytes.to_string());
    o.el("FilteringMessagesBeforePublishing", "false");
    o.el("IsAnonymousAccessible", "false");
    o.empty("AuthorizationRules", &[]);
    o.el("Status", p.meta.status.as_str());
    o.opt("UserMetadata", &p.meta.user_metadata);
    o.el("CreatedAt", &ctx.time(p.meta.created_at));
    o.el("UpdatedAt", &ctx.time(p.meta.updated_at));
    o.el("AccessedAt", &accessed(v.accessed_at));
    o.el("SupportOrdering", flag(p.support_ordering));
    count_details(&mut o, 0, 0, v.scheduled);
    o.el("SubscriptionCount", &v.subscriptions.to_string());
    o.el(
        "AutoDeleteOnIdle",
        &fmt_duration(p.meta.auto_delete_on_idle_ms),
    );
    o.el("EnablePartitioning", flag(p.meta.enable_partitioning));
    o.el("EntityAvailabilityStatus", "Available");
    o.el("EnableSubscriptionPartitioning", "false");
    o.el("EnableExpress", flag(p.meta.enable_express));
    o.el("MaxMessageSizeInKilobytes", &kb(p.max_message_size));
    o.end("TopicDescription");
    o.finish()
}

pub fn subscription_description(ctx: &Ctx, v: &SubscriptionView) -> String {
    let p = &v.props;
    let c = &v.counts;
    let mut o = Xml::new();
    o.start(
        "SubscriptionDescription",
        &[("xmlns", SB), ("xmlns:i", XSI)],
    );
    o.el("LockDuration", &fmt_duration(Some(p.lock_duration_ms)));
    o.el("RequiresSession", flag(p.requires_session));
    o.el(
        "DefaultMessageTimeToLive",
        &fmt_duration(p.default_message_ttl_ms),
    );
    o.el(
        "DeadLetteringOnMessageExpiration",
        flag(p.dead_lettering_on_message_expiration),
    );
    o.el(
        "DeadLetteringOnFilterEvaluationExceptions",
        flag(v.dead_lettering_on_filter_evaluation_exceptions),
    );
    o.el(
        "MessageCount",
        &(c.active + c.deferred + c.scheduled + c.dead_letter).to_string(),
    );
    o.el("MaxDeliveryCount", &p.max_delivery_count.to_string());
    o.el(
        "EnableBatchedOperations",
        flag(p.meta.enable_batched_operations),
    );
    o.el("Status", p.meta.status.as_str());
    o.opt("ForwardTo", &ctx.forward(&p.forward_to));
    o.el("CreatedAt", &ctx.time(p.meta.created_at));
    o.el("UpdatedAt", &ctx.time(p.meta.updated_at));
    o.el("AccessedAt", &accessed(v.accessed_at));
    count_details(&mut o, c.active + c.deferred, c.dead_letter, c.scheduled);
    o.opt("UserMetadata", &p.meta.user_metadata);
    o.opt(
        "ForwardDeadLetteredMessagesTo",
        &ctx.forward(&p.forward_dead_lettered_messages_to),
    );
    o.el(
        "AutoDeleteOnIdle",
        &fmt_duration(p.meta.auto_delete_on_idle_ms),
    );
    o.el("EntityAvailabilityStatus", "Available");
    o.end("SubscriptionDescription");
    o.finish()
}

pub(super) fn sql(o: &mut Xml, expr: &str) {
    o.el("SqlExpression", expr);
    o.el("CompatibilityLevel", "20");
}

pub fn rule_description(ctx: &Ctx, r: &RuleDefinition) -> String {
    let mut o = Xml::new();
    o.start("RuleDescription", &[("xmlns", SB), ("xmlns:i", XSI)]);
    match &r.filter {
        FilterDefinition::True => {
            o.start("Filter", &[("i:type", "TrueFilter")]);
            sql(&mut o, "1=1");
        }
        FilterDefinition::False => {
            o.start("Filter", &[("i:type", "FalseFilter")]);
            sql(&mut o, "1=0");
        }
        FilterDefinition::Sql(e) => {
            o.start("Filter", &[("i:type", "SqlFilter")]);
            sql(&mut o, e);
        }
        FilterDefinition::Correlation(c) => {
            o.start("Filter", &[("i:type", "CorrelationFilter")]);
            o.opt("CorrelationId", &c.correlation_id);
            o.opt("MessageId", &c.message_id);
            o.opt("To", &c.to);
            o.opt("ReplyTo", &c.reply_to);
            o.opt("Label", &c.label);
            o.opt("SessionId", &c.session_id);
            o.opt("ReplyToSessionId", &c.reply_to_session_id);
            o.opt("ContentType", &c.content_type);
            o.start("Properties", &[]);
            for (k, v) in &c.properties {
                let (kind, text) = match v {
                    SimpleValue::String(s) => ("string", s.clone()),
                    SimpleValue::Long(n) if i32::try_from(*n).is_ok() => ("int", n.to_string()),
                    SimpleValue::Long(n) => ("long", n.to_string()),
                    SimpleValue::Double(d) => ("double", d.to_string()),
                    SimpleValue::Bool(b) => ("boolean", flag(*b).to_string()),
                };
                o.start("KeyValueOfstringanyType", &[]);
                o.el("Key", k);
                o.text_el(
                    "Value",
                    &[("i:type", &format!("d6p1:{kind}")), ("xmlns:d6p1", XSD)],
                    &text,
                );
                o.end("KeyValueOfstringanyType");
            }
            o.end("Properties");
        }
    }
    o.end("Filter");
    match &r.action {
        Some(a) => {
            o.start("Action", &[("i:type", "SqlRuleAction")]);
            sql(&mut o, a);
            o.end("Action");
        }
        None => o.empty("Action", &[("i:type", "EmptyRuleAction")]),
    }
    o.el("CreatedAt", &ctx.time(r.created_at));
    o.el("Name", &r.name);
    o.end("RuleDescription");
    o.finish()
}

pub fn namespace_info(ctx: &Ctx) -> String {
    let mut o = Xml::new();
    o.start("NamespaceInfo", &[("xmlns", SB), ("xmlns:i", XSI)]);
    o.el("CreatedTime", &fmt_time(ctx.started_at));
    o.el("MessagingSKU", "Standard");
    o.el("ModifiedTime", &fmt_time(ctx.started_at));
    o.el("Name", ctx.namespace);
    o.el("NamespaceType", "Messaging");
    o.end("NamespaceInfo");
    o.finish()
}
