"""Stage 2, the stream: the compare-and-set of a KV key, as natskiq writes it.

A write to a key is a publish to its subject with
``Nats-Expected-Last-Subject-Sequence``: the server stores it only if the
key's last revision is still the one given (0: the key has no message
yet), and refuses it with :data:`WRONG_LAST_SEQUENCE` otherwise.
:func:`put_if` stores a value that way, :func:`delete_if` a delete marker;
both return the server's ack, or None when the compare-and-set failed, and
let every other error through. :func:`ttl_header` formats a per-message
TTL (``Nats-TTL``) and :func:`is_tombstone` tells a key's delete, purge or
expiry marker from a value. No I/O but the one publish each coroutine names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError

WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF: the compare-and-set failed
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
TOMBSTONE_HEADERS = ("KV-Operation", "Nats-Marker-Reason")
"""A key whose last message carries one of these is free: deleted, purged or expired."""


def ttl_header(seconds: float, *, unit: Literal["ms", "s"] = "ms") -> str:
    """The ``Nats-TTL`` value for ``seconds``.

    In milliseconds (the default) it is rounded up and at least a second, so
    a key never expires sooner than asked. In whole seconds (``unit="s"``,
    for TTLs of hours and days) it is rounded to the nearest second.
    """
    if unit == "s":
        return f"{round(seconds)}s"
    return f"{max(1000, math.ceil(seconds * 1000))}ms"


def is_tombstone(headers: Mapping[str, str] | None) -> bool:
    """Whether a key's message with these headers is a delete, purge or expiry marker."""
    return headers is not None and any(name in headers for name in TOMBSTONE_HEADERS)


async def put_if(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    expected: int,
    ttl: str | None = None,
    msg_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> jsapi.PubAck | None:
    """Publish ``data`` on a key's ``subject`` only if its last revision is still
    ``expected`` (0: no message yet).

    Args:
        js: the JetStream context.
        subject: the key's subject (``$KV.<bucket>.<key>``).
        data: the value.
        expected: the revision the key must be at.
        ttl: the ``Nats-TTL`` value (see :func:`ttl_header`), if any.
        msg_id: the ``Nats-Msg-Id``, if any: on the key's revision, an id the
            server has seen already (in the stream's duplicate window) stores
            nothing and is acked as a duplicate (``PubAck.duplicate``) of the
            write it names.
        headers: more headers, sent before these.
        timeout: seconds to wait for the ack (the connection's default if None).

    Returns:
        The server's ack (the new revision is its ``seq``), or None when the
        key's revision was not ``expected``.

    Raises:
        nats.errors.Error, nats.js.errors.Error: any other failure, unchanged.
    """
    sent = {**(headers or {}), EXPECTED_LAST_SEQUENCE: str(expected)}
    if ttl is not None:
        sent["Nats-TTL"] = ttl
    if msg_id is not None:
        sent["Nats-Msg-Id"] = msg_id
    try:
        return await js.publish(subject, data, timeout=timeout, headers=sent)
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return None
        raise


async def delete_if(
    js: JetStreamContext,
    subject: str,
    *,
    expected: int,
    ttl: str | None = None,
    timeout: float | None = None,
) -> jsapi.PubAck | None:
    """Delete a key (a ``KV-Operation: DEL`` marker) only if its last revision is
    still ``expected``; as :func:`put_if`, the server's ack or None.

    ``ttl``, the marker's own ``Nats-TTL``, lets the marker expire in turn,
    so a deleted key leaves nothing behind in its bucket.
    """
    return await put_if(
        js, subject, b"", expected=expected, ttl=ttl, headers={"KV-Operation": "DEL"}, timeout=timeout
    )
