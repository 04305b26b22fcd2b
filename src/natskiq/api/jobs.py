"""One job by jid: its status and timeline, its kept result, and the events stream.

Receives a client and a jid (or filters on queue, class and time); hands
back :class:`~natskiq.JobStatus` values, results and
:class:`~natskiq.status.view.Event` values read from the ``<NS>_EVENTS``
stream and the ``<ns>_results`` bucket (see :mod:`natskiq.status`). Reading
changes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from natskiq.enqueue.client import Client
from natskiq.errors import NotFound
from natskiq.status.view import Event, JobStatus
from natskiq.topology import check_name


async def job(client: Client, jid: str) -> JobStatus:
    """The status of a job by jid: its state, node, attempt, progress, error and timeline.

    Raises:
        ConfigError: ``jid`` is not a jid.
        NotFound: the events stream holds nothing about it (see :meth:`natskiq.JobHandle.status`).
    """
    return await client.job(jid).status()


async def result(client: Client, jid: str, *, wait: float = 0.0) -> Any:
    """A job's kept result, waiting up to ``wait`` seconds for it (0: only if it is there).

    Raises:
        JobFailed: the job failed for good.
        JobCancelled: it was cancelled.
        TimeoutError: it did not finish within ``wait``.
        NotFound: unknown jid, expired result, or a job that keeps none.
    """
    return await client.job(jid).result(timeout=wait)


async def events(
    client: Client,
    *,
    queue: str | None = None,
    cls: str | None = None,
    jid: str | None = None,
    since: float | None = None,
    limit: int | None = 100,
) -> list[Event]:
    """Stored lifecycle events matching the filters, oldest first.

    Args:
        queue, cls, jid: keep only this queue's, class's or job's events.
        since: epoch seconds: events published from then on; None: all.
        limit: the latest ``limit`` of those found (None: every one).
    """
    kept: deque[Event] = deque(maxlen=limit)
    async for event in follow(client, queue=queue, cls=cls, jid=jid, since=since, stop_at_end=True):
        kept.append(event)
    return list(kept)


async def follow(
    client: Client,
    *,
    queue: str | None = None,
    cls: str | None = None,
    jid: str | None = None,
    since: float | None = None,
    stop_at_end: bool = False,
) -> AsyncIterator[Event]:
    """Events matching the filters as they are stored: those since ``since`` (None:
    from now on when following, else all), then the new ones as they come.

    An ordered consumer reads them: no durable state is left on the server.
    With ``stop_at_end`` the iteration ends once it caught up.
    """
    if queue is not None:
        check_name("queue", queue)
    subject = client.names.events_filter(queue=queue, cls=cls, jid=jid)
    try:
        await client.js.stream_info(client.names.events_stream)
    except NotFoundError:
        raise NotFound(f"no events stream in namespace {client.namespace!r}: no worker has run yet") from None
    config = jsapi.ConsumerConfig(
        deliver_policy=jsapi.DeliverPolicy.NEW
        if since is None and not stop_at_end
        else jsapi.DeliverPolicy.ALL
    )
    if since is not None:
        config.deliver_policy = jsapi.DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.fromtimestamp(since, UTC)
    sub = await client.js.subscribe(
        subject, ordered_consumer=True, config=config, stream=client.names.events_stream
    )
    try:
        while True:
            if stop_at_end:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:
                    return
            else:
                msg = await sub.next_msg(timeout=None)
            event = Event.parse(msg.data, msg.metadata.sequence.stream)
            if event is not None:
                yield event
            if stop_at_end and msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
