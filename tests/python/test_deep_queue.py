"""Deep queues: with a small body window, message bodies live in the store and are read back.

The broker keeps at most ``body_window_bytes`` of message bodies in memory; past it a committed
message keeps only its index entry and is read back from the store when it is delivered,
peeked or dead-lettered. After a kill -9 and a restart the queue is rebuilt from its index
(bodies only up to the window) and delivers every message in order with its body.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from kbutil import body_bytes, receive_n

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

QUEUE = "deep"
COUNT = 600
# 16 KB of bodies in memory: 1 KB messages, so all but the first few live in the store only.
WINDOW = 16 * 1024


def _body(i: int) -> bytes:
    # 1 KB, different for every message, so a body read back for the wrong record shows.
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * 32)[:1024]


def _metric(b, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{b.http_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no sample {name} in /metrics")


def test_deep_queue_survives_kill9_in_order_with_bodies(broker_factory, tmp_path: Path) -> None:
    config = broker_factory.write_toml({QUEUE: {"max_delivery_count": 2}})
    with open(config, "a", encoding="utf-8") as f:
        f.write(f"\n[limits]\nbody_window_bytes = {WINDOW}\n")
    data_dir = tmp_path / "data"
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-deep")

    with ServiceBusClient.from_connection_string(b.conn_str) as client:
        with client.get_queue_sender(QUEUE) as sender:
            for start in range(0, COUNT, 100):
                sender.send_messages(
                    [ServiceBusMessage(_body(i), message_id=f"m{i}") for i in range(start, start + 100)]
                )
        assert _metric(b, "keybus_body_window_bytes") <= WINDOW
        # Peek reads bodies past the window back without keeping them.
        with client.get_queue_receiver(QUEUE) as receiver:
            peeked = receiver.peek_messages(max_message_count=50, sequence_number=500)
            assert [m.message_id for m in peeked] == [f"m{i}" for i in range(499, 549)]
            assert all(body_bytes(m) == _body(int(m.message_id[1:])) for m in peeked)
            # A dead-letter of a message read back from the store keeps its body.
            (first,) = receive_n(receiver, 1)
            assert first.message_id == "m0"
            receiver.dead_letter_message(first, reason="deep-test", error_description="read back")
        assert _metric(b, "keybus_body_window_bytes") <= WINDOW
    b.kill9()

    broker_factory.restart(b)  # same data dir: the index is loaded, bodies up to the window
    with ServiceBusClient.from_connection_string(b.conn_str) as client:
        with client.get_queue_receiver(QUEUE, prefetch_count=0) as receiver:
            got = []
            while len(got) < COUNT - 1:
                batch = receiver.receive_messages(max_message_count=100, max_wait_time=5)
                assert batch, f"only {len(got)} of {COUNT - 1} messages came back"
                for m in batch:
                    receiver.complete_message(m)
                got.extend(batch)
            ids = [m.message_id for m in got]
            assert ids == [f"m{i}" for i in range(1, COUNT)], "order or content changed across restart"
            for m in got:
                assert body_bytes(m) == _body(int(m.message_id[1:])), f"body of {m.message_id} differs"
            seqs = [m.sequence_number for m in got]
            assert seqs == sorted(seqs)
        with client.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            (dead,) = receive_n(dlq, 1)
            assert dead.message_id == "m0"
            assert dead.dead_letter_reason == "deep-test"
            assert body_bytes(dead) == _body(0)
            dlq.complete_message(dead)
    assert _metric(b, "keybus_body_window_bytes") == 0
