"""The REST messaging API with a plain HTTP client (`requests`), cross-checked with the SDK:
send (single and JSON batch) with BrokerProperties and custom-property headers, peek-lock
(`POST .../messages/head`), receive-and-delete (`DELETE .../messages/head`), unlock, complete
and renew by lock token, long polling, subscriptions and dead-letter queues, and the errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from typing import Any, Dict, Optional

import pytest
import requests
from azure.servicebus import ServiceBusClient, ServiceBusMessage

import kbutil
from kbutil import body_bytes, declare_queue, declare_toml, receive_n

Q = declare_queue("rest-q", lock_duration="30s")
Q_POLL = declare_queue("rest-poll")
Q_BATCH = declare_queue("rest-batch")
Q_AMQP = declare_queue("rest-from-amqp", max_delivery_count=2)
Q_SMALL = declare_queue("rest-small", max_message_size=1024)
declare_toml(
    """
[[topics]]
name = "rest-topic"

[[topics.subscriptions]]
name = "all"
"""
)


def sas(uri: str, policy: str = kbutil.SAS_POLICY, key: str = kbutil.SAS_KEY) -> str:
    expiry = int(time.time()) + 3600
    sr = urllib.parse.quote(uri, safe="")
    sig = base64.b64encode(hmac.new(key.encode(), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn={policy}"


class Rest:
    def __init__(self, broker: kbutil.Broker, policy: str = kbutil.SAS_POLICY, key: str = kbutil.SAS_KEY) -> None:
        self.base = f"http://127.0.0.1:{broker.http_port}"
        self.token = sas(self.base, policy, key)

    def __call__(self, method: str, path: str, body: Any = b"", **headers: str) -> requests.Response:
        headers.setdefault("Authorization", self.token)
        return requests.request(method, f"{self.base}/{path}", data=body, headers=headers, timeout=70)

    def send(self, entity: str, body: bytes | str, props: Optional[Dict[str, Any]] = None, **custom: str) -> requests.Response:
        headers = dict(custom)
        if props is not None:
            headers["BrokerProperties"] = json.dumps(props)
        headers.setdefault("Content-Type", "text/plain")
        return self("POST", f"{entity}/messages", body, **headers)


@pytest.fixture
def rest(broker: kbutil.Broker) -> Rest:
    return Rest(broker)


def bp(r: requests.Response) -> Dict[str, Any]:
    return json.loads(r.headers["BrokerProperties"])


def test_send_over_rest_receive_over_amqp(rest: Rest, sb_client: ServiceBusClient) -> None:
    r = rest.send(
        Q,
        b"hello from rest",
        {"MessageId": "rest-1", "CorrelationId": "corr", "Label": "greeting", "ReplyTo": "back", "TimeToLive": 600},
        **{"Priority": '"high"', "Count": "7", "Ratio": "1.5", "Flag": "true"},
    )
    assert r.status_code == 201, r.text
    with sb_client.get_queue_receiver(Q, max_wait_time=5) as receiver:
        [m] = receive_n(receiver, 1)
        assert body_bytes(m) == b"hello from rest"
        assert m.message_id == "rest-1" and m.correlation_id == "corr" and m.subject == "greeting"
        assert m.reply_to == "back" and m.content_type == "text/plain"
        assert m.time_to_live.total_seconds() == 600
        props = {k.decode() if isinstance(k, bytes) else k: v for k, v in m.application_properties.items()}
        props = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in props.items()}
        assert props["priority"] == "high" and props["count"] == 7 and props["ratio"] == 1.5 and props["flag"] is True
        receiver.complete_message(m)


def test_send_over_amqp_peek_lock_over_rest(rest: Rest, sb_client: ServiceBusClient) -> None:
    with sb_client.get_queue_sender(Q_AMQP) as sender:
        sender.send_messages(
            ServiceBusMessage(b"from amqp", message_id="amqp-1", application_properties={"kind": "test", "n": 3})
        )
    r = rest("POST", f"{Q_AMQP}/messages/head?timeout=5")
    assert r.status_code == 201, r.text
    assert r.content == b"from amqp"
    props = bp(r)
    assert props["MessageId"] == "amqp-1" and props["DeliveryCount"] == 1 and props["State"] == "Active"
    assert props["SequenceNumber"] >= 1 and "LockedUntilUtc" in props and r.headers["kind"] == '"test"'
    assert r.headers["n"] == "3"
    location = r.headers["Location"]
    lock = props["LockToken"]
    assert location.endswith(f"/messages/amqp-1/{lock}")
    # Renew: the lock moves on.
    renewed = rest("POST", f"{Q_AMQP}/messages/amqp-1/{lock}")
    assert renewed.status_code == 200 and bp(renewed)["LockToken"] == lock
    # Unlock: the message comes back with its delivery count raised.
    assert rest("PUT", f"{Q_AMQP}/messages/amqp-1/{lock}").status_code == 200
    again = rest("POST", f"{Q_AMQP}/messages/head?timeout=5")
    assert again.status_code == 201 and bp(again)["DeliveryCount"] == 2
    # Complete: gone; a second complete with the same lock is 404.
    lock2 = bp(again)["LockToken"]
    assert rest("DELETE", f"{Q_AMQP}/messages/amqp-1/{lock2}").status_code == 200
    assert rest("DELETE", f"{Q_AMQP}/messages/amqp-1/{lock2}").status_code == 404
    assert rest("POST", f"{Q_AMQP}/messages/head?timeout=1").status_code == 204


def test_receive_and_delete_and_long_polling(rest: Rest) -> None:
    started = time.monotonic()
    empty = rest("DELETE", f"{Q_POLL}/messages/head?timeout=2")
    waited = time.monotonic() - started
    assert empty.status_code == 204 and 1.5 <= waited < 10, waited
    # A message sent while a receiver waits is returned at once.
    threading.Timer(1.0, lambda: rest.send(Q_POLL, b"late arrival")).start()
    started = time.monotonic()
    r = rest("DELETE", f"{Q_POLL}/messages/head?timeout=30")
    assert r.status_code == 200 and r.content == b"late arrival", r.text
    assert time.monotonic() - started < 10
    assert "LockToken" not in bp(r)
    assert rest("DELETE", f"{Q_POLL}/messages/head?timeout=1").status_code == 204


def test_batch_send(rest: Rest, sb_client: ServiceBusClient) -> None:
    batch = [
        {"Body": "one", "BrokerProperties": {"MessageId": "b1", "Label": "L1"}, "UserProperties": {"x": 1}},
        {"Body": "two", "BrokerProperties": {"MessageId": "b2"}},
        {"Body": "three"},
    ]
    r = rest("POST", f"{Q_BATCH}/messages", json.dumps(batch), **{"Content-Type": "application/vnd.microsoft.servicebus.json"})
    assert r.status_code == 201, r.text
    with sb_client.get_queue_receiver(Q_BATCH, max_wait_time=5) as receiver:
        msgs = receive_n(receiver, 3)
        assert [body_bytes(m) for m in msgs] == [b"one", b"two", b"three"]
        assert msgs[0].message_id == "b1" and msgs[0].subject == "L1"
        assert msgs[0].application_properties[b"x"] == 1
        assert msgs[2].message_id  # the broker gave it one
        for m in msgs:
            receiver.complete_message(m)


def test_topic_send_and_subscription_receive(rest: Rest) -> None:
    assert rest.send("rest-topic", b"to all", {"MessageId": "t1"}).status_code == 201
    r = rest("POST", "rest-topic/subscriptions/all/messages/head?timeout=5")
    assert r.status_code == 201 and r.content == b"to all"
    lock = bp(r)["LockToken"]
    assert rest("DELETE", f"rest-topic/subscriptions/all/messages/t1/{lock}").status_code == 200
    # Sending to a subscription, or receiving from the topic itself, is refused.
    assert rest.send("rest-topic/subscriptions/all", b"x").status_code == 400
    assert rest("POST", "rest-topic/messages/head?timeout=1").status_code == 400


def test_errors_store_nothing(rest: Rest, broker: kbutil.Broker) -> None:
    assert rest.send("rest-missing", b"x").status_code == 404
    bad_json = rest("POST", f"{Q}/messages", b"x", BrokerProperties="{not json", **{"Content-Type": "text/plain"})
    assert bad_json.status_code == 400
    assert rest.send(Q, b"x", {"TimeToLive": "soon"}).status_code == 400
    assert rest.send(Q, b"x", {"Unknown": 1}).status_code == 400
    assert rest.send(Q, b"x", {"ScheduledEnqueueTimeUtc": "tomorrow"}).status_code == 400
    assert rest("POST", f"{Q}/messages", "[]", **{"Content-Type": "application/vnd.microsoft.servicebus.json"}).status_code == 400
    assert rest.send(Q_SMALL, b"y" * 4096).status_code == 413
    assert rest(
        "DELETE", f"{Q}/messages/x/00000000-0000-0000-0000-000000000000"
    ).status_code == 404
    assert rest("PATCH", f"{Q}/messages/head").status_code == 405
    assert rest("DELETE", f"{Q}/messages/head?timeout=1").status_code == 204, "nothing was stored"
    # Authorisation: no token, a bad key, a Listen-only policy sending.
    assert requests.post(f"{rest.base}/{Q}/messages", data=b"x", timeout=10).status_code == 401
    wrong = Rest(broker, key="d3JvbmcK")
    assert wrong.send(Q, b"x").status_code == 401
    listen = Rest(broker, kbutil.LISTEN_POLICY, kbutil.LISTEN_KEY)
    assert listen.send(Q, b"x").status_code == 401
    assert listen("DELETE", f"{Q}/messages/head?timeout=1").status_code == 204


def test_scheduled_send_is_invisible_until_due(rest: Rest, sb_client: ServiceBusClient) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    assert rest.send(Q, b"later", {"MessageId": "sched-1", "ScheduledEnqueueTimeUtc": when}).status_code == 201
    assert rest("DELETE", f"{Q}/messages/head?timeout=1").status_code == 204
    with sb_client.get_queue_receiver(Q) as receiver:
        peeked = [m for m in receiver.peek_messages(50, sequence_number=1) if m.message_id == "sched-1"]
        assert len(peeked) == 1 and peeked[0].scheduled_enqueue_time_utc is not None
