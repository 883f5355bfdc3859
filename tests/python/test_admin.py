"""The ATOM/XML management API with azure-servicebus's ServiceBusAdministrationClient (sync and
async): queues, topics, subscriptions and rules with their properties, runtime counts from real
AMQP traffic, namespace properties, paging, the SDK's exceptions, authorisation and refused
input. Entities created over the API are used over AMQP at once; deleted ones are gone there.

The administration client always speaks https to the Endpoint's host and port, so these tests
use the session broker's HTTPS listener (``--dev-tls``) and trust its development CA
(``kbutil.Broker.admin_conn_str``, ``ca_file``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import time
import urllib.parse
import uuid
from typing import Iterator

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio.management import ServiceBusAdministrationClient as AsyncAdminClient
from azure.servicebus.exceptions import MessagingEntityNotFoundError, ServiceBusError
from azure.servicebus.management import (
    CorrelationRuleFilter,
    FalseRuleFilter,
    ServiceBusAdministrationClient,
    SqlRuleAction,
    SqlRuleFilter,
    TrueRuleFilter,
)

import kbutil
from kbutil import body_bytes, receive_n, utcnow

MINUTE = datetime.timedelta(minutes=1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(broker: kbutil.Broker) -> Iterator[ServiceBusAdministrationClient]:
    client = ServiceBusAdministrationClient.from_connection_string(
        broker.admin_conn_str(), connection_verify=broker.ca_file, retry_total=0
    )
    try:
        yield client
    finally:
        client.close()


def sas_token(uri: str, policy: str = kbutil.SAS_POLICY, key: str = kbutil.SAS_KEY) -> str:
    expiry = int(time.time()) + 3600
    sr = urllib.parse.quote(uri, safe="")
    sig = base64.b64encode(hmac.new(key.encode(), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn={policy}"


class Raw:
    """Plain HTTP requests against the API (for what the SDK would never send)."""

    def __init__(self, broker: kbutil.Broker) -> None:
        self.base = f"https://localhost:{broker.https_port}"
        self.verify = broker.ca_file
        self.token = sas_token(self.base)

    def request(self, method: str, path: str, body: str | None = None, **headers: str) -> requests.Response:
        headers.setdefault("Authorization", self.token)
        headers.setdefault("Content-Type", "application/atom+xml")
        return requests.request(
            method, f"{self.base}/{path}", data=body, headers=headers, verify=self.verify, timeout=10
        )


@pytest.fixture
def raw(broker: kbutil.Broker) -> Raw:
    return Raw(broker)


def entry(description: str) -> str:
    return (
        '<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/xml">'
        f"{description}</content></entry>"
    )


SB_NS = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"


# ------------------------------------------------------------------------------ queues


def test_queue_create_get_update_list_delete_round_trip(admin: ServiceBusAdministrationClient) -> None:
    name = unique("adm-q")
    target = unique("adm-fwd")
    admin.create_queue(target)
    created = admin.create_queue(
        name,
        lock_duration=datetime.timedelta(seconds=30),
        max_delivery_count=5,
        default_message_time_to_live=datetime.timedelta(hours=1),
        dead_lettering_on_message_expiration=True,
        requires_duplicate_detection=True,
        duplicate_detection_history_time_window=datetime.timedelta(minutes=2),
        requires_session=True,
        max_size_in_megabytes=2048,
        forward_dead_lettered_messages_to=target,
        auto_delete_on_idle=datetime.timedelta(hours=2),
        user_metadata="owned by the admin test",
        max_message_size_in_kilobytes=512,
        enable_batched_operations=False,
    )
    assert created.name == name
    got = admin.get_queue(name)
    for q in (created, got):
        assert q.lock_duration == datetime.timedelta(seconds=30)
        assert q.max_delivery_count == 5
        assert q.default_message_time_to_live == datetime.timedelta(hours=1)
        assert q.dead_lettering_on_message_expiration is True
        assert q.requires_duplicate_detection is True
        assert q.duplicate_detection_history_time_window == datetime.timedelta(minutes=2)
        assert q.requires_session is True
        assert q.max_size_in_megabytes == 2048
        assert q.forward_to is None
        assert q.forward_dead_lettered_messages_to.endswith(f"/{target}")
        assert q.auto_delete_on_idle == datetime.timedelta(hours=2)
        assert q.user_metadata == "owned by the admin test"
        assert q.max_message_size_in_kilobytes == 512
        assert q.enable_batched_operations is False
        assert q.status == "Active"
        assert q.enable_partitioning is False

    # Update (PUT with If-Match: *): changed properties stick, fixed ones stay.
    got.lock_duration = datetime.timedelta(seconds=45)
    got.max_delivery_count = 9
    got.default_message_time_to_live = datetime.timedelta(days=2)
    got.user_metadata = "changed"
    got.status = "SendDisabled"
    got.forward_dead_lettered_messages_to = None
    admin.update_queue(got)
    updated = admin.get_queue(name)
    assert updated.lock_duration == datetime.timedelta(seconds=45)
    assert updated.max_delivery_count == 9
    assert updated.default_message_time_to_live == datetime.timedelta(days=2)
    assert updated.user_metadata == "changed"
    assert updated.status == "SendDisabled"
    assert updated.forward_dead_lettered_messages_to is None
    assert updated.requires_session is True
    # keyword overrides on update
    admin.update_queue(updated, max_delivery_count=3, status="Active")
    assert admin.get_queue(name).max_delivery_count == 3

    # Properties that are fixed at creation cannot change.
    fixed = admin.get_queue(name)
    fixed.requires_session = False
    with pytest.raises(HttpResponseError) as err:
        admin.update_queue(fixed)
    assert err.value.status_code == 400
    assert "RequiresSession" in str(err.value)

    assert name in {q.name for q in admin.list_queues()}
    admin.delete_queue(name)
    with pytest.raises(ResourceNotFoundError):
        admin.get_queue(name)
    assert name not in {q.name for q in admin.list_queues()}
    admin.delete_queue(target)


def test_defaults_are_azures(admin: ServiceBusAdministrationClient) -> None:
    name = unique("adm-defaults")
    q = admin.create_queue(name)
    assert q.lock_duration == MINUTE
    assert q.max_delivery_count == 10
    assert q.default_message_time_to_live > datetime.timedelta(days=10_000)  # TimeSpan.MaxValue
    assert q.auto_delete_on_idle > datetime.timedelta(days=10_000)
    assert q.duplicate_detection_history_time_window == datetime.timedelta(minutes=10)
    assert q.max_size_in_megabytes == 1024
    assert q.max_message_size_in_kilobytes == 256
    assert q.requires_session is False and q.requires_duplicate_detection is False
    assert q.enable_batched_operations is True
    admin.delete_queue(name)


def test_sdk_exceptions_for_missing_and_existing_entities(admin: ServiceBusAdministrationClient) -> None:
    name = unique("adm-exists")
    admin.create_queue(name)
    with pytest.raises(ResourceExistsError):
        admin.create_queue(name)
    with pytest.raises(ResourceExistsError):
        admin.create_queue(name.upper())  # names are case-insensitive
    missing = unique("adm-missing")
    with pytest.raises(ResourceNotFoundError):
        admin.get_queue(missing)
    with pytest.raises(ResourceNotFoundError):
        admin.get_queue_runtime_properties(missing)
    with pytest.raises(ResourceNotFoundError):
        admin.delete_queue(missing)
    stale = admin.get_queue(name)
    admin.delete_queue(name)
    with pytest.raises(ResourceNotFoundError):
        admin.update_queue(stale)
    with pytest.raises(ResourceNotFoundError):
        admin.get_topic(unique("adm-no-topic"))
    with pytest.raises(ResourceNotFoundError):
        admin.create_subscription(unique("adm-no-topic"), "s")
    topic = unique("adm-exists-t")
    admin.create_topic(topic)
    with pytest.raises(ResourceExistsError):
        admin.create_topic(topic)
    with pytest.raises(ResourceExistsError):
        admin.create_queue(topic)
    admin.create_subscription(topic, "s")
    with pytest.raises(ResourceExistsError):
        admin.create_subscription(topic, "s")
    with pytest.raises(ResourceNotFoundError):
        admin.get_subscription(topic, "nope")
    with pytest.raises(ResourceNotFoundError):
        admin.get_rule(topic, "s", "nope")
    with pytest.raises(ResourceExistsError):
        admin.create_rule(topic, "s", "$Default")
    with pytest.raises(ResourceNotFoundError):
        admin.delete_rule(topic, "s", "nope")
    admin.delete_topic(topic)


def test_created_queue_is_usable_over_amqp_at_once(
    admin: ServiceBusAdministrationClient, sb_client: ServiceBusClient
) -> None:
    name = unique("adm-amqp")
    admin.create_queue(name, max_delivery_count=1, lock_duration=datetime.timedelta(seconds=5))
    with sb_client.get_queue_sender(name) as sender:
        sender.send_messages(ServiceBusMessage(b"via-api"))
    with sb_client.get_queue_receiver(name, max_wait_time=5) as receiver:
        [m] = receive_n(receiver, 1)
        assert body_bytes(m) == b"via-api"
        receiver.abandon_message(m)  # max delivery count 1: straight to the dead-letter queue
    with sb_client.get_queue_receiver(name, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5) as dlq:
        [d] = receive_n(dlq, 1)
        assert d.dead_letter_reason == "MaxDeliveryCountExceeded"
        dlq.complete_message(d)
    admin.delete_queue(name)


def test_runtime_properties_reflect_amqp_traffic(
    admin: ServiceBusAdministrationClient, sb_client: ServiceBusClient
) -> None:
    name = unique("adm-rt")
    before = utcnow() - datetime.timedelta(seconds=5)
    admin.create_queue(name)
    idle = admin.get_queue_runtime_properties(name)
    assert (idle.total_message_count, idle.active_message_count, idle.size_in_bytes) == (0, 0, 0)
    assert idle.created_at_utc >= before
    assert idle.accessed_at_utc.year == 1  # never

    with sb_client.get_queue_sender(name) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(3)])
        sender.schedule_messages(ServiceBusMessage("later"), utcnow() + datetime.timedelta(hours=1))
    with sb_client.get_queue_receiver(name, max_wait_time=5) as receiver:
        [m] = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        receiver.dead_letter_message(m, reason="test")

    rt = admin.get_queue_runtime_properties(name)
    assert rt.name == name
    assert rt.active_message_count == 2
    assert rt.dead_letter_message_count == 1
    assert rt.scheduled_message_count == 1
    assert rt.transfer_message_count == 0
    assert rt.transfer_dead_letter_message_count == 0
    assert rt.total_message_count == 4
    assert rt.size_in_bytes > 0
    assert rt.accessed_at_utc >= before
    assert rt.updated_at_utc >= rt.created_at_utc
    listed = {q.name: q for q in admin.list_queues_runtime_properties()}
    assert listed[name].active_message_count == 2
    admin.delete_queue(name)


def test_delete_removes_messages_and_amqp_use_fails(
    admin: ServiceBusAdministrationClient, sb_client: ServiceBusClient
) -> None:
    name = unique("adm-del")
    admin.create_queue(name)
    with sb_client.get_queue_sender(name) as sender:
        sender.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
        admin.delete_queue(name)
        # The open sender's link is refused with amqp:not-found.
        with pytest.raises(ServiceBusError):
            sender.send_messages(ServiceBusMessage("after delete"))
    with pytest.raises(MessagingEntityNotFoundError):
        with sb_client.get_queue_sender(name) as sender:
            sender.send_messages(ServiceBusMessage("new link"))
    with pytest.raises(MessagingEntityNotFoundError):
        with sb_client.get_queue_receiver(name, max_wait_time=2) as receiver:
            receiver.receive_messages(max_wait_time=2)
    # Created again, it starts empty.
    admin.create_queue(name)
    assert admin.get_queue_runtime_properties(name).total_message_count == 0
    with sb_client.get_queue_receiver(name, max_wait_time=2) as receiver:
        assert receiver.receive_messages(max_message_count=5, max_wait_time=2) == []
    admin.delete_queue(name)


def test_forward_to_set_through_the_api_forwards(
    admin: ServiceBusAdministrationClient, sb_client: ServiceBusClient
) -> None:
    dest = unique("adm-dest")
    src = unique("adm-src")
    admin.create_queue(dest)
    admin.create_queue(src, forward_to=dest)
    assert admin.get_queue(src).forward_to.endswith(f"/{dest}")
    with sb_client.get_queue_sender(src) as sender:
        sender.send_messages(ServiceBusMessage(b"forwarded"))
    with sb_client.get_queue_receiver(dest, max_wait_time=5) as receiver:
        [m] = receive_n(receiver, 1)
        assert body_bytes(m) == b"forwarded"
        receiver.complete_message(m)
    # A destination must exist.
    with pytest.raises(HttpResponseError) as err:
        admin.create_queue(unique("adm-src2"), forward_to=unique("adm-nowhere"))
    assert err.value.status_code == 400
    admin.delete_queue(src)
    admin.delete_queue(dest)


def test_listing_pages_through_more_than_one_page(admin: ServiceBusAdministrationClient) -> None:
    prefix = unique("adm-page")
    names = [f"{prefix}-{i}" for i in range(7)]
    for n in names:
        admin.create_queue(n)
    pages = list(admin.list_queues(max_page_size=2).by_page())
    assert len(pages) > 3
    seen = [q.name for page in pages for q in page]
    assert len(seen) == len(set(seen))  # no entity twice across pages
    assert set(names) <= set(seen)
    mine = [n for n in seen if n.startswith(prefix)]
    assert mine == sorted(names)  # ordered by name
    assert set(names) <= {q.name for q in admin.list_queues()}
    for n in names:
        admin.delete_queue(n)


def test_namespace_properties(admin: ServiceBusAdministrationClient) -> None:
    ns = admin.get_namespace_properties()
    assert ns.name == "keybus-tests"
    assert ns.messaging_sku == "Standard"
    assert ns.namespace_type == "Messaging"
    assert ns.created_at_utc <= utcnow()


# ------------------------------------------------------------------------------ topics


def test_topic_subscription_rule_lifecycle_and_routing(
    admin: ServiceBusAdministrationClient, sb_client: ServiceBusClient
) -> None:
    topic = unique("adm-t")
    t = admin.create_topic(
        topic,
        default_message_time_to_live=datetime.timedelta(hours=3),
        requires_duplicate_detection=True,
        duplicate_detection_history_time_window=datetime.timedelta(minutes=5),
        max_size_in_megabytes=2048,
        auto_delete_on_idle=datetime.timedelta(hours=6),
        user_metadata="topic meta",
        max_message_size_in_kilobytes=1024,
        support_ordering=True,
    )
    assert t.default_message_time_to_live == datetime.timedelta(hours=3)
    got = admin.get_topic(topic)
    assert got.requires_duplicate_detection is True
    assert got.duplicate_detection_history_time_window == datetime.timedelta(minutes=5)
    assert got.max_size_in_megabytes == 2048
    assert got.auto_delete_on_idle == datetime.timedelta(hours=6)
    assert got.user_metadata == "topic meta"
    assert got.max_message_size_in_kilobytes == 1024
    got.default_message_time_to_live = datetime.timedelta(hours=4)
    got.user_metadata = "topic meta 2"
    admin.update_topic(got)
    assert admin.get_topic(topic).default_message_time_to_live == datetime.timedelta(hours=4)
    assert admin.get_topic(topic).user_metadata == "topic meta 2"
    assert topic in {x.name for x in admin.list_topics()}

    s = admin.create_subscription(
        topic,
        "eu",
        lock_duration=datetime.timedelta(seconds=20),
        max_delivery_count=4,
        default_message_time_to_live=datetime.timedelta(hours=1),
        dead_lettering_on_message_expiration=True,
        dead_lettering_on_filter_evaluation_exceptions=True,
        auto_delete_on_idle=datetime.timedelta(hours=1),
        user_metadata="sub meta",
    )
    assert s.lock_duration == datetime.timedelta(seconds=20)
    sub = admin.get_subscription(topic, "eu")
    assert sub.max_delivery_count == 4
    assert sub.dead_lettering_on_filter_evaluation_exceptions is True
    assert sub.dead_lettering_on_message_expiration is True
    assert sub.user_metadata == "sub meta"
    sub.max_delivery_count = 6
    admin.update_subscription(topic, sub)
    assert admin.get_subscription(topic, "eu").max_delivery_count == 6
    admin.create_subscription(topic, "json")
    admin.create_subscription(topic, "all")
    assert [x.name for x in admin.list_subscriptions(topic)] == ["all", "eu", "json"]

    # Rules: the new subscription has $Default; replace it with a SQL rule with an action.
    assert [r.name for r in admin.list_rules(topic, "eu")] == ["$Default"]
    assert isinstance(admin.get_rule(topic, "eu", "$Default").filter, TrueRuleFilter)
    admin.create_rule(topic, "eu", "eu-only", filter=SqlRuleFilter("region = 'EU'"), action=SqlRuleAction("SET routed = 'eu'"))
    admin.delete_rule(topic, "eu", "$Default")
    rule = admin.get_rule(topic, "eu", "eu-only")
    assert isinstance(rule.filter, SqlRuleFilter)
    assert rule.filter.sql_expression == "region = 'EU'"
    assert rule.action.sql_expression == "SET routed = 'eu'"
    assert rule.created_at_utc is not None
    admin.create_rule(
        topic,
        "json",
        "by-type",
        filter=CorrelationRuleFilter(content_type="application/json", properties={"tenant": "t1", "n": 3, "flag": True}),
    )
    admin.delete_rule(topic, "json", "$Default")
    corr = admin.get_rule(topic, "json", "by-type").filter
    assert isinstance(corr, CorrelationRuleFilter)
    assert corr.content_type == "application/json"
    assert corr.properties == {"tenant": "t1", "n": 3, "flag": True}
    admin.create_rule(topic, "all", "never", filter=FalseRuleFilter())
    assert isinstance(admin.get_rule(topic, "all", "never").filter, FalseRuleFilter)
    assert [r.name for r in admin.list_rules(topic, "all")] == ["$Default", "never"]
    admin.delete_rule(topic, "all", "never")

    # Update a rule in place.
    rule.filter = SqlRuleFilter("region = 'EU' OR region = 'UK'")
    admin.update_rule(topic, "eu", rule)
    assert admin.get_rule(topic, "eu", "eu-only").filter.sql_expression == "region = 'EU' OR region = 'UK'"

    # Routing over AMQP follows the rules just made.
    with sb_client.get_topic_sender(topic) as sender:
        sender.send_messages(
            [
                ServiceBusMessage("eu", application_properties={"region": "EU"}, message_id="1"),
                ServiceBusMessage("us", application_properties={"region": "US"}, message_id="2"),
                ServiceBusMessage(
                    "json", content_type="application/json", application_properties={"tenant": "t1", "n": 3, "flag": True}, message_id="3"
                ),
                ServiceBusMessage("dup", application_properties={"region": "UK"}, message_id="1"),  # duplicate id
            ]
        )
    with sb_client.get_subscription_receiver(topic, "eu", max_wait_time=5) as r:
        [m] = receive_n(r, 1)
        assert body_bytes(m) == b"eu"
        assert m.application_properties[b"routed"] == b"eu"
        r.complete_message(m)
    with sb_client.get_subscription_receiver(topic, "json", max_wait_time=5) as r:
        [m] = receive_n(r, 1)
        assert body_bytes(m) == b"json"
        r.complete_message(m)
    all_rt = admin.get_subscription_runtime_properties(topic, "all")
    assert all_rt.active_message_count == 3
    assert all_rt.total_message_count == 3
    trt = admin.get_topic_runtime_properties(topic)
    assert trt.subscription_count == 3
    assert trt.size_in_bytes > 0
    assert {x.name: x.active_message_count for x in admin.list_subscriptions_runtime_properties(topic)} == {
        "all": 3,
        "eu": 0,
        "json": 0,
    }

    # Deleting a subscription drops its messages; the others keep theirs.
    admin.delete_subscription(topic, "all")
    with pytest.raises(ResourceNotFoundError):
        admin.get_subscription(topic, "all")
    with pytest.raises(MessagingEntityNotFoundError):
        with sb_client.get_subscription_receiver(topic, "all", max_wait_time=2) as r:
            r.receive_messages(max_wait_time=2)
    admin.create_subscription(topic, "all")
    assert admin.get_subscription_runtime_properties(topic, "all").total_message_count == 0
    assert admin.get_topic_runtime_properties(topic).subscription_count == 3

    admin.delete_topic(topic)
    with pytest.raises(ResourceNotFoundError):
        admin.get_topic(topic)
    with pytest.raises(ResourceNotFoundError):
        admin.get_subscription(topic, "eu")
    with pytest.raises(MessagingEntityNotFoundError):
        with sb_client.get_topic_sender(topic) as sender:
            sender.send_messages(ServiceBusMessage("gone"))


def test_subscription_receiver_is_detached_when_its_subscription_is_deleted(
    admin: ServiceBusAdministrationClient, sb_client: ServiceBusClient
) -> None:
    topic = unique("adm-detach")
    admin.create_topic(topic)
    admin.create_subscription(topic, "s")
    with sb_client.get_subscription_receiver(topic, "s", max_wait_time=10) as r:
        assert r.receive_messages(max_wait_time=1) == []
        admin.delete_subscription(topic, "s")
        with pytest.raises(ServiceBusError):
            r.receive_messages(max_wait_time=5)
    admin.delete_topic(topic)


@pytest.mark.slow
def test_entities_made_through_the_api_survive_a_kill9(broker_factory, tmp_path) -> None:
    config = broker_factory.write_toml({}, name="admin-durable.toml")
    b = broker_factory.start(
        config,
        data_dir=tmp_path / "data",
        name="keybus-admin-durable",
        extra_args=["--dev-tls", "--amqps-port", "0", "--https-port", "0"],
    )

    def client() -> ServiceBusAdministrationClient:
        return ServiceBusAdministrationClient.from_connection_string(
            b.admin_conn_str(), connection_verify=b.ca_file, retry_total=0
        )

    with client() as admin:
        admin.create_queue("dur-q", max_delivery_count=4, user_metadata="kept", lock_duration=datetime.timedelta(seconds=20))
        admin.create_topic("dur-t", default_message_time_to_live=datetime.timedelta(hours=2))
        admin.create_subscription("dur-t", "s", max_delivery_count=2)
        admin.create_rule("dur-t", "s", "r", filter=SqlRuleFilter("x = 1"))
        admin.create_queue("dur-gone")
        admin.delete_queue("dur-gone")
    with ServiceBusClient.from_connection_string(b.conn_str, retry_total=0) as sb:
        with sb.get_queue_sender("dur-q") as sender:
            sender.send_messages([ServiceBusMessage("one"), ServiceBusMessage("two")])
        with sb.get_topic_sender("dur-t") as sender:
            sender.send_messages(ServiceBusMessage("t", application_properties={"x": 1}))
    b.kill9()
    broker_factory.restart(b)
    with client() as admin:
        q = admin.get_queue("dur-q")
        assert (q.max_delivery_count, q.user_metadata, q.lock_duration) == (4, "kept", datetime.timedelta(seconds=20))
        assert admin.get_queue_runtime_properties("dur-q").active_message_count == 2
        assert admin.get_topic("dur-t").default_message_time_to_live == datetime.timedelta(hours=2)
        assert admin.get_subscription("dur-t", "s").max_delivery_count == 2
        assert [r.name for r in admin.list_rules("dur-t", "s")] == ["$Default", "r"]
        assert admin.get_subscription_runtime_properties("dur-t", "s").active_message_count == 1
        with pytest.raises(ResourceNotFoundError):
            admin.get_queue("dur-gone")
    with ServiceBusClient.from_connection_string(b.conn_str, retry_total=0) as sb:
        with sb.get_queue_receiver("dur-q", max_wait_time=5) as receiver:
            got = receive_n(receiver, 2)
            assert sorted(body_bytes(m) for m in got) == [b"one", b"two"]
            for m in got:
                receiver.complete_message(m)


# ------------------------------------------------------------------------------ auth and input


def test_listen_only_may_read_but_not_change(broker: kbutil.Broker, admin: ServiceBusAdministrationClient) -> None:
    name = unique("adm-auth")
    admin.create_queue(name)
    with ServiceBusAdministrationClient.from_connection_string(
        broker.admin_conn_str(kbutil.LISTEN_POLICY, kbutil.LISTEN_KEY), connection_verify=broker.ca_file, retry_total=0
    ) as listen:
        assert listen.get_queue(name).name == name
        assert name in {q.name for q in listen.list_queues()}
        assert listen.get_queue_runtime_properties(name).total_message_count == 0
        assert listen.get_namespace_properties().name == "keybus-tests"
        with pytest.raises(ClientAuthenticationError):
            listen.create_queue(unique("adm-auth-new"))
        with pytest.raises(ClientAuthenticationError):
            listen.delete_queue(name)
    with ServiceBusAdministrationClient.from_connection_string(
        broker.admin_conn_str(key="d3JvbmcK"), connection_verify=broker.ca_file, retry_total=0
    ) as wrong:
        with pytest.raises(ClientAuthenticationError):
            wrong.get_queue(name)
        with pytest.raises(ClientAuthenticationError):
            list(wrong.list_queues())
    admin.delete_queue(name)


def test_missing_or_foreign_tokens_are_401(raw: Raw) -> None:
    assert raw.request("GET", "$Resources/queues", Authorization="").status_code == 401
    r = requests.get(f"{raw.base}/$Resources/queues", verify=raw.verify, timeout=10)
    assert r.status_code == 401
    assert "<Error>" in r.text
    assert raw.request("GET", "$namespaceinfo", Authorization="Bearer abc").status_code == 401
    scoped = sas_token(f"{raw.base}/only-this")
    assert raw.request("GET", "other-queue", Authorization=scoped).status_code == 401


def test_invalid_properties_are_400_and_nothing_is_stored(admin: ServiceBusAdministrationClient) -> None:
    cases = [
        dict(lock_duration=datetime.timedelta(minutes=6)),
        dict(max_delivery_count=0),
        dict(default_message_time_to_live=datetime.timedelta(milliseconds=10)),
        dict(duplicate_detection_history_time_window=datetime.timedelta(seconds=5)),
        dict(auto_delete_on_idle=datetime.timedelta(minutes=1)),
        dict(max_message_size_in_kilobytes=200_000),
        dict(user_metadata="x" * 1025),
    ]
    for props in cases:
        name = unique("adm-bad")
        with pytest.raises(HttpResponseError) as err:
            admin.create_queue(name, **props)
        assert err.value.status_code == 400, props
        with pytest.raises(ResourceNotFoundError):
            admin.get_queue(name)
    for bad_name in ("bad@name", "bad*name", "has space", "a//b", "../escape", "$reserved"):
        with pytest.raises(HttpResponseError) as err:
            admin.create_queue(bad_name)
        assert err.value.status_code == 400, bad_name
    topic = unique("adm-bad-t")
    admin.create_topic(topic)
    admin.create_subscription(topic, "s")
    with pytest.raises(HttpResponseError) as err:
        admin.create_rule(topic, "s", "broken", filter=SqlRuleFilter("a = "))
    assert err.value.status_code == 400
    with pytest.raises(HttpResponseError) as err:
        admin.create_rule(topic, "s", "params", filter=SqlRuleFilter("a = @p", parameters={"@p": 1}))
    assert err.value.status_code == 400
    assert [r.name for r in admin.list_rules(topic, "s")] == ["$Default"]
    admin.delete_topic(topic)


def test_bad_xml_and_paths_are_refused(raw: Raw, admin: ServiceBusAdministrationClient) -> None:
    name = unique("adm-raw")
    bodies = [
        "not xml at all",
        "<entry xmlns='http://www.w3.org/2005/Atom'><content>",  # unterminated
        entry(f"<QueueDescription xmlns='{SB_NS}'><LockDuration>sixty</LockDuration></QueueDescription>"),
        entry(f"<QueueDescription xmlns='{SB_NS}'><MaxDeliveryCount>-3</MaxDeliveryCount></QueueDescription>"),
        entry(f"<QueueDescription xmlns='{SB_NS}'><Surprise>1</Surprise></QueueDescription>"),
        entry(f"<QueueDescription xmlns='{SB_NS}'><QueueDescription/></QueueDescription>"),
        entry(f"<TopicDescription xmlns='{SB_NS}'><LockDuration>PT1M</LockDuration></TopicDescription>"),
        entry("<QueueDescription/>"),  # wrong namespace
        entry(f"<RuleDescription xmlns='{SB_NS}'/>"),  # a rule description on a queue path
        '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><entry xmlns="http://www.w3.org/2005/Atom">&e;</entry>',
    ]
    for body in bodies:
        r = raw.request("PUT", name, body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert "<Detail>" in r.text
    with pytest.raises(ResourceNotFoundError):
        admin.get_queue(name)
    for path in ("..%2F..%2Fetc", "a%2F..%2Fb", "%2Fleading", "x%5Cy", "q%zz", "t/Subscriptions/..", "t/Subscriptions/s/Rules/%2E%2E"):
        r = raw.request("PUT", path, entry(f"<QueueDescription xmlns='{SB_NS}'/>"))
        assert r.status_code == 400, (path, r.status_code, r.text)
    assert raw.request("PUT", "$namespaceinfo", entry(f"<QueueDescription xmlns='{SB_NS}'/>")).status_code == 405
    assert raw.request("POST", name, "").status_code == 405
    # A well-formed raw request works.
    r = raw.request("PUT", name, entry(f"<QueueDescription xmlns='{SB_NS}'><MaxDeliveryCount>4</MaxDeliveryCount></QueueDescription>"))
    assert r.status_code == 201, r.text
    assert admin.get_queue(name).max_delivery_count == 4
    assert raw.request("DELETE", name).status_code == 200
    assert raw.request("DELETE", name).status_code == 404


# ------------------------------------------------------------------------------ async


async def test_async_admin_client(broker: kbutil.Broker) -> None:
    name = unique("adm-async")
    topic = unique("adm-async-t")
    async with AsyncAdminClient.from_connection_string(
        broker.admin_conn_str(), connection_verify=broker.ca_file, retry_total=0
    ) as admin:
        q = await admin.create_queue(name, max_delivery_count=2)
        assert q.max_delivery_count == 2
        got = await admin.get_queue(name)
        got.max_delivery_count = 8
        await admin.update_queue(got)
        assert (await admin.get_queue(name)).max_delivery_count == 8
        assert (await admin.get_queue_runtime_properties(name)).total_message_count == 0
        assert name in [x.name async for x in admin.list_queues()]
        with pytest.raises(ResourceExistsError):
            await admin.create_queue(name)
        await admin.create_topic(topic)
        await admin.create_subscription(topic, "s")
        await admin.create_rule(topic, "s", "r", filter=SqlRuleFilter("x > 1"))
        assert [r.name async for r in admin.list_rules(topic, "s")] == ["$Default", "r"]
        await admin.delete_topic(topic)
        await admin.delete_queue(name)
        with pytest.raises(ResourceNotFoundError):
            await admin.get_queue(name)
        assert (await admin.get_namespace_properties()).name == "keybus-tests"
