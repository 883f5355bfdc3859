"""AMQP over WebSockets (`/$servicebus/websocket`, subprotocol AMQPWSB10) on the AMQP port: the
SDK's WebSocket transport, pointed at that port with ``custom_endpoint_address`` (the SDK dials
443 otherwise)."""

from __future__ import annotations

import socket

from azure.servicebus import ServiceBusClient, ServiceBusMessage, TransportType
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient

from kbutil import body_bytes, declare_queue, receive_n

Q_WS = declare_queue("ws-queue")
Q_WS_ASYNC = declare_queue("ws-queue-async")


def test_sync_client_over_websockets(conn_str: str, broker) -> None:
    with ServiceBusClient.from_connection_string(
        conn_str,
        transport_type=TransportType.AmqpOverWebsocket,
        custom_endpoint_address=f"sb://127.0.0.1:{broker.amqp_port}",
    ) as client:
        with client.get_queue_sender(Q_WS) as sender:
            sender.send_messages([ServiceBusMessage(f"ws-{i}") for i in range(3)])
            # A message bigger than one WebSocket read.
            sender.send_messages(ServiceBusMessage(b"x" * 200_000))
        with client.get_queue_receiver(Q_WS) as receiver:
            msgs = receive_n(receiver, 4)
            assert [body_bytes(m) for m in msgs[:3]] == [b"ws-0", b"ws-1", b"ws-2"]
            assert body_bytes(msgs[3]) == b"x" * 200_000
            for m in msgs:
                receiver.complete_message(m)
            assert receiver.peek_messages(max_message_count=5) == []


async def test_async_client_over_websockets(conn_str: str, broker) -> None:
    async with AsyncServiceBusClient.from_connection_string(
        conn_str,
        transport_type=TransportType.AmqpOverWebsocket,
        custom_endpoint_address=f"sb://127.0.0.1:{broker.amqp_port}",
    ) as client:
        async with client.get_queue_sender(Q_WS_ASYNC) as sender:
            await sender.send_messages(ServiceBusMessage("async-ws"))
        async with client.get_queue_receiver(Q_WS_ASYNC, max_wait_time=5) as receiver:
            got = []
            while not got:
                got = await receiver.receive_messages(max_wait_time=5)
            assert body_bytes(got[0]) == b"async-ws"
            await receiver.complete_message(got[0])


def _http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_websocket_upgrade_needs_the_path_and_subprotocol(broker) -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    base = (
        b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
    )
    ok = _http(
        broker.amqp_port,
        b"GET /$servicebus/websocket HTTP/1.1\r\n" + base + b"Sec-WebSocket-Protocol: AMQPWSB10\r\n\r\n",
    )
    assert ok.startswith(b"HTTP/1.1 101"), ok
    assert b"sec-websocket-protocol: AMQPWSB10" in ok.lower().replace(b"amqpwsb10", b"AMQPWSB10")
    wrong_path = _http(
        broker.amqp_port,
        b"GET /elsewhere HTTP/1.1\r\n" + base + b"Sec-WebSocket-Protocol: AMQPWSB10\r\n\r\n",
    )
    assert wrong_path.startswith(b"HTTP/1.1 404"), wrong_path
    no_protocol = _http(broker.amqp_port, b"GET /$servicebus/websocket HTTP/1.1\r\n" + base + b"\r\n")
    assert no_protocol.startswith(b"HTTP/1.1 400"), no_protocol
