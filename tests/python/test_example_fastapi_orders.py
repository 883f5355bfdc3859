"""examples/fastapi-orders end to end: keybus with the example's config and policy, the
example's FastAPI app under uvicorn, and ``keybus connect`` with the example's connector file
(ports and paths rewritten to this run's). The app sends with its managed identity, the
connector receives with its own and pushes with a bearer token the app checks.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import uvicorn
from azure.servicebus import ServiceBusClient, ServiceBusSubQueue

import kbutil
from test_connect import Connector

EXAMPLE = kbutil.REPO_ROOT / "examples" / "fastapi-orders"
APP_SECRET = "orders-app-secret-change-me"
CONNECTOR_SECRET = "orders-connector-secret-change-me"
AZURE_VARS = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_TOKEN_CREDENTIALS",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: Any, headers: Dict[str, str] | None = None) -> "tuple[int, bytes]":
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _received(base: str) -> List[Dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/hooks/orders", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def example(broker_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    b = broker_factory.start(
        EXAMPLE / "keybus.toml",
        data_dir=tmp_path / "data",
        name="keybus-example",
        extra_args=[
            "--dev-tls",
            "--amqps-port",
            "0",
            "--https-port",
            "0",
            "--policy",
            str(EXAMPLE / "policy.toml"),
        ],
    )
    for k in AZURE_VARS:
        monkeypatch.delenv(k, raising=False)
    identity = f"http://127.0.0.1:{b.http_port}/msi/token"
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity)
    monkeypatch.setenv("IDENTITY_HEADER", APP_SECRET)
    monkeypatch.setenv("KEYBUS_HOST", "localhost")
    monkeypatch.setenv("KEYBUS_AMQPS_PORT", str(b.amqps_port))
    monkeypatch.setenv("KEYBUS_CA_FILE", b.ca_file)
    monkeypatch.setenv("KEYBUS_JWKS_URL", f"http://127.0.0.1:{b.http_port}/contoso/discovery/v2.0/keys")
    monkeypatch.setenv("KEYBUS_ISSUER", f"https://localhost:{b.https_port}/contoso/v2.0")
    spec = importlib.util.spec_from_file_location(f"fastapi_orders_{time.monotonic_ns()}", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    connectors = (
        (EXAMPLE / "connectors.toml")
        .read_text()
        .replace("sb://localhost:5671", f"sb://localhost:{b.amqps_port}")
        .replace("keybus-data/tls/ca.pem", b.ca_file)
        .replace("http://127.0.0.1:8000", base)
    )
    workdir = tmp_path / "connect"
    c = Connector(workdir, connectors, [], env={"IDENTITY_ENDPOINT": identity, "IDENTITY_HEADER": CONNECTOR_SECRET})
    try:
        yield {"broker": b, "base": base, "connector": c}
    finally:
        code = c.stop()
        server.should_exit = True
        thread.join(timeout=10)
        assert code == 0, c.diagnostics()


def test_orders_flow_from_the_app_through_the_connector_to_its_hook(example: Dict[str, Any]) -> None:
    base, b = example["base"], example["broker"]
    status, body = _post(f"{base}/orders", {"item": "book", "total": 12})
    assert status == 200, body
    order_id = json.loads(body)["id"]
    deadline = time.monotonic() + 20
    while not _received(base):
        assert time.monotonic() < deadline, example["connector"].diagnostics()
        time.sleep(0.1)
    [got] = _received(base)
    assert got["order"] == {"item": "book", "total": 12, "id": order_id}
    assert got["ce_id"] == order_id
    assert got["pusher"] == "0c0c0c0c-0000-4000-8000-00000000000c", "the connector's identity"

    # A bad order is refused by the hook and dead-lettered by the connector.
    status, body = _post(f"{base}/orders", {"item": "refund", "total": -5})
    assert status == 200, body
    bad_id = json.loads(body)["id"]
    # The broker's own root key (printed at start), as an operator inspecting the dead letters.
    with ServiceBusClient.from_connection_string(b.printed_connection_string, retry_total=1) as sb:
        with sb.get_queue_receiver("orders", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=15) as r:
            [m] = kbutil.receive_n(r, 1)
            assert m.message_id == bad_id
            assert m.dead_letter_reason == "PushRejected"
            assert "422" in m.dead_letter_error_description
            r.complete_message(m)
    assert len(_received(base)) == 1


def test_the_hook_refuses_pushes_without_a_valid_token(example: Dict[str, Any]) -> None:
    base, b = example["base"], example["broker"]
    order = {"item": "forged", "total": 1}
    assert _post(f"{base}/hooks/orders", order)[0] == 401
    assert _post(f"{base}/hooks/orders", order, {"authorization": "Bearer not-a-jwt"})[0] == 401
    # A genuine keybus token, but for Service Bus, not for the hook.
    req = urllib.request.Request(
        f"http://127.0.0.1:{b.http_port}/msi/token?api-version=2019-08-01&resource=https://servicebus.azure.net",
        headers={"x-identity-header": APP_SECRET},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        sb_token = json.loads(r.read())["access_token"]
    assert _post(f"{base}/hooks/orders", order, {"authorization": f"Bearer {sb_token}"})[0] == 401
    assert _received(base) == []


def test_only_the_app_sends_and_only_the_connector_receives(example: Dict[str, Any]) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.servicebus import ServiceBusMessage, TransportType
    from azure.servicebus.exceptions import ServiceBusAuthorizationError

    b = example["broker"]

    def client(secret: str) -> ServiceBusClient:
        import os

        os.environ["IDENTITY_HEADER"] = secret
        return ServiceBusClient(
            "localhost",
            ManagedIdentityCredential(),
            custom_endpoint_address=f"sb://localhost:{b.amqps_port}",
            connection_verify=b.ca_file,
            transport_type=TransportType.Amqp,
            retry_total=0,
        )

    # The connector's identity may not send; the app's may not receive.
    with pytest.raises(ServiceBusAuthorizationError, match="'Send' claim"):
        with client(CONNECTOR_SECRET) as sb, sb.get_queue_sender("orders") as s:
            s.send_messages(ServiceBusMessage(b"{}"))
    with pytest.raises(ServiceBusAuthorizationError, match="'Listen' claim"):
        with client(APP_SECRET) as sb, sb.get_queue_receiver("orders", max_wait_time=2) as r:
            r.receive_messages(max_wait_time=2)
