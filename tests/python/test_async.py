"""The core flows through the asyncio client (azure.servicebus.aio)."""

from __future__ import annotations

import asyncio
import datetime
from typing import AsyncIterator

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageState, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import MessagingEntityNotFoundError

from kbutil import approx_time, areceive_n, body_bytes, declare_queue, utcnow

Q_BASIC = declare_queue("as-basic", lock_duration="30s")
Q_ABANDON = declare_queue("as-abandon")
Q_DLQ = declare_queue("as-deadletter")
Q_PEEK = declare_queue("as-peek")
Q_SCHEDULE = declare_queue("as-schedule")
Q_DEFER = declare_queue("as-defer")
Q_RAD = declare_queue("as-receive-and-delete")
Q_CONCURRENT = declare_queue("as-concurrent-senders")


@pytest.fixture
async def aclient(conn_str: str) -> AsyncIterator[AsyncServiceBusClient]:
    client = AsyncServiceBusClient.from_connection_string(conn_str, retry_total=1)
    try:
        yield client
    finally:
        await client.close()


async def _assert_empty(receiver, wait: float = 2.0) -> None:
    msgs = await receiver.receive_messages(max_message_count=10, max_wait_time=wait)
    assert msgs == [], f"expected no message, got {[(m.sequence_number, str(m)) for m in msgs]}"


async def test_async_send_receive_complete(aclient: AsyncServiceBusClient) -> None:
    before = utcnow()
    async with aclient.get_queue_sender(Q_BASIC) as sender:
        await sender.send_messages(ServiceBusMessage(b"async-1", message_id="a1", application_properties={"n": 1}))
        await sender.send_messages([ServiceBusMessage(b"async-2", message_id="a2"), ServiceBusMessage(b"async-3", message_id="a3")])
        batch = await sender.create_message_batch()
        batch.add_message(ServiceBusMessage(b"async-4", message_id="a4"))
        await sender.send_messages(batch)
    async with aclient.get_queue_receiver(Q_BASIC) as receiver:
        msgs = await areceive_n(receiver, 4)
        now = utcnow()
        assert [m.message_id for m in msgs] == ["a1", "a2", "a3", "a4"]
        assert [body_bytes(m) for m in msgs] == [b"async-1", b"async-2", b"async-3", b"async-4"]
        assert [m.sequence_number for m in msgs] == [1, 2, 3, 4]
        assert [m.delivery_count for m in msgs] == [0, 0, 0, 0]
        assert msgs[0].application_properties == {b"n": 1}
        approx_time(msgs[0].enqueued_time_utc, before, 5.0, "enqueued_time_utc")
        approx_time(msgs[0].locked_until_utc, now + datetime.timedelta(seconds=30), 5.0, "locked_until_utc")
        for m in msgs:
            await receiver.complete_message(m)
        await _assert_empty(receiver)


async def test_async_abandon_redelivers(aclient: AsyncServiceBusClient) -> None:
    async with aclient.get_queue_sender(Q_ABANDON) as sender:
        await sender.send_messages(ServiceBusMessage(b"again", message_id="ab"))
    async with aclient.get_queue_receiver(Q_ABANDON) as receiver:
        (m,) = await areceive_n(receiver, 1)
        assert m.delivery_count == 0
        await receiver.abandon_message(m)
        (m2,) = await areceive_n(receiver, 1, timeout=10)
        assert m2.message_id == "ab"
        assert m2.sequence_number == m.sequence_number
        assert m2.delivery_count == 1
        await receiver.complete_message(m2)
        await _assert_empty(receiver)


async def test_async_dead_letter(aclient: AsyncServiceBusClient) -> None:
    async with aclient.get_queue_sender(Q_DLQ) as sender:
        await sender.send_messages(ServiceBusMessage(b"bad", message_id="dl"))
    async with aclient.get_queue_receiver(Q_DLQ) as receiver:
        (m,) = await areceive_n(receiver, 1)
        await receiver.dead_letter_message(m, reason="async-reason", error_description="async-description")
        await _assert_empty(receiver)
    async with aclient.get_queue_receiver(Q_DLQ, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        peeked = await dlq.peek_messages(5)
        assert [p.message_id for p in peeked] == ["dl"]
        (d,) = await areceive_n(dlq, 1)
        assert d.message_id == "dl"
        assert body_bytes(d) == b"bad"
        assert d.dead_letter_reason == "async-reason"
        assert d.dead_letter_error_description == "async-description"
        await dlq.complete_message(d)
        await _assert_empty(dlq)


async def test_async_peek(aclient: AsyncServiceBusClient) -> None:
    async with aclient.get_queue_sender(Q_PEEK) as sender:
        await sender.send_messages([ServiceBusMessage(f"pk{i}", message_id=f"pk{i}") for i in range(4)])
    async with aclient.get_queue_receiver(Q_PEEK) as receiver:
        peeked = await receiver.peek_messages(10, sequence_number=1)
        assert [(p.sequence_number, p.message_id) for p in peeked] == [(1, "pk0"), (2, "pk1"), (3, "pk2"), (4, "pk3")]
        assert [p.sequence_number for p in await receiver.peek_messages(2, sequence_number=2)] == [2, 3]
        msgs = await areceive_n(receiver, 4)
        assert [m.delivery_count for m in msgs] == [0, 0, 0, 0]  # peek did not lock/count
        for m in msgs:
            await receiver.complete_message(m)
        assert await receiver.peek_messages(10, sequence_number=1) == []


@pytest.mark.slow
async def test_async_schedule_and_cancel(aclient: AsyncServiceBusClient) -> None:
    when = utcnow() + datetime.timedelta(seconds=3)
    async with aclient.get_queue_sender(Q_SCHEDULE) as sender:
        seqs = await sender.schedule_messages(
            [ServiceBusMessage(b"later", message_id="later"), ServiceBusMessage(b"cancelled", message_id="cancelled")],
            when,
        )
        assert seqs == [1, 2]
        await sender.cancel_scheduled_messages(seqs[1])
    async with aclient.get_queue_receiver(Q_SCHEDULE) as receiver:
        peeked = await receiver.peek_messages(10, sequence_number=1)
        assert [(p.message_id, p.state) for p in peeked] == [("later", ServiceBusMessageState.SCHEDULED)]
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
        msgs = await areceive_n(receiver, 2, timeout=10)
        assert [m.message_id for m in msgs] == ["later"]
        assert utcnow() >= when - datetime.timedelta(milliseconds=500)
        await receiver.complete_message(msgs[0])
        await _assert_empty(receiver)


async def test_async_defer_and_receive_deferred(aclient: AsyncServiceBusClient) -> None:
    async with aclient.get_queue_sender(Q_DEFER) as sender:
        await sender.send_messages(ServiceBusMessage(b"deferred", message_id="df"))
    async with aclient.get_queue_receiver(Q_DEFER) as receiver:
        (m,) = await areceive_n(receiver, 1)
        await receiver.defer_message(m)
        await _assert_empty(receiver)
        (d,) = await receiver.receive_deferred_messages([m.sequence_number])
        assert d.message_id == "df" and d.sequence_number == m.sequence_number
        await receiver.complete_message(d)
        assert await receiver.peek_messages(10, sequence_number=1) == []


async def test_async_receive_and_delete(aclient: AsyncServiceBusClient) -> None:
    async with aclient.get_queue_sender(Q_RAD) as sender:
        await sender.send_messages([ServiceBusMessage(f"r{i}", message_id=f"r{i}") for i in range(3)])
    async with aclient.get_queue_receiver(Q_RAD, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        msgs = await areceive_n(receiver, 3)
        assert [m.message_id for m in msgs] == ["r0", "r1", "r2"]
    async with aclient.get_queue_receiver(Q_RAD) as receiver:
        await _assert_empty(receiver)


async def test_async_missing_entity(conn_str: str) -> None:
    async with AsyncServiceBusClient.from_connection_string(conn_str, retry_total=0) as client:
        with pytest.raises(MessagingEntityNotFoundError):
            async with client.get_queue_sender("as-does-not-exist") as sender:
                await sender.send_messages(ServiceBusMessage(b"x"))


async def test_async_concurrent_senders(aclient: AsyncServiceBusClient) -> None:
    """Several coroutines sending on separate senders of one connection."""
    senders = [aclient.get_queue_sender(Q_CONCURRENT) for _ in range(4)]
    try:
        await asyncio.gather(
            *(s.send_messages([ServiceBusMessage(f"c{i}-{j}", message_id=f"c{i}-{j}") for j in range(5)]) for i, s in enumerate(senders))
        )
    finally:
        for s in senders:
            await s.close()
    async with aclient.get_queue_receiver(Q_CONCURRENT, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        msgs = await areceive_n(receiver, 20)
        assert sorted(m.message_id for m in msgs) == sorted(f"c{i}-{j}" for i in range(4) for j in range(5))
        assert sorted(m.sequence_number for m in msgs) == list(range(1, 21))
