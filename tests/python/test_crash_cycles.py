"""Crash cycles: ``kill -9`` the durable broker again and again under mixed load.

Each cycle starts the broker on the same data dir, runs mixed load from threads for a random
1-3 s (sends to a queue, scheduled sends, sends to a topic with two subscriptions, to a session
queue and to a queue that forwards to another; receive-and-complete on every one of them),
records every acknowledged send and every acknowledged complete, and SIGKILLs the broker
while the load runs. At the end everything is drained and checked:

* every acknowledged message was received at least once (in some cycle or the final drain),
  on every entity it goes to (both subscriptions of the topic, the forwarding destination);
* no message is received again after its complete was acknowledged;
* sequence numbers of an entity always rise across restarts: a message sent in a later cycle
  has a higher sequence number than every message sent in an earlier one, and no two
  messages share one.

``KEYBUS_CRASH_CYCLES`` sets the number of cycles (10 by default, the CI run);
``scripts/crash-cycles`` runs 100 and prints the summary (see docs/reliability.md).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

CYCLES = int(os.environ.get("KEYBUS_CRASH_CYCLES", "10"))
SEED = int(os.environ.get("KEYBUS_CRASH_SEED", str(random.randrange(1 << 30))))
SUMMARY = os.environ.get("KEYBUS_CRASH_SUMMARY")  # a file to write the JSON summary to

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120 + 25 * CYCLES)]

Q = "cc-queue"
SESS = "cc-sessions"
FWD_SRC = "cc-fwd-src"
FWD_DST = "cc-fwd-dst"
TOPIC = "cc-topic"
SUBS = ("s1", "s2")
SESSION_IDS = ("a", "b", "c")

CONFIG = f"""
[namespace]
name = "keybus-crash-cycles"

[[sas_policies]]
name = "RootManageSharedAccessKey"
key = "SAS_KEY_VALUE"
rights = ["Manage", "Send", "Listen"]

[[queues]]
name = "{Q}"
lock_duration = "30s"
max_delivery_count = 1000

[[queues]]
name = "{SESS}"
requires_session = true
lock_duration = "30s"
max_delivery_count = 1000

[[queues]]
name = "{FWD_SRC}"
forward_to = "{FWD_DST}"

[[queues]]
name = "{FWD_DST}"
lock_duration = "30s"
max_delivery_count = 1000

[[topics]]
name = "{TOPIC}"

[[topics.subscriptions]]
name = "{SUBS[0]}"
lock_duration = "30s"
max_delivery_count = 1000

[[topics.subscriptions]]
name = "{SUBS[1]}"
lock_duration = "30s"
max_delivery_count = 1000
"""

# Where each sent entity's messages are received (the receive side's entity names).
DESTINATIONS = {
    Q: [Q],
    SESS: [SESS],
    FWD_SRC: [FWD_DST],
    TOPIC: [f"{TOPIC}/subscriptions/{s}" for s in SUBS],
}


class Log:
    """Everything the load saw, with monotonic times (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: Dict[str, Tuple[str, int]] = {}  # message id -> (sent-to entity, cycle)
        self.received: List[Tuple[float, str, str, int]] = []  # (t, entity, id, seq)
        self.completed: Dict[Tuple[str, str], float] = {}  # (entity, id) -> first ack time
        self.errors: collections.Counter = collections.Counter()

    def ack(self, entity: str, ids: List[str], cycle: int) -> None:
        with self.lock:
            for i in ids:
                self.acked[i] = (entity, cycle)

    def got(self, entity: str, msgs: List[Any]) -> None:
        t = time.monotonic()
        with self.lock:
            for m in msgs:
                self.received.append((t, entity, str(m.message_id), int(m.sequence_number)))

    def done(self, entity: str, mid: str) -> None:
        t = time.monotonic()
        with self.lock:
            self.completed.setdefault((entity, mid), t)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1


def _close_quietly(obj: Any, timeout: float = 5.0) -> None:
    def run() -> None:
        try:
            obj.close()
        except Exception:  # noqa: BLE001
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)


def _receiver(client: ServiceBusClient, entity: str, session: Optional[str] = None) -> Any:
    if "/subscriptions/" in entity:
        topic, sub = entity.split("/subscriptions/")
        return client.get_subscription_receiver(topic, sub)
    if session is not None:
        return client.get_queue_receiver(entity, session_id=session)
    return client.get_queue_receiver(entity)


def _receive_loop(log: Log, client: ServiceBusClient, entity: str, stop: threading.Event, session: Optional[str] = None) -> None:
    receiver = _receiver(client, entity, session)
    while not stop.is_set():
        msgs = receiver.receive_messages(max_message_count=20, max_wait_time=1)
        log.got(entity, msgs)
        for m in msgs:
            receiver.complete_message(m)
            log.done(entity, str(m.message_id))


def _send_loop(log: Log, client: ServiceBusClient, entity: str, cycle: int, stop: threading.Event, kind: str) -> None:
    sender = client.get_topic_sender(entity) if entity == TOPIC else client.get_queue_sender(entity)
    n = 0
    rng = random.Random(f"{SEED}-{cycle}-{kind}")
    while not stop.is_set():
        batch = []
        for _ in range(rng.randint(1, 8)):
            mid = f"c{cycle:03d}-{kind}-{n:05d}"
            n += 1
            kwargs: Dict[str, Any] = {"message_id": mid}
            if entity == SESS:
                kwargs["session_id"] = rng.choice(SESSION_IDS)
            batch.append(ServiceBusMessage(f"body-{mid}", **kwargs))
        if kind == "sched":
            when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=rng.uniform(0.2, 1.5))
            sender.schedule_messages(batch, when)
        else:
            sender.send_messages(batch)
        log.ack(entity, [m.message_id for m in batch], cycle)


def _run_threads(log: Log, conn: str, cycle: int, stop: threading.Event) -> List[threading.Thread]:
    jobs: List[Tuple[str, Callable[[ServiceBusClient], None]]] = [
        ("send-q", lambda c: _send_loop(log, c, Q, cycle, stop, "q")),
        ("sched-q", lambda c: _send_loop(log, c, Q, cycle, stop, "sched")),
        ("send-topic", lambda c: _send_loop(log, c, TOPIC, cycle, stop, "t")),
        ("send-sess", lambda c: _send_loop(log, c, SESS, cycle, stop, "s")),
        ("send-fwd", lambda c: _send_loop(log, c, FWD_SRC, cycle, stop, "f")),
        ("recv-q", lambda c: _receive_loop(log, c, Q, stop)),
        ("recv-fwd", lambda c: _receive_loop(log, c, FWD_DST, stop)),
        ("recv-s1", lambda c: _receive_loop(log, c, DESTINATIONS[TOPIC][0], stop)),
        ("recv-s2", lambda c: _receive_loop(log, c, DESTINATIONS[TOPIC][1], stop)),
        ("recv-sess", lambda c: _receive_loop(log, c, SESS, stop, session=SESSION_IDS[cycle % len(SESSION_IDS)])),
    ]
    threads = []
    for name, job in jobs:

        def run(job: Callable[[ServiceBusClient], None] = job, name: str = name) -> None:
            client = ServiceBusClient.from_connection_string(conn, retry_total=0)
            try:
                job(client)
            except Exception as exc:  # noqa: BLE001 - the broker is killed under the load
                log.error(f"{name}: {type(exc).__name__}")
            finally:
                _close_quietly(client)

        t = threading.Thread(target=run, name=f"cc-{name}", daemon=True)
        t.start()
        threads.append(t)
    return threads


def _drain(log: Log, conn: str, quiet: float = 3.0, timeout: float = 90.0) -> None:
    """Receive and complete everything on every receive-side entity (one thread each) until
    nothing more arrives for ``quiet`` seconds."""
    entities = [(e, None) for e in (Q, FWD_DST, *DESTINATIONS[TOPIC])] + [(SESS, s) for s in SESSION_IDS]
    end = time.monotonic() + timeout
    failures: List[str] = []

    def drain_one(entity: str, session: Optional[str]) -> None:
        client = ServiceBusClient.from_connection_string(conn, retry_total=3)
        last = time.monotonic()
        error: Optional[str] = None
        try:
            while time.monotonic() < end and time.monotonic() - last < quiet:
                # A long drain outlives a session lock (30 s): take the session again.
                try:
                    with _receiver(client, entity, session) as receiver:
                        while time.monotonic() < end and time.monotonic() - last < quiet:
                            msgs = receiver.receive_messages(max_message_count=100, max_wait_time=1)
                            if not msgs:
                                continue
                            last = time.monotonic()
                            log.got(entity, msgs)
                            for m in msgs:
                                receiver.complete_message(m)
                                log.done(entity, str(m.message_id))
                    error = None
                except Exception as exc:  # noqa: BLE001
                    error = f"draining {entity} {session}: {exc!r}"
                    log.error(f"drain: {type(exc).__name__}")
                    last = time.monotonic()
        finally:
            _close_quietly(client, 10)
        if error is not None:
            failures.append(error)

    threads = [threading.Thread(target=drain_one, args=es, daemon=True) for es in entities]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    assert not failures, failures


def _check(log: Log) -> Dict[str, Any]:
    seen: Dict[str, Set[str]] = collections.defaultdict(set)
    for _, entity, mid, _ in log.received:
        seen[entity].add(mid)
    lost = []
    for mid, (sent_to, _) in log.acked.items():
        for dest in DESTINATIONS[sent_to]:
            if mid not in seen[dest]:
                lost.append(f"{dest}:{mid}")
    back = [f"{e}:{m}" for (t, e, m, _) in log.received if (e, m) in log.completed and t > log.completed[(e, m)]]
    # Sequence numbers per sending entity (a topic's are the same in each subscription).
    by_entity: Dict[str, Dict[str, int]] = collections.defaultdict(dict)
    clash = []
    for _, entity, mid, seq in log.received:
        key = TOPIC if entity.startswith(TOPIC) else entity
        old = by_entity[key].get(mid)
        if old is not None and old != seq:
            clash.append(f"{entity}:{mid} {old}!={seq}")
        by_entity[key][mid] = seq
    not_rising = []
    for entity, seqs in by_entity.items():
        owners: Dict[int, str] = {}
        for mid, seq in seqs.items():
            if seq in owners and owners[seq] != mid:
                clash.append(f"{entity}: {mid} and {owners[seq]} share {seq}")
            owners[seq] = mid
        # The forwarding destination numbers messages when they are forwarded, which may be
        # a later cycle than the send: only uniqueness holds there.
        if entity == FWD_DST:
            continue
        # max sequence number sent in each cycle must be below the min of every later cycle
        per_cycle: Dict[int, List[int]] = collections.defaultdict(list)
        for mid, seq in seqs.items():
            per_cycle[int(mid[1:4])].append(seq)
        cycles = sorted(per_cycle)
        high = None
        for c in cycles:
            if high is not None and min(per_cycle[c]) <= high[1]:
                not_rising.append(f"{entity}: cycle {c} min {min(per_cycle[c])} <= cycle {high[0]} max {high[1]}")
            if high is None or max(per_cycle[c]) > high[1]:
                high = (c, max(per_cycle[c]))
    return {
        "acked": len(log.acked),
        "received": len(log.received),
        "completed": len(log.completed),
        "lost": lost,
        "completed_came_back": back,
        "sequence_clashes": clash,
        "sequence_not_rising": not_rising,
    }


def test_kill9_cycles_under_mixed_load(broker_factory, tmp_path: Path) -> None:
    config = tmp_path / "keybus.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    log = Log()
    rng = random.Random(SEED)
    started = time.monotonic()
    b = None
    for cycle in range(CYCLES):
        if b is None:
            b = broker_factory.start(config, data_dir=data_dir, name="keybus-crash")
        else:
            broker_factory.restart(b)
        stop = threading.Event()
        threads = _run_threads(log, b.conn_str, cycle, stop)
        time.sleep(rng.uniform(1.0, 3.0))
        b.kill9()
        stop.set()
        for t in threads:
            t.join(15)
    assert b is not None
    broker_factory.restart(b)
    _drain(log, b.conn_str, timeout=60.0 + 3.0 * CYCLES)
    b.stop()
    result = _check(log)
    summary = {
        "cycles": CYCLES,
        "seed": SEED,
        "seconds": round(time.monotonic() - started, 1),
        "acknowledged_sends": result["acked"],
        "receives": result["received"],
        "acknowledged_completes": result["completed"],
        "lost": len(result["lost"]),
        "completed_came_back": len(result["completed_came_back"]),
        "sequence_clashes": len(result["sequence_clashes"]),
        "sequence_not_rising": len(result["sequence_not_rising"]),
        "load_errors": dict(log.errors),
    }
    print("crash-cycles summary: " + json.dumps(summary, sort_keys=True))
    if SUMMARY:
        Path(SUMMARY).write_text(json.dumps({**summary, "details": {k: v[:20] for k, v in result.items() if isinstance(v, list)}}, indent=2, sort_keys=True))
    assert result["acked"] > 0 and result["completed"] > 0, summary
    assert result["lost"] == [], f"acknowledged but never received: {result['lost'][:20]}"
    assert result["completed_came_back"] == [], f"received after an acknowledged complete: {result['completed_came_back'][:20]}"
    assert result["sequence_clashes"] == [], result["sequence_clashes"][:20]
    assert result["sequence_not_rising"] == [], result["sequence_not_rising"][:20]
