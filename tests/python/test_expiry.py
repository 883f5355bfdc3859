"""Lock expiry, max delivery count and time-to-live."""

from __future__ import annotations

import datetime
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageLockLostError

from kbutil import assert_empty, body_bytes, declare_queue, receive_n, utcnow

Q_LOCK_EXPIRY = declare_queue("ex-lock-expiry", lock_duration="5s")
Q_MAX_DELIVERY = declare_queue("ex-max-delivery", max_delivery_count=3)
Q_MAX_DELIVERY_EXPIRY = declare_queue("ex-max-delivery-expiry", lock_duration="5s", max_delivery_count=1)
Q_TTL = declare_queue("ex-ttl")
Q_TTL_DLQ = declare_queue("ex-ttl-dlq", dead_lettering_on_message_expiration=True)
Q_DEFAULT_TTL = declare_queue("ex-default-ttl", default_message_time_to_live="2s")

pytestmark = pytest.mark.slow


def test_lock_expiry_redelivers_and_old_lock_is_lost(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_LOCK_EXPIRY) as sender:
        sender.send_messages(ServiceBusMessage(b"expire-my-lock", message_id="le"))
    with sb_client.get_queue_receiver(Q_LOCK_EXPIRY) as receiver:
        (m1,) = receive_n(receiver, 1)
        assert m1.delivery_count == 0
        token1 = m1.lock_token
        time.sleep(6)
        msgs = receive_n(receiver, 1, timeout=10)
        assert len(msgs) == 1, "message was not redelivered after its lock expired"
        m2 = msgs[0]
        assert m2.message_id == "le"
        assert body_bytes(m2) == b"expire-my-lock"
        assert m2.sequence_number == m1.sequence_number
        assert m2.delivery_count == 1
        assert m2.lock_token != token1

        # the SDK refuses locally once locked_until_utc has passed ...
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(m1)
        # ... and the broker must refuse the stale token too: over $management (renew-lock) ...
        with pytest.raises(MessageLockLostError):
            receiver.renew_message_lock(m1)
        # ... and over the receive link (pretend the local lock is still valid)
        m1._expiry = utcnow() + datetime.timedelta(minutes=1)  # pylint: disable=protected-access
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(m1)

        receiver.complete_message(m2)
        assert_empty(receiver, wait=2)


def test_max_delivery_count_dead_letters_after_abandons(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_MAX_DELIVERY) as sender:
        sender.send_messages(ServiceBusMessage(b"retry-me", message_id="mdc", application_properties={"k": 1}))
    with sb_client.get_queue_receiver(Q_MAX_DELIVERY) as receiver:
        counts = []
        for _ in range(3):
            msgs = receive_n(receiver, 1, timeout=10)
            assert len(msgs) == 1, f"message missing after {len(counts)} abandons"
            counts.append(msgs[0].delivery_count)
            receiver.abandon_message(msgs[0])
        assert counts == [0, 1, 2]
        assert_empty(receiver, wait=3)
    with sb_client.get_queue_receiver(Q_MAX_DELIVERY, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (d,) = receive_n(dlq, 1, timeout=10)
        assert d.message_id == "mdc"
        assert body_bytes(d) == b"retry-me"
        assert d.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert d.application_properties[b"k"] == 1
        dlq.complete_message(d)
        assert_empty(dlq, wait=2)


def test_max_delivery_count_reached_by_lock_expiry(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_MAX_DELIVERY_EXPIRY) as sender:
        sender.send_messages(ServiceBusMessage(b"never-settled", message_id="mdce"))
    with sb_client.get_queue_receiver(Q_MAX_DELIVERY_EXPIRY) as receiver:
        (m,) = receive_n(receiver, 1)
        assert m.delivery_count == 0
        time.sleep(6.5)  # lock (5 s) expires -> count 1 == max_delivery_count -> DLQ
        assert_empty(receiver, wait=3)
    with sb_client.get_queue_receiver(Q_MAX_DELIVERY_EXPIRY, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (d,) = receive_n(dlq, 1, timeout=10)
        assert d.message_id == "mdce"
        assert d.dead_letter_reason == "MaxDeliveryCountExceeded"
        dlq.complete_message(d)


def test_message_ttl_expired_is_not_delivered(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_TTL) as sender:
        sender.send_messages(ServiceBusMessage(b"short", message_id="short", time_to_live=datetime.timedelta(seconds=1)))
        sender.send_messages(ServiceBusMessage(b"long", message_id="long"))
    time.sleep(2.5)
    with sb_client.get_queue_receiver(Q_TTL) as receiver:
        msgs = receive_n(receiver, 2, timeout=4, max_wait_time=2)
        assert [m.message_id for m in msgs] == ["long"]
        assert msgs[0].sequence_number == 2
        receiver.complete_message(msgs[0])
        assert_empty(receiver, wait=2)
    # no dead-lettering on expiration for this queue
    with sb_client.get_queue_receiver(Q_TTL, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        assert_empty(dlq, wait=2)


def test_message_ttl_expired_is_dead_lettered_when_enabled(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_TTL_DLQ) as sender:
        sender.send_messages(
            ServiceBusMessage(b"expiring", message_id="exp", time_to_live=datetime.timedelta(seconds=1))
        )
    time.sleep(2.5)
    with sb_client.get_queue_receiver(Q_TTL_DLQ) as receiver:
        assert_empty(receiver, wait=2)
    with sb_client.get_queue_receiver(Q_TTL_DLQ, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        msgs = receive_n(dlq, 1, timeout=10)
        assert len(msgs) == 1, "expired message did not reach the dead-letter queue"
        d = msgs[0]
        assert d.message_id == "exp"
        assert body_bytes(d) == b"expiring"
        assert d.dead_letter_reason == "TTLExpiredException"
        dlq.complete_message(d)
        assert_empty(dlq, wait=2)


def test_entity_default_ttl_applies_and_caps_message_ttl(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DEFAULT_TTL) as sender:
        sender.send_messages(ServiceBusMessage(b"fresh", message_id="fresh"))
        with sb_client.get_queue_receiver(Q_DEFAULT_TTL) as receiver:
            (fresh,) = receive_n(receiver, 1)
            assert fresh.message_id == "fresh"
            receiver.complete_message(fresh)

            sender.send_messages(ServiceBusMessage(b"no-ttl", message_id="no-ttl"))
            sender.send_messages(
                ServiceBusMessage(b"long-ttl", message_id="long-ttl", time_to_live=datetime.timedelta(hours=1))
            )
            time.sleep(3.5)  # entity default TTL is 2 s
            assert_empty(receiver, wait=3)
            # and nothing was dead-lettered (dead_lettering_on_message_expiration is off)
        with sb_client.get_queue_receiver(Q_DEFAULT_TTL, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            assert_empty(dlq, wait=2)
