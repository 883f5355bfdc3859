"""Disk full: the broker's data dir on a small tmpfs (needs root to mount; skipped otherwise).

Fill the file system, send: the SDK raises ``ServiceBusQuotaExceededError`` (the broker answers
``amqp:resource-limit-exceeded``) naming "no space left on device"; ``/ready`` is 503 with the
cause; what is stored can still be peeked and received. Free the space: within a bounded time
sends succeed again in the SAME process (the store re-opens itself), ``/ready`` is 200, and
every message sent before the disk filled up is still there, after a restart too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, List

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError, ServiceBusQuotaExceededError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

QUEUE = "df-queue"
RECOVERY_TIMEOUT = 30.0
FS_SIZE = "24m"


def _ready(b) -> "tuple[int, str]":
    url = f"http://127.0.0.1:{b.http_port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted on a fresh directory (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (disk-full simulation)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> int:
    """Write zeros into ``path`` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            while True:
                try:
                    f.write(chunk[:size])
                    written += size
                except OSError:
                    break
    return written


def _send_until_ok(client: ServiceBusClient, msg_id: str, deadline: float) -> float:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with client.get_queue_sender(QUEUE) as sender:
                sender.send_messages(ServiceBusMessage(f"body-{msg_id}", message_id=msg_id))
            return time.monotonic()
        except ServiceBusError as exc:
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"sends did not succeed again within {RECOVERY_TIMEOUT}s: {last!r}")


def test_disk_full_refuses_sends_with_the_cause_and_recovers_without_restart(
    broker_factory, small_fs: Path
) -> None:
    config = broker_factory.write_toml({QUEUE: {"lock_duration": "5s"}})
    data_dir = small_fs / "data"
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-disk-full")
    pid = b.pid
    refused_ids: List[str] = []
    before = [f"before-{i:03d}" for i in range(30)]
    client = ServiceBusClient.from_connection_string(b.conn_str, retry_total=0)
    try:
        with client.get_queue_sender(QUEUE) as sender:
            sender.send_messages([ServiceBusMessage(f"body-{m}", message_id=m) for m in before])

        filler = small_fs / "filler"
        assert _fill(filler) > 0

        # Sends are refused with the quota error, naming the cause. (The first may still fit
        # in a page the journal already has, so send big messages until one is refused.)
        refused = None
        accepted: List[str] = []
        refused_ids = ["full-small"]
        for i in range(20):
            try:
                with client.get_queue_sender(QUEUE) as sender:
                    sender.send_messages(ServiceBusMessage(b"x" * 200_000, message_id=f"full-{i}"))
                accepted.append(f"full-{i}")
            except ServiceBusQuotaExceededError as exc:
                refused = exc
                refused_ids.append(f"full-{i}")
                break
        assert refused is not None, "no send was refused on a full disk"
        assert "no space left on device" in str(refused).lower(), str(refused)
        # Every later send fails the same way, at once.
        with pytest.raises(ServiceBusQuotaExceededError, match="(?i)no space left on device"):
            with client.get_queue_sender(QUEUE) as sender:
                sender.send_messages(ServiceBusMessage(b"small", message_id="full-small"))
        status, text = _ready(b)
        assert status == 503 and "no space left on device" in text, (status, text)

        # What is stored can still be read.
        with client.get_queue_receiver(QUEUE) as receiver:
            peeked = receiver.peek_messages(max_message_count=50)
            assert {m.message_id for m in peeked} >= set(before[:10])
            got = receiver.receive_messages(max_message_count=5, max_wait_time=5)
            assert got, "a stored message could not be received while the disk is full"
            # Completing needs a write: refused with the same named cause.
            with pytest.raises(ServiceBusError, match="(?i)no space left on device"):
                receiver.complete_message(got[0])

        # Free the space: the same process accepts sends again, within a bounded time.
        filler.unlink()
        start = time.monotonic()
        _send_until_ok(client, "after-recovery", start + RECOVERY_TIMEOUT)
        assert b.pid == pid and b.alive(), "the broker restarted"
        assert _ready(b)[0] == 200

        # Everything sent before is still there (the received ones come back once their
        # locks end), and so is the message sent after.
        expected = set(before) | set(accepted) | {"after-recovery"}
        seen: List[str] = []
        with client.get_queue_receiver(QUEUE) as receiver:
            end = time.monotonic() + 40
            while time.monotonic() < end and not expected <= set(seen):
                for m in receiver.receive_messages(max_message_count=50, max_wait_time=3):
                    seen.append(m.message_id)
                    receiver.complete_message(m)
        assert expected <= set(seen), f"lost: {sorted(expected - set(seen))[:10]}"
        assert not set(refused_ids) & set(seen), "a refused send was delivered"
    finally:
        client.close()

    # The completes written after the recovery hold across a restart.
    b.stop()
    broker_factory.restart(b)
    with ServiceBusClient.from_connection_string(b.conn_str, retry_total=0) as client:
        with client.get_queue_receiver(QUEUE) as receiver:
            # Nothing comes back: not the completed messages, not the refused sends.
            left = receiver.receive_messages(max_message_count=50, max_wait_time=3)
            assert [m.message_id for m in left] == []
