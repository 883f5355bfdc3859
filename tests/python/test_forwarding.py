"""Auto-forwarding: ForwardTo and ForwardDeadLetteredMessagesTo on queues and subscriptions,
into queues and topics, with the 4-hop limit."""

from __future__ import annotations

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from kbutil import assert_empty, body_bytes, declare_toml, receive_n

declare_toml(
    """
[[queues]]
name = "fwd-src"
forward_to = "fwd-dst"

[[queues]]
name = "fwd-dst"

[[queues]]
name = "fwd-dlq-src"
max_delivery_count = 1
forward_dead_lettered_messages_to = "fwd-dlq-dst"

[[queues]]
name = "fwd-dlq-dst"

[[queues]]
name = "fwd-loop-a"
forward_to = "fwd-loop-b"

[[queues]]
name = "fwd-loop-b"
forward_to = "fwd-loop-a"

[[queues]]
name = "fwd-to-topic"
forward_to = "fwd-topic"

[[queues]]
name = "fwd-missing"
forward_to = "no-such-entity"

[[topics]]
name = "fwd-topic"

[[topics.subscriptions]]
name = "onward"
forward_to = "fwd-from-sub"

[[topics.subscriptions]]
name = "keep"

[[queues]]
name = "fwd-from-sub"
"""
)


def test_queue_forwards_to_queue(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender("fwd-src") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}", message_id=f"f{i}") for i in range(5)])
    with sb_client.get_queue_receiver("fwd-dst") as receiver:
        msgs = receive_n(receiver, 5)
        assert [m.message_id for m in msgs] == [f"f{i}" for i in range(5)]
        assert [body_bytes(m) for m in msgs] == [f"m{i}".encode() for i in range(5)]
        for m in msgs:
            receiver.complete_message(m)
    # Nothing stays behind at the source.
    with sb_client.get_queue_receiver("fwd-src") as receiver:
        assert_empty(receiver, wait=1)
        assert receiver.peek_messages(max_message_count=10) == []


def test_dead_lettered_messages_are_forwarded(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender("fwd-dlq-src") as sender:
        sender.send_messages([ServiceBusMessage("explicit"), ServiceBusMessage("counted")])
    with sb_client.get_queue_receiver("fwd-dlq-src") as receiver:
        first, second = receive_n(receiver, 2)
        receiver.dead_letter_message(first, reason="bad-order", error_description="no such item")
        receiver.abandon_message(second)  # max delivery count 1: dead-lettered
    with sb_client.get_queue_receiver("fwd-dlq-dst") as receiver:
        msgs = receive_n(receiver, 2)
        by_body = {body_bytes(m): m for m in msgs}
        assert by_body[b"explicit"].dead_letter_reason == "bad-order"
        assert by_body[b"explicit"].dead_letter_error_description == "no such item"
        assert by_body[b"counted"].dead_letter_reason == "MaxDeliveryCountExceeded"
        for m in msgs:
            receiver.complete_message(m)
    with sb_client.get_queue_receiver(
        "fwd-dlq-src", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as receiver:
        assert_empty(receiver, wait=1)


def test_forwarding_loop_stops_after_four_hops(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender("fwd-loop-a") as sender:
        sender.send_messages(ServiceBusMessage("round and round", message_id="loop"))
    # a -> b -> a -> b -> a: four hops, then the fifth forward is refused at a.
    with sb_client.get_queue_receiver(
        "fwd-loop-a", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as receiver:
        [m] = receive_n(receiver, 1)
        assert m.message_id == "loop"
        assert m.dead_letter_reason == "MaxTransferHopCountExceeded"
        receiver.complete_message(m)
    with sb_client.get_queue_receiver(
        "fwd-loop-b", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as receiver:
        assert_empty(receiver, wait=1)


def test_queue_forwards_into_a_topic_whose_subscription_forwards_on(
    sb_client: ServiceBusClient,
) -> None:
    with sb_client.get_queue_sender("fwd-to-topic") as sender:
        sender.send_messages(ServiceBusMessage("via topic", message_id="vt"))
    with sb_client.get_subscription_receiver("fwd-topic", "keep") as receiver:
        [m] = receive_n(receiver, 1)
        assert m.message_id == "vt"
        receiver.complete_message(m)
    with sb_client.get_queue_receiver("fwd-from-sub") as receiver:
        [m] = receive_n(receiver, 1)
        assert m.message_id == "vt"
        assert body_bytes(m) == b"via topic"
        receiver.complete_message(m)
    with sb_client.get_subscription_receiver("fwd-topic", "onward") as receiver:
        assert_empty(receiver, wait=1)


def test_missing_destination_dead_letters_at_the_source(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender("fwd-missing") as sender:
        sender.send_messages(ServiceBusMessage("lost?", message_id="nowhere"))
    with sb_client.get_queue_receiver(
        "fwd-missing", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as receiver:
        [m] = receive_n(receiver, 1)
        assert m.message_id == "nowhere"
        assert m.dead_letter_reason == "MessagingEntityNotFound"
        assert "no-such-entity" in m.dead_letter_error_description
        receiver.complete_message(m)
