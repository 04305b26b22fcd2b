"""topology.kv: the compare-and-set write and delete of a KV key, against a real server."""

from __future__ import annotations

import pytest
from nats.js import api as jsapi
from nats.js.errors import APIError

import natskiq
from natskiq import topology
from natskiq.topology import Names, delete_if, is_tombstone, put_if, ttl_header


async def key(client: natskiq.Client, name: str = "k") -> tuple[str, str]:
    """A fresh bucket of the test's namespace: (its stream, the subject of key ``name``)."""
    bucket = client.names.lease_bucket
    await topology.ensure_bucket(client.js, bucket)
    return Names.kv_stream(bucket), Names.kv_subject(bucket, name)


async def test_put_if_creates_once(client: natskiq.Client) -> None:
    """Expected 0 creates the key; a second create is refused and leaves the first value."""
    stream, subject = await key(client)
    first = await put_if(client.js, subject, b"one", expected=0)
    assert first is not None and first.seq > 0
    assert await put_if(client.js, subject, b"two", expected=0) is None
    stored = await client.js.get_msg(stream, subject=subject)
    assert (stored.data, stored.seq) == (b"one", first.seq)


async def test_put_if_on_the_revision_moves_it_on(client: natskiq.Client) -> None:
    """The right revision stores the value at the next revision; the old one is then stale."""
    stream, subject = await key(client)
    first = await put_if(client.js, subject, b"one", expected=0)
    assert first is not None
    second = await put_if(client.js, subject, b"two", expected=first.seq)
    assert second is not None and second.seq == first.seq + 1
    assert await put_if(client.js, subject, b"three", expected=first.seq) is None
    stored = await client.js.get_msg(stream, subject=subject)
    assert (stored.data, stored.seq) == (b"two", second.seq)


async def test_put_if_sends_the_ttl_and_msg_id(client: natskiq.Client) -> None:
    """The headers go out as given; on the key's revision, a msg id seen before is acked
    as a duplicate of the write it names and stores nothing (how a batch's record counts
    a redelivered job once)."""
    stream, subject = await key(client)
    ack = await put_if(client.js, subject, b"one", expected=0, ttl=ttl_header(60), msg_id="m1")
    assert ack is not None and not ack.duplicate
    stored = await client.js.get_msg(stream, subject=subject)
    assert stored.headers is not None
    assert stored.headers["Nats-TTL"] == "60000ms"
    assert stored.headers["Nats-Msg-Id"] == "m1"
    assert stored.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
    assert await put_if(client.js, subject, b"one", expected=0, msg_id="m1") is None
    again = await put_if(client.js, subject, b"two", expected=ack.seq, msg_id="m1")
    assert again is not None and again.duplicate and again.seq == ack.seq
    assert (await client.js.get_msg(stream, subject=subject)).data == b"one"


async def test_delete_if(client: natskiq.Client) -> None:
    """A stale revision deletes nothing; the current one leaves a tombstone with its TTL."""
    stream, subject = await key(client)
    first = await put_if(client.js, subject, b"one", expected=0)
    assert first is not None
    second = await put_if(client.js, subject, b"two", expected=first.seq)
    assert second is not None
    assert await delete_if(client.js, subject, expected=first.seq, ttl=ttl_header(1)) is None
    stored = await client.js.get_msg(stream, subject=subject)
    assert stored.data == b"two" and not is_tombstone(stored.headers)
    deleted = await delete_if(client.js, subject, expected=second.seq, ttl=ttl_header(1))
    assert deleted is not None and deleted.seq == second.seq + 1
    marker = await client.js.get_msg(stream, subject=subject)
    assert is_tombstone(marker.headers) and not marker.data
    assert marker.headers is not None
    assert (marker.headers["KV-Operation"], marker.headers["Nats-TTL"]) == ("DEL", "1000ms")
    # A deleted key is created again on the tombstone's revision, not on 0.
    assert await put_if(client.js, subject, b"three", expected=0) is None
    assert await put_if(client.js, subject, b"three", expected=deleted.seq) is not None


async def test_other_errors_propagate(client: natskiq.Client) -> None:
    """Only the failed compare-and-set is None: a TTL on a stream without per-message
    TTLs raises the server's error."""
    subject = f"{client.names.namespace}.kvtest.k"
    config = jsapi.StreamConfig(name=f"{client.names.namespace}_KVTEST", subjects=[subject])
    await client.js.add_stream(config)
    with pytest.raises(APIError) as raised:
        await put_if(client.js, subject, b"one", expected=0, ttl=ttl_header(60))
    assert raised.value.err_code != topology.WRONG_LAST_SEQUENCE


def test_ttl_header() -> None:
    """Milliseconds rounded up and at least a second; or whole seconds, rounded."""
    assert ttl_header(5) == "5000ms"
    assert ttl_header(1.0001) == "1001ms"
    assert ttl_header(0.2) == "1000ms"
    assert ttl_header(30 * 86400.0, unit="s") == "2592000s"
    assert ttl_header(1.4, unit="s") == "1s"


def test_is_tombstone() -> None:
    """A delete, purge or expiry marker is a tombstone; a value, or no headers, is not."""
    assert is_tombstone({"KV-Operation": "DEL"})
    assert is_tombstone({"Nats-Marker-Reason": "MaxAge"})
    assert not is_tombstone({"Nats-TTL": "1000ms"})
    assert not is_tombstone({})
    assert not is_tombstone(None)
