"""Pausing queues: a paused queue dispatches nothing until it is resumed, or its pause ends.

Receives an open :class:`~natskiq.enqueue.client.Client` and a queue.
:func:`pause` pauses, and :func:`resume` resumes, the JetStream consumer of
every partition of the queue (see :mod:`natskiq.topology.pausing`), then
announces the change on ``<ns>.ctl.pause`` so that the masters act on it
at once: a master hands back the queue's jobs it holds and pulls none until
the pause ends. The pause is the server's state: it outlives every worker,
and the server itself ends a pause given an end, by its own clock.
Enqueueing into a paused queue goes on (the jobs wait), and jobs already
running finish. :class:`~natskiq.api.totals.QueueInfo` says whether a queue
is paused, and until when.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta

from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from nats.js.errors import NotFoundError

from natskiq.enqueue.client import Client
from natskiq.errors import ConfigError, NotFound
from natskiq.topology import (
    INDEFINITE,
    check_name,
    ensure_consumer,
    pause_consumer,
    read_partitions,
    resume_consumer,
)

log = logging.getLogger(__name__)


def _pause_end(until: datetime | timedelta | None) -> float | None:
    """When a pause given ``until`` (an aware datetime, a timedelta from now, or None
    for no end) ends, as epoch seconds (None: no end); ConfigError for anything else,
    or a time not in the future."""
    now = time.time()
    if until is None:
        return None
    if isinstance(until, timedelta):
        end = now + until.total_seconds()
    elif isinstance(until, datetime):
        if until.tzinfo is None or until.utcoffset() is None:
            raise ConfigError(f"pause until {until.isoformat()}: give the time zone (an aware datetime)")
        end = until.timestamp()
    else:
        raise ConfigError(f"pause until {until!r}: give a datetime, a timedelta or None")
    if end <= now:
        raise ConfigError(f"pause until {_iso(end)}: that is not in the future")
    return None if end >= INDEFINITE.timestamp() else end


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


async def pause(client: Client, queue: str, until: datetime | timedelta | None = None) -> float | None:
    """Pause a queue: none of its jobs is dispatched until :func:`resume`, or until ``until``.

    Every partition of the queue is paused (and one added later starts
    paused). Running masters learn of it at once and hand back the jobs of
    the queue they hold; jobs already running finish. Pausing a paused
    queue sets its new end.

    Args:
        client: an open client.
        queue: the queue's name.
        until: when the pause ends by itself: an aware datetime, a timedelta
            from now, or None (the default) for a pause that lasts until
            :func:`resume`.

    Returns:
        When the pause ends (epoch seconds), None if it lasts until resumed.

    Raises:
        ConfigError: a bad queue name or ``until``, or a server that cannot
            pause consumers (nats-server 2.11 or later can).
        NotFound: no such queue.
    """
    end = _pause_end(until)
    check_name("queue", queue)
    js, names = client.js, client.names
    try:
        partitions, done = await _partitions(client, queue), 0
        while done < partitions:
            for shard in range(done, partitions):
                await ensure_consumer(js, names, queue, shard=shard)
                await pause_consumer(js, names, queue, shard, end)
            # A partition added meanwhile may have copied partition 0 before its pause.
            partitions, done = await _partitions(client, queue), partitions
    except (NotFoundError, NotFound):
        raise NotFound(f"no queue named {queue!r} in namespace {names.namespace!r}") from None
    except JSError as exc:
        raise ConfigError(f"cannot pause queue {queue!r}: {exc}") from exc
    log.info("queue %s paused until %s", queue, "resumed" if end is None else _iso(end))
    await _announce(client, queue)
    return end


async def resume(client: Client, queue: str) -> bool:
    """Resume a paused queue: its jobs are dispatched again at once.

    Args:
        client: an open client.
        queue: the queue's name.

    Returns:
        Whether the queue was paused (resuming one that is not changes nothing).

    Raises:
        ConfigError: a bad queue name, or a server that cannot pause consumers.
        NotFound: no such queue.
    """
    check_name("queue", queue)
    js, names = client.js, client.names
    stream, was_paused = names.queue_stream(queue), False
    try:
        for shard in range(await _partitions(client, queue)):
            try:
                info = await js.consumer_info(stream, names.consumer(shard))
            except NotFoundError:
                continue  # no consumer yet: nothing paused there
            was_paused = was_paused or bool(info.paused)
            await resume_consumer(js, names, queue, shard)
    except JSError as exc:
        raise ConfigError(f"cannot resume queue {queue!r}: {exc}") from exc
    if was_paused:
        log.info("queue %s resumed", queue)
    await _announce(client, queue)
    return was_paused


async def _partitions(client: Client, queue: str) -> int:
    try:
        return await read_partitions(client.js, client.names, queue)
    except NotFoundError:
        raise NotFound(f"no queue named {queue!r} in namespace {client.names.namespace!r}") from None


async def _announce(client: Client, queue: str) -> None:
    """Tell the masters to look at the queue's pause now (they also look every few seconds)."""
    try:
        await client.nc.publish(client.names.pause_subject, json.dumps({"queue": queue}).encode())
        await client.nc.flush(timeout=2)
    except (NatsError, TimeoutError) as exc:
        log.warning("queue %s: the masters were not told (%r); they see it within seconds", queue, exc)
