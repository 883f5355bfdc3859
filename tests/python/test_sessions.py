"""Sessions (wire reference §4.4): named and next-available session receivers, FIFO within a
session, one lock holder per session, session lock renewal and expiry, session state,
listing sessions, deferral and peek within a session, session subscriptions."""

from __future__ import annotations

import datetime
import time

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
)
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from kbutil import assert_empty, body_bytes, declare_queue, declare_toml, receive_n

Q_FIFO = declare_queue("sess-fifo", requires_session=True)
Q_NEXT = declare_queue("sess-next", requires_session=True)
Q_EMPTY = declare_queue("sess-empty", requires_session=True)
Q_LOCK = declare_queue("sess-lock", requires_session=True)
Q_EXPIRE = declare_queue("sess-expire", requires_session=True, lock_duration="2s")
Q_STATE = declare_queue("sess-state", requires_session=True)
Q_LIST = declare_queue("sess-list", requires_session=True)
Q_DEFER = declare_queue("sess-defer", requires_session=True)
Q_RAD = declare_queue("sess-rad", requires_session=True)
Q_ASYNC = declare_queue("sess-async", requires_session=True)
Q_PLAIN = declare_queue("sess-plain")

declare_toml(
    """
[[topics]]
name = "sess-topic"

[[topics.subscriptions]]
name = "by-session"
requires_session = true
"""
)


def send(client: ServiceBusClient, queue: str, items: list[tuple[str, str]]) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(body, session_id=sid) for sid, body in items])


def test_named_session_is_fifo_and_reports_its_lock(sb_client: ServiceBusClient) -> None:
    send(
        sb_client,
        Q_FIFO,
        [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3")],
    )
    with sb_client.get_queue_receiver(Q_FIFO, session_id="a") as receiver:
        assert receiver.session.session_id == "a"
        until = receiver.session.locked_until_utc
        assert until is not None
        now = datetime.datetime.now(datetime.timezone.utc)
        assert now < until < now + datetime.timedelta(seconds=70)
        msgs = receive_n(receiver, 3)
        assert [body_bytes(m) for m in msgs] == [b"a1", b"a2", b"a3"]
        assert all(m.session_id == "a" for m in msgs)
        for m in msgs:
            receiver.complete_message(m)
        assert_empty(receiver, wait=1)
    with sb_client.get_queue_receiver(Q_FIFO, session_id="b") as receiver:
        msgs = receive_n(receiver, 2)
        assert [body_bytes(m) for m in msgs] == [b"b1", b"b2"]
        for m in msgs:
            receiver.complete_message(m)


def test_messages_without_session_id_are_refused(sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_FIFO) as sender:
        with pytest.raises(ServiceBusError, match="SessionId"):
            sender.send_messages(ServiceBusMessage("no session"))
    # A plain receiver on a session queue and a session receiver on a plain queue are refused.
    with pytest.raises(ServiceBusError, match="requires sessions"):
        with sb_client.get_queue_receiver(Q_FIFO, max_wait_time=2) as receiver:
            receiver.receive_messages(max_wait_time=2)
    with pytest.raises(ServiceBusError, match="does not require sessions"):
        with sb_client.get_queue_receiver(Q_PLAIN, session_id="x", max_wait_time=2) as receiver:
            receiver.receive_messages(max_wait_time=2)


def test_next_available_session(sb_client: ServiceBusClient) -> None:
    send(sb_client, Q_NEXT, [("n1", "x"), ("n2", "y")])
    seen = set()
    for _ in range(2):
        with sb_client.get_queue_receiver(
            Q_NEXT, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
        ) as receiver:
            sid = receiver.session.session_id
            assert sid in ("n1", "n2")
            seen.add(sid)
            [m] = receive_n(receiver, 1)
            assert m.session_id == sid
            receiver.complete_message(m)
    assert seen == {"n1", "n2"}


def test_next_available_session_times_out_when_none(sb_client: ServiceBusClient) -> None:
    start = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        with sb_client.get_queue_receiver(
            Q_EMPTY, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2
        ) as receiver:
            receiver.receive_messages(max_wait_time=2)
    assert time.monotonic() - start < 30


def test_next_available_waits_for_a_message(conn_str: str, sb_client: ServiceBusClient) -> None:
    """A next-available receiver attached before any message gets the session sent later."""
    import threading

    def later() -> None:
        time.sleep(1.5)
        with ServiceBusClient.from_connection_string(conn_str) as c:
            send(c, Q_EMPTY, [("late", "hello")])

    t = threading.Thread(target=later)
    t.start()
    try:
        with sb_client.get_queue_receiver(
            Q_EMPTY, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=15
        ) as receiver:
            assert receiver.session.session_id == "late"
            [m] = receive_n(receiver, 1)
            receiver.complete_message(m)
    finally:
        t.join()


def test_one_holder_per_session(conn_str: str, sb_client: ServiceBusClient) -> None:
    send(sb_client, Q_LOCK, [("held", "1")])
    with sb_client.get_queue_receiver(Q_LOCK, session_id="held") as first:
        [m] = receive_n(first, 1)
        with ServiceBusClient.from_connection_string(conn_str, retry_total=0) as other:
            with pytest.raises(SessionCannotBeLockedError):
                with other.get_queue_receiver(Q_LOCK, session_id="held", max_wait_time=2) as r:
                    r.receive_messages(max_wait_time=2)
        first.complete_message(m)
    # Closing the receiver released the session.
    with sb_client.get_queue_receiver(Q_LOCK, session_id="held", max_wait_time=2) as again:
        assert_empty(again, wait=1)


def test_session_lock_renewal_and_expiry(conn_str: str, sb_client: ServiceBusClient) -> None:
    send(sb_client, Q_EXPIRE, [("exp", "1")])
    with sb_client.get_queue_receiver(Q_EXPIRE, session_id="exp") as receiver:
        [m] = receive_n(receiver, 1)
        first = receiver.session.locked_until_utc
        time.sleep(1.2)
        renewed = receiver.session.renew_lock()
        assert renewed > first
        time.sleep(1.2)  # past the first lock, inside the renewed one
        receiver.complete_message(m)

    send(sb_client, Q_EXPIRE, [("exp", "2")])
    with sb_client.get_queue_receiver(Q_EXPIRE, session_id="exp") as receiver:
        [m] = receive_n(receiver, 1)
        time.sleep(3.5)
        with pytest.raises(SessionLockLostError):
            receiver.complete_message(m)
    # The message comes back with its attempt counted.
    with ServiceBusClient.from_connection_string(conn_str) as c:
        with c.get_queue_receiver(Q_EXPIRE, session_id="exp") as receiver:
            [m] = receive_n(receiver, 1)
            assert body_bytes(m) == b"2"
            assert m.delivery_count == 1
            receiver.complete_message(m)


def test_session_state(sb_client: ServiceBusClient) -> None:
    send(sb_client, Q_STATE, [("st", "1")])
    with sb_client.get_queue_receiver(Q_STATE, session_id="st") as receiver:
        assert receiver.session.get_state() is None
        receiver.session.set_state(b"step-1")
        assert receiver.session.get_state() == b"step-1"
        receiver.session.set_state("step-2")
        [m] = receive_n(receiver, 1)
        receiver.complete_message(m)
    # State outlives the lock and the messages.
    with sb_client.get_queue_receiver(Q_STATE, session_id="st") as receiver:
        assert receiver.session.get_state() == b"step-2"
        receiver.session.set_state(None)
        assert receiver.session.get_state() is None


def test_list_sessions(sb_client: ServiceBusClient) -> None:
    assert list(sb_client.list_queue_sessions(Q_LIST)) == []
    send(sb_client, Q_LIST, [("l-b", "1"), ("l-a", "2"), ("l-b", "3")])
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    with sb_client.get_queue_receiver(Q_LIST, session_id="l-c") as receiver:
        receiver.session.set_state(b"s")
    assert sorted(sb_client.list_queue_sessions(Q_LIST)) == ["l-a", "l-b", "l-c"]
    assert list(sb_client.list_queue_sessions(Q_LIST, state_updated_after=before)) == ["l-c"]
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)
    assert list(sb_client.list_queue_sessions(Q_LIST, state_updated_after=later)) == []


def test_defer_peek_and_receive_deferred_in_a_session(sb_client: ServiceBusClient) -> None:
    send(sb_client, Q_DEFER, [("d", "d1"), ("other", "o1"), ("d", "d2")])
    with sb_client.get_queue_receiver(Q_DEFER, session_id="d") as receiver:
        peeked = receiver.peek_messages(max_message_count=10)
        assert [body_bytes(p) for p in peeked] == [b"d1", b"d2"]
        [m1] = receive_n(receiver, 1)
        seq = m1.sequence_number
        receiver.defer_message(m1)
        [m2] = receive_n(receiver, 1)
        assert body_bytes(m2) == b"d2"
        receiver.complete_message(m2)
        [again] = receiver.receive_deferred_messages([seq])
        assert body_bytes(again) == b"d1"
        assert again.session_id == "d"
        receiver.complete_message(again)
        assert receiver.peek_messages(max_message_count=10) == []
    with sb_client.get_queue_receiver(Q_DEFER, session_id="other") as receiver:
        # Another session's deferred message is not reachable by sequence number.
        with pytest.raises(ServiceBusError):
            receiver.receive_deferred_messages([seq])
        [o] = receive_n(receiver, 1)
        receiver.complete_message(o)


def test_receive_and_delete_session(sb_client: ServiceBusClient) -> None:
    send(sb_client, Q_RAD, [("r", "1"), ("r", "2")])
    with sb_client.get_queue_receiver(
        Q_RAD, session_id="r", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        msgs = receive_n(receiver, 2)
        assert [body_bytes(m) for m in msgs] == [b"1", b"2"]
    assert list(sb_client.list_queue_sessions(Q_RAD)) == []


def test_session_subscription(sb_client: ServiceBusClient) -> None:
    with sb_client.get_topic_sender("sess-topic") as sender:
        sender.send_messages(
            [ServiceBusMessage(f"t{i}", session_id="ts") for i in range(3)]
        )
    with sb_client.get_subscription_receiver(
        "sess-topic", "by-session", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
    ) as receiver:
        assert receiver.session.session_id == "ts"
        receiver.session.set_state(b"sub-state")
        msgs = receive_n(receiver, 3)
        assert [body_bytes(m) for m in msgs] == [b"t0", b"t1", b"t2"]
        for m in msgs:
            receiver.complete_message(m)
        assert receiver.session.get_state() == b"sub-state"
    assert list(sb_client.list_subscription_sessions("sess-topic", "by-session")) == ["ts"]


async def test_async_session_receiver(conn_str: str) -> None:
    async with AsyncServiceBusClient.from_connection_string(conn_str) as client:
        async with client.get_queue_sender(Q_ASYNC) as sender:
            await sender.send_messages(
                [ServiceBusMessage(f"m{i}", session_id="as") for i in range(3)]
            )
        async with client.get_queue_receiver(
            Q_ASYNC, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
        ) as receiver:
            assert receiver.session.session_id == "as"
            got = []
            while len(got) < 3:
                got.extend(await receiver.receive_messages(max_message_count=3, max_wait_time=3))
            assert [body_bytes(m) for m in got] == [b"m0", b"m1", b"m2"]
            await receiver.session.set_state(b"async")
            assert await receiver.session.get_state() == b"async"
            await receiver.session.renew_lock()
            for m in got:
                await receiver.complete_message(m)
