"""Stage 2, the stream: a queue's pause, as JetStream holds it.

A queue is paused when the durable consumers its masters pull from (one per
partition, see :meth:`~natskiq.topology.names.Names.consumer`) are paused
with JetStream's consumer pause (nats-server 2.11 and later): the server
delivers nothing from a paused consumer, keeps the pause in the consumer's
replicated configuration (``pause_until``), so it outlives every worker and
a restart of the servers, and ends it by itself at ``pause_until``, by its
own clock. A pause without an end is one until :data:`INDEFINITE`.

This module receives a JetStream context and a consumer's info, and hands
on the pause it holds (:func:`pause_of`, :func:`pause_until_of`) or
changes it (:func:`pause_consumer`, :func:`resume_consumer`). Partition
0's consumer is the queue's record of the pause:
:func:`~natskiq.topology.ensure.ensure_consumer` gives a partition's
consumer it creates the same pause, and never ends one when it updates a
consumer's settings. No I/O but the one request each coroutine names.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
from nats.js import JetStreamContext
from nats.js import api as jsapi

from natskiq.topology.names import Names

INDEFINITE = datetime(9999, 1, 1, tzinfo=UTC)
"""The ``pause_until`` of a pause without an end (JetStream's pause always has one)."""
_INDEFINITE_STAMP = INDEFINITE.strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen(kw_only=True)
class Pause:
    """One consumer's pause, as the server reported it.

    ``until`` is when the server ends it (epoch seconds, by the server's
    clock), None for a pause without an end or no pause; ``remaining`` is
    the server's own count of the seconds left (``inf`` without an end, 0
    when not paused), the one to time a wake-up by, whatever the clocks say.
    """

    paused: bool = False
    until: float | None = None
    remaining: float = 0.0


NOT_PAUSED = Pause()


def _epoch(stamp: str | None) -> float | None:
    """An RFC 3339 time from the server as epoch seconds; None if it is none or the indefinite one."""
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None or moment >= INDEFINITE:
        return None
    return moment.timestamp()


def pause_of(info: jsapi.ConsumerInfo) -> Pause:
    """The pause a consumer's info reports (:data:`NOT_PAUSED` if none)."""
    if not info.paused:
        return NOT_PAUSED
    until = _epoch(info.config.pause_until)
    # The server reports the time left in nanoseconds (typed as a string by
    # nats-py, sent as a number), saturated at the largest int64 for a far end.
    try:
        remaining = max(0.0, float(info.pause_remaining or 0) / 1e9)
    except (TypeError, ValueError):
        remaining = 0.0
    return Pause(paused=True, until=until, remaining=float("inf") if until is None else remaining)


def pause_until_of(info: jsapi.ConsumerInfo) -> str | None:
    """The ``pause_until`` to give a consumer made or updated after ``info``'s: its own while paused.

    The server refuses a ``pause_until`` in the past, and a consumer that
    was resumed keeps one in its configuration: it is passed on only while
    the pause lasts.
    """
    return info.config.pause_until if info.paused else None


def stamp(until: float | None) -> str:
    """``until`` (epoch seconds, None for no end) as the RFC 3339 UTC time JetStream's pause takes."""
    if until is None:
        return _INDEFINITE_STAMP
    return datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def pause_consumer(
    js: JetStreamContext, names: Names, queue: str, shard: int, until: float | None
) -> None:
    """Pause the consumer of the queue's partition ``shard`` until ``until`` (None: no end).

    Raises:
        NotFoundError: the consumer (or the queue's stream) does not exist.
    """
    await js.pause_consumer(names.queue_stream(queue), names.consumer(shard), stamp(until))


async def resume_consumer(js: JetStreamContext, names: Names, queue: str, shard: int) -> None:
    """End the pause of the consumer of the queue's partition ``shard`` now (nothing if not paused).

    Raises:
        NotFoundError: the consumer (or the queue's stream) does not exist.
    """
    await js.resume_consumer(names.queue_stream(queue), names.consumer(shard))
