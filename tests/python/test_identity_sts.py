"""keybus's token service with the unmodified `azure-identity`: `ManagedIdentityCredential`
and `DefaultAzureCredential` through the App Service managed identity protocol
(`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`), and `WorkloadIdentityCredential` through the
Entra-compatible token endpoint (`AZURE_AUTHORITY_HOST`) with a federated token the test signs
as a Kubernetes-like issuer. The tokens then open links over AMQPS, within their grants.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential, WorkloadIdentityCredential
from azure.servicebus import ServiceBusClient, ServiceBusMessage, TransportType
from azure.servicebus.exceptions import ServiceBusAuthorizationError

import kbutil
from kbutil import body_bytes
from test_rbac import ISSUER, Issuer

SCOPE = "https://servicebus.azure.net//.default"
TENANT = "keybus-test"
MI_CLIENT = "11111111-1111-4111-8111-111111111111"
MI_SECRET = "mi-secret-0123456789abcdef"
WI_CLIENT = "22222222-2222-4222-8222-222222222222"
WI_SUBJECT = "system:serviceaccount:default:worker"
EXCHANGE = "api://AzureADTokenExchange"


def policy_text(issuer: Issuer) -> str:
    return f"""
[[issuers]]
id = "k8s"
kind = "oidc"
issuer = "{ISSUER}"
jwks_file = "{issuer.jwks_path}"
audiences = ["{EXCHANGE}"]

[[principals]]
id = "mi-app"

[[principals]]
id = "wi-app"

[[grants]]
principal = "mi-app"
role = "Sender"
scope = "queues/sts-q"

[[grants]]
principal = "wi-app"
role = "Receiver"
scope = "queues/sts-q"

[sts]
tenant = "{TENANT}"

[[sts.managed_identities]]
principal = "mi-app"
client_id = "{MI_CLIENT}"
identity_header = "{MI_SECRET}"

[[sts.clients]]
client_id = "{WI_CLIENT}"
principal = "wi-app"
federated = [{{ issuer = "{ISSUER}", subject = "{WI_SUBJECT}", audiences = ["{EXCHANGE}"] }}]
"""


AZURE_VARS = [
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_TOKEN_CREDENTIALS",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in AZURE_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.fixture
def sts(broker_factory, tmp_path: Path) -> Dict[str, Any]:
    issuer = Issuer(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(issuer))
    config = broker_factory.write_toml({"sts-q": {}}, name="sts.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-sts",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )
    return {"broker": b, "issuer": issuer, "dir": tmp_path}


def _claims(token: str) -> Dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _sb(b: kbutil.Broker, credential: Any) -> ServiceBusClient:
    return ServiceBusClient(
        "localhost",
        credential,
        custom_endpoint_address=f"sb://localhost:{b.amqps_port}",
        connection_verify=b.ca_path,
        transport_type=TransportType.Amqp,
        retry_total=0,
    )


def _audit(b: kbutil.Broker, until: Optional[Callable[[List[Dict[str, Any]]], bool]] = None) -> List[Dict[str, Any]]:
    """The audit log's events; with ``until``, read again (for up to 5 s) until they satisfy it:
    the broker's audit writer thread writes what is recorded a moment later."""
    path = b.data_dir / "audit.jsonl"  # type: ignore[operator]
    deadline = time.monotonic() + 5.0
    while True:
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if until is None or until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _mi_env(env: pytest.MonkeyPatch, b: kbutil.Broker, secret: str = MI_SECRET) -> None:
    env.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{b.http_port}/msi/token")
    env.setenv("IDENTITY_HEADER", secret)


def test_managed_identity_credential_gets_a_token_that_sends(sts: Dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    b = sts["broker"]
    _mi_env(clean_env, b)
    cred = ManagedIdentityCredential()
    tok = cred.get_token(SCOPE)
    claims = _claims(tok.token)
    assert claims["aud"] == "https://servicebus.azure.net"
    assert claims["appid"] == MI_CLIENT
    assert claims["tid"] == TENANT
    assert claims["iss"].endswith(f"/{TENANT}/v2.0")
    lifetime = tok.expires_on - int(time.time())
    assert 3000 < lifetime <= 3600, lifetime
    assert jwt.get_unverified_header(tok.token)["alg"] == "ES256"
    with _sb(b, cred) as client:
        with client.get_queue_sender("sts-q") as sender:
            sender.send_messages(ServiceBusMessage("via managed identity"))
        # A Sender cannot receive.
        with pytest.raises(ServiceBusAuthorizationError):
            with client.get_queue_receiver("sts-q", max_wait_time=2) as receiver:
                receiver.receive_messages(max_wait_time=1)
    events = _audit(b, lambda es: any(e["event"] == "mi.issue" and e["decision"] == "allow" for e in es))
    issued = [e for e in events if e["event"] == "mi.issue" and e["decision"] == "allow"]
    assert issued and issued[0]["principal"]["id"] == "mi-app"
    assert all(tok.token not in json.dumps(e) for e in _audit(b))


def test_default_azure_credential_uses_the_managed_identity_endpoint(
    sts: Dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    b = sts["broker"]
    _mi_env(clean_env, b)
    cred = DefaultAzureCredential(
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_interactive_browser_credential=True,
    )
    with _sb(b, cred) as client:
        with client.get_queue_sender("sts-q") as sender:
            sender.send_messages(ServiceBusMessage("via DefaultAzureCredential"))
    authz = lambda e: e["event"] == "authz" and e["decision"] == "allow" and e["principal"]["id"] == "mi-app"  # noqa: E731
    assert any(authz(e) for e in _audit(b, lambda es: any(authz(e) for e in es)))


def test_managed_identity_with_a_wrong_secret_or_client_is_refused(
    sts: Dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    b = sts["broker"]
    _mi_env(clean_env, b, secret="not-the-secret-0123456789")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token(SCOPE)
    _mi_env(clean_env, b)
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id="33333333-3333-4333-8333-333333333333").get_token(SCOPE)
    # The right client id works.
    assert ManagedIdentityCredential(client_id=MI_CLIENT).get_token(SCOPE).token
    want = {"bad_identity_header", "unknown_identity"}
    events = _audit(b, lambda es: want <= {e.get("reason") for e in es if e["event"] == "mi.issue" and e["decision"] == "deny"})
    reasons = {e["reason"] for e in events if e["event"] == "mi.issue" and e["decision"] == "deny"}
    assert {"bad_identity_header", "unknown_identity"} <= reasons, reasons


def _wi(sts: Dict[str, Any], env: pytest.MonkeyPatch, token: str, client_id: str = WI_CLIENT) -> WorkloadIdentityCredential:
    b = sts["broker"]
    token_file = sts["dir"] / f"federated-{time.monotonic_ns()}.jwt"
    token_file.write_text(token)
    env.setenv("AZURE_AUTHORITY_HOST", f"https://localhost:{b.https_port}")
    env.setenv("REQUESTS_CA_BUNDLE", b.ca_path)
    env.setenv("SSL_CERT_FILE", b.ca_path)
    return WorkloadIdentityCredential(tenant_id=TENANT, client_id=client_id, token_file_path=str(token_file))


def test_workload_identity_credential_exchanges_a_federated_token(
    sts: Dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    b, issuer = sts["broker"], sts["issuer"]
    # A message to receive, sent with the managed identity (a Sender).
    _mi_env(clean_env, b)
    with _sb(b, ManagedIdentityCredential()) as client:
        with client.get_queue_sender("sts-q") as sender:
            sender.send_messages(ServiceBusMessage("for the worker"))
    clean_env.delenv("IDENTITY_ENDPOINT")
    clean_env.delenv("IDENTITY_HEADER")
    cred = _wi(sts, clean_env, issuer.token(WI_SUBJECT, aud=EXCHANGE))
    tok = cred.get_token(SCOPE)
    claims = _claims(tok.token)
    assert claims["appid"] == WI_CLIENT and claims["aud"] == "https://servicebus.azure.net"
    with _sb(b, cred) as client:
        with client.get_queue_receiver("sts-q", max_wait_time=5) as receiver:
            msgs = kbutil.receive_n(receiver, 1)
            assert [body_bytes(m) for m in msgs] == [b"for the worker"]
            receiver.complete_message(msgs[0])
        # A Receiver cannot send.
        with pytest.raises(ServiceBusAuthorizationError):
            with client.get_queue_sender("sts-q") as sender:
                sender.send_messages(ServiceBusMessage("no"))
    allowed = lambda e: e["event"] == "sts.issue" and e["decision"] == "allow" and e["principal"]["id"] == "wi-app"  # noqa: E731
    assert any(allowed(e) for e in _audit(b, lambda es: any(allowed(e) for e in es)))


@pytest.mark.parametrize("case", ["wrong-subject", "wrong-audience", "unknown-client", "expired-assertion"])
def test_workload_identity_refusals(sts: Dict[str, Any], clean_env: pytest.MonkeyPatch, case: str) -> None:
    issuer = sts["issuer"]
    now = int(time.time())
    token, client = issuer.token(WI_SUBJECT, aud=EXCHANGE), WI_CLIENT
    if case == "wrong-subject":
        token = issuer.token("system:serviceaccount:default:someone-else", aud=EXCHANGE)
    elif case == "wrong-audience":
        token = issuer.token(WI_SUBJECT, aud="https://servicebus.azure.net")
    elif case == "unknown-client":
        client = "44444444-4444-4444-8444-444444444444"
    else:
        token = issuer.token(WI_SUBJECT, aud=EXCHANGE, iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    with pytest.raises(ClientAuthenticationError):
        _wi(sts, clean_env, token, client_id=client).get_token(SCOPE)
    denied = lambda e: e["event"] == "sts.issue" and e["decision"] == "deny"  # noqa: E731
    assert any(denied(e) for e in _audit(sts["broker"], lambda es: any(denied(e) for e in es)))


def test_discovery_and_keys(sts: Dict[str, Any]) -> None:
    import ssl
    import urllib.request

    b = sts["broker"]
    ctx = ssl.create_default_context(cafile=b.ca_path)
    base = f"https://localhost:{b.https_port}/{TENANT}"
    with urllib.request.urlopen(f"{base}/v2.0/.well-known/openid-configuration", context=ctx) as r:
        doc = json.loads(r.read())
    assert doc["issuer"] == f"{base}/v2.0"
    assert doc["token_endpoint"] == f"{base}/oauth2/v2.0/token"
    with urllib.request.urlopen(doc["jwks_uri"], context=ctx) as r:
        keys = json.loads(r.read())["keys"]
    assert [k["kty"] for k in keys] == ["EC"] and all("d" not in k for k in keys)


def _http(url: str, headers: Dict[str, str], data: bytes | None = None, ctx: Any = None) -> tuple[int, Dict[str, Any]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_managed_identity_endpoint_refusals(sts: Dict[str, Any]) -> None:
    """Raw protocol: only Service Bus tokens, only with the header, never for a browser page;
    errors carry both the App Service and the Entra shapes."""
    b = sts["broker"]
    url = f"http://127.0.0.1:{b.http_port}/msi/token?api-version=2019-08-01"
    sb = "&resource=https://servicebus.azure.net/"
    status, body = _http(url + "&resource=https://management.azure.com/", {"X-IDENTITY-HEADER": MI_SECRET})
    assert status == 400 and body["error"] == "invalid_resource"
    status, body = _http(url + sb, {})
    assert status == 401 and body["statusCode"] == 401 and body["message"] and body["error_description"]
    status, _ = _http(url + sb, {"X-IDENTITY-HEADER": MI_SECRET, "Origin": "http://evil.example"})
    assert status == 403
    status, body = _http(url + sb, {"X-IDENTITY-HEADER": MI_SECRET})
    assert status == 200, body
    assert set(body) >= {"access_token", "expires_on", "expires_in", "resource", "token_type", "client_id"}
    assert body["resource"] == "https://servicebus.azure.net/" and body["client_id"] == MI_CLIENT
    assert int(body["expires_on"]) > time.time() + 3000


def test_token_endpoint_refuses_other_tenants_and_grants(sts: Dict[str, Any]) -> None:
    import ssl
    from urllib.parse import urlencode

    b, issuer = sts["broker"], sts["issuer"]
    ctx = ssl.create_default_context(cafile=b.ca_path)
    form = {
        "grant_type": "client_credentials",
        "client_id": WI_CLIENT,
        "scope": SCOPE,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": issuer.token(WI_SUBJECT, aud=EXCHANGE),
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    base = f"https://localhost:{b.https_port}"
    status, body = _http(f"{base}/other-tenant/oauth2/v2.0/token", headers, urlencode(form).encode(), ctx)
    assert status == 400 and body["error"] == "invalid_tenant", body
    status, body = _http(f"{base}/{TENANT}/oauth2/v2.0/token", headers, urlencode({**form, "grant_type": "password"}).encode(), ctx)
    assert status == 400 and body["error"] == "unsupported_grant_type", body
    status, body = _http(f"{base}/{TENANT}/oauth2/v2.0/token", headers, urlencode({**form, "scope": "https://vault.azure.net/.default"}).encode(), ctx)
    assert status == 400 and body["error"] == "invalid_scope", body
    # The tenant is matched case-insensitively (msal-node lower-cases the authority).
    status, body = _http(f"{base}/{TENANT.upper()}/oauth2/v2.0/token", headers, urlencode(form).encode(), ctx)
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] > 3000, body
    want = {"unknown_tenant", "unsupported_grant_type", "invalid_scope"}
    events = _audit(b, lambda es: want <= {e.get("reason") for e in es if e["event"] == "sts.issue" and e["decision"] == "deny"})
    reasons = {e["reason"] for e in events if e["event"] == "sts.issue" and e["decision"] == "deny"}
    assert want <= reasons, reasons


# ----------------------------------------------------------------------------------------
# The issuer comes from configuration, never from the request's Host; the token endpoint is
# HTTPS only (hardening item 12).
# ----------------------------------------------------------------------------------------


def _form(issuer: Issuer) -> bytes:
    from urllib.parse import urlencode

    return urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": WI_CLIENT,
            "scope": SCOPE,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": issuer.token(WI_SUBJECT, aud=EXCHANGE),
        }
    ).encode()


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


def test_other_hosts_are_refused_and_the_issuer_is_configured(sts: Dict[str, Any]) -> None:
    import ssl

    b, issuer = sts["broker"], sts["issuer"]
    ctx = ssl.create_default_context(cafile=b.ca_path)
    https = f"https://localhost:{b.https_port}"
    want_iss = f"https://localhost:{b.https_port}/{TENANT}/v2.0"
    evil = {"Host": "evil.example"}
    status, body = _http(f"{https}/{TENANT}/v2.0/.well-known/openid-configuration", evil, None, ctx)
    assert status == 421 and body["error"] == "invalid_request", (status, body)
    status, body = _http(f"{https}/{TENANT}/oauth2/v2.0/token", {**FORM_HEADERS, **evil}, _form(issuer), ctx)
    assert status == 421, (status, body)
    status, body = _http(
        f"{https}/{TENANT}/oauth2/v2.0/token", {**FORM_HEADERS, "Host": f"evil.example:{b.https_port}"}, _form(issuer), ctx
    )
    assert status == 421, (status, body)
    # Another name of this host (the development certificate's) is fine, and the issuer stays
    # the configured one.
    status, doc = _http(
        f"{https}/{TENANT}/v2.0/.well-known/openid-configuration", {"Host": f"127.0.0.1:{b.https_port}"}, None, ctx
    )
    assert status == 200 and doc["issuer"] == want_iss, doc
    status, body = _http(
        f"{https}/{TENANT}/oauth2/v2.0/token", {**FORM_HEADERS, "Host": f"127.0.0.1:{b.https_port}"}, _form(issuer), ctx
    )
    assert status == 200, body
    assert _claims(body["access_token"])["iss"] == want_iss
    # The managed identity endpoint (plain HTTP on loopback) mints the same issuer, whatever
    # the Host.
    url = f"http://127.0.0.1:{b.http_port}/msi/token?api-version=2019-08-01&resource=https://servicebus.azure.net/"
    status, body = _http(url, {"X-IDENTITY-HEADER": MI_SECRET, "Host": "evil.example"})
    assert status == 200, body
    assert _claims(body["access_token"])["iss"] == want_iss
    denied_reasons = lambda es: {e.get("reason") for e in es if e["decision"] == "deny" and e["event"] in ("sts.issue", "sts.discovery")}  # noqa: E731
    reasons = denied_reasons(_audit(b, lambda es: "unknown_host" in denied_reasons(es)))
    assert "unknown_host" in reasons, reasons


def test_token_endpoint_refuses_plain_http(sts: Dict[str, Any]) -> None:
    b, issuer = sts["broker"], sts["issuer"]
    http = f"http://127.0.0.1:{b.http_port}"
    status, body = _http(f"{http}/{TENANT}/oauth2/v2.0/token", FORM_HEADERS, _form(issuer))
    assert status == 400 and "HTTPS only" in body["error_description"], (status, body)
    assert "access_token" not in body
    status, body = _http(f"{http}/{TENANT}/v2.0/.well-known/openid-configuration", {})
    assert status == 400, (status, body)
    plain = lambda e: e["event"] == "sts.issue" and e.get("reason") == "plain_http"  # noqa: E731
    assert any(plain(e) for e in _audit(b, lambda es: any(plain(e) for e in es)))


def test_public_url_sets_the_issuer_and_the_accepted_host(broker_factory, tmp_path: Path) -> None:
    import ssl

    issuer = Issuer(tmp_path)
    policy = tmp_path / "policy.toml"
    text = policy_text(issuer).replace("[sts]\n", '[sts]\npublic_url = "https://sb.keybus.test:8443"\n', 1)
    policy.write_text(text)
    config = broker_factory.write_toml({"sts-q": {}}, name="sts-public.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-sts-public",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", str(policy)],
    )
    ctx = ssl.create_default_context(cafile=b.ca_path)
    https = f"https://localhost:{b.https_port}"
    status, _ = _http(f"{https}/{TENANT}/v2.0/.well-known/openid-configuration", {}, None, ctx)
    assert status == 421
    status, doc = _http(
        f"{https}/{TENANT}/v2.0/.well-known/openid-configuration", {"Host": "sb.keybus.test:8443"}, None, ctx
    )
    assert status == 200 and doc["issuer"] == f"https://sb.keybus.test:8443/{TENANT}/v2.0", doc
    assert doc["token_endpoint"] == f"https://sb.keybus.test:8443/{TENANT}/oauth2/v2.0/token"
