"""HTTP health endpoint and the Service Bus emulator's Config.json."""

from __future__ import annotations

import datetime
import urllib.request
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

import kbutil
from kbutil import approx_time, assert_empty, body_bytes, receive_n, utcnow

EMULATOR_CONFIG = """\
// Service Bus emulator configuration (JSONC, as shipped in the emulator's installer)
{
  "UserConfig": {
    "Namespaces": [
      {
        "Name": "sbemulatorns",
        // queues of the namespace
        "Queues": [
          {
            "Name": "emu-queue",
            "Properties": {
              "DeadLetteringOnMessageExpiration": false,
              "DefaultMessageTimeToLive": "PT1H",
              "DuplicateDetectionHistoryTimeWindow": "PT20S",
              "ForwardDeadLetteredMessagesTo": "",
              "ForwardTo": "",
              "LockDuration": "PT1M",
              "MaxDeliveryCount": 3,
              "RequiresDuplicateDetection": false,
              "RequiresSession": false
            }
          },
          {
            "Name": "emu-short-lock",
            "Properties": {
              "LockDuration": "PT5S",
              "MaxDeliveryCount": 10
            }
          }
        ],
        "Topics": []
      }
    ],
    "Logging": {
      "Type": "Console" // or "File"
    }
  }
}
"""


def test_health_endpoint_returns_200(broker: kbutil.Broker) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/health", timeout=5) as resp:
        assert resp.status == 200


def test_broker_prints_its_ports(broker: kbutil.Broker) -> None:
    assert broker.amqp_port and broker.amqp_port > 0
    assert broker.http_port and broker.http_port > 0
    assert broker.amqp_port != broker.http_port
    assert any(f"keybus: amqp listening on 127.0.0.1:{broker.amqp_port}" in line for line in broker.stdout_lines)
    assert any(f"keybus: http listening on 127.0.0.1:{broker.http_port}" in line for line in broker.stdout_lines)


@pytest.mark.timeout(120)
def test_emulator_config_json(broker_factory, tmp_path: Path) -> None:
    config = tmp_path / "Config.json"
    config.write_text(EMULATOR_CONFIG)
    b = broker_factory.start(config, name="keybus-emulator")
    status, _ = b.health()
    assert status == 200

    # the documented emulator connection string, with our port
    conn = (
        f"Endpoint=sb://127.0.0.1:{b.amqp_port};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
    )
    with ServiceBusClient.from_connection_string(conn) as client:
        with client.get_queue_sender("emu-queue") as sender:
            sender.send_messages(ServiceBusMessage(b"from-emulator-config", message_id="emu-1"))
        with client.get_queue_receiver("emu-queue") as receiver:
            (m,) = receive_n(receiver, 1)
            received_at = utcnow()
            assert body_bytes(m) == b"from-emulator-config"
            assert m.message_id == "emu-1"
            assert m.sequence_number == 1
            assert m.delivery_count == 0
            # LockDuration PT1M
            approx_time(m.locked_until_utc, received_at + datetime.timedelta(minutes=1), 5.0, "locked_until_utc")
            # MaxDeliveryCount 3: three abandons dead-letter the message
            receiver.abandon_message(m)
            for expected_count in (1, 2):
                (again,) = receive_n(receiver, 1, timeout=10)
                assert again.delivery_count == expected_count
                receiver.abandon_message(again)
            assert_empty(receiver, wait=2)
        with client.get_queue_receiver("emu-queue", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            (d,) = receive_n(dlq, 1, timeout=10)
            assert d.message_id == "emu-1"
            assert d.dead_letter_reason == "MaxDeliveryCountExceeded"
            dlq.complete_message(d)

        with client.get_queue_sender("emu-short-lock") as sender:
            sender.send_messages(ServiceBusMessage(b"short-lock"))
        with client.get_queue_receiver("emu-short-lock") as receiver:
            (m,) = receive_n(receiver, 1)
            # LockDuration PT5S
            approx_time(m.locked_until_utc, utcnow() + datetime.timedelta(seconds=5), 2.0, "locked_until_utc")
            receiver.complete_message(m)
