//! Message-id defaulting: Service Bus gives a message without a `message-id` one (a GUID in
//! its 32-digit form), so receivers (the JS SDK's lock renewer, duplicate detection) can rely
//! on it. The caller supplies the randomness, so the rule stays deterministic.

use keybus_amqp::{Message, Value};

/// `m` with a `message-id`: its own, or `fresh` written as 32 lower-case hex digits.
pub fn with_message_id(mut m: Message, fresh: u128) -> Message {
    let props = m.properties.get_or_insert_with(Default::default);
    if props.message_id.is_none() {
        props.message_id = Some(Value::String(format!("{fresh:032x}")));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_kept_or_given() {
        let m = with_message_id(Message::default(), 0xab);
        let id = m.properties.as_ref().and_then(|p| p.message_id.clone());
        assert_eq!(id, Some(Value::String(format!("{:032x}", 0xab))));
        let again = with_message_id(m, 1);
        let id = again.properties.and_then(|p| p.message_id);
        assert_eq!(id, Some(Value::String(format!("{:032x}", 0xab))));
    }
}
