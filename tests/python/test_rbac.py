"""Role-based access with JWTs from an external OIDC issuer (identity reference §5, §7).

The test plays a Kubernetes-like issuer: it owns an RSA key, writes its JWKS to a file the
policy names (`jwks_file`), and signs tokens with PyJWT. The unmodified SDK gets them through
an ordinary `TokenCredential`, sends them on `$cbs` as `jwt`, and keybus decides per link
from the policy's principals and grants, writing every decision to the audit log.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import jwt
import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue, TransportType
from azure.servicebus.exceptions import (
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import kbutil
from kbutil import body_bytes, receive_n

ISSUER = "https://issuer.keybus.test"
AUDIENCE = "https://servicebus.azure.net"


class Issuer:
    """A test OIDC issuer: one RSA key, a JWKS file, tokens on demand."""

    def __init__(self, directory: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        self.jwks_path = directory / "jwks.json"
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self.jwks_path.write_text(json.dumps({"keys": [public]}))
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, sub: str, *, lifetime: float = 3600, **overrides: Any) -> str:
        now = int(time.time())
        claims: Dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


class StaticCredential:
    """A TokenCredential that always returns the same token (no refresh)."""

    def __init__(self, token: str, expires_on: Optional[int] = None) -> None:
        self.token = token
        self.expires_on = expires_on or int(time.time()) + 3600
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, self.expires_on)


def policy_text(issuer: Issuer, *, grants: str, local_auth: bool = True) -> str:
    return f"""
[namespace]
local_auth = {str(local_auth).lower()}

[[issuers]]
id = "test"
kind = "oidc"
issuer = "{ISSUER}"
jwks_file = "{issuer.jwks_path}"

[[principals]]
id = "sender"
match = [{{ issuer = "test", sub = "sender" }}]

[[principals]]
id = "receiver"
match = [{{ issuer = "test", sub = "receiver" }}]

[[principals]]
id = "owner"
match = [{{ issuer = "test", sub = "owner" }}]

{grants}
"""


DEFAULT_GRANTS = """
[[grants]]
principal = "sender"
role = "Sender"
scope = "queues/rbac-a"

[[grants]]
principal = "receiver"
role = "Receiver"
scope = "queues/rbac-a"

[[grants]]
principal = "owner"
role = "Owner"
scope = "namespace"
"""


class Env:
    def __init__(self, broker: kbutil.Broker, issuer: Issuer, policy: Path) -> None:
        self.broker = broker
        self.issuer = issuer
        self.policy = policy

    def client(self, credential: Any, **kwargs: Any) -> ServiceBusClient:
        kwargs.setdefault("retry_total", 0)
        return ServiceBusClient(
            "localhost",
            credential,
            custom_endpoint_address=f"sb://localhost:{self.broker.amqps_port}",
            connection_verify=self.broker.ca_path,
            transport_type=TransportType.Amqp,
            **kwargs,
        )

    def as_(self, sub: str, **claims: Any) -> ServiceBusClient:
        return self.client(StaticCredential(self.issuer.token(sub, **claims)))

    def audit(self) -> List[Dict[str, Any]]:
        path = self.broker.data_dir / "audit.jsonl"  # type: ignore[operator]
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_policy(self, grants: str, *, local_auth: bool = True) -> None:
        self.policy.write_text(policy_text(self.issuer, grants=grants, local_auth=local_auth))


@pytest.fixture
def env(broker_factory, tmp_path: Path) -> Env:
    issuer = Issuer(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(issuer, grants=DEFAULT_GRANTS))
    config = broker_factory.write_toml({"rbac-a": {}, "rbac-b": {}}, name="rbac.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-rbac",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )
    assert b.amqps_port and b.ca_path
    return Env(b, issuer, policy)


def pid(e: Dict[str, Any]) -> Optional[str]:
    return (e.get("principal") or {}).get("id")


def send_one(client: ServiceBusClient, queue: str, body: str) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(body))


def receive_one(client: ServiceBusClient, queue: str) -> List[Any]:
    with client.get_queue_receiver(queue, max_wait_time=3) as receiver:
        msgs = receiver.receive_messages(max_message_count=1, max_wait_time=3)
        for m in msgs:
            receiver.complete_message(m)
        return msgs


def test_sender_can_send_and_cannot_receive(env: Env) -> None:
    with env.as_("sender") as client:
        send_one(client, "rbac-a", "from sender")
        with pytest.raises(ServiceBusAuthorizationError):
            receive_one(client, "rbac-a")
    with env.as_("receiver") as client:
        [m] = receive_one(client, "rbac-a")
        assert body_bytes(m) == b"from sender"
    events = env.audit()
    denied = [e for e in events if e["event"] == "authz" and e["decision"] == "deny"]
    assert any(
        pid(e) == "sender" and e["action"] == "receive" and e["reason"] == "no_grant"
        for e in denied
    ), denied
    allowed = [e for e in events if e["event"] == "authz" and e["decision"] == "allow"]
    assert {(pid(e), e["action"]) for e in allowed} >= {("sender", "send"), ("receiver", "receive")}
    for e in events:
        line = json.dumps(e)
        assert "eyJ" not in line, "no token in the audit log"


def test_receiver_cannot_send(env: Env) -> None:
    with env.as_("receiver") as client:
        with pytest.raises(ServiceBusAuthorizationError):
            send_one(client, "rbac-a", "nope")
    assert any(
        e["event"] == "authz" and e["decision"] == "deny" and pid(e) == "receiver" and e["action"] == "send"
        for e in env.audit()
    )


def test_queue_scoped_grant_does_not_reach_another_queue(env: Env) -> None:
    with env.as_("sender") as client:
        with pytest.raises(ServiceBusAuthorizationError):
            send_one(client, "rbac-b", "wrong queue")
    with env.as_("owner") as client:
        send_one(client, "rbac-b", "owner may")
        [m] = receive_one(client, "rbac-b")
        assert body_bytes(m) == b"owner may"
    assert any(
        e["event"] == "authz" and e["decision"] == "deny" and e["resource"]["entity"] == "rbac-b"
        for e in env.audit()
    )


def test_revoked_grant_detaches_a_live_link(env: Env) -> None:
    with env.as_("receiver") as client:
        with client.get_queue_receiver("rbac-a", max_wait_time=2) as receiver:
            assert receiver.receive_messages(max_wait_time=1) == []
            # Revoke: the receiver's grant disappears from the policy file.
            env.write_policy(DEFAULT_GRANTS.replace('principal = "receiver"', 'principal = "owner"'))
            deadline = time.monotonic() + 20
            with pytest.raises(ServiceBusError) as info:
                while time.monotonic() < deadline:
                    receiver.receive_messages(max_wait_time=1)
            assert isinstance(info.value, (ServiceBusAuthorizationError, ServiceBusError)), info.value
    events = env.audit()
    assert any(e["event"] == "policy.reload" and e["decision"] == "allow" for e in events)
    assert any(
        e["event"] == "link.detach" and e["reason"] == "access_revoked" and e["resource"]["entity"] == "rbac-a"
        for e in events
    ), [e for e in events if e["event"] in ("link.detach", "policy.reload")]
    # A new link is refused too.
    with env.as_("receiver") as client:
        with pytest.raises(ServiceBusAuthorizationError):
            receive_one(client, "rbac-a")


def test_a_broken_policy_keeps_the_previous_one(env: Env) -> None:
    env.policy.write_text("this is = [not toml")
    time.sleep(2.5)
    with env.as_("sender") as client:
        send_one(client, "rbac-a", "still allowed")
    assert any(e["event"] == "policy.reload" and e["decision"] == "deny" for e in env.audit())


def test_expired_token_is_refused(env: Env) -> None:
    old = env.issuer.token("owner", iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    with env.client(StaticCredential(old, int(time.time()) + 3600)) as client:
        with kbutil.auth_refused():
            send_one(client, "rbac-a", "late")
    assert any(
        e["event"] == "token.put" and e["decision"] == "deny" and e["reason"] == "ExpiredToken" for e in env.audit()
    )


def test_link_is_detached_when_its_token_runs_out(env: Env) -> None:
    short = env.issuer.token("receiver", lifetime=4)
    with env.client(StaticCredential(short, int(time.time()) + 3600)) as client:
        with client.get_queue_receiver("rbac-a", max_wait_time=2) as receiver:
            assert receiver.receive_messages(max_wait_time=1) == []
            # The token holds until exp plus the issuer's 30 s leeway.
            deadline = time.monotonic() + 50
            with pytest.raises(ServiceBusError):
                while time.monotonic() < deadline:
                    receiver.receive_messages(max_wait_time=1)
    events = env.audit()
    assert any(e["event"] == "token.expired" for e in events), events[-5:]
    assert any(e["event"] == "link.detach" and e["reason"] == "expired_token" for e in events)


def _hs256_with_public_key(issuer: Issuer) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "owner", "iat": now, "exp": now + 600}).encode())
    sig = hmac.new(issuer.public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(sig)}"


def _alg_none(issuer: Issuer) -> str:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "owner", "iat": now, "exp": now + 600}).encode())
    return f"{header}.{body}."


@pytest.mark.parametrize(
    "name",
    ["alg-none", "hs256-public-key", "wrong-audience", "unknown-issuer", "oversized", "not-yet-valid", "other-key"],
)
def test_bad_tokens_are_refused(env: Env, name: str) -> None:
    iss = env.issuer
    if name == "alg-none":
        token = _alg_none(iss)
    elif name == "hs256-public-key":
        token = _hs256_with_public_key(iss)
    elif name == "wrong-audience":
        token = iss.token("owner", aud="https://management.azure.com")
    elif name == "unknown-issuer":
        token = iss.token("owner", iss="https://evil.example")
    elif name == "oversized":
        token = iss.token("owner", padding="x" * 20000)
    elif name == "not-yet-valid":
        token = iss.token("owner", nbf=int(time.time()) + 3600)
    else:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        token = jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "owner", "iat": now, "exp": now + 600},
            other,
            algorithm="RS256",
            headers={"kid": iss.kid},
        )
    with env.client(StaticCredential(token)) as client:
        with kbutil.auth_refused():
            send_one(client, "rbac-a", name)
    refused = [e for e in env.audit() if e["event"] == "token.put" and e["decision"] == "deny"]
    assert refused, "the refusal is audited"
    assert all("eyJ" not in json.dumps(e) for e in refused)


def test_local_auth_off_refuses_sas_and_keeps_tokens(env: Env) -> None:
    # SAS works while local auth is on ...
    sas = AzureNamedKeyCredential(kbutil.SAS_POLICY, kbutil.SAS_KEY)
    with env.client(sas) as client:
        send_one(client, "rbac-b", "sas ok")
    env.write_policy(DEFAULT_GRANTS, local_auth=False)
    deadline = time.monotonic() + 10
    while not any(e["event"] == "policy.reload" for e in env.audit()):
        assert time.monotonic() < deadline, "policy not reloaded"
        time.sleep(0.2)
    with env.client(sas) as client:
        with kbutil.auth_refused():
            send_one(client, "rbac-b", "sas refused")
    assert any(
        e["event"] == "token.put" and e["reason"] == "LocalAuthDisabled" for e in env.audit()
    )
    with env.as_("owner") as client:
        [m] = receive_one(client, "rbac-b")
        assert body_bytes(m) == b"sas ok"


def test_token_brute_force_is_rate_limited_and_audited(env: Env) -> None:
    bad = AzureNamedKeyCredential(kbutil.SAS_POLICY, "bm90LXRoZS1yaWdodC1rZXk=")
    for i in range(31):
        with env.client(bad) as client:
            with kbutil.auth_refused():
                send_one(client, "rbac-a", f"guess {i}")
    # The address is now limited: further guesses are refused as TooManyFailedAttempts ...
    events = [e for e in env.audit() if e["event"] == "token.put" and e["decision"] == "deny"]
    assert any(e["reason"] == "TooManyFailedAttempts" for e in events), [e["reason"] for e in events][-3:]
    assert all(e.get("conn", {}).get("peer") for e in events), "every refusal names the peer"
    # ... but the right key from the same address still works (a shared NAT is not locked out).
    good = AzureNamedKeyCredential(kbutil.SAS_POLICY, kbutil.SAS_KEY)
    with env.client(good) as client:
        send_one(client, "rbac-a", "right key from a limited address")


def test_entity_level_sas_rule(broker_factory, tmp_path: Path) -> None:
    text = kbutil.render_toml({"ent-a": {}, "ent-b": {}}) + (
        '\n[[sas_policies]]\nname = "a-sender"\nkey = "a-sender-key-0123456789"\nrights = ["Send"]\nentity = "ent-a"\n'
    )
    config = tmp_path / "entity-sas.toml"
    config.write_text(text)
    b = broker_factory.start(config, name="keybus-entity-sas")
    conn = kbutil.connection_string(b.amqp_port, key="a-sender-key-0123456789", policy="a-sender")
    with ServiceBusClient.from_connection_string(conn, retry_total=0) as client:
        send_one(client, "ent-a", "entity rule")
        # Send only: receiving is refused ...
        with pytest.raises(ServiceBusAuthorizationError):
            receive_one(client, "ent-a")
        # ... and the key does not sign for another queue.
        with kbutil.auth_refused():
            send_one(client, "ent-b", "wrong entity")
    with ServiceBusClient.from_connection_string(b.conn_str, retry_total=0) as client:
        [m] = receive_one(client, "ent-a")
        assert body_bytes(m) == b"entity rule"


def test_management_api_with_bearer_tokens(env: Env) -> None:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from azure.servicebus.management import ServiceBusAdministrationClient

    def admin(sub: str) -> ServiceBusAdministrationClient:
        return ServiceBusAdministrationClient(
            f"localhost:{env.broker.https_port}",
            StaticCredential(env.issuer.token(sub)),
            connection_verify=env.broker.ca_path,
            retry_total=0,
        )

    # An Owner (namespace) creates and deletes entities with a bearer token ...
    with admin("owner") as a:
        a.create_queue("rbac-created")
        assert a.get_queue("rbac-created").name == "rbac-created"
    # ... a Receiver may read its queue's runtime counts but not change anything ...
    with admin("receiver") as a:
        assert a.get_queue_runtime_properties("rbac-a").name == "rbac-a"
        with pytest.raises((ClientAuthenticationError, HttpResponseError)):
            a.create_queue("rbac-not-allowed")
    # ... and a Sender cannot read entities.
    with admin("sender") as a:
        with pytest.raises((ClientAuthenticationError, HttpResponseError)):
            a.get_queue("rbac-a")
    with admin("owner") as a:
        names = [q.name for q in a.list_queues()]
        assert "rbac-created" in names and "rbac-not-allowed" not in names
        a.delete_queue("rbac-created")
    events = env.audit()
    assert any(e["event"] == "http.authz" and e["decision"] == "allow" and pid(e) == "owner" for e in events)
    assert any(e["event"] == "http.authz" and e["decision"] == "deny" and pid(e) == "receiver" for e in events)


# ----------------------------------------------------------------------------------------
# Scopes match one entity exactly: `orders` is not `orders/archive` (hardening item 4), and
# expired tokens are refused at put-token with the real reason (item 10).
# ----------------------------------------------------------------------------------------

ORDERS_GRANTS = """
[[grants]]
principal = "sender"
role = "Sender"
scope = "queues/orders"

[[grants]]
principal = "receiver"
role = "Receiver"
scope = "queues/orders"

[[grants]]
principal = "owner"
role = "Owner"
scope = "queues/orders"
"""


@pytest.fixture
def orders_env(broker_factory, tmp_path: Path) -> Env:
    issuer = Issuer(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(issuer, grants=ORDERS_GRANTS))
    config = broker_factory.write_toml({"orders": {}, "orders/archive": {}}, name="orders.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-orders",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )
    return Env(b, issuer, policy)


def _refused(fn: Any) -> None:
    """An authorisation or authentication refusal, whichever the SDK raises."""
    with pytest.raises((ServiceBusAuthorizationError, ServiceBusAuthenticationError, ServiceBusError)) as info:
        fn()
    text = str(info.value).lower()
    assert "unauthorized" in text or "claim" in text or "audience" in text or "auth" in text, info.value


def test_queue_grant_does_not_reach_a_queue_named_below_it(orders_env: Env) -> None:
    env = orders_env
    with env.as_("sender") as client:
        send_one(client, "orders", "ok")
        _refused(lambda: send_one(client, "orders/archive", "not yours"))
    with env.as_("receiver") as client:
        [m] = receive_one(client, "orders")
        assert body_bytes(m) == b"ok"
        _refused(lambda: receive_one(client, "orders/archive"))

        def peek() -> None:
            with client.get_queue_receiver("orders/archive", max_wait_time=2) as r:
                r.peek_messages(max_message_count=1)

        _refused(peek)
        # Its own dead-letter sub-queue is still covered.
        with client.get_queue_receiver("orders", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=2) as r:
            assert r.receive_messages(max_wait_time=1) == []
    denied = [e for e in env.audit() if e["event"] == "authz" and e["decision"] == "deny"]
    assert any(e["resource"]["entity"] == "orders/archive" for e in denied), denied


def test_queue_scoped_owner_cannot_create_or_delete_other_entities(orders_env: Env) -> None:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from azure.servicebus.management import ServiceBusAdministrationClient

    env = orders_env
    with ServiceBusAdministrationClient(
        f"localhost:{env.broker.https_port}",
        StaticCredential(env.issuer.token("owner")),
        connection_verify=env.broker.ca_path,
        retry_total=0,
    ) as a:
        assert a.get_queue("orders").name == "orders"
        with pytest.raises((ClientAuthenticationError, HttpResponseError)) as info:
            a.create_queue("orders/anything")
        assert getattr(info.value, "status_code", 401) in (401, 403)
        with pytest.raises((ClientAuthenticationError, HttpResponseError)):
            a.delete_queue("orders/archive")
        with pytest.raises((ClientAuthenticationError, HttpResponseError)):
            a.get_queue("orders/archive")
    # Both still as they were: the namespace SAS key sees them.
    with ServiceBusAdministrationClient.from_connection_string(
        env.broker.admin_conn_str(), connection_verify=env.broker.ca_path
    ) as a:
        names = {q.name for q in a.list_queues()}
        assert "orders/archive" in names and "orders/anything" not in names, names


def _sas(uri: str, rule: str, key: str, expiry: int) -> str:
    import base64
    import hashlib
    import hmac
    import urllib.parse

    sr = urllib.parse.quote(uri, safe="")
    sig = base64.b64encode(hmac.new(key.encode(), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn={rule}"


ORDERS_KEY = "orders-rule-key-0123456789"


def test_entity_sas_rule_does_not_sign_for_a_queue_named_below_it(broker_factory, tmp_path: Path) -> None:
    import requests

    text = kbutil.render_toml({"orders": {}, "orders/archive": {}}) + (
        f'\n[[sas_policies]]\nname = "orders-rule"\nkey = "{ORDERS_KEY}"\nrights = ["Send", "Listen"]\nentity = "orders"\n'
    )
    config = tmp_path / "orders-sas.toml"
    config.write_text(text)
    b = broker_factory.start(config, name="keybus-orders-sas")
    conn = kbutil.connection_string(b.amqp_port, key=ORDERS_KEY, policy="orders-rule")
    with ServiceBusClient.from_connection_string(conn, retry_total=0) as client:
        send_one(client, "orders", "entity rule")
        [m] = receive_one(client, "orders")
        assert body_bytes(m) == b"entity rule"
        with kbutil.auth_refused():
            send_one(client, "orders/archive", "wrong entity")
        with kbutil.auth_refused():
            receive_one(client, "orders/archive")
        with kbutil.auth_refused():
            with client.get_queue_receiver("orders/archive", max_wait_time=2) as r:
                r.peek_messages(max_message_count=1)
    # REST: a token for `orders` does not send to `orders/archive`.
    base = f"http://127.0.0.1:{b.http_port}"
    token = _sas(f"{base}/orders", "orders-rule", ORDERS_KEY, int(time.time()) + 600)
    ok = requests.post(f"{base}/orders/messages", data=b"x", headers={"Authorization": token}, timeout=10)
    assert ok.status_code == 201, ok.text
    for path in ("orders/archive/messages", "orders%2Farchive/messages", "Orders/Archive/messages"):
        r = requests.post(f"{base}/{path}", data=b"x", headers={"Authorization": token}, timeout=10)
        assert r.status_code in (401, 403), (path, r.status_code, r.text)
    # A token signed for `orders/archive` with the `orders` rule's key is refused too.
    forged = _sas(f"{base}/orders/archive", "orders-rule", ORDERS_KEY, int(time.time()) + 600)
    r = requests.post(f"{base}/orders/archive/messages", data=b"x", headers={"Authorization": forged}, timeout=10)
    assert r.status_code in (401, 403), r.text


def test_expired_sas_token_is_refused_at_put_token_with_the_reason(env: Env) -> None:
    now = int(time.time())
    uri = f"sb://localhost:{env.broker.amqps_port}/rbac-a"
    # 2 minutes past `se` (beyond the 30 s skew; it used to be accepted up to 5 minutes).
    late = _sas(uri, kbutil.SAS_POLICY, kbutil.SAS_KEY, now - 120)
    with env.client(StaticCredential(late, now + 3600)) as client:
        with pytest.raises(ServiceBusError) as info:
            send_one(client, "rbac-a", "late")
    # With custom_endpoint_address the SDK wraps the CBS authentication error (status 401 and
    # its description) in a ServiceBusConnectionError.
    inner = getattr(info.value, "inner_exception", None) or info.value.__cause__
    text = f"{info.value!r} {inner!r} {getattr(inner, 'description', '')}"
    assert "ExpiredToken" in text and "401" in text, text
    refused = [e for e in env.audit() if e["event"] == "token.put" and e["decision"] == "deny"]
    assert any(e["reason"] == "ExpiredToken" for e in refused), refused
    # Within the skew it is accepted, and the link attaches (no "claims required").
    recent = _sas(uri, kbutil.SAS_POLICY, kbutil.SAS_KEY, now - 5)
    with env.client(StaticCredential(recent, now + 3600)) as client:
        send_one(client, "rbac-a", "within skew")


def test_jwt_past_the_default_leeway_is_refused(env: Env) -> None:
    now = int(time.time())
    old = env.issuer.token("owner", iat=now - 600, nbf=now - 600, exp=now - 45)
    with env.client(StaticCredential(old, now + 3600)) as client:
        with kbutil.auth_refused():
            send_one(client, "rbac-a", "late jwt")
    assert any(
        e["event"] == "token.put" and e["decision"] == "deny" and e["reason"] == "ExpiredToken" for e in env.audit()
    )
