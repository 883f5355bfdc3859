"""File modes: the data dir is 0700 and every file keybus creates in it (the generated SAS key,
the development TLS keys, the store's journal and tables) has no group or other bits; an
existing data dir that is more open is restricted, with a warning that names the fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import List

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from kbutil import receive_n

pytestmark = [pytest.mark.timeout(90)]

QUEUE = "fm-queue"

# No [[sas_policies]]: the broker generates the root key into <data-dir>/sas-key.
CONFIG = f"""
[namespace]
name = "keybus-file-modes"

[[queues]]
name = "{QUEUE}"
"""


def _open_entries(root: Path) -> List[str]:
    """Every path under ``root`` (itself included) with group or other permission bits."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(mode):04o}")
    return found


def test_data_dir_and_every_file_are_private(broker_factory, tmp_path: Path) -> None:
    config = tmp_path / "keybus.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    b = broker_factory.start(
        config,
        data_dir=data_dir,
        name="keybus-modes",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0"],
    )
    assert b.printed_connection_string, "the broker printed no connection string"
    # Write something, so the journal holds a message body.
    with ServiceBusClient.from_connection_string(b.printed_connection_string, retry_total=1) as client:
        with client.get_queue_sender(QUEUE) as sender:
            sender.send_messages([ServiceBusMessage(f"secret-{i}") for i in range(20)])
        with client.get_queue_receiver(QUEUE) as receiver:
            got = receive_n(receiver, 5)
            for m in got:
                receiver.complete_message(m)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "sas-key").stat().st_mode) == 0o600
    assert (data_dir / "tls").is_dir()
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert len(files) >= 5, f"expected the store's and the key files, found {files}"
    assert _open_entries(data_dir) == []
    assert not any("WARNING" in line for line in b.stdout_lines), b.stdout_lines
    # Still so after a restart (files re-opened, journal rotated).
    b.stop()
    broker_factory.restart(b)
    assert _open_entries(data_dir) == []


def test_open_existing_data_dir_is_restricted_with_a_warning(broker_factory, tmp_path: Path) -> None:
    config = tmp_path / "keybus.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    old_key = data_dir / "sas-key"
    old_key.write_text("b2xkLWtleS1mcm9tLWFuLWVhcmxpZXItdmVyc2lvbg==\n")
    os.chmod(old_key, 0o644)
    b = broker_factory.start(config, data_dir=data_dir, name="keybus-open-dir")
    warnings = [line for line in b.stdout_lines if "WARNING" in line]
    assert warnings, b.stdout_lines
    assert "0755" in warnings[0] and f"chmod -R go-rwx {data_dir}" in warnings[0], warnings[0]
    assert "the data dir was accessible by group or others" in b.stderr_tail(200)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    # The key of an earlier version is kept, and restricted.
    assert stat.S_IMODE(old_key.stat().st_mode) == 0o600
    assert "b2xkLWtleS1mcm9tLWFuLWVhcmxpZXItdmVyc2lvbg==" in (b.printed_connection_string or "")
    # A second start on the now private dir does not warn.
    b.stop()
    broker_factory.restart(b)
    assert not any("WARNING" in line for line in b.stdout_lines), b.stdout_lines
