"""TLS: `--dev-tls` creates a local CA and a server certificate in the data dir; AMQPS (and
AMQP over secure WebSockets) and HTTPS then work for clients that trust that CA."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.servicebus import ServiceBusClient, ServiceBusMessage, TransportType
from azure.servicebus.exceptions import ServiceBusConnectionError

import kbutil
from kbutil import body_bytes, receive_n


@pytest.fixture
def tls_broker(broker_factory, tmp_path: Path) -> kbutil.Broker:
    config = broker_factory.write_toml({"tls-queue": {}}, name="tls.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-tls",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0"],
    )
    assert b.amqps_port and b.https_port and b.ca_path, b.stdout_lines
    return b


def _client(b: kbutil.Broker, **kwargs) -> ServiceBusClient:
    return ServiceBusClient(
        "localhost",
        AzureNamedKeyCredential(kbutil.SAS_POLICY, kbutil.SAS_KEY),
        custom_endpoint_address=f"sb://localhost:{b.amqps_port}",
        connection_verify=b.ca_path,
        retry_total=0,
        **kwargs,
    )


@pytest.mark.parametrize("transport", [TransportType.Amqp, TransportType.AmqpOverWebsocket])
def test_amqps_with_the_development_ca(tls_broker: kbutil.Broker, transport: TransportType) -> None:
    with _client(tls_broker, transport_type=transport) as client:
        with client.get_queue_sender("tls-queue") as sender:
            sender.send_messages(ServiceBusMessage(f"secure {transport.name}"))
        with client.get_queue_receiver("tls-queue", max_wait_time=5) as receiver:
            [m] = receive_n(receiver, 1)
            assert body_bytes(m) == f"secure {transport.name}".encode()
            receiver.complete_message(m)


def test_untrusted_certificate_is_refused(tls_broker: kbutil.Broker) -> None:
    with ServiceBusClient(
        "localhost",
        AzureNamedKeyCredential(kbutil.SAS_POLICY, kbutil.SAS_KEY),
        custom_endpoint_address=f"sb://localhost:{tls_broker.amqps_port}",
        transport_type=TransportType.Amqp,
        retry_total=0,
    ) as client:
        with pytest.raises(ServiceBusConnectionError):
            with client.get_queue_sender("tls-queue") as sender:
                sender.send_messages(ServiceBusMessage("x"))


def test_https_health_and_metrics(tls_broker: kbutil.Broker) -> None:
    ctx = ssl.create_default_context(cafile=tls_broker.ca_path)
    for path in ("/health", "/metrics"):
        with urllib.request.urlopen(f"https://localhost:{tls_broker.https_port}{path}", context=ctx, timeout=10) as r:
            assert r.status == 200
    # Plain HTTP on the HTTPS port is not served.
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://localhost:{tls_broker.https_port}/health", timeout=5)


def test_dev_certificates_are_kept_across_restarts(broker_factory, tls_broker: kbutil.Broker) -> None:
    ca = Path(tls_broker.ca_path).read_bytes()
    tls_broker.stop()
    broker_factory.restart(tls_broker)
    assert Path(tls_broker.ca_path).read_bytes() == ca
    key = Path(tls_broker.ca_path).parent / "server-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
