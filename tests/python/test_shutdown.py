"""Stopping: SIGTERM (what systemd, Kubernetes and Docker send) stops the broker cleanly, as
Ctrl-C does: it says so, exits 0 (not killed by the signal), and the audit log holds every
decision made before it, in a chain that verifies; a restart serves what was acknowledged."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from azure.servicebus import ServiceBusClient, ServiceBusMessage

import kbutil
from kbutil import receive_n

QUEUE = "shutdown-queue"
CONFIG = f"""
[[queues]]
name = "{QUEUE}"
"""


def test_sigterm_stops_cleanly_and_keeps_the_audit_log(broker_factory, tmp_path: Path) -> None:
    config = tmp_path / "keybus.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-shutdown")
    with ServiceBusClient.from_connection_string(b.printed_connection_string, retry_total=1) as client:
        with client.get_queue_sender(QUEUE) as sender:
            sender.send_messages([ServiceBusMessage(f"kept-{i}") for i in range(3)])
    assert b.proc is not None
    b.proc.send_signal(signal.SIGTERM)
    code = b.proc.wait(timeout=10)
    assert code == 0, f"exit code {code} (negative: killed by the signal)"
    b._reader.join(timeout=5)  # type: ignore[union-attr]
    assert any("SIGTERM: stopping" in line for line in b.stdout_lines), b.stdout_lines
    audit = data_dir / "audit.jsonl"
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    assert any(line.get("event") == "token.put" for line in lines), lines[-5:]
    verified = subprocess.run(
        [str(kbutil.keybus_bin()), "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    broker_factory.restart(b)
    with ServiceBusClient.from_connection_string(b.printed_connection_string, retry_total=1) as client:
        with client.get_queue_receiver(QUEUE) as receiver:
            got = receive_n(receiver, 3)
            assert sorted(str(m) for m in got) == ["kept-0", "kept-1", "kept-2"]
            for m in got:
                receiver.complete_message(m)
