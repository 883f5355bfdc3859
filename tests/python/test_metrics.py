"""`GET /metrics` (Prometheus/OpenMetrics text) checked against known traffic, and `/ready`."""

from __future__ import annotations

import datetime
import re
import urllib.request
from typing import Dict, Tuple

from azure.servicebus import ServiceBusClient, ServiceBusMessage

from kbutil import declare_queue, receive_n

Q_METRICS = declare_queue("metrics-queue", max_delivery_count=5)

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(port: int) -> Tuple[Dict[Tuple[str, str], float], str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    values: Dict[Tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _LINE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        values[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return values, text


def entity(name: str, metric: str, values: Dict[Tuple[str, str], float]) -> float:
    return values[(metric, f'{{entity="{name}"}}')]


def test_metrics_reflect_known_traffic(sb_client: ServiceBusClient, broker) -> None:
    with sb_client.get_queue_sender(Q_METRICS) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(4)])
        sender.schedule_messages(
            ServiceBusMessage("later"),
            datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        )
    with sb_client.get_queue_receiver(Q_METRICS) as receiver:
        a, b, c = receive_n(receiver, 3)
        receiver.complete_message(a)
        receiver.abandon_message(b)
        receiver.dead_letter_message(c, reason="test")
        values, text = scrape(broker.http_port)
        assert entity(Q_METRICS, "keybus_incoming_messages_total", values) == 5
        assert entity(Q_METRICS, "keybus_outgoing_messages_total", values) >= 3
        assert entity(Q_METRICS, "keybus_complete_message_total", values) == 1
        assert entity(Q_METRICS, "keybus_abandon_message_total", values) == 1
        assert entity(Q_METRICS, "keybus_dead_lettered_messages_total", values) == 1
        # m3 and the abandoned one (possibly prefetched/locked: active counts unlocked ones).
        assert 1 <= entity(Q_METRICS, "keybus_active_messages", values) <= 2
        assert entity(Q_METRICS, "keybus_deadlettered_messages", values) == 1
        assert entity(Q_METRICS, "keybus_scheduled_messages", values) == 1
        assert entity(Q_METRICS, "keybus_size_bytes", values) > 0
        assert values[("keybus_active_connections", "")] >= 1
        assert values[("keybus_active_links", "")] >= 2
        assert values[("keybus_incoming_requests_total", '{operation="send",result="success"}')] >= 1
        assert values[("keybus_incoming_requests_total", '{operation="put-token",result="success"}')] >= 1
        assert values[("keybus_incoming_requests_total", '{operation="schedule-message",result="success"}')] >= 1
        assert values[("keybus_store_commit_seconds_count", "")] > 0
        assert "# TYPE keybus_store_commit_seconds histogram" in text
        assert text.rstrip().endswith("# EOF")


def test_ready(broker) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/ready", timeout=10) as r:
        assert r.status == 200
