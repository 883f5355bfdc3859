"""mTLS: with `--tls-client-ca`, AMQPS checks client certificates against a trust bundle and the
SPIFFE ID in the certificate's URI SAN becomes the principal the policy grants roles to. The
SDK presents the certificate through `ssl_context=` and still puts a (placeholder) token on
`$cbs`, which keybus accepts only on connections whose certificate names a known principal.
"""

from __future__ import annotations

import datetime
import json
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from azure.core.credentials import AccessToken
from azure.servicebus import ServiceBusClient, ServiceBusMessage, TransportType
from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusAuthorizationError, ServiceBusError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import kbutil
from kbutil import body_bytes

SENDER_ID = "spiffe://cluster.local/ns/billing/sa/api"


class Placeholder:
    """The SDK needs a credential; on an mTLS connection its token is only a placeholder."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("placeholder", int(time.time()) + 3600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name("test client CA"))
            .issuer_name(_name("test client CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = directory / "client-ca.pem"
        self.ca_path.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def client(self, name: str, uris: List[str], signer: Optional["Pki"] = None) -> tuple[Path, Path]:
        signer = signer or self
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(signer.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
            )
        cert = builder.sign(signer.ca_key, hashes.SHA256())
        cert_path = self.dir / f"{name}.pem"
        key_path = self.dir / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


POLICY = f"""
[[principals]]
id = "billing-api"
match = [{{ spiffe = "{SENDER_ID}" }}]

[[grants]]
principal = "billing-api"
role = "Sender"
scope = "queues/mtls-q"
"""


@pytest.fixture
def setup(broker_factory, tmp_path: Path) -> Dict[str, Any]:
    pki = Pki(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    config = broker_factory.write_toml({"mtls-q": {}}, name="mtls.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-mtls",
        extra_args=[
            "--dev-tls",
            "--amqps-port",
            "0",
            "--https-port",
            "0",
            "--policy",
            str(policy),
            "--tls-client-ca",
            str(pki.ca_path),
        ],
    )
    return {"broker": b, "pki": pki}


def _client(b: kbutil.Broker, cert: Optional[tuple[Path, Path]]) -> ServiceBusClient:
    ctx = ssl.create_default_context(cafile=b.ca_path)
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ServiceBusClient(
        "localhost",
        Placeholder(),
        custom_endpoint_address=f"sb://localhost:{b.amqps_port}",
        ssl_context=ctx,
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


def test_spiffe_principal_sends_and_cannot_receive(setup: Dict[str, Any]) -> None:
    b, pki = setup["broker"], setup["pki"]
    cert = pki.client("billing", [SENDER_ID])
    with _client(b, cert) as client:
        with client.get_queue_sender("mtls-q") as sender:
            sender.send_messages(ServiceBusMessage("over mTLS"))
        with pytest.raises(ServiceBusAuthorizationError):
            with client.get_queue_receiver("mtls-q", max_wait_time=2) as receiver:
                receiver.receive_messages(max_wait_time=1)
    # The message is there: an SAS owner drains it.
    from azure.core.credentials import AzureNamedKeyCredential

    with ServiceBusClient(
        "localhost",
        AzureNamedKeyCredential(kbutil.SAS_POLICY, kbutil.SAS_KEY),
        custom_endpoint_address=f"sb://localhost:{b.amqps_port}",
        connection_verify=b.ca_path,
        retry_total=0,
    ) as client:
        with client.get_queue_receiver("mtls-q", max_wait_time=5) as receiver:
            [m] = receiver.receive_messages(max_wait_time=5)
            assert body_bytes(m) == b"over mTLS"
            receiver.complete_message(m)
    put = lambda e: e["event"] == "token.put" and e.get("reason") == "mtls"  # noqa: E731
    sent = lambda e: (  # noqa: E731
        e["event"] == "authz"
        and e["decision"] == "allow"
        and (e.get("principal") or {}).get("spiffe") == SENDER_ID
        and e.get("action") == "send"
    )
    events = _audit(b, lambda es: any(put(e) for e in es) and any(sent(e) for e in es))
    assert any(put(e) for e in events)
    assert any(sent(e) for e in events)


def test_unknown_spiffe_id_and_no_certificate_get_nothing(setup: Dict[str, Any]) -> None:
    b, pki = setup["broker"], setup["pki"]
    stranger = pki.client("stranger", ["spiffe://cluster.local/ns/other/sa/x"])
    for cert in (stranger, None):
        with _client(b, cert) as client:
            with kbutil.auth_refused():
                with client.get_queue_sender("mtls-q") as sender:
                    sender.send_messages(ServiceBusMessage("no"))


def test_certificate_from_another_ca_is_refused(setup: Dict[str, Any], tmp_path: Path) -> None:
    b, pki = setup["broker"], setup["pki"]
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = Pki(other_dir)
    forged = other.client("forged", [SENDER_ID])
    with _client(b, forged) as client:
        with pytest.raises(ServiceBusError):
            with client.get_queue_sender("mtls-q") as sender:
                sender.send_messages(ServiceBusMessage("forged"))


def test_several_uri_sans_are_refused(setup: Dict[str, Any]) -> None:
    b, pki = setup["broker"], setup["pki"]
    two = pki.client("two", [SENDER_ID, "spiffe://cluster.local/ns/x/sa/y"])
    with _client(b, two) as client:
        with pytest.raises(ServiceBusError):
            with client.get_queue_sender("mtls-q") as sender:
                sender.send_messages(ServiceBusMessage("two ids"))
    denied = lambda e: e["event"] == "mtls" and e["decision"] == "deny"  # noqa: E731
    assert any(denied(e) for e in _audit(b, lambda es: any(denied(e) for e in es)))


def test_old_tls_versions_are_refused(setup: Dict[str, Any]) -> None:
    b = setup["broker"]
    ctx = ssl.create_default_context(cafile=b.ca_path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    import socket

    with socket.create_connection(("127.0.0.1", b.amqps_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)
    # Control: the same handshake with TLS 1.2 succeeds, so the refusal above is the version's.
    ctx12 = ssl.create_default_context(cafile=b.ca_path)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", b.amqps_port), timeout=5) as raw:
        with ctx12.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
