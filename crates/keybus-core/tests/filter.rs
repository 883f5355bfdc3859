#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Service Bus SQL filter and rule-action language.

use keybus_amqp::{Bytes, Descriptor, Header, Message, Properties, Symbol, Value};
use keybus_core::filter::{
    CorrelationFilter, EvalError, Filter, FilterError, MAX_DEPTH, MessageView, SimpleValue,
    SqlFilter, SqlRuleAction, SystemProps,
};

const SYS: SystemProps = SystemProps {
    sequence_number: 42,
    enqueued_time: 1_700_000_000_000,
};

fn message() -> Message {
    Message {
        properties: Some(Properties {
            message_id: Some(Value::String("msg-1".into())),
            correlation_id: Some(Value::String("corr-1".into())),
            to: Some("store-5".into()),
            reply_to: Some("replies".into()),
            subject: Some("orders/bus".into()),
            group_id: Some("session-a".into()),
            reply_to_group_id: Some("session-b".into()),
            content_type: Some(Symbol::from("application/json")),
            ..Default::default()
        }),
        application_properties: Some(vec![
            (Value::String("color".into()), Value::String("red".into())),
            (Value::String("quantity".into()), Value::Int(10)),
            (Value::String("price".into()), Value::Double(2.5)),
            (Value::String("big".into()), Value::Long(1 << 40)),
            (Value::String("flag".into()), Value::Bool(true)),
            (Value::String("nothing".into()), Value::Null),
            (
                Value::Symbol("Prop With Space".into()),
                Value::String("x".into()),
            ),
            (Value::String("HR-EmployeeID".into()), Value::Long(7)),
            (
                Value::String("name".into()),
                Value::String("ABC%def".into()),
            ),
            (
                Value::String("blob".into()),
                Value::Binary(Bytes::from_static(b"\x01")),
            ),
        ]),
        ..Default::default()
    }
}

fn eval_on(text: &str, msg: &Message) -> Result<bool, EvalError> {
    let f = SqlFilter::parse(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
    f.evaluate(&MessageView::new(msg, &SYS))
}

fn eval(text: &str) -> Result<bool, EvalError> {
    eval_on(text, &message())
}

#[track_caller]
fn yes(text: &str) {
    assert_eq!(eval(text), Ok(true), "{text}");
}

#[track_caller]
fn no(text: &str) {
    assert_eq!(eval(text), Ok(false), "{text}");
}

#[track_caller]
fn parse_err(text: &str) -> FilterError {
    match SqlFilter::parse(text) {
        Ok(f) => panic!("{text:?} parsed: {f:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn syntax_at(text: &str, position: usize) {
    let e = parse_err(text);
    assert!(
        matches!(e, FilterError::Syntax { position: p, .. } if p == position),
        "{text:?}: {e:?}"
    );
}

fn app(msg: &Message, name: &str) -> Option<Value> {
    msg.application_properties
        .as_ref()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v.clone())
}

fn apply(action: &str, msg: &mut Message) -> Result<(), EvalError> {
    SqlRuleAction::parse(action)
        .unwrap_or_else(|e| panic!("{action:?} does not parse: {e}"))
        .apply(msg, &SYS)
}

// ---------------------------------------------------------------- parsing

#[test]
fn parses_every_construct() {
    for text in [
        "1=1",
        "1 = 0",
        "TRUE",
        "NOT FALSE",
        "a = 1 AND b <> 2 OR c != 3",
        "a > 1 AND a >= 1 AND a < 1 AND a <= 1",
        "(a + b - c * d / e % f) = -g",
        "+a = -(-1)",
        "name LIKE 'A%' ESCAPE '!'",
        "name NOT LIKE '_b%'",
        "color IN ('red', 'blue')",
        "color NOT IN ('red')",
        "color IS NULL OR color IS NOT NULL",
        "EXISTS(color) AND EXISTS(sys.Label)",
        "sys.Label = 'x' AND user.color = 'y' AND color = 'z'",
        "[Prop With Space] = 'x' AND \"quoted \"\"name\"\"\" = 1",
        "user.[HR-EmployeeID] = 7",
        "property('color') = p('color')",
        "newid() IS NOT NULL",
        "@param = 1",
        "1.5 = 1.5E0 AND .5 = 0.5 AND 101.5E5 > 0.5E-2",
        "'it''s' = 'it''s'",
        "NULL IS NULL",
    ] {
        assert!(
            SqlFilter::parse(text).is_ok(),
            "{text}: {:?}",
            SqlFilter::parse(text)
        );
    }
}

#[test]
fn keeps_the_original_expression() {
    let text = "  sys.Label LIKE '%bus%'   OR user.tag IN ('queue', 'topic') ";
    assert_eq!(SqlFilter::parse(text).unwrap().expression(), text);
    let action = "SET a = 1; REMOVE b";
    assert_eq!(SqlRuleAction::parse(action).unwrap().expression(), action);
}

#[test]
fn keywords_are_case_insensitive() {
    yes("color = 'red' and NoT (quantity iS nUlL) oR FaLsE");
    yes("color like 'r%' AND color not in ('blue') AND exists(color) AND true");
}

#[test]
fn syntax_error_positions() {
    syntax_at("", 0);
    syntax_at("a =", 3);
    syntax_at("a = 1 AND", 9);
    syntax_at("(a = 1", 6);
    syntax_at("a = 1)", 5);
    syntax_at("a = 'open", 4);
    syntax_at("a = # 1", 4);
    syntax_at("a = 1 b = 2", 6);
    syntax_at("a IS 1", 5);
    syntax_at("a IN ()", 6);
    syntax_at("a IN (1, 2", 10);
    syntax_at("EXISTS a", 7);
    syntax_at("[open = 1", 0);
    syntax_at("a ! 1", 2);
}

#[test]
fn syntax_error_positions_count_characters_not_bytes() {
    syntax_at("'ünïcødé' = ", 12);
}

#[test]
fn error_messages_are_readable() {
    let e = parse_err("a = 1 AND");
    assert_eq!(
        e.to_string(),
        "syntax error at position 9: expected an expression, found the end of the expression"
    );
    assert_eq!(e.position(), Some(9));
    let e = parse_err("a = 1 b");
    assert!(e.to_string().contains("identifier 'b'"), "{e}");
}

#[test]
fn comparisons_do_not_chain() {
    syntax_at("1 = 1 = TRUE", 6);
    yes("(1 = 1) = TRUE");
}

#[test]
fn keywords_are_reserved_as_identifiers() {
    syntax_at("like = 1", 0);
    assert!(SqlFilter::parse("[like] = 1").is_ok());
    assert!(SqlFilter::parse("user.[set] = 1").is_ok());
}

#[test]
fn unknown_system_property_is_rejected() {
    let e = parse_err("sys.Nope = 1");
    assert_eq!(
        e,
        FilterError::UnknownSystemProperty {
            position: 4,
            name: "Nope".into()
        }
    );
}

#[test]
fn unknown_scope_and_function_are_rejected() {
    syntax_at("foo.bar = 1", 0);
    syntax_at("a = upper('x')", 4);
    syntax_at("newid(1) = 1", 6);
}

#[test]
fn integer_constant_range() {
    yes("-9223372036854775808 < 0");
    yes("9223372036854775807 > 0");
    syntax_at("9223372036854775808 > 0", 0);
    syntax_at("a = 99999999999999999999", 4);
    syntax_at("1e999 > 0", 0);
    syntax_at("1e > 0", 1);
    syntax_at("12abc = 1", 2);
}

#[test]
fn expression_length_limit() {
    let long = format!("a = '{}'", "x".repeat(1020));
    assert_eq!(long.chars().count(), 1026);
    assert_eq!(
        parse_err(&long),
        FilterError::TooLong {
            length: 1026,
            max: 1024
        }
    );
    let ok = format!("a = '{}'", "x".repeat(1018));
    assert!(SqlFilter::parse(&ok).is_ok());
}

#[test]
fn nesting_depth_limit() {
    let deep = format!("{}1{} = 1", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(SqlFilter::parse(&deep).is_ok());
    let deeper = format!(
        "{}1{} = 1",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert!(matches!(
        parse_err(&deeper),
        FilterError::TooDeep { max: MAX_DEPTH, .. }
    ));
    let nots = format!("{}TRUE", "NOT ".repeat(200));
    assert!(matches!(parse_err(&nots), FilterError::TooDeep { .. }));
    let negs = format!("{}1 = 1", "- ".repeat(300));
    assert!(matches!(parse_err(&negs), FilterError::TooDeep { .. }));
}

#[test]
fn long_flat_chains_evaluate() {
    let sum = format!("{}1 = 400", "1+".repeat(399));
    yes(&sum);
    let ors = format!("{}color = 'red'", "color = 'x' OR ".repeat(60));
    yes(&ors);
}

// ---------------------------------------------------------------- evaluation

#[test]
fn true_and_false_filters() {
    yes("1=1");
    no("1=0");
    yes("TRUE");
    no("FALSE");
}

#[test]
fn system_properties() {
    yes("sys.MessageId = 'msg-1'");
    yes("sys.CorrelationId = 'corr-1'");
    yes("sys.To = 'store-5'");
    yes("sys.ReplyTo = 'replies'");
    yes("sys.Label = 'orders/bus'");
    yes("sys.Subject = 'orders/bus'");
    yes("sys.SessionId = 'session-a'");
    yes("sys.ReplyToSessionId = 'session-b'");
    yes("sys.ContentType = 'application/json'");
    yes("sys.SequenceNumber = 42");
    yes("sys.DeliveryCount = 0");
    yes("sys.Size > 0");
}

#[test]
fn system_property_names_are_case_insensitive() {
    yes("sys.label LIKE '%bus%'");
    yes("SYS.MESSAGEID = 'msg-1'");
    yes("sys.correlationid like 'corr-%'");
}

#[test]
fn system_property_values_are_case_sensitive() {
    no("sys.Label = 'ORDERS/BUS'");
}

#[test]
fn enqueued_time_and_time_arithmetic() {
    let f = SqlFilter::parse("sys.EnqueuedTimeUtc = @t AND sys.EnqueuedTimeUtc > @earlier")
        .unwrap()
        .with_parameters(vec![
            ("@t".into(), Value::Timestamp(SYS.enqueued_time)),
            ("@earlier".into(), Value::Timestamp(SYS.enqueued_time - 1)),
        ]);
    let msg = message();
    assert_eq!(f.evaluate(&MessageView::new(&msg, &SYS)), Ok(true));

    // DateTime - DateTime is a TimeSpan, compared with a TimeSpan parameter.
    let span = Value::Described(
        Box::new(Descriptor::Symbol("com.microsoft:timespan".into())),
        Box::new(Value::Long(60 * 1000 * 10_000)),
    );
    let f = SqlFilter::parse("sys.EnqueuedTimeUtc - @start <= @span")
        .unwrap()
        .with_parameters(vec![
            (
                "@start".into(),
                Value::Timestamp(SYS.enqueued_time - 30_000),
            ),
            ("@span".into(), span),
        ]);
    assert_eq!(f.evaluate(&MessageView::new(&msg, &SYS)), Ok(true));
}

#[test]
fn ttl_and_expiry() {
    let mut msg = message();
    msg.header = Some(Header {
        ttl: Some(5_000),
        ..Default::default()
    });
    let f = SqlFilter::parse("sys.ExpiresAtUtc = @exp AND EXISTS(sys.TimeToLive)")
        .unwrap()
        .with_parameters(vec![(
            "@exp".into(),
            Value::Timestamp(SYS.enqueued_time + 5_000),
        )]);
    assert_eq!(f.evaluate(&MessageView::new(&msg, &SYS)), Ok(true));
    assert_eq!(eval("EXISTS(sys.TimeToLive)"), Ok(false));
}

#[test]
fn annotation_backed_system_properties() {
    let mut msg = message();
    msg.message_annotations = Some(vec![
        (
            Value::symbol("x-opt-partition-key"),
            Value::String("pk".into()),
        ),
        (
            Value::symbol("x-opt-scheduled-enqueue-time"),
            Value::Timestamp(5),
        ),
    ]);
    assert_eq!(eval_on("sys.PartitionKey = 'pk'", &msg), Ok(true));
    assert_eq!(
        eval_on("sys.ScheduledEnqueueTimeUtc IS NOT NULL", &msg),
        Ok(true)
    );
    assert_eq!(eval("sys.PartitionKey IS NULL"), Ok(true));
}

#[test]
fn message_id_of_other_amqp_types_reads_as_string() {
    let mut msg = message();
    let props = msg.properties.as_mut().unwrap();
    props.message_id = Some(Value::Uuid([
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ]));
    props.correlation_id = Some(Value::Ulong(99));
    assert_eq!(
        eval_on(
            "sys.MessageId = '12345678-9abc-def0-0123-456789abcdef' AND sys.CorrelationId = '99'",
            &msg
        ),
        Ok(true)
    );
}

#[test]
fn user_properties_bare_and_scoped() {
    yes("color = 'red'");
    yes("user.color = 'red'");
    yes("USER.color = 'red'");
    yes("quantity = 10 AND user.quantity = 10");
}

#[test]
fn user_property_names_are_case_insensitive() {
    yes("COLOR = 'red'");
    yes("user.Quantity = 10");
    yes("EXISTS(Color)");
}

#[test]
fn exact_case_wins_over_case_insensitive_match() {
    let msg = Message {
        application_properties: Some(vec![
            (Value::String("Tag".into()), Value::Long(1)),
            (Value::String("tag".into()), Value::Long(2)),
        ]),
        ..Default::default()
    };
    assert_eq!(eval_on("tag = 2 AND Tag = 1 AND TAG = 1", &msg), Ok(true));
}

#[test]
fn delimited_and_quoted_identifiers() {
    yes("[Prop With Space] = 'x'");
    yes("user.[HR-EmployeeID] = 7");
    yes("\"HR-EmployeeID\" = 7");
    let msg = Message {
        application_properties: Some(vec![
            (Value::String("a]b".into()), Value::Long(1)),
            (Value::String("say \"hi\"".into()), Value::Long(2)),
            (
                Value::String(
                    "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName".into(),
                ),
                Value::String("account".into()),
            ),
        ]),
        ..Default::default()
    };
    assert_eq!(eval_on("[a]]b] = 1", &msg), Ok(true));
    assert_eq!(eval_on("\"say \"\"hi\"\"\" = 2", &msg), Ok(true));
    assert_eq!(
        eval_on(
            "\"http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName\" = 'account'",
            &msg
        ),
        Ok(true)
    );
}

#[test]
fn unicode_identifiers() {
    let msg = Message {
        application_properties: Some(vec![(Value::String("größe".into()), Value::Long(3))]),
        ..Default::default()
    };
    assert_eq!(eval_on("größe = 3 AND GRÖSSE IS NULL", &msg), Ok(true));
    assert_eq!(eval_on("GRÖßE = 3", &msg), Ok(true));
}

#[test]
fn string_constants_with_escaped_quotes() {
    let msg = Message {
        application_properties: Some(vec![(
            Value::String("s".into()),
            Value::String("it's".into()),
        )]),
        ..Default::default()
    };
    assert_eq!(eval_on("s = 'it''s'", &msg), Ok(true));
}

#[test]
fn numeric_widening() {
    yes("quantity = 10.0");
    yes("quantity < 10.5");
    yes("price > 2 AND price < 3");
    yes("big = 1099511627776");
    yes("quantity + price = 12.5");
    yes("1 = 1.0");
}

#[test]
fn all_amqp_integer_widths_compare_as_numbers() {
    let msg = Message {
        application_properties: Some(vec![
            (Value::String("a".into()), Value::Ubyte(1)),
            (Value::String("b".into()), Value::Short(-2)),
            (Value::String("c".into()), Value::Uint(3)),
            (Value::String("d".into()), Value::Ulong(4)),
            (Value::String("e".into()), Value::Float(0.5)),
            (Value::String("f".into()), Value::Ulong(u64::MAX)),
        ]),
        ..Default::default()
    };
    assert_eq!(
        eval_on(
            "a = 1 AND b = -2 AND c = 3 AND d = 4 AND e = 0.5 AND f > 1e19",
            &msg
        ),
        Ok(true)
    );
}

#[test]
fn integer_arithmetic() {
    yes("7 / 2 = 3");
    yes("-7 / 2 = -3");
    yes("7 % 3 = 1");
    yes("2 + 3 * 4 = 14");
    yes("(2 + 3) * 4 = 20");
    yes("10 - 2 - 3 = 5");
    yes("quantity * 2 = 20");
    yes("-quantity = -10");
    yes("+quantity = 10");
}

#[test]
fn floating_point_arithmetic() {
    yes("7.0 / 2 = 3.5");
    yes("1e3 = 1000");
    yes("5.5 % 2 = 1.5");
    // As in C#, floating-point division by zero is infinity, not an error.
    yes("1.0 / 0 > 1e308");
}

#[test]
fn division_by_zero_is_an_error() {
    assert_eq!(eval("1 / 0 = 1"), Err(EvalError::DivisionByZero));
    assert_eq!(eval("1 % 0 = 1"), Err(EvalError::DivisionByZero));
    assert_eq!(
        eval("quantity / (quantity - 10) = 1"),
        Err(EvalError::DivisionByZero)
    );
}

#[test]
fn integer_overflow_is_an_error() {
    assert_eq!(
        eval("9223372036854775807 + 1 > 0"),
        Err(EvalError::Overflow)
    );
    assert_eq!(
        eval("-9223372036854775808 / -1 > 0"),
        Err(EvalError::Overflow)
    );
    assert_eq!(
        eval("-(-9223372036854775808) > 0"),
        Err(EvalError::Overflow)
    );
}

#[test]
fn string_concatenation() {
    yes("color + '-' + color = 'red-red'");
    yes("'n' + quantity = 'n10'");
    yes("'b' + flag = 'bTrue'");
}

#[test]
fn type_mismatches_are_errors() {
    assert!(matches!(
        eval("color = 1"),
        Err(EvalError::TypeMismatch {
            op: "=",
            left: "string",
            right: "long"
        })
    ));
    assert!(matches!(
        eval("color > 'a'"),
        Err(EvalError::TypeMismatch { op: ">", .. })
    ));
    assert!(matches!(
        eval("flag + 1 = 2"),
        Err(EvalError::TypeMismatch { .. })
    ));
    assert!(matches!(
        eval("flag < TRUE"),
        Err(EvalError::TypeMismatch { .. })
    ));
    assert!(matches!(
        eval("-color = 1"),
        Err(EvalError::InvalidOperand { .. })
    ));
    assert!(matches!(
        eval("blob = 1"),
        Err(EvalError::TypeMismatch { .. })
    ));
    assert!(matches!(
        eval("color AND TRUE"),
        Err(EvalError::InvalidOperand { op: "AND", .. })
    ));
    assert!(matches!(
        eval("NOT quantity"),
        Err(EvalError::InvalidOperand { op: "NOT", .. })
    ));
}

#[test]
fn boolean_properties_and_equality() {
    yes("flag");
    yes("flag = TRUE");
    no("flag <> TRUE");
    no("NOT flag");
    yes("(quantity = 10) = flag");
}

#[test]
fn non_boolean_filter_is_an_error() {
    assert_eq!(eval("quantity"), Err(EvalError::NotBoolean("long")));
    assert_eq!(eval("'x'"), Err(EvalError::NotBoolean("string")));
    // ...but an unknown result is simply no match.
    assert_eq!(eval("missing"), Ok(false));
    assert_eq!(eval("NULL"), Ok(false));
}

// ---------------------------------------------------------------- NULL / unknown

#[test]
fn comparisons_with_unknown_are_unknown() {
    no("missing = 1");
    no("missing <> 1");
    no("NOT (missing = 1)");
    no("missing = NULL");
    no("NULL = NULL");
    no("nothing = 1");
    // No type error either: unknown short-cuts before types are checked.
    no("missing = 'a'");
    no("missing > 1");
}

#[test]
fn arithmetic_with_unknown_is_unknown() {
    no("missing + 1 = 1");
    no("-missing = 1");
    yes("(missing * 2) IS NULL");
}

#[test]
fn three_valued_and() {
    // T AND U = U, F AND U = F, U AND U = U
    no("TRUE AND missing = 1");
    yes("NOT (FALSE AND missing = 1)");
    yes("(TRUE AND missing = 1) IS NULL");
    yes("(missing = 1 AND missing = 2) IS NULL");
    yes("(FALSE AND missing = 1) IS NOT NULL");
}

#[test]
fn three_valued_or() {
    // T OR U = T, F OR U = U, U OR U = U
    yes("TRUE OR missing = 1");
    yes("missing = 1 OR TRUE");
    no("FALSE OR missing = 1");
    yes("(FALSE OR missing = 1) IS NULL");
    no("NOT (FALSE OR missing = 1)");
}

#[test]
fn and_or_short_circuit_errors() {
    yes("TRUE OR 1 / 0 = 1");
    no("FALSE AND 1 / 0 = 1");
}

#[test]
fn is_null_and_exists() {
    yes("missing IS NULL");
    no("missing IS NOT NULL");
    yes("nothing IS NULL");
    yes("color IS NOT NULL");
    yes("EXISTS(nothing)");
    no("EXISTS(missing)");
    yes("EXISTS(user.color)");
    yes("EXISTS(sys.MessageId)");
    assert_eq!(
        eval_on("EXISTS(sys.MessageId)", &Message::default()),
        Ok(false)
    );
    assert_eq!(eval_on("sys.To IS NULL", &Message::default()), Ok(true));
    yes("NOT EXISTS(missing)");
}

// ---------------------------------------------------------------- LIKE

#[test]
fn like_wildcards() {
    yes("sys.Label LIKE '%bus%'");
    yes("sys.Label LIKE 'orders%'");
    yes("sys.Label LIKE '%bus'");
    yes("sys.Label LIKE 'orders/bus'");
    yes("sys.Label LIKE 'o_ders/b_s'");
    yes("sys.Label LIKE '%'");
    no("sys.Label LIKE 'orders'");
    no("sys.Label LIKE 'o_ders/b_'");
    yes("color LIKE '___'");
    no("color LIKE '____'");
    yes("'' LIKE '%'");
    no("'' LIKE '_'");
    yes("'aaa' LIKE '%a%a%a%'");
    no("'aa' LIKE '%a%a%a%'");
    yes("'abcabd' LIKE '%abd'");
}

#[test]
fn like_is_case_sensitive() {
    no("color LIKE 'RED'");
    yes("color LIKE 'r%'");
}

#[test]
fn not_like() {
    yes("color NOT LIKE 'b%'");
    no("color NOT LIKE 'r%'");
    no("missing NOT LIKE 'r%'");
}

#[test]
fn like_escape() {
    // name = 'ABC%def'
    yes("name LIKE 'ABC\\%%' ESCAPE '\\'");
    yes("name LIKE 'ABC!%def' ESCAPE '!'");
    no("'ABCxdef' LIKE 'ABC!%def' ESCAPE '!'");
    yes("'a_b' LIKE 'a#_b' ESCAPE '#'");
    no("'axb' LIKE 'a#_b' ESCAPE '#'");
    yes("'a#b' LIKE 'a##b' ESCAPE '#'");
}

#[test]
fn like_errors() {
    assert!(matches!(
        eval("color LIKE 'r!' ESCAPE '!'"),
        Err(EvalError::InvalidPattern(_))
    ));
    assert!(matches!(
        eval("color LIKE 'r%' ESCAPE '!!'"),
        Err(EvalError::InvalidPattern(_))
    ));
    assert!(matches!(
        eval("quantity LIKE '1%'"),
        Err(EvalError::TypeMismatch { .. })
    ));
    no("color LIKE missing");
}

#[test]
fn like_with_unicode() {
    yes("'größe' LIKE 'gr_ße'");
    yes("'日本語' LIKE '_本%'");
}

// ---------------------------------------------------------------- IN

#[test]
fn in_lists() {
    yes("color IN ('blue', 'red')");
    no("color IN ('blue', 'green')");
    yes("color NOT IN ('blue', 'green')");
    no("color NOT IN ('red')");
    yes("quantity IN (1, 5.0, 10)");
    yes("sys.To IN ('Store5','store-5','Store7') OR StoreId = 'Store8'");
}

#[test]
fn in_with_unknown() {
    no("missing IN ('a')");
    no("missing NOT IN ('a')");
    yes("(missing IN ('a')) IS NULL");
    // Unknown elements never match; the others decide.
    yes("color IN (missing, 'red')");
    yes("color NOT IN (missing, 'blue')");
}

#[test]
fn in_with_expressions_and_mismatch() {
    yes("quantity IN (2 * 5)");
    assert!(matches!(
        eval("color IN (1)"),
        Err(EvalError::TypeMismatch { .. })
    ));
}

// ---------------------------------------------------------------- functions & parameters

#[test]
fn property_function() {
    yes("property('color') = 'red'");
    yes("p('user.color') = 'red'");
    yes("P('sys.Label') = 'orders/bus'");
    yes("property('col' + 'or') = 'red'");
    yes("property('missing') IS NULL");
    assert_eq!(
        eval("property('sys.Nope') = 1"),
        Err(EvalError::UnknownSystemProperty("Nope".into()))
    );
    assert!(matches!(
        eval("property(1) = 1"),
        Err(EvalError::InvalidOperand { .. })
    ));
}

#[test]
fn newid_function() {
    yes("newid() IS NOT NULL");
    yes("NEWID() <> newid()");
}

#[test]
fn parameters() {
    let msg = message();
    let view = MessageView::new(&msg, &SYS);
    let f = SqlFilter::parse("color = @Color AND quantity > @min")
        .unwrap()
        .with_parameters(vec![
            ("@color".into(), Value::String("red".into())),
            ("@min".into(), Value::Long(5)),
        ]);
    assert_eq!(f.evaluate(&view), Ok(true));
    assert_eq!(f.parameters().len(), 2);
    let missing = SqlFilter::parse("color = @nope").unwrap();
    assert_eq!(
        missing.evaluate(&view),
        Err(EvalError::UnknownParameter("@nope".into()))
    );
}

// ---------------------------------------------------------------- documentation examples

#[test]
fn documentation_examples() {
    yes("sys.To NOT IN ('Store1','Store2','Store3') OR StoreId NOT IN ('Store1','Store2')");
    let mut msg = message();
    msg.application_properties.as_mut().unwrap().push((
        Value::String("StoreId".into()),
        Value::String("Store2".into()),
    ));
    assert_eq!(
        eval_on("StoreId IN('Store1', 'Store2', 'Store3')", &msg),
        Ok(true)
    );
    assert_eq!(
        eval_on(
            "sys.Label LIKE '%bus%' OR user.tag IN ('queue', 'topic', 'subscription')",
            &msg
        ),
        Ok(true)
    );
    assert_eq!(eval_on("color='red' AND quantity=10", &msg), Ok(true));
}

// ---------------------------------------------------------------- rule actions

#[test]
fn action_set_user_property() {
    let mut msg = message();
    apply("SET source = 'routedOrders'", &mut msg).unwrap();
    assert_eq!(
        app(&msg, "source"),
        Some(Value::String("routedOrders".into()))
    );
}

#[test]
fn action_documentation_example() {
    let mut msg = message();
    msg.application_properties.as_mut().unwrap().push((
        Value::String("priority".into()),
        Value::String("high".into()),
    ));
    apply(
        "SET quantity = quantity / 2; REMOVE priority;SET sys.CorrelationId = 'low';",
        &mut msg,
    )
    .unwrap();
    // quantity was an AMQP int: SET keeps its type.
    assert_eq!(app(&msg, "quantity"), Some(Value::Int(5)));
    assert_eq!(app(&msg, "priority"), None);
    assert_eq!(
        msg.properties.as_ref().unwrap().correlation_id,
        Some(Value::String("low".into()))
    );
}

#[test]
fn action_statements_separated_by_commas_and_semicolons() {
    let mut msg = message();
    apply("SET a = 1, SET b = 2; SET c = a + b;", &mut msg).unwrap();
    assert_eq!(app(&msg, "c"), Some(Value::Long(3)));
    apply("set d = 'x' remove a", &mut msg).unwrap();
    assert_eq!(app(&msg, "a"), None);
    assert_eq!(app(&msg, "d"), Some(Value::String("x".into())));
}

#[test]
fn action_set_updates_case_insensitively() {
    let mut msg = message();
    apply("SET COLOR = 'blue'", &mut msg).unwrap();
    assert_eq!(app(&msg, "color"), Some(Value::String("blue".into())));
    assert_eq!(app(&msg, "COLOR"), None);
    apply("REMOVE Color", &mut msg).unwrap();
    assert_eq!(app(&msg, "color"), None);
}

#[test]
fn action_set_converts_to_existing_type() {
    let mut msg = message();
    apply(
        "SET price = 3; SET quantity = '12'; SET flag = 'false'",
        &mut msg,
    )
    .unwrap();
    assert_eq!(app(&msg, "price"), Some(Value::Double(3.0)));
    assert_eq!(app(&msg, "quantity"), Some(Value::Int(12)));
    assert_eq!(app(&msg, "flag"), Some(Value::Bool(false)));
    // Out of the int range: stored as long.
    apply("SET quantity = 5000000000", &mut msg).unwrap();
    assert_eq!(app(&msg, "quantity"), Some(Value::Long(5_000_000_000)));
    // A string that does not parse keeps its type.
    apply("SET big = 'lots'", &mut msg).unwrap();
    assert_eq!(app(&msg, "big"), Some(Value::String("lots".into())));
}

#[test]
fn action_set_to_unknown_stores_null() {
    let mut msg = message();
    apply("SET copy = missing", &mut msg).unwrap();
    assert_eq!(app(&msg, "copy"), Some(Value::Null));
}

#[test]
fn action_set_system_properties() {
    let mut msg = Message::default();
    apply(
        "SET sys.To = 'eu-desk'; SET sys.Label = 'l'; SET sys.ReplyTo = 'r'; \
         SET sys.SessionId = 's'; SET sys.ReplyToSessionId = 'rs'; \
         SET sys.ContentType = 'text/plain'; SET sys.MessageId = 'm'; SET sys.PartitionKey = 'pk'",
        &mut msg,
    )
    .unwrap();
    let p = msg.properties.as_ref().unwrap();
    assert_eq!(p.to.as_deref(), Some("eu-desk"));
    assert_eq!(p.subject.as_deref(), Some("l"));
    assert_eq!(p.reply_to.as_deref(), Some("r"));
    assert_eq!(p.group_id.as_deref(), Some("s"));
    assert_eq!(p.reply_to_group_id.as_deref(), Some("rs"));
    assert_eq!(p.content_type, Some(Symbol::from("text/plain")));
    assert_eq!(p.message_id, Some(Value::String("m".into())));
    assert_eq!(
        keybus_amqp::map_get(
            msg.message_annotations.as_ref().unwrap(),
            "x-opt-partition-key"
        ),
        Some(&Value::String("pk".into()))
    );
    apply("REMOVE sys.To; REMOVE sys.PartitionKey", &mut msg).unwrap();
    assert_eq!(msg.properties.as_ref().unwrap().to, None);
    assert!(msg.message_annotations.as_ref().unwrap().is_empty());
}

#[test]
fn action_newid_and_system_reads() {
    let mut msg = message();
    apply(
        "SET sys.MessageId = newid(); SET seq = sys.SequenceNumber; SET id = newid()",
        &mut msg,
    )
    .unwrap();
    let id = msg.properties.as_ref().unwrap().message_id.clone().unwrap();
    let id = id.as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id.as_bytes()[14], b'4', "{id}");
    assert_eq!(app(&msg, "seq"), Some(Value::Long(42)));
    assert!(matches!(app(&msg, "id"), Some(Value::Uuid(_))));
}

#[test]
fn action_is_all_or_nothing() {
    let mut msg = message();
    let before = msg.clone();
    assert_eq!(
        apply("SET a = 1; SET b = 1 / 0", &mut msg),
        Err(EvalError::DivisionByZero)
    );
    assert_eq!(msg, before);
    assert!(matches!(
        apply("SET sys.To = 5", &mut msg),
        Err(EvalError::InvalidAssignment {
            property: "To",
            value: "long"
        })
    ));
    assert_eq!(msg, before);
}

#[test]
fn action_parse_errors() {
    let err = |t: &str| SqlRuleAction::parse(t).unwrap_err();
    assert!(matches!(err(""), FilterError::Syntax { position: 0, .. }));
    assert!(matches!(err(";"), FilterError::Syntax { position: 0, .. }));
    assert!(matches!(
        err("SET a"),
        FilterError::Syntax { position: 5, .. }
    ));
    assert!(matches!(
        err("SET a = "),
        FilterError::Syntax { position: 8, .. }
    ));
    assert!(matches!(
        err("UPDATE a = 1"),
        FilterError::Syntax { position: 0, .. }
    ));
    assert!(matches!(
        err("SET a = 1; DROP b"),
        FilterError::Syntax { position: 11, .. }
    ));
    assert_eq!(
        err("SET sys.SequenceNumber = 1"),
        FilterError::ReadOnlySystemProperty {
            position: 4,
            name: "SequenceNumber".into()
        }
    );
    assert!(matches!(
        err("REMOVE sys.EnqueuedTimeUtc"),
        FilterError::ReadOnlySystemProperty { .. }
    ));
    assert!(matches!(
        err("SET sys.Bogus = 1"),
        FilterError::UnknownSystemProperty { .. }
    ));
}

#[test]
fn action_statement_limit() {
    let ok = vec!["SET a=1"; 32].join(";");
    assert_eq!(SqlRuleAction::parse(&ok).unwrap().len(), 32);
    let too_many = vec!["SET a=1"; 33].join(";");
    assert_eq!(
        SqlRuleAction::parse(&too_many).unwrap_err(),
        FilterError::TooManyStatements { count: 33, max: 32 }
    );
}

// ---------------------------------------------------------------- correlation & Filter

#[test]
fn correlation_filter_system_fields() {
    let msg = message();
    let view = MessageView::new(&msg, &SYS);
    assert!(CorrelationFilter::default().matches(&view));
    let f = CorrelationFilter {
        correlation_id: Some("corr-1".into()),
        message_id: Some("msg-1".into()),
        to: Some("store-5".into()),
        reply_to: Some("replies".into()),
        label: Some("orders/bus".into()),
        session_id: Some("session-a".into()),
        reply_to_session_id: Some("session-b".into()),
        content_type: Some("application/json".into()),
        properties: vec![],
    };
    assert!(f.matches(&view));
    for broken in [
        CorrelationFilter {
            correlation_id: Some("CORR-1".into()),
            ..f.clone()
        },
        CorrelationFilter {
            label: Some("orders".into()),
            ..f.clone()
        },
        CorrelationFilter {
            content_type: Some("text/plain".into()),
            ..f.clone()
        },
    ] {
        assert!(!broken.matches(&view), "{broken:?}");
    }
    assert!(!f.matches(&MessageView::new(&Message::default(), &SYS)));
}

#[test]
fn correlation_filter_properties() {
    let msg = message();
    let view = MessageView::new(&msg, &SYS);
    let with = |props: Vec<(&str, SimpleValue)>| CorrelationFilter {
        properties: props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Default::default()
    };
    let text = |s: &str| SimpleValue::String(s.into());
    assert!(with(vec![("color", text("red"))]).matches(&view));
    assert!(with(vec![("quantity", SimpleValue::Long(10))]).matches(&view));
    assert!(with(vec![("quantity", SimpleValue::Double(10.0))]).matches(&view));
    assert!(
        with(vec![
            ("color", text("red")),
            ("quantity", SimpleValue::Long(10))
        ])
        .matches(&view)
    );
    assert!(!with(vec![("color", text("Red"))]).matches(&view));
    // A string never equals a number.
    assert!(!with(vec![("quantity", text("10"))]).matches(&view));
    assert!(!with(vec![("missing", text("x"))]).matches(&view));
    // A property that is present but null equals no simple value.
    assert!(!with(vec![("nothing", text(""))]).matches(&view));
}

#[test]
fn filter_enum() {
    let msg = message();
    let view = MessageView::new(&msg, &SYS);
    assert_eq!(Filter::True.matches(&view), Ok(true));
    assert_eq!(Filter::False.matches(&view), Ok(false));
    let sql = Filter::Sql(SqlFilter::parse("color = 'red'").unwrap());
    assert_eq!(sql.matches(&view), Ok(true));
    let bad = Filter::Sql(SqlFilter::parse("1 / 0 = 1").unwrap());
    assert_eq!(bad.matches(&view), Err(EvalError::DivisionByZero));
    let corr = Filter::Correlation(CorrelationFilter {
        label: Some("orders/bus".into()),
        ..Default::default()
    });
    assert_eq!(corr.matches(&view), Ok(true));
    assert_eq!(view.system(), SYS);
}

// ---------------------------------------------------------------- robustness

/// A small deterministic generator (xorshift) so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn arbitrary_input_never_panics() {
    const PIECES: &[&str] = &[
        "a",
        "sys.Label",
        "user.color",
        "color",
        "quantity",
        "price",
        "missing",
        "[x y]",
        "\"q\"",
        "1",
        "0",
        "-",
        "+",
        "*",
        "/",
        "%",
        "=",
        "<>",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "(",
        ")",
        ",",
        ";",
        "'s'",
        "'%a_'",
        "''",
        "AND",
        "OR",
        "NOT",
        "LIKE",
        "ESCAPE",
        "'!'",
        "IN",
        "IS",
        "NULL",
        "EXISTS",
        "TRUE",
        "FALSE",
        "1.5",
        "1e3",
        "9223372036854775807",
        "newid()",
        "property(",
        "p(",
        "@p",
        "SET",
        "REMOVE",
        "'",
        "[",
        "\"",
        "é",
        "日",
        " ",
        " ",
        " ",
        "sys.",
        ".",
        "flag",
        "sys.EnqueuedTimeUtc",
        "sys.SequenceNumber",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let msg = message();
    let view = MessageView::new(&msg, &SYS);
    let mut parsed = 0;
    for _ in 0..20_000 {
        let n = 1 + rng.below(12);
        let text: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        if let Ok(f) = SqlFilter::parse(&text) {
            parsed += 1;
            let _ = f.evaluate(&view);
        }
        if let Ok(a) = SqlRuleAction::parse(&text) {
            let mut m = msg.clone();
            let _ = a.apply(&mut m, &SYS);
        }
        // Raw bytes as (lossy) text as well.
        let bytes: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
        let raw = String::from_utf8_lossy(&bytes);
        let _ = SqlFilter::parse(&raw).map(|f| f.evaluate(&view));
        let _ = SqlRuleAction::parse(&raw);
    }
    assert!(parsed > 100, "only {parsed} inputs parsed");
}

#[test]
fn hostile_nesting_is_rejected_not_overflowed() {
    for text in [
        "(".repeat(1000),
        format!("{}1", "-".repeat(1000)),
        format!("{}1", "NOT ".repeat(250)),
        format!("{}1{}", "p(".repeat(500), ")".repeat(500)),
        format!("{}1", "(".repeat(100_000)),
    ] {
        assert!(SqlFilter::parse(&text).is_err());
        assert!(SqlRuleAction::parse(&format!("SET a = {text}")).is_err());
    }
}

/// Stores written before `CorrelationFilter` became the definition (a struct variant with
/// the same fields) still read, and the form written is the same.
#[test]
fn correlation_definitions_keep_their_stored_form() {
    use keybus_core::FilterDefinition;
    let stored = r#"{"Correlation":{"correlation_id":"c","message_id":null,"to":null,"reply_to":null,"label":"l","session_id":null,"reply_to_session_id":null,"content_type":null,"properties":[["n",{"Long":2}]]}}"#;
    let def: FilterDefinition = serde_json::from_str(stored).unwrap();
    let FilterDefinition::Correlation(c) = &def else {
        panic!("{def:?}")
    };
    assert_eq!(c.correlation_id.as_deref(), Some("c"));
    assert_eq!(c.label.as_deref(), Some("l"));
    assert_eq!(c.properties, vec![("n".to_string(), SimpleValue::Long(2))]);
    assert_eq!(serde_json::to_string(&def).unwrap(), stored);
}
