"""Stage 1, enqueue in bulk: many jobs of one worker into their stream, pipelined.

:meth:`natskiq.Client.push_many` (behind ``perform_bulk`` and
``enqueue_many``) hands :func:`push_many` the client, a worker and its
argument lists. Every argument list is checked before anything is sent, so
a bad one raises TypeError with nothing stored. The envelopes are then
published with ``publish_async`` through a sliding window of at most
:data:`BULK_WINDOW` awaiting their PubAck: the next publish goes out as the
oldest is acknowledged. Each carries ``Nats-Msg-Id: <jid>:0``, so the
unacknowledged ones are simply sent again (the stream's duplicate window
drops any copy that was in fact stored), for up to :data:`BULK_ATTEMPTS`
rounds. What comes back is one jid per argument list, in order; or an
EnqueueError whose ``stored`` lists the jids that were acknowledged.

Client middleware and unique locks take the slower road
(:func:`_push_many_through`): each job goes through the chain (and takes
its lock) one at a time, and the accepted ones are published together; the
locks of jobs not stored are released.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from natskiq import job as jobs
from natskiq import middleware
from natskiq.enqueue import unique
from natskiq.enqueue.joining import current as current_batch
from natskiq.errors import EnqueueError
from natskiq.middleware import ClientMiddleware
from natskiq.options import Options
from natskiq.worker import Worker

if TYPE_CHECKING:
    from natskiq.enqueue.client import Client

log = logging.getLogger(__name__)

# nats-py lets 4,000 publish_async() calls await their PubAck at once (past
# that it waits silently): the most a bulk enqueue keeps in flight.
BULK_WINDOW = 4000
BULK_ATTEMPTS = 3
BULK_ACK_TIMEOUT = 10.0

_Publish = tuple[str, str, bytes]  # jid, subject, payload


async def push_many(
    client: Client,
    worker: type[Worker],
    args_list: Iterable[Sequence[Any]],
    *,
    options: Options,
    batch_size: int,
) -> list[str]:
    """:meth:`natskiq.Client.push_many` for a worker class the client has checked."""
    items = list(args_list)
    for index, args in enumerate(items):
        if not isinstance(args, list | tuple):
            raise TypeError(
                f"item {index} of perform_bulk is a {type(args).__name__}, not a list of arguments"
            )
        try:
            jobs.check_arguments(args, {})
        except TypeError as exc:
            raise TypeError(f"item {index} of perform_bulk: {exc}") from None
    window = max(1, min(batch_size, BULK_WINDOW))
    chain = middleware.client_chain(client.middleware)
    if chain or options.unique_for is not None:
        return await _push_many_through(client, chain, worker, items, options, window)
    jids = jobs.new_jids(len(items))
    template = client.build(worker, [], {}, options=options)
    payloads = jobs.encode_many(template, jids, items)
    _check_sizes(client, jids, payloads)
    await client.ensure_queue(options.queue)
    subject = client.names.enqueue_subject
    await _publish_all(
        client,
        [(jid, subject(options.queue), payload) for jid, payload in zip(jids, payloads, strict=True)],
        window,
    )
    await _stored(client, [(jid, options.queue, worker.name, template.enqueued_at) for jid in jids])
    return jids


async def _stored(client: Client, stored: list[tuple[str, str, str, float]]) -> None:
    """The ``queued`` events of jobs JetStream has just stored (jid, queue, class, enqueued_at:
    stamped before the publish, as :meth:`natskiq.Client._stored` does); inside a batch
    block, they count in its batch."""
    joining = current_batch.get()
    if joining is not None:
        joining.joined(len(stored))
    emitter = client._emitter
    if emitter is not None and emitter.enabled:
        for jid, queue, cls, enqueued_at in stored:
            await emitter.emit("queued", jid, queue, cls, at=enqueued_at)


async def _push_many_through(
    client: Client,
    chain: list[ClientMiddleware],
    worker: type[Worker],
    items: list[Any],
    options: Options,
    window: int,
) -> list[str]:
    """push_many() for jobs that client middleware sees first, or that take unique locks."""
    accepted: list[jobs.Job] = []
    result: list[str] = []
    for args in items:
        job = client.build(worker, args, {}, options=options)
        outcome: list[str] = []

        async def collect(
            current: jobs.Job, job: jobs.Job = job, outcome: list[str] = outcome
        ) -> jobs.Job | None:
            if current is not job:
                jobs.check_job(current)
            if options.unique_for is not None:
                current, holder = await client._lock(current, options.unique_for, options.unique_until)
                if holder != current.jid:
                    outcome.append(holder)
                    return None
            accepted.append(current)
            outcome.append(current.jid)
            return current

        await middleware.run_client(chain, job, collect)
        if not outcome:
            log.info("jid=%s class=%s queue=%s vetoed by client middleware", job.jid, job.cls, job.queue)
        result.append(outcome[-1] if outcome else "")
    try:
        payloads = [client._payload(job) for job in accepted]
        for queue in {job.queue for job in accepted}:
            await client.ensure_queue(queue)
        batch = [
            (job.jid, client.names.enqueue_subject(job.queue), payload)
            for job, payload in zip(accepted, payloads, strict=True)
        ]
        await _publish_all(client, batch, window)
        await _stored(client, [(job.jid, job.queue, job.cls, job.enqueued_at) for job in accepted])
    except BaseException as exc:
        stored = set(exc.stored) if isinstance(exc, EnqueueError) else set()
        with anyio.CancelScope(shield=True):
            for job in accepted:
                if job.jid not in stored:
                    await unique.release(client.js, client.names, job)
        raise
    return result


def _check_sizes(client: Client, jids: list[str], payloads: list[bytes]) -> None:
    """EnqueueError for a payload over the size cap; one max() when, as usual, none is."""
    if payloads and max(map(len, payloads)) > client._max_bytes:
        for jid, payload in zip(jids, payloads, strict=True):
            client._check_size(jid, payload)


async def _publish_all(client: Client, batch: list[_Publish], window: int) -> None:
    """Publish ``(jid, subject, payload)`` triples pipelined, each with
    ``Nats-Msg-Id: <jid>:0``; send the unacknowledged ones again, up to
    :data:`BULK_ATTEMPTS` rounds.

    Raises:
        EnqueueError: some were never acknowledged; ``exc.stored`` lists
            the jids that were, in order.
    """
    pending = batch
    for _ in range(BULK_ATTEMPTS):
        pending = await _publish_round(client, pending, window)
        if not pending:
            return
    missing = {jid for jid, _, _ in pending}
    error = EnqueueError(f"{len(missing)} of {len(batch)} jobs were not stored")
    error.stored = [jid for jid, _, _ in batch if jid not in missing]
    raise error


async def _publish_round(client: Client, batch: list[_Publish], window: int) -> list[_Publish]:
    """One pass of ``publish_async`` over ``batch`` with at most ``window``
    unacknowledged; returns what was not acknowledged.

    A sliding window rather than chunks: the next publish goes out as soon
    as the oldest is acknowledged, so neither the server nor this process
    waits for the other at a chunk's end. If the oldest is not
    acknowledged within :data:`BULK_ACK_TIMEOUT`, the round stops there.
    """
    js = client.js
    inflight: collections.deque[tuple[_Publish, asyncio.Future[Any]]] = collections.deque()
    failed: list[_Publish] = []
    sent = 0
    try:
        for item in batch:
            if len(inflight) >= window:
                oldest = inflight[0][1]
                if oldest.done() and not oldest.cancelled() and oldest.exception() is None:
                    inflight.popleft()  # the usual case, without a call
                elif not await _settle_oldest(inflight, failed):
                    break
            jid, subject, payload = item
            future = await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"{jid}:0"})
            inflight.append((item, future))
            sent += 1
        else:
            while inflight and await _settle_oldest(inflight, failed):
                pass
    finally:
        for _, future in inflight:
            future.cancel()  # frees nats-py's pending slot
    failed.extend(item for item, _ in inflight)
    failed.extend(batch[sent:])
    return failed


async def _settle_oldest(
    inflight: collections.deque[tuple[_Publish, asyncio.Future[Any]]], failed: list[_Publish]
) -> bool:
    """Wait for the oldest publish's PubAck (a refusal goes to ``failed``);
    False if none came within :data:`BULK_ACK_TIMEOUT` (it stays in flight)."""
    item, future = inflight[0]
    if not future.done():
        with anyio.move_on_after(BULK_ACK_TIMEOUT), contextlib.suppress(Exception):
            await future  # its outcome is read below
        if not future.done() or future.cancelled():
            return False
    inflight.popleft()
    exc = future.exception()
    if exc is not None:
        log.debug("bulk publish of %s failed: %r", item[0], exc)
        failed.append(item)
    return True
