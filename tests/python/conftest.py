"""Fixtures for the keybus real-client suite.

The session-scoped ``broker`` runs ``keybus serve --in-memory --amqp-port 0 --http-port 0
--bind 127.0.0.1 --config <tmp toml> --dev-tls --amqps-port 0 --https-port 0`` (TLS for the
management API, which the SDK reaches over https only); the TOML declares the SAS policies
RootManageSharedAccessKey / SAS_KEY_VALUE and listen-only / LISTEN_KEY_VALUE and every queue
registered with ``kbutil.declare_queue`` by the collected test modules.

``broker_factory`` starts extra brokers (data-dir variants for durability tests,
emulator Config.json variants); they are stopped by PID at the end of the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import kbutil
from azure.servicebus import ServiceBusClient


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in kbutil.ALL_BROKERS:
            report.sections.append((f"{b.name} stderr (tail of {b.stderr_path})", b.stderr_tail(80)))
            if b.proc is not None and b.proc.poll() is not None and b.proc.returncode not in (0, -9, -15):
                report.sections.append((f"{b.name} exit", f"keybus exited with code {b.proc.returncode}"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kbutil.Broker]:
    workdir = tmp_path_factory.mktemp("keybus-session")
    config = workdir / "keybus.toml"
    config.write_text(kbutil.render_toml(kbutil.QUEUES))
    # --dev-tls adds the HTTPS listener the management (ATOM) API is used over: the SDK's
    # ServiceBusAdministrationClient always speaks https (see kbutil.Broker.admin_conn_str).
    b = kbutil.Broker(
        workdir,
        config,
        name="keybus-session",
        extra_args=[
            "--data-dir",
            str(workdir / "data"),
            "--dev-tls",
            "--amqps-port",
            "0",
            "--https-port",
            "0",
        ],
    )
    try:
        b.start()
    except kbutil.BrokerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def conn_str(broker: kbutil.Broker) -> str:
    if not broker.alive():
        pytest.fail("the session keybus process is no longer running\n" + broker.diagnostics(), pytrace=False)
    return broker.conn_str


@pytest.fixture
def sb_client(conn_str: str) -> Iterator[ServiceBusClient]:
    # A correct broker needs no retries; keep one so transient hiccups do not hide, and failures stay fast.
    client = ServiceBusClient.from_connection_string(conn_str, retry_total=1)
    try:
        yield client
    finally:
        client.close()


class BrokerFactory:
    """Starts additional brokers for one test; stops all of them by PID afterwards."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.brokers: List[kbutil.Broker] = []
        self._n = 0

    def write_toml(self, queues: Dict[str, Dict[str, Any]], name: str = "keybus.toml") -> Path:
        path = self.base / name
        path.write_text(kbutil.render_toml(queues))
        return path

    def start(
        self,
        config_path: Path,
        *,
        data_dir: Optional[Path] = None,
        name: Optional[str] = None,
        extra_args: Optional[List[str]] = None,
    ) -> kbutil.Broker:
        self._n += 1
        b = kbutil.Broker(
            self.base / f"broker{self._n}",
            config_path,
            data_dir=data_dir,
            name=name or f"keybus-{self._n}",
            extra_args=extra_args,
        )
        self.brokers.append(b)
        try:
            b.start()
        except kbutil.BrokerStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        return b

    def restart(self, b: kbutil.Broker) -> kbutil.Broker:
        """Start the same command again (same data dir / config); ports may change."""
        try:
            b.start()
        except kbutil.BrokerStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        return b

    def stop_all(self) -> None:
        for b in self.brokers:
            b.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    factory = BrokerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
        for b in factory.brokers:
            if b in kbutil.ALL_BROKERS:
                kbutil.ALL_BROKERS.remove(b)


@pytest.fixture
def make_client() -> Iterator[Callable[..., ServiceBusClient]]:
    """Create extra sync clients (e.g. one per thread); all closed at teardown."""
    clients: List[ServiceBusClient] = []

    def _make(conn: str, **kwargs: Any) -> ServiceBusClient:
        kwargs.setdefault("retry_total", 1)
        c = ServiceBusClient.from_connection_string(conn, **kwargs)
        clients.append(c)
        return c

    yield _make
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - best effort after broker kills
            pass
