"""Stage 1, enqueueing a unique job: its lock taken before it is stored, and freed if it was not.

:class:`~natskiq.enqueue.client.Client` hands its :class:`UniqueLocks` the
envelope of a ``unique_for`` worker's call (after client middleware). The
lock itself is :func:`natskiq.enqueue.unique.acquire`'s; here the bucket is
created once per client, an acquire that meets a failover is tried again
(for up to the client's ``publish_timeout``), and a job whose lock another
pending job holds is not stored: an INFO line names the holder, whose jid
is handed back. It guarantees that a job it could not store (or does not
know it stored) leaves no lock behind, so a retry of the call is not locked
out for ``unique_for`` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError

from natskiq import job as jobs
from natskiq.enqueue import unique
from natskiq.enqueue.publish import retryable
from natskiq.errors import EnqueueError
from natskiq.options import Options
from natskiq.topology import ensure_bucket

if TYPE_CHECKING:
    from natskiq.enqueue.client import Client

# These are the client's messages: they log under its name, the one users configure.
log = logging.getLogger("natskiq.enqueue.client")


@attrs.define
class UniqueLocks:
    """A client's unique-job locks, taken through its connection."""

    # Not compared: the client compares its locks, which would compare the client again.
    client: Client = attrs.field(repr=False, eq=False)
    _bucket_ready: bool = attrs.field(init=False, default=False)

    async def store(self, job: jobs.Job, options: Options) -> tuple[jobs.Job | None, str]:
        """Store a unique worker's job if its lock is free: ``(stored job or None, jid that will run)``."""
        assert options.unique_for is not None
        locked, holder = await self.take(job, options.unique_for, options.unique_until)
        if holder != job.jid:
            return None, holder
        stored = False
        try:
            await self.client.publish(locked)
            stored = True
        finally:
            if not stored:
                # Not stored (or not known to be): free the call for a retry
                # rather than lock it out for unique_for seconds.
                with anyio.CancelScope(shield=True):
                    await unique.release(self.client.js, self.client.names, locked)
        return locked, holder

    async def take(self, job: jobs.Job, unique_for: float, until: str) -> tuple[jobs.Job, str]:
        """:func:`natskiq.enqueue.unique.acquire`, creating the bucket first and riding out a failover."""
        if not self._bucket_ready:
            await self._create_bucket()
        client = self.client
        ttl = unique.lock_ttl(unique_for, job.at, time.time())
        deadline = anyio.current_time() + client.publish_timeout
        pause = 0.05
        while True:
            try:
                locked, holder = await unique.acquire(client.js, client.names, job, ttl=ttl, until=until)
                break
            except (NatsError, JSError, TimeoutError) as exc:
                if not retryable(exc) or anyio.current_time() + pause > deadline:
                    raise EnqueueError(f"job {job.jid}: cannot take its unique lock: {exc!r}") from exc
            await anyio.sleep(pause)
            pause = min(1.0, pause * 2)
        if holder != job.jid:
            log.info(
                "jid=%s class=%s queue=%s not enqueued: jid=%s holds its unique lock",
                job.jid,
                job.cls,
                job.queue,
                holder,
            )
        return locked, holder

    async def _create_bucket(self) -> None:
        """The client's unique-jobs bucket, created once."""
        client = self.client
        try:
            await ensure_bucket(
                client.js, client.names.unique_bucket, replicas=client.replicas, marker_ttl=unique.MARKER_TTL
            )
        except (NatsError, JSError, TimeoutError) as exc:
            raise EnqueueError(f"cannot create the unique-jobs bucket: {exc!r}") from exc
        self._bucket_ready = True
