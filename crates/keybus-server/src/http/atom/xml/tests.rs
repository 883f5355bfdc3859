//! Reading and writing descriptions, and what is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybus_core::{CorrelationFilter, EntityStatus, FilterDefinition, RuleDefinition, SimpleValue};

use super::*;
use crate::http::common::HttpError;

fn entry_of(desc: &str) -> String {
    format!("<entry xmlns=\"{ATOM}\"><content type=\"application/xml\">{desc}</content></entry>")
}

fn read(xml: &str) -> Result<Body, HttpError> {
    read_entry(&parse(xml.as_bytes())?)
}

fn err(xml: &str) -> String {
    match read(xml) {
        Err(HttpError::BadRequest(m)) => m,
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
    let f = f.settings;
    assert_eq!(f.lock_duration_ms, Some(30_000));
    assert_eq!(f.max_size_bytes, Some(2048 * 1024 * 1024));
    assert_eq!(f.requires_session, Some(true));
    assert_eq!(f.default_message_ttl_ms, Some(Some(3_600_000)));
    assert_eq!(f.max_delivery_count, Some(5));
    assert_eq!(f.auto_delete_on_idle_ms, Some(None));
    assert_eq!(f.forward_to.as_deref(), Some("other"));
    assert_eq!(f.user_metadata.as_deref(), Some("a & b <c>"));
    assert_eq!(f.status, Some(EntityStatus::SendDisabled));
    assert_eq!(f.max_message_size, Some(1024 * 1024));
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
    let FilterDefinition::Correlation(c) = r.filter else {
        panic!()
    };
    assert_eq!(c.correlation_id.as_deref(), Some("cid"));
    assert_eq!(c.label.as_deref(), Some("lbl"));
    assert_eq!(
        c.properties,
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
        keybus_core::limited(crate::config::parse_iso8601_ms(TIMESPAN_MAX).unwrap()),
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
        filter: FilterDefinition::Correlation(CorrelationFilter {
            correlation_id: Some("a&b".into()),
            properties: vec![
                ("i".into(), SimpleValue::Long(7)),
                ("l".into(), SimpleValue::Long(1 << 40)),
                ("s".into(), SimpleValue::String("x'y".into())),
            ],
            ..Default::default()
        }),
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

#[test]
fn written_documents_keep_the_shape_the_sdks_read() {
    let ctx = Ctx {
        base: "https://localhost",
        host: "localhost",
        started_at: 1,
        api_version: "2021-05",
        namespace: "ns",
    };
    let r = RuleDefinition {
        name: "r".into(),
        filter: FilterDefinition::Correlation(CorrelationFilter {
            label: Some("a<b".into()),
            properties: vec![("i".into(), SimpleValue::Long(7))],
            ..Default::default()
        }),
        action: None,
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
    assert!(
        doc.starts_with(&format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><entry xmlns=\"{ATOM}\"><id>https://localhost/t/Subscriptions/s/Rules/r?api-version=2021-05</id><title type=\"text\">r</title><published>1970-01-01T00:00:00.001Z</published>"
        )),
        "{doc}"
    );
    assert!(
        doc.contains(&format!(
            "<content type=\"application/xml\"><RuleDescription xmlns=\"{SB}\" xmlns:i=\"{XSI}\"><Filter i:type=\"CorrelationFilter\"><Label>a&lt;b</Label><Properties><KeyValueOfstringanyType><Key>i</Key><Value i:type=\"d6p1:int\" xmlns:d6p1=\"{XSD}\">7</Value></KeyValueOfstringanyType></Properties></Filter><Action i:type=\"EmptyRuleAction\"/>"
        )),
        "{doc}"
    );
    let f = feed(
        &ctx,
        "$Resources/Queues",
        "Queues",
        &[],
        Some("$Resources/Queues?$skip=1".into()),
    );
    assert!(
        f.contains(
            "<link rel=\"next\" href=\"https://localhost/$Resources/Queues?$skip=1\"/></feed>"
        ),
        "{f}"
    );
}
