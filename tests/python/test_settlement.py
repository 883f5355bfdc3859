"""Peek-lock settlement (complete / abandon / defer / dead-letter), receive-and-delete, release."""

from __future__ import annotations

import inspect
import time

import pytest
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import MessageAlreadySettled, MessageNotFoundError

from kbutil import assert_empty, body_bytes, declare_queue, receive_n

Q_COMPLETE = declare_queue("st-complete")
Q_ABANDON = declare_queue("st-abandon")
Q_ABANDON_PROPS = declare_queue("st-abandon-props")
Q_DEFER = declare_queue("st-defer")
Q_DEFER_SKIP = declare_queue("st-defer-skip")
Q_DLQ = declare_queue("st-deadletter")
Q_DLQ_NOREASON = declare_queue("st-deadletter-noreason")
Q_RAD = declare_queue("st-receive-and-delete")
Q_RELEASE = declare_queue("st-release", lock_duration="60s")
Q_DOUBLE = declare_queue("st-double-settle")


def test_complete_removes_message(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_COMPLETE) as sender:
        sender.send_messages([ServiceBusMessage(b"c1", message_id="c1"), ServiceBusMessage(b"c2", message_id="c2")])
    with sb_client.get_queue_receiver(Q_COMPLETE) as receiver:
        msgs = receive_n(receiver, 2)
        assert [m.message_id for m in msgs] == ["c1", "c2"]
        receiver.complete_message(msgs[0])
        receiver.complete_message(msgs[1])
        assert_empty(receiver)
        # peek from the start sees nothing either
        assert receiver.peek_messages(10, sequence_number=1) == []
    # and a brand-new receiver (new link) gets nothing
    with sb_client.get_queue_receiver(Q_COMPLETE) as receiver:
        assert_empty(receiver)


def test_abandon_redelivers_with_incremented_delivery_count(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_ABANDON) as sender:
        sender.send_messages(ServiceBusMessage(b"abandon-me", message_id="ab-1", application_properties={"a": 1}))
    with sb_client.get_queue_receiver(Q_ABANDON) as receiver:
        (first,) = receive_n(receiver, 1)
        assert first.delivery_count == 0
        first_token = first.lock_token
        assert first_token is not None
        receiver.abandon_message(first)
        (second,) = receive_n(receiver, 1, timeout=10)
        assert second.message_id == "ab-1"
        assert body_bytes(second) == b"abandon-me"
        assert second.sequence_number == first.sequence_number == 1
        assert second.delivery_count == 1
        assert second.application_properties == {b"a": 1}
        assert second.lock_token is not None and second.lock_token != first_token
        receiver.abandon_message(second)
        (third,) = receive_n(receiver, 1, timeout=10)
        assert third.delivery_count == 2
        receiver.complete_message(third)
        assert_empty(receiver)


_HAS_PROPS_TO_MODIFY = "properties_to_modify" in inspect.signature(ServiceBusReceiver.abandon_message).parameters


@pytest.mark.skipif(not _HAS_PROPS_TO_MODIFY, reason="azure-servicebus abandon_message has no properties_to_modify")
def test_abandon_with_properties_to_modify(sb_client: ServiceBusClient) -> None:  # pragma: no cover - API absent in 7.15
    with sb_client.get_queue_sender(Q_ABANDON_PROPS) as sender:
        sender.send_messages(ServiceBusMessage(b"x", application_properties={"keep": "yes", "change": 1}))
    with sb_client.get_queue_receiver(Q_ABANDON_PROPS) as receiver:
        (m,) = receive_n(receiver, 1)
        receiver.abandon_message(m, properties_to_modify={"change": 2, "added": "new"})  # type: ignore[call-arg]
        (m2,) = receive_n(receiver, 1)
        assert m2.application_properties == {b"keep": b"yes", b"change": 2, b"added": b"new"}
        receiver.complete_message(m2)


def test_defer_then_receive_deferred_and_complete(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DEFER) as sender:
        sender.send_messages(ServiceBusMessage(b"defer-me", message_id="df-1", subject="later"))
    with sb_client.get_queue_receiver(Q_DEFER) as receiver:
        (m,) = receive_n(receiver, 1)
        seq = m.sequence_number
        assert seq == 1
        receiver.defer_message(m)
        # not delivered to a plain receive any more
        assert_empty(receiver)
        deferred = receiver.receive_deferred_messages([seq])
        assert len(deferred) == 1
        d = deferred[0]
        assert d.sequence_number == seq
        assert d.message_id == "df-1"
        assert d.subject == "later"
        assert body_bytes(d) == b"defer-me"
        assert d.state == ServiceBusMessageState.DEFERRED
        assert d.lock_token is not None
        assert d.locked_until_utc is not None
        receiver.complete_message(d)
        # completed: no longer retrievable by sequence number, and nothing left to peek
        with pytest.raises(MessageNotFoundError):
            receiver.receive_deferred_messages([seq])
        assert receiver.peek_messages(10, sequence_number=1) == []


def test_deferred_message_skipped_by_plain_receivers(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DEFER_SKIP) as sender:
        sender.send_messages([ServiceBusMessage(b"A", message_id="A"), ServiceBusMessage(b"B", message_id="B")])
    with sb_client.get_queue_receiver(Q_DEFER_SKIP) as receiver:
        (a,) = receive_n(receiver, 1)
        assert a.message_id == "A"
        receiver.defer_message(a)
        (b,) = receive_n(receiver, 1)
        assert b.message_id == "B"
        receiver.complete_message(b)
        assert_empty(receiver, wait=3)
    with sb_client.get_queue_receiver(Q_DEFER_SKIP) as receiver:
        assert_empty(receiver, wait=2)
        (d,) = receiver.receive_deferred_messages(a.sequence_number)
        assert d.message_id == "A"
        receiver.complete_message(d)


def test_dead_letter_with_reason_goes_to_dlq(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DLQ) as sender:
        sender.send_messages(ServiceBusMessage(b"poison", message_id="dl-1", application_properties={"orig": "x"}))
    with sb_client.get_queue_receiver(Q_DLQ) as receiver:
        (m,) = receive_n(receiver, 1)
        receiver.dead_letter_message(m, reason="bad-format", error_description="field x missing")
        assert_empty(receiver)
        assert receiver.peek_messages(10, sequence_number=1) == []  # dead-lettered messages are not in the queue

    with sb_client.get_queue_receiver(Q_DLQ, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        peeked = dlq.peek_messages(10)
        assert len(peeked) == 1
        assert peeked[0].message_id == "dl-1"
        assert peeked[0].dead_letter_reason == "bad-format"
        assert peeked[0].dead_letter_error_description == "field x missing"

        (d,) = receive_n(dlq, 1)
        assert d.message_id == "dl-1"
        assert body_bytes(d) == b"poison"
        assert d.dead_letter_reason == "bad-format"
        assert d.dead_letter_error_description == "field x missing"
        assert d.application_properties[b"orig"] == b"x"
        assert d.application_properties[b"DeadLetterReason"] == b"bad-format"
        dlq.complete_message(d)
        assert_empty(dlq)
        assert dlq.peek_messages(10, sequence_number=1) == []


def test_dead_letter_without_reason(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DLQ_NOREASON) as sender:
        sender.send_messages(ServiceBusMessage(b"plain-dl", message_id="dl-2"))
    with sb_client.get_queue_receiver(Q_DLQ_NOREASON) as receiver:
        (m,) = receive_n(receiver, 1)
        receiver.dead_letter_message(m)
        assert_empty(receiver)
    with sb_client.get_queue_receiver(Q_DLQ_NOREASON, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (d,) = receive_n(dlq, 1)
        assert d.message_id == "dl-2"
        assert d.dead_letter_reason is None
        assert d.dead_letter_error_description is None
        dlq.complete_message(d)


def test_receive_and_delete_removes_on_receive(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_RAD) as sender:
        sender.send_messages([ServiceBusMessage(f"rad-{i}", message_id=f"rad-{i}") for i in range(3)])
    with sb_client.get_queue_receiver(Q_RAD, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        msgs = receive_n(receiver, 3)
        assert [m.message_id for m in msgs] == ["rad-0", "rad-1", "rad-2"]
        assert [m.sequence_number for m in msgs] == [1, 2, 3]
        assert all(m.delivery_count == 0 for m in msgs)
        with pytest.raises(ValueError):
            receiver.complete_message(msgs[0])  # SDK refuses to settle in RECEIVE_AND_DELETE
    with sb_client.get_queue_receiver(Q_RAD) as receiver:
        assert_empty(receiver, wait=3)
        assert receiver.peek_messages(10, sequence_number=1) == []


def test_settling_twice_is_refused(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DOUBLE) as sender:
        sender.send_messages(ServiceBusMessage(b"once"))
    with sb_client.get_queue_receiver(Q_DOUBLE) as receiver:
        (m,) = receive_n(receiver, 1)
        receiver.complete_message(m)
        with pytest.raises(MessageAlreadySettled):
            receiver.complete_message(m)
        assert_empty(receiver)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_released_messages_do_not_count_as_delivery(sb_client: ServiceBusClient, make_client, conn_str: str) -> None:
    """With prefetch 0 the SDK releases every message that arrives outside a receive call.

    Receiver 1 leaves one credit outstanding after an empty receive; the message sent
    afterwards is delivered to it and released by its keep-alive thread (every 5 s).
    Receiver 2 must then get it well before the 60 s lock would expire, with delivery_count 0.
    """
    other = make_client(conn_str)
    r1 = sb_client.get_queue_receiver(Q_RELEASE, prefetch_count=0)
    with r1:
        assert r1.receive_messages(max_message_count=1, max_wait_time=1) == []
        with sb_client.get_queue_sender(Q_RELEASE) as sender:
            sender.send_messages(ServiceBusMessage(b"released", message_id="rel-1"))
        time.sleep(8)  # > keep-alive interval: the delivery has been released by now
        with other.get_queue_receiver(Q_RELEASE) as r2:
            msgs = receive_n(r2, 1, timeout=15)
            assert len(msgs) == 1, "released message was not made available again"
            m = msgs[0]
            assert m.message_id == "rel-1"
            assert m.delivery_count == 0
            r2.complete_message(m)
