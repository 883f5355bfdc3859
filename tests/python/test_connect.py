"""``keybus connect`` end to end: a keybus broker, a small HTTP target (``http.server`` in a
thread) and the connector process, which authenticates with the listen-only policy (its own
principal, never the root key); messages are sent with the Python SDK.

Checks: a 2xx completes the message (headers: BrokerProperties, application properties,
CloudEvents); 503 then 200 delivers it once; 422 dead-letters it with reason PushRejected and
the status; ``kill -9`` of the connector while a push is in flight loses nothing (the message
comes back once its lock runs out); SIGTERM stops the connector cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

import kbutil
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

Q_OK = kbutil.declare_queue("connect-ok", lock_duration="2s")
Q_RETRY = kbutil.declare_queue("connect-retry", lock_duration="2s", max_delivery_count=5)
Q_REJECT = kbutil.declare_queue("connect-reject", lock_duration="2s")
Q_KILL = kbutil.declare_queue("connect-kill", lock_duration="2s", max_delivery_count=5)
Q_SLOW = kbutil.declare_queue("connect-slow", lock_duration="2s")
Q_DRAIN = kbutil.declare_queue("connect-drain", lock_duration="2s")
Q_RELOAD_A = kbutil.declare_queue("connect-reload-a", lock_duration="2s")
Q_RELOAD_B = kbutil.declare_queue("connect-reload-b", lock_duration="2s")
Q_REFUSED = kbutil.declare_queue("connect-refused", lock_duration="5s", max_delivery_count=3)
kbutil.declare_toml(
    """
[[topics]]
name = "connect-events"

[[topics.subscriptions]]
name = "audit"
lock_duration = "2s"
"""
)
Q_SESSIONS = kbutil.declare_queue("connect-sessions", lock_duration="2s", requires_session=True)

_LISTEN_RE = re.compile(r"keybus connect: http listening on [0-9.]+:(\d+)")


class Target:
    """An HTTP target: each path answers from a script of (status, body) pairs (the last one
    repeats); ``/hold`` keeps the request until ``release`` is set. Records every request."""

    def __init__(self) -> None:
        self.scripts: Dict[str, List[Tuple[int, str, Dict[str, str]]]] = {
            "/ok": [(200, "", {})],
            "/retry": [(503, "busy", {"Retry-After": "1"}), (200, "", {})],
            "/reject": [(422, '{"error": "order total is negative"}', {})],
            "/hold": [(200, "", {})],
            "/slow": [(200, "", {})],
            "/drain": [(200, "", {})],
            "/reload-a": [(200, "", {})],
            "/reload-b": [(200, "", {})],
            "/sessions": [(200, "", {})],
        }
        # Pushes of one session in flight now, and the most ever seen at once.
        self.session_now: Dict[str, int] = {}
        self.session_max: Dict[str, int] = {}
        self.drain_release = threading.Event()
        self.drain_held = threading.Event()
        self.requests: List[Tuple[str, Dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.held = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with target.lock:
                    seen = sum(1 for p, _, _ in target.requests if p == self.path)
                    target.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path == "/slow":
                    time.sleep(3.5)
                if self.path == "/sessions":
                    sid = json.loads(self.headers["brokerproperties"])["SessionId"]
                    with target.lock:
                        target.session_now[sid] = target.session_now.get(sid, 0) + 1
                        target.session_max[sid] = max(target.session_max.get(sid, 0), target.session_now[sid])
                    time.sleep(0.2)
                    with target.lock:
                        target.session_now[sid] -= 1
                if self.path == "/drain":
                    target.drain_held.set()
                    target.drain_release.wait(30)
                if self.path == "/hold":
                    target.held.set()
                    target.release.wait(30)
                script = target.scripts.get(self.path, [(404, "no such hook", {})])
                status, text, headers = script[min(seen, len(script) - 1)]
                data = text.encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_to(self, path: str) -> List[Tuple[str, Dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == path]

    def wait_for(self, path: str, n: int, timeout: float = 20.0) -> List[Tuple[str, Dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests_to(path)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(self.requests_to(path))} requests, wanted {n}")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Connector:
    """One ``keybus connect`` process on an ephemeral /health port."""

    def __init__(
        self,
        workdir: Path,
        namespace_conn_str: str,
        connectors: List[Tuple[str, str, str]],
        extra: str = "",
        env: Optional[Dict[str, str]] = None,
        wait_healthy: bool = True,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "connectors.toml"
        self.write_config(namespace_conn_str, connectors, extra)
        self.stderr_path = workdir / "connect.stderr.log"
        self.lines: List[str] = []
        self.port: Optional[int] = None
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [str(kbutil.keybus_bin()), "connect", "--config", str(self.config), "--http-port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(workdir),
                env={**os.environ, **(env or {})},
            )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + kbutil.STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.port is not None and (not wait_healthy or self.health()[0] == 200):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"keybus connect did not become healthy\n{self.diagnostics()}")

    def write_config(
        self, namespace_conn_str: str, connectors: List[Tuple[str, str, str]], extra: str = ""
    ) -> None:
        if "[namespace]" in namespace_conn_str:
            lines = [namespace_conn_str, ""]
        else:
            lines = ["[namespace]", f"connection_string = {json.dumps(namespace_conn_str)}", ""]
        for name, queue, target in connectors:
            lines += [
                "[[connectors]]",
                f"name = {json.dumps(name)}",
                (
                    "topic = {}\nsubscription = {}".format(*map(json.dumps, queue.split("/subscriptions/")))
                    if "/subscriptions/" in queue
                    else f"queue = {json.dumps(queue)}"
                ),
                f"target = {json.dumps(target)}",
                'timeout = "10s"',
                'retry_initial = "200ms"',
                'retry_max = "2s"',
                extra,
                "",
            ]
        self.config.write_text("\n".join(lines))

    def wait_line(self, needle: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.lines):
            assert time.monotonic() < deadline, f"no '{needle}' on stdout\n{self.diagnostics()}"
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            m = _LISTEN_RE.search(line)
            if m:
                self.port = int(m.group(1))

    def health(self) -> Tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def diagnostics(self) -> str:
        try:
            err = self.stderr_path.read_text("utf-8", "replace")[-4000:]
        except OSError:
            err = ""
        return "--- stdout ---\n" + "\n".join(self.lines[-30:]) + "\n--- stderr ---\n" + err

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


@pytest.fixture(scope="module")
def connector(broker: kbutil.Broker, target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Connector]:
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(
        tmp_path_factory.mktemp("connect"),
        listen,
        [
            ("ok", Q_OK, target.url("/ok")),
            ("retry", Q_RETRY, target.url("/retry")),
            ("reject", Q_REJECT, target.url("/reject")),
            ("slow", Q_SLOW, target.url("/slow")),
        ],
    )
    yield c
    code = c.stop()
    assert code == 0, f"keybus connect exited with {code} on SIGTERM\n{c.diagnostics()}"
    assert any("connector ok: stopped" in line for line in c.lines), c.diagnostics()


def test_two_hundred_completes_with_rest_and_cloudevents_headers(
    connector: Connector, target: Target, sb_client: ServiceBusClient
) -> None:
    with sb_client.get_queue_sender(Q_OK) as sender:
        sender.send_messages(
            ServiceBusMessage(
                b'{"order": 7}',
                message_id="order-7",
                content_type="application/json",
                subject="order.created",
                correlation_id="corr-1",
                application_properties={"tenant": "acme", "priority": 5},
            )
        )
    [(_, headers, body)] = target.wait_for("/ok", 1)
    assert body == b'{"order": 7}'
    assert headers["content-type"] == "application/json"
    bp = json.loads(headers["brokerproperties"])
    assert bp["MessageId"] == "order-7"
    assert bp["CorrelationId"] == "corr-1"
    assert bp["Label"] == "order.created"
    assert bp["DeliveryCount"] == 1
    assert "LockToken" in bp
    assert headers["tenant"] == '"acme"'
    assert headers["priority"] == "5"
    assert headers["ce-id"] == "order-7"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-source"].endswith(f"/{Q_OK}")
    assert headers["ce-subject"] == "order.created"
    assert headers["ce-type"] == "com.microsoft.servicebus.message"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", headers["ce-time"])
    # Completed: nothing left, and the connector counted it.
    with sb_client.get_queue_receiver(Q_OK, max_wait_time=3) as r:
        assert r.receive_messages(max_message_count=1, max_wait_time=3) == []
    assert 'keybus_connect_outcomes_total{connector="ok",outcome="complete"} 1' in connector.metrics()


def test_503_then_200_delivers_once(connector: Connector, target: Target, sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_RETRY) as sender:
        sender.send_messages(ServiceBusMessage(b"retry me", message_id="retry-1"))
    got = target.wait_for("/retry", 2)
    first, second = (json.loads(h["brokerproperties"]) for _, h, _ in got[:2])
    assert first["DeliveryCount"] == 1 and second["DeliveryCount"] == 2
    # The second push succeeded: no third, and the queue is empty.
    time.sleep(1.5)
    assert len(target.requests_to("/retry")) == 2
    with sb_client.get_queue_receiver(Q_RETRY, max_wait_time=3) as r:
        assert r.receive_messages(max_message_count=1, max_wait_time=3) == []
    text = connector.metrics()
    assert 'keybus_connect_retries_total{connector="retry"} 1' in text
    assert 'keybus_connect_outcomes_total{connector="retry",outcome="complete"} 1' in text


def test_422_dead_letters_with_push_rejected_and_the_status(
    connector: Connector, target: Target, sb_client: ServiceBusClient
) -> None:
    with sb_client.get_queue_sender(Q_REJECT) as sender:
        sender.send_messages(ServiceBusMessage(b'{"total": -1}', message_id="bad-1"))
    target.wait_for("/reject", 1)
    with sb_client.get_queue_receiver(Q_REJECT, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=10) as r:
        [m] = kbutil.receive_n(r, 1)
        assert m.message_id == "bad-1"
        assert m.dead_letter_reason == "PushRejected"
        assert "422" in m.dead_letter_error_description
        assert "order total is negative" in m.dead_letter_error_description
        r.complete_message(m)
    assert len(target.requests_to("/reject")) == 1


def test_a_push_slower_than_the_lock_keeps_its_lock(
    connector: Connector, target: Target, sb_client: ServiceBusClient
) -> None:
    with sb_client.get_queue_sender(Q_SLOW) as sender:
        sender.send_messages(ServiceBusMessage(b"take your time", message_id="slow-1"))
    target.wait_for("/slow", 1)
    deadline = time.monotonic() + 15
    needle = 'keybus_connect_outcomes_total{connector="slow",outcome="complete"} 1'
    while needle not in connector.metrics():
        assert time.monotonic() < deadline, connector.metrics()
        time.sleep(0.1)
    # The lock (2 s) was renewed during the 3.5 s push: completed once, never pushed again.
    assert 'outcome="lock_lost"' not in connector.metrics()
    assert len(target.requests_to("/slow")) == 1
    with sb_client.get_queue_receiver(Q_SLOW, max_wait_time=3) as r:
        assert r.receive_messages(max_message_count=1, max_wait_time=3) == []


def test_kill_9_mid_flight_loses_nothing(
    broker: kbutil.Broker, target: Target, sb_client: ServiceBusClient, tmp_path: Path
) -> None:
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(tmp_path / "kill", listen, [("kill", Q_KILL, target.url("/hold"))])
    try:
        with sb_client.get_queue_sender(Q_KILL) as sender:
            sender.send_messages(ServiceBusMessage(b"precious", message_id="precious-1"))
        assert target.held.wait(20), c.diagnostics()
        c.kill9()
    finally:
        target.release.set()
        c.stop()
    # The lock (2 s) runs out and the message is there again, with its delivery counted.
    with sb_client.get_queue_receiver(Q_KILL, max_wait_time=10) as r:
        [m] = kbutil.receive_n(r, 1)
        assert m.message_id == "precious-1"
        assert m.delivery_count >= 1
        r.complete_message(m)


def test_sigterm_lets_the_push_in_flight_finish(
    broker: kbutil.Broker, target: Target, sb_client: ServiceBusClient, tmp_path: Path
) -> None:
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(tmp_path / "drain", listen, [("drain", Q_DRAIN, target.url("/drain"))])
    try:
        with sb_client.get_queue_sender(Q_DRAIN) as sender:
            sender.send_messages(ServiceBusMessage(b"finish me", message_id="drain-1"))
        assert target.drain_held.wait(20), c.diagnostics()
        c.proc.send_signal(signal.SIGTERM)
        c.wait_line("connector drain: draining")
        assert c.proc.poll() is None, "the connector must wait for the push in flight"
        target.drain_release.set()
        assert c.stop() == 0, c.diagnostics()
    finally:
        target.drain_release.set()
        c.stop()
    assert any("connector drain: stopped" in line for line in c.lines), c.diagnostics()
    # The push finished and was settled: the message is gone, pushed once.
    assert len(target.requests_to("/drain")) == 1
    with sb_client.get_queue_receiver(Q_DRAIN, max_wait_time=4) as r:
        assert r.receive_messages(max_message_count=1, max_wait_time=4) == []


def test_sighup_reloads_the_file_and_keeps_running_on_a_bad_one(
    broker: kbutil.Broker, target: Target, sb_client: ServiceBusClient, tmp_path: Path
) -> None:
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(tmp_path / "reload", listen, [("a", Q_RELOAD_A, target.url("/reload-a"))])
    try:
        c.write_config(
            listen,
            [("a", Q_RELOAD_A, target.url("/reload-a")), ("b", Q_RELOAD_B, target.url("/reload-b"))],
        )
        c.proc.send_signal(signal.SIGHUP)
        c.wait_line("connector b: running")
        with sb_client.get_queue_sender(Q_RELOAD_B) as sender:
            sender.send_messages(ServiceBusMessage(b"new connector", message_id="reload-b-1"))
        target.wait_for("/reload-b", 1)
        # A file that does not parse is reported; the running connectors stay.
        c.config.write_text("[namespace]\nconnection_string = 3\n")
        c.proc.send_signal(signal.SIGHUP)
        c.wait_line("keeping the running connectors")
        with sb_client.get_queue_sender(Q_RELOAD_A) as sender:
            sender.send_messages(ServiceBusMessage(b"still here", message_id="reload-a-1"))
        target.wait_for("/reload-a", 1)
        status, body = c.health()
        assert status == 200, body
        assert set(json.loads(body)) == {"a", "b"}
    finally:
        assert c.stop() == 0, c.diagnostics()


def test_sessions_are_pushed_in_order_one_request_at_a_time(
    broker: kbutil.Broker, target: Target, sb_client: ServiceBusClient, tmp_path: Path
) -> None:
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(
        tmp_path / "sessions",
        listen,
        [("sessions", Q_SESSIONS, target.url("/sessions"))],
        extra="sessions = true\nconcurrency = 2",
    )
    try:
        with sb_client.get_queue_sender(Q_SESSIONS) as sender:
            sender.send_messages(
                [
                    ServiceBusMessage(f"{sid}-{i}".encode(), session_id=sid, message_id=f"{sid}-{i}")
                    for i in range(4)
                    for sid in ("alpha", "beta")
                ]
            )
        got = target.wait_for("/sessions", 8, timeout=30)
        deadline = time.monotonic() + 10
        needle = 'keybus_connect_outcomes_total{connector="sessions",outcome="complete"} 8'
        while needle not in c.metrics():
            assert time.monotonic() < deadline, c.metrics()
            time.sleep(0.1)
    finally:
        assert c.stop() == 0, c.diagnostics()
    for sid in ("alpha", "beta"):
        order = [b.decode() for _, h, b in got if json.loads(h["brokerproperties"])["SessionId"] == sid]
        assert order == [f"{sid}-{i}" for i in range(4)]
        assert target.session_max[sid] == 1
    assert len(target.requests_to("/sessions")) == 8


MI_CLIENT = "33333333-3333-4333-8333-333333333333"
MI_SECRET = "connector-mi-secret-0123456789"
HOOK_AUDIENCE = "api://orders-hook"
TENANT = "keybus-connect-test"


def test_managed_identity_toward_the_namespace_and_a_bearer_token_toward_the_target(
    broker_factory, tmp_path: Path
) -> None:
    import jwt  # PyJWT

    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
[[principals]]
id = "pusher"

[[grants]]
principal = "pusher"
role = "Receiver"
scope = "queues/id-q"

[sts]
tenant = "{TENANT}"
audiences = ["{HOOK_AUDIENCE}"]

[[sts.managed_identities]]
principal = "pusher"
client_id = "{MI_CLIENT}"
identity_header = "{MI_SECRET}"
"""
    )
    b = broker_factory.start(
        broker_factory.write_toml({"id-q": {"lock_duration": "2s"}}, name="id.toml"),
        data_dir=tmp_path / "data",
        name="keybus-connect-id",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{b.http_port}/{TENANT}/discovery/v2.0/keys", timeout=5) as r:
        jwks = json.loads(r.read())
    t = Target()
    t.scripts["/auth"] = [(200, "", {})]
    # Plain AMQP here; the workload identity test below goes over AMQPS.
    namespace = f'[namespace]\nendpoint = "sb://127.0.0.1:{b.amqp_port}"\ncredential = "managed_identity"\ntls = false'
    c = Connector(
        tmp_path / "connect",
        namespace,
        [("hook", "id-q", t.url("/auth"))],
        extra=f'audience = "{HOOK_AUDIENCE}"',
        env={
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{b.http_port}/msi/token",
            "IDENTITY_HEADER": MI_SECRET,
        },
    )
    try:
        with ServiceBusClient.from_connection_string(b.conn_str, retry_total=1) as sb:
            with sb.get_queue_sender("id-q") as sender:
                sender.send_messages(ServiceBusMessage(b"with identity", message_id="id-1"))
            [(_, headers, body)] = t.wait_for("/auth", 1)
            assert body == b"with identity"
            scheme, _, token = headers["authorization"].partition(" ")
            assert scheme == "Bearer"
            kid = jwt.get_unverified_header(token)["kid"]
            [key] = [k for k in jwks["keys"] if k["kid"] == kid]
            claims = jwt.decode(
                token,
                jwt.PyJWK(key).key,
                algorithms=["ES256"],
                audience=HOOK_AUDIENCE,
            )
            assert claims["appid"] == MI_CLIENT
            assert claims["iss"].endswith(f"/{TENANT}/v2.0")
            deadline = time.monotonic() + 10
            needle = 'keybus_connect_outcomes_total{connector="hook",outcome="complete"} 1'
            while needle not in c.metrics():
                assert time.monotonic() < deadline, c.metrics()
                time.sleep(0.1)
    finally:
        assert c.stop() == 0, c.diagnostics()
        t.close()
    # The broker refuses the target's token (its audience is not Service Bus).
    from azure.core.credentials import AccessToken
    from azure.servicebus import TransportType

    class Fixed:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            return AccessToken(token, int(time.time()) + 600)

    with kbutil.auth_refused():
        with ServiceBusClient(
            "localhost",
            Fixed(),
            custom_endpoint_address=f"sb://localhost:{b.amqps_port}",
            connection_verify=b.ca_path,
            transport_type=TransportType.Amqp,
            retry_total=0,
        ) as sb:
            with sb.get_queue_receiver("id-q", max_wait_time=2) as r:
                r.receive_messages(max_wait_time=2)
    time.sleep(0.5)
    audit = [json.loads(line) for line in (tmp_path / "data" / "audit.jsonl").read_text().splitlines() if line.strip()]
    refusals = [a for a in audit if a.get("event") == "token.put" and a.get("decision") == "deny"]
    assert refusals and "audience" in json.dumps(refusals[-1]).lower(), refusals


WI_CLIENT = "44444444-4444-4444-8444-444444444444"
WI_SUBJECT = "system:serviceaccount:hooks:connector"
EXCHANGE = "api://AzureADTokenExchange"


def test_workload_identity_over_amqps_toward_the_namespace_and_the_target(broker_factory, tmp_path: Path) -> None:
    import jwt  # PyJWT
    from test_rbac import ISSUER, Issuer

    issuer = Issuer(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"""
[[issuers]]
id = "k8s"
kind = "oidc"
issuer = "{ISSUER}"
jwks_file = "{issuer.jwks_path}"
audiences = ["{EXCHANGE}"]

[[principals]]
id = "wi-pusher"

[[grants]]
principal = "wi-pusher"
role = "Receiver"
scope = "queues/wi-q"

[sts]
tenant = "{TENANT}"
audiences = ["{HOOK_AUDIENCE}"]

[[sts.clients]]
client_id = "{WI_CLIENT}"
principal = "wi-pusher"
federated = [{{ issuer = "{ISSUER}", subject = "{WI_SUBJECT}", audiences = ["{EXCHANGE}"] }}]
"""
    )
    b = broker_factory.start(
        broker_factory.write_toml({"wi-q": {"lock_duration": "2s"}}, name="wi.toml"),
        data_dir=tmp_path / "data",
        name="keybus-connect-wi",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )
    token_file = tmp_path / "federated.jwt"
    token_file.write_text(issuer.token(WI_SUBJECT, aud=EXCHANGE))
    t = Target()
    t.scripts["/wi"] = [(200, "", {})]
    namespace = (
        f'[namespace]\nendpoint = "sb://localhost:{b.amqps_port}"\ncredential = "workload_identity"\n'
        f"ca_file = {json.dumps(b.ca_file)}"
    )
    c = Connector(
        tmp_path / "connect",
        namespace,
        [("wi", "wi-q", t.url("/wi"))],
        extra=f'audience = "{HOOK_AUDIENCE}"',
        env={
            "AZURE_AUTHORITY_HOST": f"https://localhost:{b.https_port}",
            "AZURE_TENANT_ID": TENANT,
            "AZURE_CLIENT_ID": WI_CLIENT,
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        },
    )
    try:
        with ServiceBusClient.from_connection_string(b.conn_str, retry_total=1) as sb:
            with sb.get_queue_sender("wi-q") as sender:
                sender.send_messages(ServiceBusMessage(b"federated", message_id="wi-1"))
        [(_, headers, body)] = t.wait_for("/wi", 1)
        assert body == b"federated"
        claims = jwt.decode(headers["authorization"].split(" ", 1)[1], options={"verify_signature": False})
        assert claims["aud"] == HOOK_AUDIENCE
        assert claims["appid"] == WI_CLIENT
    finally:
        assert c.stop() == 0, c.diagnostics()
        t.close()


def test_a_refusing_target_is_retried_with_backoff_until_max_delivery_count(
    broker: kbutil.Broker, sb_client: ServiceBusClient, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(tmp_path / "refused", listen, [("refused", Q_REFUSED, f"http://127.0.0.1:{closed}/hook")])
    try:
        started = time.monotonic()
        with sb_client.get_queue_sender(Q_REFUSED) as sender:
            sender.send_messages(ServiceBusMessage(b"nobody home", message_id="refused-1"))
        with sb_client.get_queue_receiver(Q_REFUSED, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=15) as r:
            [m] = kbutil.receive_n(r, 1)
            assert m.message_id == "refused-1"
            assert m.dead_letter_reason == "MaxDeliveryCountExceeded"
            r.complete_message(m)
        # Three attempts, each abandoned, with backoff between them (200 ms, 400 ms): no spin.
        assert time.monotonic() - started >= 0.6
        text = c.metrics()
        assert 'keybus_connect_retries_total{connector="refused"} 3' in text, text
        assert 'keybus_connect_outcomes_total{connector="refused",outcome="abandon"} 3' in text, text
        assert any("connector refused: target failing" in line for line in c.lines), c.diagnostics()
    finally:
        assert c.stop() == 0, c.diagnostics()


Q_MTLS = kbutil.declare_queue("connect-mtls", lock_duration="2s")


def test_a_client_certificate_toward_an_mtls_target(
    broker: kbutil.Broker, sb_client: ServiceBusClient, tmp_path: Path
) -> None:
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from test_mtls import Pki

    pki = Pki(tmp_path)
    client_cert, client_key = pki.client("keybus-connector", [])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook")]))
        .issuer_name(pki.ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(pki.ca_key, hashes.SHA256())
    )
    server_pem = tmp_path / "server.pem"
    server_key = tmp_path / "server-key.pem"
    server_pem.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    server_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    t = Target()
    t.scripts["/mtls"] = [(200, "", {})]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_pem, server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki.ca_path)
    t.server.socket = ctx.wrap_socket(t.server.socket, server_side=True)
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    namespace = f"[namespace]\nconnection_string = {json.dumps(listen)}\nca_file = {json.dumps(str(pki.ca_path))}"
    c = Connector(
        tmp_path / "connect",
        namespace,
        [("mtls", Q_MTLS, f"https://127.0.0.1:{t.port}/mtls")],
        extra=f"client_cert = {json.dumps(str(client_cert))}\nclient_key = {json.dumps(str(client_key))}",
    )
    try:
        # Without a client certificate the target lets nobody in.
        with pytest.raises(OSError):
            urllib.request.urlopen(
                f"https://127.0.0.1:{t.port}/mtls",
                data=b"x",
                timeout=5,
                context=ssl.create_default_context(cafile=str(pki.ca_path)),
            )
        with sb_client.get_queue_sender(Q_MTLS) as sender:
            sender.send_messages(ServiceBusMessage(b"over mtls", message_id="mtls-1"))
        [(_, _, body)] = t.wait_for("/mtls", 1)
        assert body == b"over mtls"
    finally:
        assert c.stop() == 0, c.diagnostics()
        t.close()


def test_a_subscription_source(broker: kbutil.Broker, sb_client: ServiceBusClient, tmp_path: Path) -> None:
    t = Target()
    t.scripts["/events"] = [(200, "", {})]
    listen = kbutil.connection_string(broker.amqp_port, key=kbutil.LISTEN_KEY, policy=kbutil.LISTEN_POLICY)
    c = Connector(tmp_path / "sub", listen, [("audit", "connect-events/subscriptions/audit", t.url("/events"))])
    try:
        with sb_client.get_topic_sender("connect-events") as sender:
            sender.send_messages(ServiceBusMessage(b"an event", message_id="ev-1", subject="user.created"))
        [(_, headers, body)] = t.wait_for("/events", 1)
        assert body == b"an event"
        assert headers["ce-source"].endswith("/connect-events/subscriptions/audit")
        assert headers["ce-subject"] == "user.created"
        with sb_client.get_subscription_receiver("connect-events", "audit", max_wait_time=3) as r:
            assert r.receive_messages(max_message_count=1, max_wait_time=3) == []
    finally:
        assert c.stop() == 0, c.diagnostics()
        t.close()


def test_health_is_503_while_the_namespace_cannot_be_reached(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    nowhere = kbutil.connection_string(closed)
    c = Connector(tmp_path / "nowhere", nowhere, [("lost", "q", "http://127.0.0.1:9/")], wait_healthy=False)
    try:
        c.wait_line("connector lost: disconnected")
        status, body = c.health()
        assert status == 503, body
        assert "disconnected" in json.loads(body)["lost"]
        assert 'keybus_connect_up{connector="lost"} 0' in c.metrics()
    finally:
        assert c.stop() == 0, c.diagnostics()
