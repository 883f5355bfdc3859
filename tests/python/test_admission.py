"""Admission and memory under socket floods, against a real ``keybus`` process.

* hundreds of sockets that never speak, or stop after the SASL header, held from one source
  address, while a real SDK client (another address) sends and receives, and ``/health`` and
  ``/metrics`` answer; sockets past the per-address budget are refused at once;
* the resident set size returns near its baseline after thousands of short connections
  (jemalloc's background threads give freed memory back; glibc malloc kept it).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import List

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

import kbutil
from kbutil import receive_n

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def _config(tmp_path: Path, limits: str) -> Path:
    text = kbutil.render_toml({"adm-q": {}}) + "\n[limits]\n" + limits + "\n"
    path = tmp_path / "keybus.toml"
    path.write_text(text)
    return path


def _connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def _closed_within(s: socket.socket, seconds: float) -> bytes:
    """Read until EOF; fail if the socket is still open after ``seconds``."""
    s.settimeout(seconds)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return data
        except socket.timeout:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"socket still open after {seconds} s")


def _metrics(b: kbutil.Broker) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{b.http_port}/metrics", timeout=5) as r:
        return r.read().decode()


def _metric(text: str, name_and_labels: str) -> float:
    m = re.search(r"^" + re.escape(name_and_labels) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_sdk_client_works_while_hundreds_of_token_less_sockets_are_held(broker_factory, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "max_connections = 1000\n"
        "max_unauthenticated_connections = 400\n"
        "max_unauthenticated_per_address = 300\n"
        "handshake_timeout_ms = 60000\n"
        "token_timeout_ms = 60000\n",
    )
    b = broker_factory.start(config, name="keybus-admission")
    held: List[socket.socket] = []
    refused: List[socket.socket] = []
    try:
        # 350 sockets from one "host": 300 are admitted (half silent, half stopped after the
        # SASL header), the last 50 are refused at once.
        for i in range(350):
            s = _connect_from("127.0.0.2", b.amqp_port)
            if i % 2:
                s.sendall(SASL_HEADER)
            (held if i < 300 else refused).append(s)
        for s in refused:
            # Refused in SASL (what every SDK speaks first): header, mechanisms, and an
            # outcome whose additional data names the full budget.
            data = _closed_within(s, 5)
            assert data.startswith(SASL_HEADER), data[:16]
            assert b"max_unauthenticated_per_address" in data, data
        text = _metrics(b)
        assert _metric(text, 'keybus_open_sockets{stage="unauthenticated"}') == 300
        assert (
            _metric(
                text,
                'keybus_refused_sockets_total{listener="amqp",reason="max_unauthenticated_per_address"}',
            )
            == 50
        )
        status, _ = b.health()
        assert status == 200

        # A real client (another address) is not starved.
        with ServiceBusClient.from_connection_string(b.conn_str, retry_total=1) as client:
            with client.get_queue_sender("adm-q") as sender:
                sender.send_messages(ServiceBusMessage(b"through-the-flood", message_id="flood-1"))
            with client.get_queue_receiver("adm-q", max_wait_time=5) as receiver:
                msgs = receive_n(receiver, 1)
                assert kbutil.body_bytes(msgs[0]) == b"through-the-flood"
                receiver.complete_message(msgs[0])
                text = _metrics(b)
                assert _metric(text, 'keybus_open_sockets{stage="authenticated"}') >= 1
        # Every held socket is still open (their deadline is a minute here).
        assert _metric(_metrics(b), 'keybus_open_sockets{stage="unauthenticated"}') == 300
    finally:
        for s in held + refused:
            s.close()


def test_a_refused_sdk_client_is_told_which_budget_is_full(broker_factory, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "max_unauthenticated_per_address = 2\nhandshake_timeout_ms = 60000\n",
    )
    b = broker_factory.start(config, name="keybus-admission-told")
    # Two silent sockets from the SDK's own address fill its unauthenticated budget.
    held = [_connect_from("127.0.0.1", b.amqp_port) for _ in range(2)]
    try:
        with ServiceBusClient.from_connection_string(b.conn_str, retry_total=0) as client:
            with pytest.raises(ServiceBusError) as refused:
                with client.get_queue_sender("adm-q") as sender:
                    sender.send_messages(ServiceBusMessage(b"refused"))
        text = str(refused.value)
        assert "max_unauthenticated_per_address" in text and "budget is full" in text, text
    finally:
        for s in held:
            s.close()


def test_token_less_sockets_are_closed_after_their_deadlines(broker_factory, tmp_path: Path) -> None:
    config = _config(tmp_path, "handshake_timeout_ms = 500\nwebsocket_upgrade_timeout_ms = 500\nhttp_header_timeout_ms = 500\n")
    b = broker_factory.start(config, name="keybus-deadlines")
    socks = []
    for i in range(100):
        s = _connect_from("127.0.0.3", b.amqp_port)
        if i % 3 == 1:
            s.sendall(SASL_HEADER)
        elif i % 3 == 2:
            s.sendall(b"GET /$servicebus/websocket HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    for _ in range(20):
        h = socket.create_connection(("127.0.0.1", b.http_port))
        h.sendall(b"GET /health HTTP/1.1\r\n")
        socks.append(h)
    started = time.monotonic()
    for s in socks:
        _closed_within(s, 5)
        s.close()
    assert time.monotonic() - started < 5


def test_rss_returns_near_baseline_after_connection_churn(broker_factory, tmp_path: Path) -> None:
    config = _config(tmp_path, "max_unauthenticated_connections = 2000\nmax_unauthenticated_per_address = 2000\n")
    b = broker_factory.start(config, name="keybus-churn")
    time.sleep(0.5)
    baseline = _rss_kib(b.pid)
    peak = baseline
    # 5,000 connections in waves of 500 held at once: each gets past the AMQP header, so
    # the broker allocates its connection state and buffers.
    for _ in range(10):
        wave = []
        for _ in range(500):
            s = socket.create_connection(("127.0.0.1", b.amqp_port))
            s.sendall(AMQP_HEADER)
            wave.append(s)
        for s in wave:
            s.settimeout(5)
            assert s.recv(8) == AMQP_HEADER
        peak = max(peak, _rss_kib(b.pid))
        for s in wave:
            s.close()
    assert peak > baseline + 10 * 1024, "the churn did not raise RSS; the test measures nothing"
    # jemalloc's background threads purge freed pages over its 10 s decay time.
    near = baseline + 0.25 * (peak - baseline)
    started = time.monotonic()
    after = _rss_kib(b.pid)
    while after >= near and time.monotonic() - started < 20:
        time.sleep(0.5)
        after = _rss_kib(b.pid)
    took = time.monotonic() - started
    print(f"VmRSS baseline {baseline} KiB, peak {peak} KiB, after churn {after} KiB ({took:.1f} s later)")
    assert after < near, (baseline, peak, after)
    status, _ = b.health()
    assert status == 200
