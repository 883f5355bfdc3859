"""Soak: a steady mixed load with connection churn against one durable keybus process.

Run with the test virtual environment (``scripts/test`` creates it)::

    .venv/bin/python scripts/soak.py --minutes 30 --rate 200 --churn 5

Every ``--every`` seconds it prints one row: the broker's RSS and open descriptors (from
/proc), messages sent and received in the interval, end-to-end latency p50/p99/max of the
interval (enqueue time put by the sender, read by the receiver after its receive), and the
connections opened by the churn thread. At the end it prints the first and last RSS and
descriptor counts and the spread of the interval p99s: a healthy broker is flat on all three.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

from azure.servicebus import ServiceBusClient, ServiceBusMessage  # noqa: E402

from kbutil import Broker, connection_string, render_toml  # noqa: E402

QUEUE = "soak"
TOPIC_TOML = """
[[topics]]
name = "soak-topic"
[[topics.subscriptions]]
name = "all"
"""


def proc_status(pid: int) -> "tuple[int, int]":
    """(RSS in KiB, open descriptors) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.churned = 0
        self.errors = 0
        self.latencies: List[float] = []

    def take(self) -> "tuple[int, int, int, int, List[float]]":
        with self.lock:
            out = (self.sent, self.received, self.churned, self.errors, self.latencies)
            self.sent = self.received = self.churned = self.errors = 0
            self.latencies = []
        return out


def sender(conn: str, rate: float, stop: threading.Event, stats: Stats) -> None:
    period = 1.0 / rate
    with ServiceBusClient.from_connection_string(conn) as client:
        with client.get_queue_sender(QUEUE) as q, client.get_topic_sender("soak-topic") as t:
            n = 0
            next_at = time.monotonic()
            while not stop.is_set():
                msg = ServiceBusMessage(b"x" * 256, application_properties={"t": time.time()})
                try:
                    (t if n % 4 == 3 else q).send_messages(msg)
                    with stats.lock:
                        stats.sent += 1
                except Exception:  # noqa: BLE001 - counted, the soak goes on
                    with stats.lock:
                        stats.errors += 1
                n += 1
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()


def receiver(conn: str, stop: threading.Event, stats: Stats, topic: bool) -> None:
    with ServiceBusClient.from_connection_string(conn) as client:
        recv = (
            client.get_subscription_receiver("soak-topic", "all", max_wait_time=1)
            if topic
            else client.get_queue_receiver(QUEUE, max_wait_time=1, prefetch_count=20)
        )
        with recv:
            while not stop.is_set():
                try:
                    # The iterator hands each message over as it arrives (a batch call waits
                    # to fill the batch, which would be measured as latency).
                    for m in recv:
                        now = time.time()
                        recv.complete_message(m)
                        props = m.application_properties or {}
                        sent = props.get(b"t", props.get("t"))
                        with stats.lock:
                            stats.received += 1
                            if sent is not None:
                                stats.latencies.append((now - float(sent)) * 1000)
                        if stop.is_set():
                            break
                except Exception:  # noqa: BLE001
                    with stats.lock:
                        stats.errors += 1


def churn(conn: str, per_second: float, stop: threading.Event, stats: Stats) -> None:
    """Short-lived connections: connect, authenticate, send one message, close."""
    while not stop.is_set():
        start = time.monotonic()
        try:
            with ServiceBusClient.from_connection_string(conn) as client:
                with client.get_queue_sender(QUEUE) as s:
                    s.send_messages(ServiceBusMessage("churn", application_properties={"t": time.time()}))
            with stats.lock:
                stats.churned += 1
                stats.sent += 1
        except Exception:  # noqa: BLE001
            with stats.lock:
                stats.errors += 1
        time.sleep(max(0.0, 1.0 / per_second - (time.monotonic() - start)))


def pct(values: List[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0, help="messages per second sent")
    ap.add_argument("--churn", type=float, default=5.0, help="short-lived connections per second")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between rows")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="keybus-soak-") as tmp:
        work = Path(tmp)
        config = work / "keybus.toml"
        config.write_text(render_toml({QUEUE: {}}) + TOPIC_TOML)
        broker = Broker(work, config, data_dir=work / "data", name="soak").start()
        try:
            conn = connection_string(broker.amqp_port)
            stats, stop = Stats(), threading.Event()
            threads = [
                threading.Thread(target=sender, args=(conn, args.rate, stop, stats), daemon=True),
                threading.Thread(target=receiver, args=(conn, stop, stats, False), daemon=True),
                threading.Thread(target=receiver, args=(conn, stop, stats, True), daemon=True),
                threading.Thread(target=churn, args=(conn, args.churn, stop, stats), daemon=True),
            ]
            for t in threads:
                t.start()
            print(f"soak: {args.minutes} min, {args.rate} msg/s, {args.churn} conn/s, broker pid {broker.pid}")
            print(f"{'min':>6} {'rss_MiB':>8} {'fds':>5} {'sent':>7} {'recv':>7} {'conns':>6} {'err':>4} "
                  f"{'p50_ms':>7} {'p99_ms':>7} {'max_ms':>7}")
            rows = []
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(args.every, max(0.0, end - time.monotonic())))
                rss, fds = proc_status(broker.pid)
                sent, recv, churned, errors, lat = stats.take()
                row = (rss / 1024, fds, pct(lat, 50), pct(lat, 99), max(lat, default=float("nan")))
                rows.append(row)
                print(f"{(time.monotonic() - t0) / 60:6.1f} {row[0]:8.1f} {fds:5d} {sent:7d} {recv:7d} "
                      f"{churned:6d} {errors:4d} {row[2]:7.2f} {row[3]:7.2f} {row[4]:7.1f}", flush=True)
            stop.set()
            for t in threads:
                t.join(10)
            if rows:
                p99s = [r[3] for r in rows if r[3] == r[3]]
                print(f"rss MiB first {rows[0][0]:.1f} last {rows[-1][0]:.1f} max {max(r[0] for r in rows):.1f}; "
                      f"fds first {rows[0][1]} last {rows[-1][1]} max {max(r[1] for r in rows)}; "
                      f"interval p99 ms median {statistics.median(p99s):.2f} "
                      f"min {min(p99s):.2f} max {max(p99s):.2f}")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
