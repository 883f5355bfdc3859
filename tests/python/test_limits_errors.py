"""Duplicate detection, size limit, error mapping (not found / auth) and competing receivers."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Dict, List

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
)

from kbutil import assert_empty, body_bytes, declare_queue, receive_all, receive_n

Q_DUP = declare_queue("le-dup", requires_duplicate_detection=True, duplicate_detection_history_time_window="1m")
Q_NODUP = declare_queue("le-nodup")
Q_SMALL = declare_queue("le-small", max_message_size=1024)
Q_AUTH = declare_queue("le-auth")
Q_COMPETE = declare_queue("le-compete", lock_duration="30s")

MISSING = "le-does-not-exist"


def test_duplicate_detection_drops_same_message_id(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_DUP) as sender:
        sender.send_messages(ServiceBusMessage(b"first", message_id="dup-1"))
        sender.send_messages(ServiceBusMessage(b"second", message_id="dup-1"))  # accepted, silently dropped
        sender.send_messages(ServiceBusMessage(b"other", message_id="dup-2"))
        with sb_client.get_queue_receiver(Q_DUP) as receiver:
            msgs = receive_n(receiver, 3, timeout=6, max_wait_time=2)
            assert [m.message_id for m in msgs] == ["dup-1", "dup-2"]
            assert body_bytes(msgs[0]) == b"first"
            for m in msgs:
                receiver.complete_message(m)
            # still inside the detection window: a resend after consumption is dropped too
            sender.send_messages(ServiceBusMessage(b"third", message_id="dup-1"))
            assert_empty(receiver, wait=3)
            assert receiver.peek_messages(10, sequence_number=1) == []


def test_without_duplicate_detection_same_id_is_delivered_twice(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_NODUP) as sender:
        sender.send_messages(ServiceBusMessage(b"a", message_id="same"))
        sender.send_messages(ServiceBusMessage(b"b", message_id="same"))
    with sb_client.get_queue_receiver(Q_NODUP) as receiver:
        msgs = receive_n(receiver, 2)
        assert [(m.message_id, body_bytes(m)) for m in msgs] == [("same", b"a"), ("same", b"b")]
        assert [m.sequence_number for m in msgs] == [1, 2]
        for m in msgs:
            receiver.complete_message(m)


def test_message_over_entity_max_size_is_rejected(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_SMALL) as sender:
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(ServiceBusMessage(b"x" * 2000, message_id="too-big"))
        # the link stays usable and a small message goes through
        sender.send_messages(ServiceBusMessage(b"y" * 100, message_id="small"))
    with sb_client.get_queue_receiver(Q_SMALL) as receiver:
        peeked = receiver.peek_messages(10, sequence_number=1)
        assert [p.message_id for p in peeked] == ["small"]
        msgs = receive_n(receiver, 2, timeout=5, max_wait_time=2)
        assert [m.message_id for m in msgs] == ["small"]
        assert body_bytes(msgs[0]) == b"y" * 100
        receiver.complete_message(msgs[0])


def test_send_to_missing_queue_raises_entity_not_found(conn_str: str) -> None:
    with ServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        with pytest.raises(MessagingEntityNotFoundError):
            with client.get_queue_sender(MISSING) as sender:
                sender.send_messages(ServiceBusMessage(b"nowhere"))


def test_receive_from_missing_queue_raises_entity_not_found(conn_str: str) -> None:
    with ServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        with pytest.raises(MessagingEntityNotFoundError):
            with client.get_queue_receiver(MISSING) as receiver:
                receiver.receive_messages(max_message_count=1, max_wait_time=3)


def test_wrong_key_raises_authentication_error(broker, sb_client: ServiceBusClient) -> None:
    bad = broker.conn_str_with_key("bm90LXRoZS1yaWdodC1rZXk=")
    with ServiceBusClient.from_connection_string(bad, retry_total=0) as client:
        with pytest.raises(ServiceBusAuthenticationError):
            with client.get_queue_sender(Q_AUTH) as sender:
                sender.send_messages(ServiceBusMessage(b"should-not-arrive"))
        with pytest.raises(ServiceBusAuthenticationError):
            with client.get_queue_receiver(Q_AUTH) as receiver:
                receiver.receive_messages(max_message_count=1, max_wait_time=2)
    # nothing was stored
    with sb_client.get_queue_receiver(Q_AUTH) as receiver:
        assert receiver.peek_messages(10, sequence_number=1) == []


@pytest.mark.timeout(150)
def test_competing_receivers_each_message_exactly_once(
    conn_str: str, make_client: Callable[..., ServiceBusClient], sb_client: ServiceBusClient
) -> None:
    total = 300
    expected = {f"cm-{i:03d}" for i in range(total)}
    received: List[str] = []
    per_thread: Dict[int, int] = collections.Counter()
    errors: List[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()  # all messages seen
    stop = threading.Event()  # receivers may quit
    deadline = time.monotonic() + 100

    def worker(idx: int) -> None:
        client = make_client(conn_str)
        try:
            with client.get_queue_receiver(Q_COMPETE) as receiver:
                while not stop.is_set() and time.monotonic() < deadline:
                    msgs = receiver.receive_messages(max_message_count=10, max_wait_time=2)
                    for m in msgs:
                        receiver.complete_message(m)
                        with lock:
                            received.append(m.message_id)
                            per_thread[idx] += 1
                            if len(received) >= total:
                                done.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    with sb_client.get_queue_sender(Q_COMPETE) as sender:
        for start in range(0, total, 50):
            sender.send_messages([ServiceBusMessage(f"body-{i}", message_id=f"cm-{i:03d}") for i in range(start, start + 50)])
    done.wait(timeout=max(1.0, deadline - time.monotonic()))
    # let the receivers run a little longer: a duplicate delivery would show up now
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, f"receiver errors: {errors!r}"
    dupes = [k for k, v in collections.Counter(received).items() if v > 1]
    assert dupes == [], f"delivered more than once: {dupes[:20]}"
    assert set(received) == expected, f"missing: {sorted(expected - set(received))[:20]}"
    assert len(received) == total
    assert sum(per_thread.values()) == total
    with sb_client.get_queue_receiver(Q_COMPETE) as receiver:
        assert receive_all(receiver, quiet=2) == []
