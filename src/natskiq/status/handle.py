"""The handle ``perform_async`` returns: a job's jid that can wait for its outcome.

A :class:`JobHandle` *is* the jid, a ``str`` (equal to it, hashed, printed,
JSON-encoded and compared as it), so code written for a jid keeps working.
Its methods read what :mod:`natskiq.status.events` and
:mod:`natskiq.status.results` publish: :meth:`~JobHandle.status` the job's
state and timeline, :meth:`~JobHandle.wait` until it finished,
:meth:`~JobHandle.result` its return value (for workers with
``keep_result``). None of them polls: each subscribes, then reads once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
from nats.aio.subscription import Subscription
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from natskiq.errors import ConfigError, NotConnected, NotFound
from natskiq.status.events import TERMINAL
from natskiq.status.results import outcome, read_result, unsubscribe, wait_result
from natskiq.status.view import Event, JobStatus, current_state, job_status

if TYPE_CHECKING:
    from natskiq.enqueue.client import Client

REPLY_GRACE = 1.0
"""Seconds ``result()`` waits on the reply alone before it also follows the job's events."""


class JobHandle(str):
    """A job's jid (a ``str``), with ways to follow the job.

    ``await SendEmail.perform_async(...)`` returns one, and so does
    :meth:`natskiq.Client.job` for a jid received from elsewhere.
    """

    __slots__ = ("_client", "_keep", "_known")

    _client: Client | None
    _known: bool
    _keep: float | None

    def __new__(
        cls, jid: str, client: Client | None, *, known: bool = False, replied: float | None = None
    ) -> JobHandle:
        handle = super().__new__(cls, jid)
        handle._client = client
        handle._known = known  # stored by this process just now: it exists even before its first event
        # Its envelope asks the node to reply its outcome to this client, kept ``replied`` seconds.
        handle._keep = replied
        return handle

    @property
    def jid(self) -> str:
        """The jid as a plain ``str``."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"JobHandle({str.__repr__(self)})"

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return (str, (self.jid,))  # pickles (and copies) as the plain jid

    @property
    def client(self) -> Client:
        """The client the handle reads through.

        Raises:
            NotConnected: the job was enqueued in ``natskiq.testing``'s fake or
                inline mode, which stores nothing to follow.
        """
        if self._client is None:
            raise NotConnected("this job was enqueued in a natskiq.testing mode: it has no status or result")
        return self._client

    async def status(self) -> JobStatus:
        """The job's state and timeline, from its events.

        Raises:
            NotFound: the events stream holds nothing about this jid (unknown,
                trimmed from the bounded stream, or published with events off).
        """
        client = self.client
        found = await job_status(client.js, client.names, self.jid)
        if found is None:
            raise NotFound(
                f"no events of job {self.jid}: unknown, expired from the events stream, or events are off"
            )
        return found

    async def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait until the job finished (succeeded, failed for good, cancelled, expired
        or discarded) and return its status.

        Raises:
            TimeoutError: it did not finish within ``timeout`` seconds (with 0: it has
                not finished).
            NotFound: the jid is unknown (see :meth:`status`).
        """
        seconds = timeout_seconds(timeout)
        if seconds == 0:
            # Only if it has finished: read, without a deadline that would cancel the read.
            status = await self.status()
            if not status.finished:
                raise TimeoutError(f"job {self.jid} has not finished")
            return status
        with anyio.fail_after(seconds):
            await self._until_finished()
        return await self.status()

    async def result(self, timeout: float | None = None) -> Any:
        """The job's return value, as soon as it finished (for a worker with ``keep_result``).

        Raises:
            JobFailed: the job failed for good; carries the remote error class,
                message and backtrace.
            JobCancelled: the job was cancelled.
            TimeoutError: no outcome within ``timeout`` seconds.
            NotFound: the jid is unknown, its result expired, or the job
                finished without keeping one (its class has no ``keep_result``).
        """
        client, seconds = self.client, timeout_seconds(timeout)
        if self._keep is not None:
            # Its outcome is replied to this client: at once, without a read.
            heard = client.replies.heard(self.jid)
            if heard is None and seconds > 0:
                with anyio.fail_after(seconds):
                    return outcome(self.jid, await self._wait_replied())
            if heard is not None and heard[1] < self._keep:
                return outcome(self.jid, heard[0])
        # Read once outside the deadline: under fail_after(0) even this read
        # would be cancelled, and a timeout of 0 means "only if it is there".
        # A job this process has just stored is waited for at once (the wait
        # subscribes, then reads): one round trip less on the common path.
        fresh = self._known and seconds > 0
        stored = None if fresh else await read_result(client.js, client.names, self.jid)
        if stored is None and seconds == 0:
            stored = await self._stored_now()
        elif stored is None:
            with anyio.fail_after(seconds):
                stored = await self._wait_stored()
        if stored is None:
            raise NotFound(
                f"job {self.jid} finished without a result: it expired, or the job keeps none (keep_result)"
            )
        return outcome(self.jid, stored)

    async def _wait_replied(self) -> bytes:
        """The outcome the node replies to this client; if none came within
        :data:`REPLY_GRACE`, whichever comes first of it and the stored one.

        The reply is a core message, lost if the connection drops at the
        wrong moment: after the grace the handle also follows the job the
        way a handle without a reply does (:meth:`_wait_stored`).
        """
        replies, found = self.client.replies, []
        stored: bytes | None = None
        with anyio.move_on_after(REPLY_GRACE):
            return await replies.wait(self.jid)
        async with anyio.create_task_group() as tg:

            async def reply() -> None:
                found.append(await replies.wait(self.jid))
                tg.cancel_scope.cancel()

            tg.start_soon(reply)
            stored = await self._wait_stored()
            tg.cancel_scope.cancel()
        if found:
            return found[0]
        if stored is None:
            raise NotFound(
                f"job {self.jid} finished without a result: it expired, or the job keeps none (keep_result)"
            )
        return stored

    async def _stored_now(self) -> bytes | None:
        """The outcome of a job that has finished, without waiting (a timeout of 0).

        Raises:
            TimeoutError: it has not finished.
            NotFound: no event of the jid, and this process did not store it.
        """
        client = self.client
        state = await current_state(client.js, client.names, self.jid)
        if state is None and not self._known:
            raise NotFound(f"no job {self.jid}: unknown, expired from the events stream, or events are off")
        if state not in TERMINAL:
            raise TimeoutError(f"job {self.jid} has not finished")
        # The node stores a result before it reports the end: read once more.
        return await read_result(client.js, client.names, self.jid)

    async def _wait_stored(self) -> bytes | None:
        """The outcome once stored, or None once the job finished without one."""
        client, finished = self.client, anyio.Event()
        problems: list[NotFound] = []

        async def watch() -> None:
            try:
                await self._until_finished()
            except NotFound as exc:
                problems.append(exc)
            finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            stored = await wait_result(client.nc, client.js, client.names, self.jid, finished)
            tg.cancel_scope.cancel()
        if stored is None and problems:
            raise problems[0]
        return stored

    async def _until_finished(self) -> None:
        """Return once the job's latest state is final: follow its new events, then read the latest.

        Raises:
            NotFound: no event of the jid, and this process did not store it.
        """
        client = self.client
        sub = await self._follow_events()
        try:
            state = await current_state(client.js, client.names, self.jid)
            if state is None and not self._known:
                raise NotFound(
                    f"no job {self.jid}: unknown, expired from the events stream, or events are off"
                )
            if state in TERMINAL:
                return
            while True:
                msg = await sub.next_msg(timeout=None)
                event = Event.parse(msg.data)
                if event is not None and event.state in TERMINAL:
                    return
        finally:
            await unsubscribe(sub)

    async def _follow_events(self) -> Subscription:
        """The job's events stored from now on: an ordered consumer on the events stream.

        Not a core subscription: the server hands an event to core subscribers
        before the stream stores it, so one handed out just before the
        subscription existed and stored just after the read that follows
        reached neither, and the wait hung (2 waits in 100 begun as their job
        ended). The consumer starts at the stream's next sequence: an event
        stored after it was made reaches it, one stored before, the read.
        """
        client = self.client
        subject = client.names.events_filter(jid=self.jid)
        config = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.NEW)
        try:
            return await client.js.subscribe(
                subject, stream=client.names.events_stream, ordered_consumer=True, config=config
            )
        except NotFoundError:
            # No worker has made the stream yet, so none of the job's events is stored.
            return await client.nc.subscribe(subject)


def timeout_seconds(timeout: float | None) -> float:
    """A ``timeout=`` argument in seconds (None: no end).

    Raises:
        ConfigError: it is negative or not a number.
    """
    if timeout is None:
        return math.inf
    if not timeout >= 0:
        raise ConfigError(f"timeout must be a number of seconds, not {timeout!r}")
    return float(timeout)
