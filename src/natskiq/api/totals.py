"""Sizes and counts: each queue's sizes and latency, the stats counters,
and the totals across the cluster.

Receives an open :class:`~natskiq.enqueue.client.Client` and hands on
values: :class:`QueueInfo` from a queue's stream (its scheduled and retry
subjects) and its consumers (ready and running jobs), and :class:`Stats`
from every queue, the failed stream and the stats stream. The counters
there are JetStream message counters (``Nats-Incr``), kept by the server
across restarts and added up from every node; :func:`counter` reads one,
:func:`incr` adds to one (the failed set's removals, counted by
:mod:`natskiq.api.changes`). Reading changes nothing.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import attrs
from nats.js.errors import Error as JSError
from nats.js.errors import NotFoundError

from natskiq.api.entries import Filter
from natskiq.api.listing import find_in, queue_names
from natskiq.enqueue.client import Client
from natskiq.errors import NotFound
from natskiq.topology import check_name, partitions_of, pause_of


def _latency(value: float) -> float:
    """``value`` if it is a finite, positive age, else 0."""
    return value if math.isfinite(value) and value > 0 else 0.0


@attrs.frozen(kw_only=True)
class QueueInfo:
    """One queue: ready jobs, jobs running (delivered, not yet acked),
    scheduled and retry counts, the age of the oldest ready job
    (seconds, finite; 0 for an empty queue), its partitions, and whether
    it is paused (see :func:`natskiq.api.pause`) and until when
    (``paused_until``, epoch seconds by the server's clock; None for a
    pause until resumed, or no pause). A queue counts as paused while any
    of its partitions is, until the last of their ends."""

    name: str
    ready: int
    running: int
    scheduled: int
    retries: int
    latency: float = attrs.field(converter=_latency)
    partitions: int = 1
    paused: bool = False
    paused_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field, as a JSON-ready dict."""
        return attrs.asdict(self)


async def queues(client: Client) -> list[QueueInfo]:
    """Every queue in the client's namespace, by name."""
    return [await queue_info(client, queue) for queue in await queue_names(client)]


async def queue_info(client: Client, queue: str) -> QueueInfo:
    """Sizes and latency of one queue.

    Raises:
        NotFound: no such queue.
    """
    names = client.names
    stream = names.queue_stream(check_name("queue", queue))
    try:
        info = await client.js.stream_info(stream, subjects_filter=names.schedule_filter(queue))
    except NotFoundError:
        raise NotFound(f"no queue named {queue!r} in namespace {names.namespace!r}") from None
    partitions = partitions_of(names, queue, info.config.subjects)
    consumers = []
    for shard in range(partitions):
        try:
            consumers.append(await client.js.consumer_info(stream, names.consumer(shard)))
        except NotFoundError:
            continue  # a worker starting up has made the stream, not yet this consumer: none ready or running
    subjects = info.state.subjects or {}
    scheduled = sum(n for s, n in subjects.items() if names.kind_of(queue, s) == "scheduled")
    retries = sum(n for s, n in subjects.items() if names.kind_of(queue, s) == "retry")
    latency = 0.0
    oldest = await find_in(client, "queued", [queue], Filter(), 1)
    since = oldest[0].enqueued_at if oldest else None
    if since is not None:
        latency = max(0.0, time.time() - since)
    pauses = [p for p in map(pause_of, consumers) if p.paused]
    ends = [p.until for p in pauses if p.until is not None]
    until = max(ends) if pauses and len(ends) == len(pauses) else None  # None: one has no end
    return QueueInfo(
        name=queue, ready=sum(c.num_pending or 0 for c in consumers),
        running=sum(c.num_ack_pending or 0 for c in consumers),
        scheduled=scheduled, retries=retries, latency=latency, partitions=partitions,
        paused=bool(pauses), paused_until=until,
    )  # fmt: skip


async def counter(client: Client, name: str, day: str | None = None) -> int:
    """The cluster-wide value of a stats counter (0 if never counted)."""
    try:
        msg = await client.js.get_msg(
            client.names.stats_stream, subject=client.names.stats_subject(name, day)
        )
    except NotFoundError:
        return 0
    try:
        return int(json.loads(msg.data or b"{}").get("val", 0))
    except (ValueError, TypeError, OverflowError, AttributeError):  # not {"val": <a number>}
        return 0


async def incr(client: Client, name: str, by: int) -> None:
    """Add ``by`` to a stats counter (nothing if no worker has made the stats stream yet)."""
    try:
        await client.js.publish(client.names.stats_subject(name), b"", headers={"Nats-Incr": f"+{by}"})
    except (NotFoundError, JSError):
        pass  # no stats stream yet: no worker has started in this namespace


@attrs.frozen(kw_only=True)
class Stats:
    """Cluster-wide totals, kept in JetStream (they survive restarts).

    ``processed`` counts every finished run, ``failed`` every run that
    raised (as Sidekiq counts them); ``dead`` is the failed set's size now
    and ``trimmed`` how many failed jobs its limits have pushed out;
    ``enqueued``, ``scheduled`` and ``retries`` add up every queue's ready,
    scheduled and retry counts (see :class:`QueueInfo`).
    """

    processed: int
    failed: int
    dead: int
    trimmed: int
    enqueued: int
    scheduled: int
    retries: int

    def to_dict(self) -> dict[str, Any]:
        """Every field, as a JSON-ready dict."""
        return attrs.asdict(self)


async def failed_set_size(client: Client) -> tuple[int, int]:
    """``(dead, trimmed)``: failed jobs kept now, and how many its limits pushed out.

    Everything the failed stream ever stored is kept, deleted by us (replay,
    delete: counted) or trimmed by its limits, so trimmed is the rest.
    """
    try:
        info = await client.js.stream_info(client.names.failed_stream)
    except NotFoundError:
        return 0, 0
    removed = await counter(client, "failed_removed")
    return info.state.messages, max(0, info.state.last_seq - info.state.messages - removed)


async def stats(client: Client) -> Stats:
    """Totals across the cluster and every queue."""
    all_queues = await queues(client)
    dead, trimmed = await failed_set_size(client)
    return Stats(
        processed=await counter(client, "processed"),
        failed=await counter(client, "failed"),
        dead=dead,
        trimmed=trimmed,
        enqueued=sum(q.ready for q in all_queues),
        scheduled=sum(q.scheduled for q in all_queues),
        retries=sum(q.retries for q in all_queues),
    )
