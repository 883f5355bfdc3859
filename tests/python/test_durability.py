"""Durability: SIGKILL the broker (``--data-dir``) and restart it on the same directory."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any, List, Set

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from kbutil import receive_n

Q_MAIN = "du-main"
Q_CONCURRENT = "du-concurrent"
DURABLE_QUEUES = {
    Q_MAIN: {"lock_duration": "5s"},
    Q_CONCURRENT: {"lock_duration": "5s"},
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _close_quietly(obj: Any, timeout: float = 10.0) -> None:
    """Close an SDK object whose broker may be dead, without letting it hang the test."""

    def run() -> None:
        try:
            obj.close()
        except Exception:  # noqa: BLE001
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)


def _drain_and_complete(
    client: ServiceBusClient, queue: str, expected: int, timeout: float = 60.0, subscription: str | None = None
) -> List[Any]:
    """Receive and complete until ``expected`` messages arrived, then until the queue (or the
    topic ``queue``'s ``subscription``) stays quiet."""
    got: List[Any] = []
    end = time.monotonic() + timeout
    if subscription is None:
        receiver_cm = client.get_queue_receiver(queue)
    else:
        receiver_cm = client.get_subscription_receiver(queue, subscription)
    with receiver_cm as receiver:
        while time.monotonic() < end:
            msgs = receiver.receive_messages(max_message_count=50, max_wait_time=3)
            for m in msgs:
                receiver.complete_message(m)
            got.extend(msgs)
            if not msgs and len(got) >= expected:
                break
    return got


def test_kill9_keeps_unsettled_and_forgets_completed(broker_factory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = broker_factory.write_toml(DURABLE_QUEUES)
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-durable")

    all_ids = [f"d-{i:03d}" for i in range(200)]
    client = ServiceBusClient.from_connection_string(b.conn_str, retry_total=0)
    try:
        with client.get_queue_sender(Q_MAIN) as sender:
            for start in range(0, 200, 50):
                sender.send_messages([ServiceBusMessage(f"body-{i}", message_id=all_ids[i]) for i in range(start, start + 50)])
        receiver = client.get_queue_receiver(Q_MAIN)
        completed = receive_n(receiver, 50)
        assert len(completed) == 50
        for m in completed:
            receiver.complete_message(m)
        locked = receive_n(receiver, 20)  # received, NOT settled
        assert len(locked) == 20
        seen_before = completed + locked
        assert len({m.message_id for m in seen_before}) == 70
        max_seq_before = max(m.sequence_number for m in seen_before)
        b.kill9()
    finally:
        _close_quietly(client)

    completed_ids = {m.message_id for m in completed}
    locked_ids = {m.message_id for m in locked}
    expected = set(all_ids) - completed_ids
    assert len(expected) == 150

    broker_factory.restart(b)  # same --data-dir, new ports
    client = ServiceBusClient.from_connection_string(b.conn_str)
    try:
        after = _drain_and_complete(client, Q_MAIN, expected=150)
        after_ids = [m.message_id for m in after]
        dupes = [k for k, v in collections.Counter(after_ids).items() if v > 1]
        assert dupes == [], f"delivered twice after restart: {dupes[:10]}"
        assert not (set(after_ids) & completed_ids), f"completed messages came back: {sorted(set(after_ids) & completed_ids)[:10]}"
        assert set(after_ids) == expected, f"lost after restart: {sorted(expected - set(after_ids))[:10]}"
        assert locked_ids <= set(after_ids)
        for m in after:
            assert m.body_type is not None
            assert str(m) == "body-" + str(int(m.message_id[2:])), "body changed across restart"
        # sequence numbers survive the restart and keep rising
        seqs = [m.sequence_number for m in after]
        assert len(set(seqs)) == len(seqs)
        max_seq = max(max(seqs), max_seq_before)
        assert max_seq == 200
        with client.get_queue_sender(Q_MAIN) as sender:
            sender.send_messages(ServiceBusMessage(b"after-restart", message_id="after"))
        with client.get_queue_receiver(Q_MAIN) as receiver:
            (m,) = receive_n(receiver, 1)
            assert m.message_id == "after"
            assert m.sequence_number > max_seq
            receiver.complete_message(m)
    finally:
        _close_quietly(client)


def _send_concurrently_then_kill(b: Any, entity: str, prefix: str, min_acked: int = 200) -> tuple[Set[str], Set[str]]:
    """Send from 4 threads (one message per send, id = body) until ``min_acked`` sends were
    acknowledged, then SIGKILL the broker while they are still sending. Returns the acknowledged
    and the attempted message ids."""
    acked: Set[str] = set()
    attempted: Set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    clients: List[ServiceBusClient] = []

    def sender_thread(k: int) -> None:
        client = ServiceBusClient.from_connection_string(b.conn_str, retry_total=0)
        with lock:
            clients.append(client)
        try:
            sender = client.get_queue_sender(entity)
            n = 0
            while not stop.is_set() and n < 2000:
                mid = f"{prefix}{k}-{n:04d}"
                with lock:
                    attempted.add(mid)
                sender.send_messages(ServiceBusMessage(mid.encode(), message_id=mid), timeout=10)
                with lock:
                    acked.add(mid)
                n += 1
        except Exception:  # noqa: BLE001 - expected once the broker is killed
            pass

    threads = [threading.Thread(target=sender_thread, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= min_acked:
                break
        time.sleep(0.05)
    with lock:
        assert acked, "no send was acknowledged before the kill"
    b.kill9()  # while the threads are still sending
    stop.set()
    for t in threads:
        t.join(timeout=30)
    for c in clients:
        _close_quietly(c)
    with lock:
        return set(acked), set(attempted)


def _assert_exactly_once(after: List[Any], acked: Set[str], attempted: Set[str], where: str) -> None:
    after_ids = [m.message_id for m in after]
    dupes = [k for k, v in collections.Counter(after_ids).items() if v > 1]
    assert dupes == [], f"{where}: duplicates after restart: {dupes[:10]}"
    missing = acked - set(after_ids)
    assert not missing, f"{where}: {len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:10]}"
    phantom = set(after_ids) - attempted
    assert not phantom, f"{where}: messages nobody sent: {sorted(phantom)[:10]}"
    for m in after:
        assert str(m) == m.message_id


def test_kill9_during_concurrent_sends_keeps_every_acknowledged_message(broker_factory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = broker_factory.write_toml(DURABLE_QUEUES)
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-durable-concurrent")
    acked, attempted = _send_concurrently_then_kill(b, Q_CONCURRENT, "t")
    broker_factory.restart(b)
    client = ServiceBusClient.from_connection_string(b.conn_str)
    try:
        after = _drain_and_complete(client, Q_CONCURRENT, expected=len(acked))
    finally:
        _close_quietly(client)
    _assert_exactly_once(after, acked, attempted, Q_CONCURRENT)


FORWARDING_TOML = """
[[queues]]
name = "du-fwd-in"
forward_to = "du-fwd-topic"

[[topics]]
name = "du-fwd-topic"
[[topics.subscriptions]]
name = "direct"
[[topics.subscriptions]]
name = "onward"
forward_to = "du-fwd-out"

[[queues]]
name = "du-fwd-out"
"""


def test_kill9_during_forwarding_loses_and_duplicates_nothing(broker_factory, tmp_path: Path) -> None:
    """Sends to a queue that forwards into a topic, one of whose subscriptions forwards on to
    another queue: killed while messages are in flight on every hop, each acknowledged message
    ends up exactly once in the subscription and exactly once in the last queue."""
    import kbutil

    config = tmp_path / "forwarding.toml"
    config.write_text(kbutil.render_toml({}) + FORWARDING_TOML)
    b = broker_factory.start(config, data_dir=tmp_path / "data-fwd", name="keybus-durable-forwarding")
    acked, attempted = _send_concurrently_then_kill(b, "du-fwd-in", "f")
    broker_factory.restart(b)
    client = ServiceBusClient.from_connection_string(b.conn_str)
    try:
        direct = _drain_and_complete(client, "du-fwd-topic", expected=len(acked), subscription="direct")
        out = _drain_and_complete(client, "du-fwd-out", expected=len(acked))
        with client.get_queue_receiver("du-fwd-in") as receiver:
            assert receiver.peek_messages(max_message_count=10) == [], "left at the forwarding source"
    finally:
        _close_quietly(client)
    _assert_exactly_once(direct, acked, attempted, "du-fwd-topic/direct")
    _assert_exactly_once(out, acked, attempted, "du-fwd-out")
    assert {m.message_id for m in direct} == {m.message_id for m in out}


def _drain_subscription(client: ServiceBusClient, topic: str, sub: str, expected: int) -> List[Any]:
    return _drain_and_complete(client, topic, expected, subscription=sub)


def test_kill9_topic_fan_out_loses_and_duplicates_nothing(broker_factory, tmp_path: Path) -> None:
    config = tmp_path / "topics.toml"
    config.write_text(
        kbutil_render_with_topic()
    )
    data_dir = tmp_path / "data-topic"
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-durable-topic")
    ids = [f"t-{i:03d}" for i in range(100)]
    client = ServiceBusClient.from_connection_string(b.conn_str, retry_total=0)
    try:
        with client.get_topic_sender("du-topic") as sender:
            for start in range(0, 100, 25):
                sender.send_messages([ServiceBusMessage(f"b-{i}", message_id=ids[i]) for i in range(start, start + 25)])
        receiver = client.get_subscription_receiver("du-topic", "a")
        done = receive_n(receiver, 30)
        for m in done:
            receiver.complete_message(m)
        max_seq_before = max(m.sequence_number for m in done)
        b.kill9()
    finally:
        _close_quietly(client)

    b = broker_factory.restart(b)
    client = ServiceBusClient.from_connection_string(b.conn_str, retry_total=1)
    try:
        rest_a = _drain_subscription(client, "du-topic", "a", 70)
        all_b = _drain_subscription(client, "du-topic", "b", 100)
        done_ids = {m.message_id for m in done}
        assert sorted(m.message_id for m in rest_a) == sorted(set(ids) - done_ids)
        assert sorted(m.message_id for m in all_b) == ids
        with client.get_topic_sender("du-topic") as sender:
            sender.send_messages(ServiceBusMessage("after", message_id="after"))
        after = _drain_subscription(client, "du-topic", "b", 1)
        assert after[0].sequence_number > max(max_seq_before, max(m.sequence_number for m in all_b))
    finally:
        _close_quietly(client)


def kbutil_render_with_topic() -> str:
    import kbutil

    return kbutil.render_toml({}) + '\n[[topics]]\nname = "du-topic"\n[[topics.subscriptions]]\nname = "a"\nlock_duration = "5s"\n[[topics.subscriptions]]\nname = "b"\n'
