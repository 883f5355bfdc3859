"""Hold many concurrent SDK connections against one keybus process and report its memory.

    .venv/bin/python scripts/hold_connections.py --connections 5000

Each connection is what an application makes: the async Python SDK opens it, authenticates
over CBS with a SAS token, attaches a sender and sends one message; all are then held open
together. The connections come from several client processes (``--workers``). The script prints the broker's RSS and open descriptors before, while held, and
after they are closed, and the RSS per held connection. The client raises its own descriptor
limit; the broker raises its soft limit to the hard one at start.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
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
# Connections each client process opens at once: few enough that each finishes its CBS
# handshake well within the broker's token deadline on a busy machine.
IN_FLIGHT = 4


async def open_one(conn: str, held: List[Any], gate: asyncio.Semaphore) -> None:
    async with gate:
        client = ServiceBusClient.from_connection_string(conn)
        sender = client.get_queue_sender(QUEUE)
        await sender.send_messages(ServiceBusMessage("hello"))
        held.append((client, sender))


async def hold(conn: str, n: int, to_parent: Any, from_parent: Any) -> None:
    """One worker process: open `n` connections, report, hold them until told, close them."""
    held: List[Any] = []
    gate = asyncio.Semaphore(IN_FLIGHT)
    results = await asyncio.gather(*(open_one(conn, held, gate) for _ in range(n)), return_exceptions=True)
    failed = [repr(r) for r in results if isinstance(r, BaseException)]
    to_parent.put((len(held), failed[:1], len(failed)))
    await asyncio.get_running_loop().run_in_executor(None, from_parent.get)
    for client, sender in held:
        await sender.close()
        await client.close()
    to_parent.put("closed")


def worker(conn: str, n: int, to_parent: Any, from_parent: Any) -> None:
    raise_nofile(n * 4 + 256)
    asyncio.run(hold(conn, n, to_parent, from_parent))


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, want)), hard))


def run(conn: str, n: int, pid: int, hold_s: float, workers: int) -> int:
    """Open `n` connections from `workers` client processes (one Python process cannot open
    thousands of SDK connections quickly), hold them together, then close them."""
    rss0, fds0 = proc_status(pid)
    print(f"before: rss {rss0 / 1024:.1f} MiB, fds {fds0}", flush=True)
    ctx = mp.get_context("spawn")
    up, downs, procs = ctx.Queue(), [], []
    t0 = time.monotonic()
    for i in range(workers):
        down = ctx.Queue()
        share = n // workers + (1 if i < n % workers else 0)
        p = ctx.Process(target=worker, args=(conn, share, up, down), daemon=True)
        p.start()
        downs.append(down)
        procs.append(p)
    opened = failed = 0
    first_failure: List[str] = []
    for _ in range(workers):
        ok, first, bad = up.get()
        opened, failed = opened + ok, failed + bad
        first_failure = first_failure or first
        print(f"  {opened} open, {failed} failed, {time.monotonic() - t0:.0f} s", flush=True)
    print(f"opened {opened} connections in {time.monotonic() - t0:.1f} s, {failed} failed"
          + (f" (first: {first_failure[0]})" if first_failure else ""), flush=True)
    time.sleep(hold_s)
    rss1, fds1 = proc_status(pid)
    per = (rss1 - rss0) / max(1, opened)
    print(f"held: rss {rss1 / 1024:.1f} MiB, fds {fds1}, {per:.1f} KiB RSS per connection", flush=True)
    for down in downs:
        down.put("close")
    for _ in range(workers):
        up.get()
    for p in procs:
        p.join(30)
    time.sleep(3)
    rss2, fds2 = proc_status(pid)
    print(f"after close: rss {rss2 / 1024:.1f} MiB, fds {fds2}", flush=True)
    return 1 if failed or fds2 > fds0 + 5 else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--hold", type=float, default=10.0, help="seconds to hold them all open")
    ap.add_argument("--workers", type=int, default=10, help="client processes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="keybus-hold-") as tmp:
        work = Path(tmp)
        config = work / "keybus.toml"
        config.write_text(render_toml({QUEUE: {}}) + (
            # Every connection comes from 127.0.0.1 and is unauthenticated until its CBS
            # token: the per-address budget for those must hold a worker's whole burst.
            f"\n[limits]\nmax_connections = {args.connections + 100}\n"
            f"max_unauthenticated_connections = {args.connections}\n"
            f"max_unauthenticated_per_address = {args.connections}\n"
        ))
        broker = Broker(work, config, data_dir=work / "data", name="hold").start()
        try:
            return run(connection_string(broker.amqp_port), args.connections, broker.pid, args.hold, args.workers)
        finally:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
