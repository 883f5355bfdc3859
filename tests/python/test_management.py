"""$management operations: peek, schedule / cancel, deferred retrieval, renew-lock."""

from __future__ import annotations

import datetime
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageState
from azure.servicebus.exceptions import MessageNotFoundError

from kbutil import approx_time, assert_empty, body_bytes, declare_queue, receive_n, utcnow

Q_PEEK = declare_queue("mg-peek")
Q_PEEK_STATES = declare_queue("mg-peek-states")
Q_SCHEDULE = declare_queue("mg-schedule")
Q_CANCEL = declare_queue("mg-cancel")
Q_RENEW = declare_queue("mg-renew", lock_duration="5s")
Q_DEFER_NOTFOUND = declare_queue("mg-deferred-notfound")


def test_peek_does_not_lock_and_pages_by_sequence_number(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_PEEK) as sender:
        sender.send_messages([ServiceBusMessage(f"p{i}", message_id=f"p{i}") for i in range(1, 6)])
    with sb_client.get_queue_receiver(Q_PEEK) as receiver:
        all_peeked = receiver.peek_messages(10, sequence_number=1)
        assert [m.sequence_number for m in all_peeked] == [1, 2, 3, 4, 5]
        assert [m.message_id for m in all_peeked] == ["p1", "p2", "p3", "p4", "p5"]
        assert [body_bytes(m) for m in all_peeked] == [b"p1", b"p2", b"p3", b"p4", b"p5"]
        assert all(m.delivery_count == 0 for m in all_peeked)
        assert all(m.state == ServiceBusMessageState.ACTIVE for m in all_peeked)
        assert all(m.enqueued_time_utc is not None for m in all_peeked)

        middle = receiver.peek_messages(2, sequence_number=3)
        assert [m.sequence_number for m in middle] == [3, 4]
        assert receiver.peek_messages(10, sequence_number=6) == []

    # a fresh receiver pages from 1, then continues from last peeked + 1 (client-side cursor)
    with sb_client.get_queue_receiver(Q_PEEK) as receiver:
        assert [m.sequence_number for m in receiver.peek_messages(1)] == [1]
        assert [m.sequence_number for m in receiver.peek_messages(2)] == [2, 3]
        assert [m.sequence_number for m in receiver.peek_messages(10)] == [4, 5]

        # peeking did not lock or count anything
        msgs = receive_n(receiver, 5)
        assert [m.sequence_number for m in msgs] == [1, 2, 3, 4, 5]
        assert [m.delivery_count for m in msgs] == [0, 0, 0, 0, 0]
        receiver.complete_message(msgs[0])
        receiver.complete_message(msgs[2])
        # peek skips completed messages but shows locked ones
        assert [m.sequence_number for m in receiver.peek_messages(10, sequence_number=1)] == [2, 4, 5]
        for m in (msgs[1], msgs[3], msgs[4]):
            receiver.complete_message(m)
        assert receiver.peek_messages(10, sequence_number=1) == []


def test_peek_shows_scheduled_and_deferred_states(sb_client: ServiceBusClient) -> None:
    when = utcnow() + datetime.timedelta(minutes=5)
    with sb_client.get_queue_sender(Q_PEEK_STATES) as sender:
        sender.send_messages(ServiceBusMessage(b"to-defer", message_id="defer"))
        (sched_seq,) = sender.schedule_messages(ServiceBusMessage(b"scheduled", message_id="sched"), when)
        assert sched_seq == 2
        with sb_client.get_queue_receiver(Q_PEEK_STATES) as receiver:
            (m,) = receive_n(receiver, 1)
            assert m.message_id == "defer"
            receiver.defer_message(m)

            peeked = receiver.peek_messages(10, sequence_number=1)
            assert [p.sequence_number for p in peeked] == [1, 2]
            by_id = {p.message_id: p for p in peeked}
            assert by_id["defer"].state == ServiceBusMessageState.DEFERRED
            assert by_id["sched"].state == ServiceBusMessageState.SCHEDULED
            approx_time(by_id["sched"].scheduled_enqueue_time_utc, when, 1.0, "scheduled_enqueue_time_utc")
            assert body_bytes(by_id["sched"]) == b"scheduled"

            # scheduled and deferred messages are not handed to plain receivers
            assert_empty(receiver, wait=2)

            sender.cancel_scheduled_messages(sched_seq)
            (d,) = receiver.receive_deferred_messages(1)
            receiver.complete_message(d)
            assert receiver.peek_messages(10, sequence_number=1) == []


@pytest.mark.slow
def test_schedule_message_invisible_until_due(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_SCHEDULE) as sender:
        sender.send_messages(ServiceBusMessage(b"now", message_id="now"))  # seq 1
        when = utcnow() + datetime.timedelta(seconds=3)
        seqs = sender.schedule_messages(ServiceBusMessage(b"later", message_id="later"), when)
        assert seqs == [2]
    with sb_client.get_queue_receiver(Q_SCHEDULE) as receiver:
        (now_msg,) = receive_n(receiver, 1)
        assert now_msg.message_id == "now"
        receiver.complete_message(now_msg)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
        msgs = receive_n(receiver, 1, timeout=15)
        received_at = utcnow()
        assert len(msgs) == 1, "scheduled message was never delivered"
        m = msgs[0]
        assert received_at >= when - datetime.timedelta(milliseconds=500), "delivered before its scheduled time"
        assert m.message_id == "later"
        assert body_bytes(m) == b"later"
        assert m.sequence_number == 2
        assert m.delivery_count == 0
        assert m.state == ServiceBusMessageState.ACTIVE
        approx_time(m.scheduled_enqueue_time_utc, when, 1.0, "scheduled_enqueue_time_utc")
        receiver.complete_message(m)
        assert_empty(receiver)


@pytest.mark.slow
def test_cancel_scheduled_message_is_never_delivered(sb_client: ServiceBusClient) -> None:
    when = utcnow() + datetime.timedelta(seconds=3)
    with sb_client.get_queue_sender(Q_CANCEL) as sender:
        seqs = sender.schedule_messages(
            [ServiceBusMessage(b"cancel-me", message_id="c"), ServiceBusMessage(b"keep-me", message_id="k")], when
        )
        assert seqs == [1, 2]
        sender.cancel_scheduled_messages(seqs[0])
    with sb_client.get_queue_receiver(Q_CANCEL) as receiver:
        peeked = receiver.peek_messages(10, sequence_number=1)
        assert [(p.sequence_number, p.message_id, p.state) for p in peeked] == [(2, "k", ServiceBusMessageState.SCHEDULED)]
        time.sleep(4)
        msgs = receive_n(receiver, 2, timeout=6)
        assert [m.message_id for m in msgs] == ["k"]
        receiver.complete_message(msgs[0])
        assert_empty(receiver, wait=2)


@pytest.mark.slow
def test_renew_lock_extends_lock(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_RENEW) as sender:
        sender.send_messages(ServiceBusMessage(b"renew-me", message_id="rn"))
    with sb_client.get_queue_receiver(Q_RENEW) as receiver:
        (m,) = receive_n(receiver, 1)
        first_until = m.locked_until_utc
        approx_time(first_until, utcnow() + datetime.timedelta(seconds=5), 2.0, "locked_until_utc")
        time.sleep(2)
        new_until = receiver.renew_message_lock(m)
        assert isinstance(new_until, datetime.datetime)
        assert new_until > first_until + datetime.timedelta(seconds=1), (first_until, new_until)
        approx_time(new_until, utcnow() + datetime.timedelta(seconds=5), 2.0, "renewed locked_until")
        assert m.locked_until_utc == new_until
        time.sleep(4)  # past the original expiry, inside the renewed one
        assert utcnow() > first_until
        receiver.complete_message(m)  # must succeed at the broker
        assert_empty(receiver, wait=3)


def test_receive_deferred_for_non_deferred_sequence_number_is_not_found(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DEFER_NOTFOUND) as sender:
        sender.send_messages(ServiceBusMessage(b"active"))
    with sb_client.get_queue_receiver(Q_DEFER_NOTFOUND) as receiver:
        with pytest.raises(MessageNotFoundError):
            receiver.receive_deferred_messages([1])  # active, not deferred
        with pytest.raises(MessageNotFoundError):
            receiver.receive_deferred_messages([999])  # never existed
        (m,) = receive_n(receiver, 1)
        assert m.sequence_number == 1 and m.delivery_count == 0
        receiver.complete_message(m)
