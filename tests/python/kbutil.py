"""Helpers for the keybus real-client test suite.

* a queue registry: test modules call :func:`declare_queue` at import time (i.e. during
  collection); the session-scoped broker started in ``conftest.py`` declares every
  registered queue in its TOML config, so each test gets its own queue(s);
* :class:`Broker`: starts ``keybus serve`` on ephemeral ports, parses the
  ``keybus: amqp|http listening on 127.0.0.1:PORT`` lines, polls ``GET /health``,
  captures stderr to a file and stops the process by its PID;
* small receive helpers used by the tests.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]

SAS_POLICY = "RootManageSharedAccessKey"
SAS_KEY = "SAS_KEY_VALUE"
# A second policy of the session broker that grants Listen only.
LISTEN_POLICY = "listen-only"
LISTEN_KEY = "LISTEN_KEY_VALUE"

STARTUP_TIMEOUT = 30.0  # seconds to wait for the "listening" lines and for /health

_AMQP_RE = re.compile(r"keybus: amqp listening on ([0-9A-Za-z.\-\[\]:]+):(\d+)\s*$")
_HTTP_RE = re.compile(r"keybus: http listening on ([0-9A-Za-z.\-\[\]:]+):(\d+)\s*$")
_CONN_RE = re.compile(r"keybus: connection string: (\S.*?)\s*$")
_AMQPS_RE = re.compile(r"keybus: amqps listening on ([0-9A-Za-z.\-\[\]:]+):(\d+)\s*$")
_HTTPS_RE = re.compile(r"keybus: https listening on ([0-9A-Za-z.\-\[\]:]+):(\d+)\s*$")
_CA_RE = re.compile(r"keybus: development CA at (\S+?):")

# Every broker started by the suite, so that conftest can print stderr tails on failure.
ALL_BROKERS: List["Broker"] = []


# --------------------------------------------------------------------------------------
# queue registry
# --------------------------------------------------------------------------------------

_QUEUE_KEYS = {
    "lock_duration": str,
    "max_delivery_count": int,
    "default_message_time_to_live": str,
    "dead_lettering_on_message_expiration": bool,
    "requires_duplicate_detection": bool,
    "duplicate_detection_history_time_window": str,
    "requires_session": bool,
    "max_message_size": int,
    "max_size_in_megabytes": int,
}

#: name -> properties of every queue the session broker must declare
QUEUES: Dict[str, Dict[str, Any]] = {}


def declare_queue(name: str, **props: Any) -> str:
    """Register a queue for the session-scoped broker and return its name.

    Properties use the keybus TOML names (see docs/config.md), e.g.
    ``lock_duration="5s"``, ``max_delivery_count=3``, ``default_message_time_to_live="2s"``,
    ``dead_lettering_on_message_expiration=True``, ``requires_duplicate_detection=True``,
    ``duplicate_detection_history_time_window="1m"``, ``max_message_size=1024``.
    """
    for key, value in props.items():
        if key not in _QUEUE_KEYS:
            raise KeyError(f"unknown queue property {key!r}")
        if not isinstance(value, _QUEUE_KEYS[key]):
            raise TypeError(f"queue property {key!r} must be {_QUEUE_KEYS[key].__name__}")
    if name in QUEUES and QUEUES[name] != props:
        raise ValueError(f"queue {name!r} declared twice with different properties")
    QUEUES[name] = dict(props)
    return name


#: raw TOML blocks (topics with subscriptions and rules) appended to the session config
EXTRA_TOML: List[str] = []


def declare_toml(block: str) -> None:
    """Append a raw keybus TOML block (e.g. a ``[[topics]]`` table) to the session config."""
    if block not in EXTRA_TOML:
        EXTRA_TOML.append(block)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string for our ASCII names
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_toml(queues: Dict[str, Dict[str, Any]], namespace: str = "keybus-tests") -> str:
    lines = [
        "[namespace]",
        f"name = {_toml_value(namespace)}",
        "",
        "[[sas_policies]]",
        f"name = {_toml_value(SAS_POLICY)}",
        f"key = {_toml_value(SAS_KEY)}",
        'rights = ["Manage", "Send", "Listen"]',
        "",
    ]
    if queues is QUEUES:
        lines += [
            "[[sas_policies]]",
            f"name = {_toml_value(LISTEN_POLICY)}",
            f"key = {_toml_value(LISTEN_KEY)}",
            'rights = ["Listen"]',
            "",
        ]
    for name in sorted(queues):
        lines.append("[[queues]]")
        lines.append(f"name = {_toml_value(name)}")
        for key, value in queues[name].items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    if queues is QUEUES:
        lines.extend(EXTRA_TOML)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# broker process
# --------------------------------------------------------------------------------------


def keybus_bin() -> Path:
    raw = os.environ.get("KEYBUS_BIN", "target/release/keybus")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def connection_string(port: int, host: str = "127.0.0.1", key: str = SAS_KEY, policy: str = SAS_POLICY) -> str:
    return (
        f"Endpoint=sb://{host}:{port};SharedAccessKeyName={policy};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true;"
    )


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One ``keybus serve`` process on ephemeral ports."""

    def __init__(
        self,
        workdir: Path,
        config_path: Path,
        *,
        data_dir: Optional[Path] = None,
        name: str = "keybus",
        extra_args: Optional[List[str]] = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args or [])
        self.amqps_port: Optional[int] = None
        self.https_port: Optional[int] = None
        self.ca_path: Optional[str] = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = Path(config_path)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.name = name
        self.proc: Optional[subprocess.Popen] = None
        self.amqp_port: Optional[int] = None
        self.http_port: Optional[int] = None
        self.printed_connection_string: Optional[str] = None
        self.stdout_lines: List[str] = []
        self._restarts = 0
        self.stderr_path = self.workdir / f"{name}.stderr.log"
        self.stdout_path = self.workdir / f"{name}.stdout.log"
        self._ports_ready = threading.Event()
        self._reader: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------

    def command(self) -> List[str]:
        cmd = [str(keybus_bin()), "serve"]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        else:
            cmd += ["--in-memory"]
        cmd += [
            "--amqp-port",
            "0",
            "--http-port",
            "0",
            "--bind",
            "127.0.0.1",
            "--config",
            str(self.config_path),
        ]
        return cmd + self.extra_args

    def start(self) -> "Broker":
        binary = keybus_bin()
        if not binary.exists():
            raise BrokerStartError(
                f"keybus binary not found at {binary}; build it with `cargo build --release -p keybus` "
                "or point KEYBUS_BIN at it"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBUS_")}
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        self.amqp_port = self.http_port = None
        self.printed_connection_string = None
        self.stdout_lines = []
        self._ports_ready = threading.Event()
        stderr = open(self.stderr_path, "ab")
        stderr.write(f"\n===== start #{self._restarts}: {' '.join(self.command())}\n".encode())
        stderr.flush()
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=str(self.workdir),
            )
        finally:
            stderr.close()
        self._restarts += 1
        if self not in ALL_BROKERS:
            ALL_BROKERS.append(self)
        self._reader = threading.Thread(target=self._read_stdout, args=(self.proc,), daemon=True)
        self._reader.start()

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._ports_ready.wait(0.1):
            if self.proc.poll() is not None:
                # give the reader a moment to drain what was printed
                self._ports_ready.wait(0.5)
                if self._ports_ready.is_set():
                    break
                raise BrokerStartError(
                    f"keybus exited with code {self.proc.returncode} before printing its ports\n"
                    + self.diagnostics()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerStartError(
                    f"keybus did not print its listening ports within {STARTUP_TIMEOUT:.0f}s\n" + self.diagnostics()
                )
        self._wait_healthy(deadline)
        return self

    def _read_stdout(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        with open(self.stdout_path, "ab") as log:
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.stdout_lines.append(line)
                m = _AMQP_RE.search(line)
                if m:
                    self.amqp_port = int(m.group(2))
                m = _HTTP_RE.search(line)
                if m:
                    self.http_port = int(m.group(2))
                m = _CONN_RE.search(line)
                if m:
                    self.printed_connection_string = m.group(1)
                m = _AMQPS_RE.search(line)
                if m:
                    self.amqps_port = int(m.group(2))
                m = _HTTPS_RE.search(line)
                if m:
                    self.https_port = int(m.group(2))
                m = _CA_RE.search(line)
                if m:
                    self.ca_path = m.group(1)
                # The connection string is the last line `keybus serve` prints at start.
                if self.amqp_port and self.http_port and self.printed_connection_string:
                    self._ports_ready.set()
        proc.stdout.close()

    def _wait_healthy(self, deadline: float) -> None:
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerStartError(
                    f"keybus exited with code {self.proc.returncode} before /health answered\n" + self.diagnostics()
                )
            try:
                status, _ = self.health()
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as exc:  # connection refused, reset, timeout
                last = exc
            time.sleep(0.1)
        self.stop()
        raise BrokerStartError(f"GET /health never returned 200 (last: {last!r})\n" + self.diagnostics())

    def health(self) -> "tuple[int, bytes]":
        url = f"http://127.0.0.1:{self.http_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the broker (no chance to flush anything) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self) -> None:
        """Terminate by PID; SIGKILL if still alive after 5 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.terminate()
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)

    # -- connection --------------------------------------------------------------

    @property
    def conn_str(self) -> str:
        assert self.amqp_port, "broker not started"
        return connection_string(self.amqp_port)

    def conn_str_with_key(self, key: str) -> str:
        assert self.amqp_port, "broker not started"
        return connection_string(self.amqp_port, key=key)

    def admin_conn_str(self, policy: str = SAS_POLICY, key: str = SAS_KEY) -> str:
        """Connection string for ``ServiceBusAdministrationClient``: it always speaks https
        to the Endpoint's host and port (``UseDevelopmentEmulator`` does not change that), so
        it needs the HTTPS port of a ``--dev-tls`` broker, a host name the certificate covers,
        and ``connection_verify=<ca_path>``."""
        assert self.https_port, "broker started without --dev-tls --https-port"
        return f"Endpoint=sb://localhost:{self.https_port};SharedAccessKeyName={policy};SharedAccessKey={key}"

    @property
    def ca_file(self) -> str:
        """The development CA as an absolute path (the broker prints it relative to its cwd)."""
        assert self.ca_path, "broker started without --dev-tls"
        path = Path(self.ca_path)
        return str(path if path.is_absolute() else self.workdir / path)

    # -- diagnostics -------------------------------------------------------------

    def stderr_tail(self, lines: int = 60) -> str:
        try:
            text = self.stderr_path.read_text("utf-8", "replace")
        except OSError:
            return "<no stderr captured>"
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        out = "\n".join(self.stdout_lines[-20:])
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr (tail) ---\n{self.stderr_tail()}"


# --------------------------------------------------------------------------------------
# message helpers
# --------------------------------------------------------------------------------------


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def body_bytes(msg: Any) -> bytes:
    """Concatenated data sections of a received message (DATA body)."""
    return b"".join(msg.body)


def receive_n(receiver: Any, n: int, *, timeout: float = 20.0, max_wait_time: float = 3.0) -> List[Any]:
    """Receive until ``n`` messages arrived or ``timeout`` passed; never asks for more than missing."""
    got: List[Any] = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got.extend(receiver.receive_messages(max_message_count=n - len(got), max_wait_time=max_wait_time))
    return got


async def areceive_n(receiver: Any, n: int, *, timeout: float = 20.0, max_wait_time: float = 3.0) -> List[Any]:
    got: List[Any] = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got.extend(await receiver.receive_messages(max_message_count=n - len(got), max_wait_time=max_wait_time))
    return got


def receive_all(receiver: Any, *, quiet: float = 3.0, timeout: float = 60.0, batch: int = 50) -> List[Any]:
    """Receive (without settling) until a receive call returns nothing or ``timeout`` passed."""
    got: List[Any] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        msgs = receiver.receive_messages(max_message_count=batch, max_wait_time=quiet)
        if not msgs:
            break
        got.extend(msgs)
    return got


def assert_empty(receiver: Any, wait: float = 2.0) -> None:
    msgs = receiver.receive_messages(max_message_count=10, max_wait_time=wait)
    assert msgs == [], f"expected no message, got {[(m.sequence_number, str(m)) for m in msgs]}"


def ids(msgs: Iterable[Any]) -> List[str]:
    return [m.message_id for m in msgs]


def approx_time(actual: Optional[datetime.datetime], expected: datetime.datetime, tolerance: float, what: str) -> None:
    assert actual is not None, f"{what} is None"
    assert actual.tzinfo is not None, f"{what} is not timezone-aware: {actual!r}"
    delta = abs((actual - expected).total_seconds())
    assert delta <= tolerance, f"{what}={actual.isoformat()} expected ≈{expected.isoformat()} (±{tolerance}s), off by {delta:.3f}s"


class auth_refused:
    """Expect the SDK's authentication failure (a refused `put-token`). With
    `custom_endpoint_address` the Python SDK reports it as `ServiceBusConnectionError` (for
    parity with uamqp) around the AMQP `AuthenticationException`; otherwise as
    `ServiceBusAuthenticationError`."""

    def __enter__(self) -> "auth_refused":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        from azure.servicebus._pyamqp.error import AuthenticationException
        from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusConnectionError

        if exc is None:
            raise AssertionError("expected the token to be refused, but the operation succeeded")
        if isinstance(exc, ServiceBusAuthenticationError):
            return True
        if isinstance(exc, ServiceBusConnectionError) and isinstance(
            getattr(exc, "inner_exception", None) or exc.__cause__, AuthenticationException
        ):
            return True
        return False
