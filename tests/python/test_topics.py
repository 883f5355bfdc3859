"""Topics and subscriptions: fan-out with topic-assigned sequence numbers, $Default, SQL and
correlation filters, SQL rule actions, per-subscription settlement and dead-letter queues,
scheduling on a topic."""

from __future__ import annotations

import datetime

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import ServiceBusError

from kbutil import assert_empty, body_bytes, declare_toml, receive_n

declare_toml(
    """
[[topics]]
name = "tp-fan"

[[topics.subscriptions]]
name = "all-a"

[[topics.subscriptions]]
name = "all-b"
lock_duration = "5s"
max_delivery_count = 2

[[topics]]
name = "tp-rules"

[[topics.subscriptions]]
name = "eu"
[[topics.subscriptions.rules]]
name = "eu-only"
sql_filter = "region = 'EU' AND priority > 2"
action = "SET routed = 'eu'; REMOVE secret"

[[topics.subscriptions]]
name = "orders"
[[topics.subscriptions.rules]]
name = "by-subject"
correlation_filter = { label = "order", properties = { tenant = "t1" } }

[[topics.subscriptions]]
name = "nothing"
[[topics.subscriptions.rules]]
name = "never"
filter = "false"

[[topics.subscriptions]]
name = "strict"
dead_lettering_on_filter_evaluation_exceptions = true
[[topics.subscriptions.rules]]
name = "typed"
sql_filter = "amount > 10"

[[topics]]
name = "tp-sched"

[[topics.subscriptions]]
name = "s1"

[[topics.subscriptions]]
name = "s2"
"""
)


def test_fan_out_gives_each_subscription_its_own_copy(sb_client: ServiceBusClient) -> None:
    with sb_client.get_topic_sender("tp-fan") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}", message_id=f"m{i}") for i in range(3)])
    seqs = {}
    for sub in ("all-a", "all-b"):
        with sb_client.get_subscription_receiver("tp-fan", sub, max_wait_time=3) as receiver:
            msgs = receive_n(receiver, 3)
            assert [m.message_id for m in msgs] == ["m0", "m1", "m2"]
            seqs[sub] = [m.sequence_number for m in msgs]
            if sub == "all-a":
                for m in msgs:
                    receiver.complete_message(m)
            else:
                # abandon on one subscription does not touch the other's copy
                receiver.abandon_message(msgs[0])
                again = receive_n(receiver, 1)
                assert again[0].message_id == "m0" and again[0].delivery_count == 1
                receiver.dead_letter_message(again[0], reason="r", error_description="d")
                for m in msgs[1:]:
                    receiver.complete_message(m)
    # sequence numbers are assigned at the topic: the same in every subscription, rising
    assert seqs["all-a"] == seqs["all-b"]
    assert seqs["all-a"] == sorted(seqs["all-a"])
    with sb_client.get_subscription_receiver("tp-fan", "all-a", max_wait_time=2) as receiver:
        assert_empty(receiver)
    with sb_client.get_subscription_receiver(
        "tp-fan", "all-b", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=3
    ) as dlq:
        dead = receive_n(dlq, 1)
        assert dead[0].message_id == "m0"
        assert dead[0].dead_letter_reason == "r"
        dlq.complete_message(dead[0])


def test_sql_filter_and_action(sb_client: ServiceBusClient) -> None:
    with sb_client.get_topic_sender("tp-rules") as sender:
        sender.send_messages(
            [
                ServiceBusMessage("eu-high", message_id="1", application_properties={"region": "EU", "priority": 5, "secret": "x"}),
                ServiceBusMessage("eu-low", message_id="2", application_properties={"region": "EU", "priority": 1}),
                ServiceBusMessage("us", message_id="3", application_properties={"region": "US", "priority": 9}),
            ]
        )
    with sb_client.get_subscription_receiver("tp-rules", "eu", max_wait_time=3) as receiver:
        msgs = receive_n(receiver, 1)
        assert [m.message_id for m in msgs] == ["1"]
        props = msgs[0].application_properties
        assert props[b"routed"] == b"eu"
        assert b"secret" not in props
        receiver.complete_message(msgs[0])
        assert_empty(receiver)


def test_correlation_filter_and_false_filter(sb_client: ServiceBusClient) -> None:
    with sb_client.get_topic_sender("tp-rules") as sender:
        sender.send_messages(
            [
                ServiceBusMessage("o1", message_id="o1", subject="order", application_properties={"tenant": "t1"}),
                ServiceBusMessage("o2", message_id="o2", subject="order", application_properties={"tenant": "t2"}),
                ServiceBusMessage("x", message_id="x", subject="other", application_properties={"tenant": "t1"}),
            ]
        )
    with sb_client.get_subscription_receiver("tp-rules", "orders", max_wait_time=3) as receiver:
        msgs = receive_n(receiver, 1)
        assert [m.message_id for m in msgs] == ["o1"]
        receiver.complete_message(msgs[0])
        assert_empty(receiver)
    with sb_client.get_subscription_receiver("tp-rules", "nothing", max_wait_time=2) as receiver:
        assert receiver.peek_messages(10, sequence_number=1) == []


def test_filter_evaluation_exception_dead_letters(sb_client: ServiceBusClient) -> None:
    with sb_client.get_topic_sender("tp-rules") as sender:
        sender.send_messages(
            [
                ServiceBusMessage("big", message_id="big", application_properties={"amount": 50}),
                ServiceBusMessage("text", message_id="text", application_properties={"amount": "lots"}),
            ]
        )
    with sb_client.get_subscription_receiver("tp-rules", "strict", max_wait_time=3) as receiver:
        msgs = receive_n(receiver, 1)
        assert [m.message_id for m in msgs] == ["big"]
        receiver.complete_message(msgs[0])
    with sb_client.get_subscription_receiver(
        "tp-rules", "strict", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=3
    ) as dlq:
        dead = receive_n(dlq, 1)
        assert dead[0].message_id == "text"
        assert dead[0].dead_letter_reason == "FilterEvaluationException"
        dlq.complete_message(dead[0])


def test_schedule_and_cancel_on_topic(sb_client: ServiceBusClient) -> None:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    with sb_client.get_topic_sender("tp-sched") as sender:
        keep, drop = sender.schedule_messages(
            [ServiceBusMessage("keep", message_id="keep"), ServiceBusMessage("drop", message_id="drop")], at
        )
        sender.cancel_scheduled_messages(drop)
    for sub in ("s1", "s2"):
        with sb_client.get_subscription_receiver("tp-sched", sub, max_wait_time=2) as receiver:
            peeked = receiver.peek_messages(10, sequence_number=1)
            assert [p.sequence_number for p in peeked] == [keep]
            msgs = receive_n(receiver, 1, timeout=15, max_wait_time=5)
            assert msgs[0].message_id == "keep" and body_bytes(msgs[0]) == b"keep"
            receiver.complete_message(msgs[0])


def test_receiving_from_a_topic_is_refused(sb_client: ServiceBusClient) -> None:
    with pytest.raises(ServiceBusError):
        with sb_client.get_queue_receiver("tp-fan", max_wait_time=1) as receiver:
            receiver.receive_messages(max_wait_time=1)
