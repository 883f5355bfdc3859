//! Fuzz the SQL filter and rule-action language: arbitrary text must never
//! panic the parser, the evaluator or an action, and whatever parses must
//! evaluate to a result or an error.
#![no_main]

use keybus_amqp::{Bytes, Message, Properties, Symbol, Value};
use keybus_core::filter::{MessageView, SqlFilter, SqlRuleAction, SystemProps};
use libfuzzer_sys::fuzz_target;

fn message() -> Message {
    Message {
        properties: Some(Properties {
            message_id: Some(Value::String("id".into())),
            correlation_id: Some(Value::Ulong(7)),
            subject: Some("orders/bus".into()),
            content_type: Some(Symbol::from("application/json")),
            ..Default::default()
        }),
        application_properties: Some(vec![
            (Value::String("color".into()), Value::String("red".into())),
            (Value::String("quantity".into()), Value::Int(10)),
            (Value::String("price".into()), Value::Double(2.5)),
            (Value::String("flag".into()), Value::Bool(true)),
            (Value::String("nothing".into()), Value::Null),
            (
                Value::String("blob".into()),
                Value::Binary(Bytes::from_static(b"x")),
            ),
            (Value::String("when".into()), Value::Timestamp(1_000)),
        ]),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sys = SystemProps {
        sequence_number: 1,
        enqueued_time: 1_700_000_000_000,
    };
    let msg = message();
    if let Ok(filter) = SqlFilter::parse(text) {
        assert_eq!(filter.expression(), text);
        let params = vec![("@p".to_owned(), Value::Long(1))];
        let filter = filter.with_parameters(params);
        let _ = filter.evaluate(&MessageView::new(&msg, &sys));
    }
    if let Ok(action) = SqlRuleAction::parse(text) {
        let mut m = msg.clone();
        if action.apply(&mut m, &sys).is_err() {
            assert_eq!(m, msg, "a failed action changed the message");
        }
    }
});
