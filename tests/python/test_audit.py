"""The audit log under pressure, with real HTTP clients: a flood of refused tokens is rate
limited (429 with Retry-After) and summarised (a bounded number of lines, with counts), a
valid token from the same address still works, every line names the peer, ids are text, and
`keybus audit verify` accepts the broker's log and refuses it after one byte is changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List

import pytest
import requests
from azure.servicebus import ServiceBusClient, ServiceBusMessage

import kbutil

TENANT = "11111111-1111-4111-8111-111111111111"
MI_CLIENT = "33333333-3333-4333-8333-333333333333"
MI_SECRET = "mi-secret-0123456789abcdef"
FLOOD = 120

POLICY = f"""
[[principals]]
id = "mi-app"

[[grants]]
principal = "mi-app"
role = "Sender"
scope = "queues/aud-q"

[sts]
tenant = "{TENANT}"

[[sts.managed_identities]]
principal = "mi-app"
client_id = "{MI_CLIENT}"
identity_header = "{MI_SECRET}"
"""


def sas(uri: str, key: str = kbutil.SAS_KEY) -> str:
    expiry = int(time.time()) + 3600
    sr = urllib.parse.quote(uri, safe="")
    sig = base64.b64encode(hmac.new(key.encode(), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn={kbutil.SAS_POLICY}"


@pytest.fixture
def broker(broker_factory, tmp_path: Path) -> kbutil.Broker:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    config = broker_factory.write_toml({"aud-q": {}}, name="audit.toml")
    return broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-audit",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )


def audit_path(b: kbutil.Broker) -> Path:
    return b.data_dir / "audit.jsonl"  # type: ignore[operator]


def audit(b: kbutil.Broker) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in audit_path(b).read_text().splitlines() if line.strip()]


def verify(b: kbutil.Broker) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(kbutil.keybus_bin()), "audit", "verify", str(audit_path(b))],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(pred, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_http_token_flood_is_limited_summarised_and_valid_tokens_pass(broker: kbutil.Broker) -> None:
    base = f"http://127.0.0.1:{broker.http_port}"
    bad = sas(base, key="bm90LXRoZS1yaWdodC1rZXk=")
    statuses = []
    retry_after = None
    for i in range(FLOOD):
        r = requests.post(f"{base}/aud-q/messages", data=f"guess {i}", headers={"Authorization": bad}, timeout=10)
        statuses.append(r.status_code)
        if r.status_code == 429:
            retry_after = r.headers.get("Retry-After")
    assert statuses[:30] == [401] * 30, statuses[:35]
    assert set(statuses[30:]) == {429}, statuses[28:40]
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    # A valid token from the limited address still works.
    r = requests.post(f"{base}/aud-q/messages", data="right key", headers={"Authorization": sas(base)}, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    # The refusals took a few lines, not one each; the rest is summarised with a count.
    refused = [e for e in audit(broker) if e["event"] == "http.token" and e["decision"] == "deny"]
    assert len(refused) <= 15, len(refused)

    def counted() -> int:
        return sum(e.get("count", 1) for e in audit(broker) if e["event"] == "http.token")

    wait_for(lambda: counted() >= FLOOD, "summary lines with counts")
    lines = [e for e in audit(broker) if e["event"] == "http.token"]
    summaries = [e for e in lines if e.get("summary")]
    assert {e["reason"] for e in summaries} <= {"InvalidSignature", "TooManyFailedAttempts"}, summaries
    assert all(e["conn"]["peer"] == "127.0.0.1" and e["first"] and e["last"] for e in summaries)
    assert sum(e.get("count", 1) for e in lines) == FLOOD
    # Every individual line names the client address and port.
    assert all(e["conn"]["peer"].startswith("127.0.0.1:") for e in lines if not e.get("summary"))
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert "keybus_audit_lines_summarised_total" in metrics
    assert "keybus_audit_dropped_total 0" in metrics
    assert "keybus_auth_limited_sources 1" in metrics


def test_http_msi_and_token_endpoint_lines_name_the_peer(broker: kbutil.Broker) -> None:
    # The managed identity endpoint: refused, limited, and (from the same address) served.
    msi = f"http://127.0.0.1:{broker.http_port}/msi/token?api-version=2019-08-01&resource=https://servicebus.azure.net/"
    statuses = [requests.get(msi, headers={"X-IDENTITY-HEADER": "wrong-secret-0123456789"}, timeout=10).status_code for _ in range(35)]
    assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}, statuses
    r = requests.get(msi, headers={"X-IDENTITY-HEADER": MI_SECRET}, timeout=10)
    assert r.status_code == 200, r.text
    # ATOM over HTTPS (the TLS listener puts the peer on requests too).
    https = f"https://localhost:{broker.https_port}"
    r = requests.get(f"{https}/$Resources/queues", headers={"Authorization": "Bearer not-a-jwt"}, verify=broker.ca_path, timeout=10)
    assert r.status_code == 429 and r.headers["Retry-After"]
    # The federated token endpoint.
    r = requests.post(
        f"http://127.0.0.1:{broker.http_port}/{TENANT}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "nobody", "scope": "https://servicebus.azure.net/.default"},
        timeout=10,
    )
    assert r.status_code in (400, 429)
    events = audit(broker)
    for kind in ("http.token", "mi.issue", "sts.issue"):
        mine = [e for e in events if e["event"] == kind and not e.get("summary")]
        assert mine, kind
        assert all(e["conn"]["peer"].startswith("127.0.0.1:") for e in mine), mine
    assert "Uuid([" not in audit_path(broker).read_text()


def test_audit_verify_passes_and_detects_an_edit(broker: kbutil.Broker) -> None:
    with ServiceBusClient.from_connection_string(broker.conn_str, retry_total=0) as client:
        with client.get_queue_sender("aud-q") as sender:
            sender.send_messages(ServiceBusMessage("audited"))
    base = f"http://127.0.0.1:{broker.http_port}"
    requests.get(f"{base}/aud-q", headers={"Authorization": "Bearer nope"}, timeout=10)
    wait_for(lambda: len(audit(broker)) >= 3, "audit lines")
    events = audit(broker)
    assert all("hmac" in e and "prev" in e for e in events)
    put = [e for e in events if e["event"] == "token.put"]
    assert put and all(e["conn"]["id"] and e["conn"]["peer"] for e in put)
    assert "Uuid([" not in audit_path(broker).read_text()
    ok = verify(broker)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK:" in ok.stdout
    # One byte changed in the middle of the log.
    data = bytearray(audit_path(broker).read_bytes())
    i = data.index(b'"decision":"') + len('"decision":"')
    data[i] = ord("X")
    audit_path(broker).write_bytes(bytes(data))
    bad = verify(broker)
    assert bad.returncode != 0
    assert "FAILED" in bad.stderr and "line 1" in bad.stderr, bad.stderr
