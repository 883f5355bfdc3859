"""Hold many concurrent SDK connections against one keybus process and report its memory.

    .venv/bin/python scripts/hold_connections.py --connections 5000

Each connection is what an application makes: the async Python SDK opens it, authenticates
over CBS with a SAS token, attaches a sender and sends one message; all are then held open
together. The script prints the broker's RSS and open descriptors before, while held, and
after they are closed, and the RSS per held connection. The client raises its own descriptor
limit; the broker raises its soft limit to the hard one at start.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

from azure.servicebus import ServiceBusMessage  # noqa: E402
from azure.servicebus.aio import ServiceBusClient  # noqa: E402

from kbutil import Broker, connection_string, render_toml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import proc_status  # noqa: E402

QUEUE = "held"


async def open_one(conn: str, held: List[Any], gate: asyncio.Semaphore) -> None:
    async with gate:
        client = ServiceBusClient.from_connection_string(conn)
        sender = client.get_queue_sender(QUEUE)
        await sender.send_messages(ServiceBusMessage("hello"))
        held.append((client, sender))


async def run(conn: str, n: int, pid: int, hold_s: float) -> None:
    held: List[Any] = []
    gate = asyncio.Semaphore(64)
    rss0, fds0 = proc_status(pid)
    print(f"before: rss {rss0 / 1024:.1f} MiB, fds {fds0}")
    t0 = time.monotonic()
    results = await asyncio.gather(*(open_one(conn, held, gate) for _ in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    print(f"opened {len(held)} connections in {time.monotonic() - t0:.1f} s, {len(failed)} failed"
          + (f" (first: {failed[0]!r})" if failed else ""))
    await asyncio.sleep(hold_s)
    rss1, fds1 = proc_status(pid)
    per = (rss1 - rss0) / max(1, len(held))
    print(f"held: rss {rss1 / 1024:.1f} MiB, fds {fds1}, {per:.1f} KiB RSS per connection")
    for client, sender in held:
        await sender.close()
        await client.close()
    await asyncio.sleep(3)
    rss2, fds2 = proc_status(pid)
    print(f"after close: rss {rss2 / 1024:.1f} MiB, fds {fds2}")
    if failed or fds2 > fds0 + 5:
        raise SystemExit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=10.0, help="seconds to hold them all open")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.connections * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with tempfile.TemporaryDirectory(prefix="keybus-hold-") as tmp:
        work = Path(tmp)
        config = work / "keybus.toml"
        config.write_text(render_toml({QUEUE: {}}) + f"\n[limits]\nmax_connections = {args.connections + 100}\n")
        broker = Broker(work, config, data_dir=work / "data", name="hold").start()
        try:
            asyncio.run(run(connection_string(broker.amqp_port), args.connections, broker.pid, args.hold))
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
