"""Sending (single, list, batch), body types, property round-trip and broker annotations."""

from __future__ import annotations

import datetime
import uuid

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch, ServiceBusMessageState
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageBodyType

from kbutil import approx_time, assert_empty, body_bytes, declare_queue, receive_n, utcnow

Q_SINGLE = declare_queue("sr-single", lock_duration="30s")
Q_LIST = declare_queue("sr-list")
Q_BATCH = declare_queue("sr-batch")
Q_STR = declare_queue("sr-body-str")
Q_VALUE = declare_queue("sr-body-value")
Q_SEQUENCE = declare_queue("sr-body-sequence")
Q_PROPS = declare_queue("sr-props")
Q_SEQ_A = declare_queue("sr-seq-a")
Q_SEQ_B = declare_queue("sr-seq-b")
Q_RESEND_SRC = declare_queue("sr-resend-src")
Q_RESEND_DST = declare_queue("sr-resend-dst")
Q_EMPTY = declare_queue("sr-empty-body")


def test_send_single_and_receive_annotations(sb_client: ServiceBusClient) -> None:
    before = utcnow()
    with sb_client.get_queue_sender(Q_SINGLE) as sender:
        sender.send_messages(ServiceBusMessage(b"hello-single", message_id="single-1"))
    with sb_client.get_queue_receiver(Q_SINGLE) as receiver:
        msgs = receiver.receive_messages(max_message_count=5, max_wait_time=5)
        received_at = utcnow()
        assert len(msgs) == 1
        msg = msgs[0]
        assert body_bytes(msg) == b"hello-single"
        assert msg.body_type == AmqpMessageBodyType.DATA
        assert msg.message_id == "single-1"
        assert msg.sequence_number == 1
        assert msg.delivery_count == 0
        assert msg.state == ServiceBusMessageState.ACTIVE
        approx_time(msg.enqueued_time_utc, before, 5.0, "enqueued_time_utc")
        assert msg.enqueued_time_utc <= received_at + datetime.timedelta(seconds=1)
        # lock duration of the queue is 30 s
        approx_time(msg.locked_until_utc, received_at + datetime.timedelta(seconds=30), 5.0, "locked_until_utc")
        assert isinstance(msg.lock_token, uuid.UUID)
        receiver.complete_message(msg)
        assert_empty(receiver)


def test_send_list_in_order(sb_client: ServiceBusClient) -> None:
    bodies = [f"list-{i}".encode() for i in range(3)]
    with sb_client.get_queue_sender(Q_LIST) as sender:
        sender.send_messages([ServiceBusMessage(b, message_id=f"L{i}") for i, b in enumerate(bodies)])
    with sb_client.get_queue_receiver(Q_LIST) as receiver:
        msgs = receive_n(receiver, 3)
        assert [body_bytes(m) for m in msgs] == bodies
        assert [m.message_id for m in msgs] == ["L0", "L1", "L2"]
        assert [m.sequence_number for m in msgs] == [1, 2, 3]
        assert [m.delivery_count for m in msgs] == [0, 0, 0]
        for m in msgs:
            receiver.complete_message(m)
        assert_empty(receiver)


def test_send_message_batch_keeps_each_message_own_properties(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_BATCH) as sender:
        batch = sender.create_message_batch()
        assert isinstance(batch, ServiceBusMessageBatch)
        for i in range(5):
            batch.add_message(
                ServiceBusMessage(
                    f"batch-{i}".encode(),
                    message_id=f"B{i}",
                    subject=f"subject-{i}",
                    application_properties={"index": i, "tag": f"t{i}"},
                )
            )
        assert len(batch) == 5
        sender.send_messages(batch)
    with sb_client.get_queue_receiver(Q_BATCH) as receiver:
        msgs = receive_n(receiver, 5)
        assert len(msgs) == 5
        for i, m in enumerate(msgs):
            assert body_bytes(m) == f"batch-{i}".encode()
            # the batch envelope copies the first message's id: it must not leak into the others
            assert m.message_id == f"B{i}"
            assert m.subject == f"subject-{i}"
            assert m.application_properties == {b"index": i, b"tag": f"t{i}".encode()}
            assert m.sequence_number == i + 1
            receiver.complete_message(m)
        assert_empty(receiver)


def test_str_body_round_trip(sb_client: ServiceBusClient) -> None:
    text = "héllo wörld ✓"
    with sb_client.get_queue_sender(Q_STR) as sender:
        sender.send_messages(ServiceBusMessage(text))
    with sb_client.get_queue_receiver(Q_STR) as receiver:
        (msg,) = receive_n(receiver, 1)
        assert msg.body_type == AmqpMessageBodyType.DATA
        assert body_bytes(msg) == text.encode("utf-8")
        assert str(msg) == text
        receiver.complete_message(msg)


def test_amqp_value_bodies(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_VALUE) as sender:
        sender.send_messages(AmqpAnnotatedMessage(value_body={"k": "v", "n": [1, 2, 3], "f": 2.5, "t": True}))
        sender.send_messages(AmqpAnnotatedMessage(value_body="plain-string"))
        sender.send_messages(AmqpAnnotatedMessage(value_body=123456789))
    with sb_client.get_queue_receiver(Q_VALUE) as receiver:
        msgs = receive_n(receiver, 3)
        assert len(msgs) == 3
        assert all(m.body_type == AmqpMessageBodyType.VALUE for m in msgs)
        # pyamqp decodes AMQP strings as bytes
        assert msgs[0].body == {b"k": b"v", b"n": [1, 2, 3], b"f": 2.5, b"t": True}
        assert msgs[1].body == b"plain-string"
        assert msgs[2].body == 123456789
        assert [m.sequence_number for m in msgs] == [1, 2, 3]
        for m in msgs:
            receiver.complete_message(m)


def test_amqp_sequence_body(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_SEQUENCE) as sender:
        sender.send_messages(AmqpAnnotatedMessage(sequence_body=[1, "two", b"three", 4.5]))
    with sb_client.get_queue_receiver(Q_SEQUENCE) as receiver:
        (msg,) = receive_n(receiver, 1)
        assert msg.body_type == AmqpMessageBodyType.SEQUENCE
        assert list(msg.body) == [[1, b"two", b"three", 4.5]]
        receiver.complete_message(msg)


def test_empty_and_none_bodies(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_EMPTY) as sender:
        sender.send_messages(ServiceBusMessage(b"", message_id="empty"))
        sender.send_messages(ServiceBusMessage(None, message_id="none"))
    with sb_client.get_queue_receiver(Q_EMPTY) as receiver:
        msgs = receive_n(receiver, 2)
        assert [m.message_id for m in msgs] == ["empty", "none"]
        assert body_bytes(msgs[0]) == b""
        # PY sends `amqp-value null` for body=None: it must come back as a null value body
        assert msgs[1].body_type == AmqpMessageBodyType.VALUE
        assert msgs[1].body is None
        for m in msgs:
            receiver.complete_message(m)


def test_all_properties_round_trip(sb_client: ServiceBusClient) -> None:
    app_props = {"s": "text", "i": 42, "neg": -7, "f": 1.5, "b": True, "nb": False}
    with sb_client.get_queue_sender(Q_PROPS) as sender:
        sender.send_messages(
            ServiceBusMessage(
                b"props",
                message_id="mid-123",
                correlation_id="cid-456",
                subject="the-subject",
                content_type="application/json",
                reply_to="reply-queue",
                to="destination",
                time_to_live=datetime.timedelta(hours=1),
                application_properties=app_props,
            )
        )
    with sb_client.get_queue_receiver(Q_PROPS) as receiver:
        (msg,) = receive_n(receiver, 1)
        assert body_bytes(msg) == b"props"
        assert msg.message_id == "mid-123"
        assert msg.correlation_id == "cid-456"
        assert msg.subject == "the-subject"
        assert msg.content_type == "application/json"
        assert msg.reply_to == "reply-queue"
        assert msg.to == "destination"
        assert msg.session_id is None
        assert msg.time_to_live == datetime.timedelta(hours=1)
        # pyamqp hands application property keys and string values back as bytes
        assert msg.application_properties == {
            b"s": b"text",
            b"i": 42,
            b"neg": -7,
            b"f": 1.5,
            b"b": True,
            b"nb": False,
        }
        assert msg.expires_at_utc is not None
        approx_time(msg.expires_at_utc, msg.enqueued_time_utc + datetime.timedelta(hours=1), 2.0, "expires_at_utc")
        receiver.complete_message(msg)


def test_sequence_numbers_are_per_queue_and_rise_from_one(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_SEQ_A) as sa, sb_client.get_queue_sender(Q_SEQ_B) as sb:
        for i in range(3):
            sa.send_messages(ServiceBusMessage(f"a{i}"))
        for i in range(2):
            sb.send_messages(ServiceBusMessage(f"b{i}"))
        with sb_client.get_queue_receiver(Q_SEQ_A) as ra, sb_client.get_queue_receiver(Q_SEQ_B) as rb:
            a = receive_n(ra, 3)
            b = receive_n(rb, 2)
            assert [m.sequence_number for m in a] == [1, 2, 3]
            assert [m.sequence_number for m in b] == [1, 2]
            assert [str(m) for m in a] == ["a0", "a1", "a2"]
            for m in a:
                ra.complete_message(m)
            for m in b:
                rb.complete_message(m)
            # completing does not recycle sequence numbers
            sa.send_messages(ServiceBusMessage("a3"))
            (a3,) = receive_n(ra, 1)
            assert a3.sequence_number == 4
            assert a3.delivery_count == 0
            ra.complete_message(a3)


def test_resending_a_received_message_gets_fresh_broker_annotations(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_RESEND_SRC) as src:
        for i in range(3):  # move the source sequence number away from 1
            src.send_messages(ServiceBusMessage(f"filler-{i}"))
        src.send_messages(ServiceBusMessage(b"resend-me", message_id="resend-1", application_properties={"k": "v"}))
    with sb_client.get_queue_receiver(Q_RESEND_SRC) as receiver:
        msgs = receive_n(receiver, 4)
        original = msgs[-1]
        assert original.sequence_number == 4
        receiver.abandon_message(original)  # delivery_count on the source becomes 1
        (again,) = receive_n(receiver, 1)
        assert again.sequence_number == 4 and again.delivery_count == 1
        with sb_client.get_queue_sender(Q_RESEND_DST) as dst:
            dst.send_messages(again)
        for m in msgs[:-1] + [again]:
            receiver.complete_message(m)
    with sb_client.get_queue_receiver(Q_RESEND_DST) as receiver:
        (copy,) = receive_n(receiver, 1)
        assert body_bytes(copy) == b"resend-me"
        assert copy.message_id == "resend-1"
        assert copy.application_properties == {b"k": b"v"}
        # broker-owned annotations of the old copy must be replaced
        assert copy.sequence_number == 1
        assert copy.delivery_count == 0
        assert copy.enqueued_time_utc >= again.enqueued_time_utc
        receiver.complete_message(copy)
