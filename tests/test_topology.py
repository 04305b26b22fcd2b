"""Names, and idempotent creation of streams, consumers and buckets."""

from __future__ import annotations

import re

import pytest
from nats.js import api as jsapi

import natskiq
from natskiq import topology
from natskiq.topology import Names

# -- names --------------------------------------------------------------


def test_default_namespace_names() -> None:
    """The default namespace gives DESIGN.md's natskiq./NATSKIQ_/natskiq_ names."""
    names = Names()
    assert names.namespace == "natskiq"
    assert names.queue_stream("emails") == "NATSKIQ_Q_emails"
    assert names.queue_subject("emails") == "natskiq.queue.emails"
    assert names.queue_subjects("emails") == [
        "natskiq.queue.emails",
        "natskiq.scheduled.emails.*",
        "natskiq.retry.emails.*",
    ]
    assert names.scheduled_subject("emails", "abc") == "natskiq.scheduled.emails.abc"
    assert names.retry_subject("emails", "abc") == "natskiq.retry.emails.abc"
    assert names.failed_stream == "NATSKIQ_FAILED"
    assert names.failed_subject("emails") == "natskiq.failed.emails"
    assert names.failed_subjects == "natskiq.failed.*"
    assert names.lease_bucket == "natskiq_leases"
    assert names.nodes_bucket == "natskiq_nodes"
    assert names.lease_subject() == "$KV.natskiq_leases.aggregator"
    assert names.demand_subject == "natskiq.ctl.demand"
    assert names.master_subject == "natskiq.ctl.master"
    assert names.dispatch_subject("node-1") == "natskiq.ctl.dispatch.node-1"
    assert names.command_subject("node-1") == "natskiq.ctl.node.node-1"
    assert names.pull_subject("emails") == "$JS.API.CONSUMER.MSG.NEXT.NATSKIQ_Q_emails.aggregator"


def test_custom_namespace_names() -> None:
    """A custom namespace replaces every prefix: subjects as is, streams upper case, buckets as is."""
    names = Names("shop_2")
    assert names.queue_stream("emails") == "SHOP_2_Q_emails"
    assert names.queue_subjects("emails") == [
        "shop_2.queue.emails",
        "shop_2.scheduled.emails.*",
        "shop_2.retry.emails.*",
    ]
    assert names.failed_stream == "SHOP_2_FAILED"
    assert names.failed_subjects == "shop_2.failed.*"
    assert names.lease_bucket == "shop_2_leases"
    assert names.nodes_bucket == "shop_2_nodes"
    assert names.lease_subject() == "$KV.shop_2_leases.aggregator"
    assert names.demand_subject == "shop_2.ctl.demand"
    assert names.dispatch_subject("n1") == "shop_2.ctl.dispatch.n1"


def test_kind_of_a_subject_in_a_queue_stream() -> None:
    """Each subject a queue's stream (or the failed stream) holds is told apart, every
    partition's ready subject included; another queue's or a malformed one is None."""
    names = Names("shop")
    kinds = {
        "shop.queue.mail": "queued",
        "shop.queue.mail.2": "queued",
        "shop.scheduled.mail.abc": "scheduled",
        "shop.retry.mail.abc": "retry",
        "shop.failed.mail": "failed",
        "shop.queue.mailer": None,
        "shop.queue.mail.x": None,
        "shop.retry.mailer.abc": None,
        "shop.retry.mail": None,
        "shop.retry.mail.a.b": None,
        "other.queue.mail": None,
    }
    assert {subject: names.kind_of("mail", subject) for subject in kinds} == kinds


def test_namespaces_do_not_overlap() -> None:
    """Two namespaces never share a stream, subject or bucket name."""
    a, b = Names("app1"), Names("app2")
    assert a.queue_stream("q") != b.queue_stream("q")
    assert not set(a.queue_subjects("q")) & set(b.queue_subjects("q"))
    assert a.failed_stream != b.failed_stream
    assert a.lease_bucket != b.lease_bucket


@pytest.mark.parametrize("namespace", ["", "a.b", "a*", ">", "a b", "x" * 33, "ns\n", "$KV"])
def test_invalid_namespaces_are_refused(namespace: str) -> None:
    """A namespace that is empty, too long or could inject subject syntax (even "\\n") raises ConfigError."""
    with pytest.raises(natskiq.ConfigError, match="invalid namespace"):
        Names(namespace)


@pytest.mark.parametrize("queue", ["", "a.b", "a*", "a>", ">", "a b", "x" * 65, "q\n", "q\r\n"])
def test_invalid_queue_names_are_refused(queue: str) -> None:
    """Every name builder refuses a queue name that could inject subject syntax (even a trailing newline)."""
    names = Names()
    for build in (names.queue_stream, names.queue_subject, names.queue_subjects, names.failed_subject):
        with pytest.raises(natskiq.ConfigError, match="invalid queue name"):
            build(queue)


@pytest.mark.parametrize("jid", ["a.b", "*", ">", ""])
def test_invalid_jids_are_refused_in_subjects(jid: str) -> None:
    """A jid that could inject subject syntax is refused by scheduled/retry subjects."""
    with pytest.raises(natskiq.ConfigError, match="invalid jid name"):
        Names().retry_subject("q", jid)
    with pytest.raises(natskiq.ConfigError, match="invalid jid name"):
        Names().scheduled_subject("q", jid)


def test_check_name_accepts_the_documented_alphabet() -> None:
    """Letters, digits, '_' and '-' up to 64 characters are accepted."""
    name = "Az09_-" + "x" * 58
    assert topology.check_name("queue", name) == name


# -- ensure_queue -------------------------------------------------------


async def test_ensure_queue_creates_stream_and_consumer(client: natskiq.Client) -> None:
    """ensure_queue creates a work-queue stream that allows schedules, and the aggregator consumer."""
    js, names = client.js, client.names
    await topology.ensure_queue(js, names, "emails", ack_wait=12)
    info = await js.stream_info(names.queue_stream("emails"))
    assert sorted(info.config.subjects or []) == sorted(names.queue_subjects("emails"))
    assert info.config.retention == jsapi.RetentionPolicy.WORK_QUEUE
    assert info.config.storage == jsapi.StorageType.FILE
    assert info.config.allow_msg_schedules is True
    assert info.config.num_replicas == 1
    consumer = await js.consumer_info(names.queue_stream("emails"), topology.CONSUMER)
    assert consumer.config.filter_subject == names.queue_subject("emails")
    assert consumer.config.ack_policy == jsapi.AckPolicy.EXPLICIT
    assert consumer.config.ack_wait == 12


async def test_ensure_queue_is_idempotent(client: natskiq.Client) -> None:
    """Calling ensure_queue twice leaves one stream and one consumer, unchanged."""
    js, names = client.js, client.names
    await topology.ensure_queue(js, names, "twice")
    first = await js.stream_info(names.queue_stream("twice"))
    await topology.ensure_queue(js, names, "twice")
    second = await js.stream_info(names.queue_stream("twice"))
    assert second.config == first.config
    assert second.state.consumer_count == 1


async def test_ensure_queue_accepts_stream_made_with_server_defaults(client: natskiq.Client) -> None:
    """A stream created beforehand with natskiq's essentials and server defaults elsewhere is accepted."""
    js, names = client.js, client.names
    await js.add_stream(
        jsapi.StreamConfig(
            name=names.queue_stream("premade"),
            subjects=list(reversed(names.queue_subjects("premade"))),
            retention=jsapi.RetentionPolicy.WORK_QUEUE,
            allow_msg_schedules=True,
        )
    )
    await topology.ensure_queue(js, names, "premade")
    await js.consumer_info(names.queue_stream("premade"), topology.CONSUMER)


async def test_ensure_queue_keeps_or_updates_the_consumer_ack_wait(client: natskiq.Client) -> None:
    """Without an ack wait an existing consumer is kept as it is; a worker's given ack wait is applied."""
    js, names = client.js, client.names
    await topology.ensure_queue(js, names, "keep", ack_wait=7)
    await topology.ensure_queue(js, names, "keep")
    consumer = await js.consumer_info(names.queue_stream("keep"), topology.CONSUMER)
    assert consumer.config.ack_wait == 7
    await topology.ensure_queue(js, names, "keep", ack_wait=30)
    consumer = await js.consumer_info(names.queue_stream("keep"), topology.CONSUMER)
    assert consumer.config.ack_wait == 30


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"retention": jsapi.RetentionPolicy.LIMITS}, "retention"),
        ({"subjects": "only_queue"}, "subjects"),
        ({"allow_msg_schedules": None}, "allow_msg_schedules"),
        ({"storage": jsapi.StorageType.MEMORY}, "storage"),
    ],
)
async def test_ensure_queue_refuses_a_conflicting_stream(
    client: natskiq.Client, changes: dict[str, object], field: str
) -> None:
    """An existing stream that differs in an essential field raises ConfigError naming that field."""
    js, names = client.js, client.names
    config = {
        "name": names.queue_stream("clash"),
        "subjects": names.queue_subjects("clash"),
        "retention": jsapi.RetentionPolicy.WORK_QUEUE,
        "allow_msg_schedules": True,
    }
    if changes.get("subjects") == "only_queue":
        changes = {"subjects": [names.queue_subject("clash")]}
    config.update(changes)
    await js.add_stream(jsapi.StreamConfig(**config))  # type: ignore[arg-type]
    with pytest.raises(natskiq.ConfigError, match=re.escape(names.queue_stream("clash"))) as info:
        await topology.ensure_queue(js, names, "clash")
    assert f"{field}=" in str(info.value)
    assert "conflicting" in str(info.value)


# -- ensure_failed ------------------------------------------------------


async def test_ensure_failed_creates_the_dead_set(client: natskiq.Client) -> None:
    """ensure_failed creates a limits stream on <ns>.failed.* with Sidekiq's dead-set bounds."""
    js, names = client.js, client.names
    await topology.ensure_failed(js, names)
    info = await js.stream_info(names.failed_stream)
    assert info.config.subjects == [names.failed_subjects]
    assert info.config.retention == jsapi.RetentionPolicy.LIMITS
    assert info.config.max_msgs == topology.FAILED_MAX_MSGS
    assert info.config.max_age == topology.FAILED_MAX_AGE


async def test_ensure_failed_is_idempotent(client: natskiq.Client) -> None:
    """Calling ensure_failed twice succeeds and keeps the stream's configuration."""
    js, names = client.js, client.names
    await topology.ensure_failed(js, names)
    first = await js.stream_info(names.failed_stream)
    await topology.ensure_failed(js, names)
    assert (await js.stream_info(names.failed_stream)).config == first.config


async def test_ensure_failed_refuses_a_work_queue_stream(client: natskiq.Client) -> None:
    """An existing failed stream with work-queue retention raises ConfigError naming retention."""
    js, names = client.js, client.names
    await js.add_stream(
        jsapi.StreamConfig(
            name=names.failed_stream,
            subjects=[names.failed_subjects],
            retention=jsapi.RetentionPolicy.WORK_QUEUE,
        )
    )
    with pytest.raises(natskiq.ConfigError, match="retention="):
        await topology.ensure_failed(js, names)


# -- ensure_bucket ------------------------------------------------------


async def test_ensure_bucket_creates_a_bucket_with_ttls(client: natskiq.Client) -> None:
    """ensure_bucket creates a KV bucket that allows per-key TTLs and keeps limit markers."""
    js, names = client.js, client.names
    kv = await topology.ensure_bucket(js, names.lease_bucket)
    await kv.put("k", b"v")
    assert (await kv.get("k")).value == b"v"
    info = await js.stream_info(f"KV_{names.lease_bucket}")
    assert info.config.allow_msg_ttl is True
    assert info.config.subject_delete_marker_ttl == 5.0


async def test_ensure_bucket_is_idempotent(client: natskiq.Client) -> None:
    """A second ensure_bucket binds to the existing bucket and keeps its keys."""
    js, names = client.js, client.names
    kv = await topology.ensure_bucket(js, names.nodes_bucket)
    await kv.put("node-a", b"1")
    again = await topology.ensure_bucket(js, names.nodes_bucket)
    assert (await again.get("node-a")).value == b"1"


async def test_ensure_bucket_refuses_a_bucket_without_ttls(client: natskiq.Client) -> None:
    """A bucket that exists without per-key TTL support raises ConfigError."""
    js, names = client.js, client.names
    bucket = names.lease_bucket
    # What an older client (or `nats kv add` without --ttl support) would have made.
    await js.add_stream(
        jsapi.StreamConfig(
            name=f"KV_{bucket}",
            subjects=[f"$KV.{bucket}.>"],
            max_msgs_per_subject=1,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=True,
            discard=jsapi.DiscardPolicy.NEW,
        )
    )
    with pytest.raises(natskiq.ConfigError, match=rf"{bucket}.*allow_msg_ttl"):
        await topology.ensure_bucket(js, bucket)
