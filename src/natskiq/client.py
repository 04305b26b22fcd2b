"""Stage 1, enqueue: the connection, and how a job gets into its stream.

:func:`connect` returns a :class:`Client`. Opened (``async with`` or
``await``), it becomes the default for ``Worker.perform_*``. Enqueueing
builds the envelope, publishes it with ``Nats-Msg-Id: <jid>:<attempt>`` and
waits for the PubAck: when ``perform_async`` returns, the job is stored in
JetStream (replicated, if the stream is) and will run at least once. A
delayed job is a JetStream message schedule (``Nats-Schedule: @at ...``) on
its own subject ``<ns>.scheduled.<queue>.<jid>``, which the server moves to
the queue's subject when it is due; natskiq runs no poller for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs
import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import Error as JSError

from . import job as jobs
from .errors import ConfigError, EnqueueError, NotConnected
from .topology import Names, ensure_queue
from .worker import Options, Worker

log = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
MAX_JOB_BYTES = 1024 * 1024
CONNECT_ATTEMPTS = 3
BULK_BATCH = 1000
BULK_ATTEMPTS = 3
BULK_ACK_TIMEOUT = 10.0

_defaults: list[Client] = []


def current_client() -> Client:
    """The client opened last (the default for ``Worker.perform_*``).

    Raises:
        NotConnected: no client is open.
    """
    if not _defaults:
        raise NotConnected()
    return _defaults[-1]


def split_urls(url: str | None) -> list[str]:
    """One URL or a comma-separated list, defaulting to ``$NATSKIQ_URL``."""
    raw = url or os.environ.get("NATSKIQ_URL") or DEFAULT_URL
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        raise ConfigError(f"no NATS URL in {raw!r}")
    return urls


def rfc3339(epoch: float) -> str:
    """An epoch time as the RFC 3339 UTC form ``Nats-Schedule`` wants."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def nats_defaults() -> dict[str, Any]:
    """Connection options for processes that must outlive a server restart."""
    return {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "ping_interval": 5,
        "max_outstanding_pings": 3,
        "connect_timeout": 3,
    }


@attrs.define
class Client:
    """A connection to NATS that enqueues jobs.

    Create it with :func:`connect`; use it as ``async with`` (or ``await`` it
    and later ``await client.close()``).
    """

    url: str | None = None
    namespace: str = "natskiq"
    replicas: int | None = None
    nats_options: dict[str, Any] = attrs.field(factory=dict)
    names: Names = attrs.field(init=False)
    _nc: NATS | None = attrs.field(init=False, default=None)
    _js: JetStreamContext | None = attrs.field(init=False, default=None)
    _ensured: set[str] = attrs.field(init=False, factory=set)
    _max_bytes: int = attrs.field(init=False, default=MAX_JOB_BYTES)

    def __attrs_post_init__(self) -> None:
        self.names = Names(self.namespace)
        if self.replicas not in (None, 1, 3, 5):
            raise ConfigError(f"replicas must be 1, 3 or 5, not {self.replicas!r}")

    @property
    def nc(self) -> NATS:
        """The underlying nats-py connection."""
        if self._nc is None:
            raise NotConnected()
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The underlying JetStream context."""
        if self._js is None:
            raise NotConnected()
        return self._js

    async def open(self) -> Client:
        """Connect, and become the default client."""
        options = {**nats_defaults(), **self._callbacks(), **self.nats_options}
        # nats-py retries a first connect as often as it reconnects later: with
        # "forever" a wrong URL would hang. Try a few rounds, then say so;
        # once connected, reconnect as configured (forever by default).
        reconnects = options.pop("max_reconnect_attempts")
        try:
            self._nc = await nats.connect(
                servers=split_urls(self.url), max_reconnect_attempts=CONNECT_ATTEMPTS, **options
            )
            self._nc.options["max_reconnect_attempts"] = reconnects
        except (OSError, NatsError) as exc:
            raise ConfigError(f"cannot connect to NATS at {self.url or DEFAULT_URL}: {exc}") from exc
        except TimeoutError as exc:
            raise ConfigError(f"cannot connect to NATS at {self.url or DEFAULT_URL}: timed out") from exc
        self._js = self._nc.jetstream()
        self._max_bytes = min(MAX_JOB_BYTES, self._nc.max_payload or MAX_JOB_BYTES)
        _defaults.append(self)
        return self

    def _callbacks(self) -> dict[str, Any]:
        async def error(exc: Exception) -> None:
            log.warning("NATS connection error: %s", exc)

        async def disconnected() -> None:
            if self._nc is not None and not (self._nc.is_closed or self._nc.is_draining):
                log.warning("disconnected from NATS, reconnecting")

        async def reconnected() -> None:
            log.info("reconnected to NATS")

        return {"error_cb": error, "disconnected_cb": disconnected, "reconnected_cb": reconnected}

    async def close(self) -> None:
        """Flush and disconnect; stop being the default client."""
        if self in _defaults:
            _defaults.remove(self)
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except (NatsError, TimeoutError):
                await nc.close()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Client]:
        return self.open().__await__()

    async def ensure_queue(self, queue: str) -> None:
        """Create the queue's stream and consumer once per client."""
        if queue not in self._ensured:
            try:
                await ensure_queue(self.js, self.names, queue, replicas=self.replicas)
            except (NatsError, JSError, TimeoutError) as exc:
                raise EnqueueError(f"cannot create queue {queue!r}: {exc}") from exc
            self._ensured.add(queue)

    async def enqueue(self, worker: type[Worker], *args: Any, **kwargs: Any) -> str:
        """Enqueue ``worker`` with these arguments now; returns the jid."""
        return await self.push(worker, args, kwargs, options=worker.options)

    async def enqueue_many(self, worker: type[Worker], args_list: Iterable[Sequence[Any]]) -> list[str]:
        """Enqueue one ``worker`` job per argument list, pipelined; returns the jids."""
        return await self.push_many(worker, args_list, options=worker.options)

    def build(
        self,
        worker: type[Worker],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        options: Options,
        at: float | None = None,
    ) -> jobs.Job:
        """The envelope for a call, checking that the arguments are JSON-native."""
        if not (isinstance(worker, type) and issubclass(worker, Worker)):
            raise TypeError(f"{worker!r} is not a natskiq.Worker subclass")
        jobs.check_arguments(args, kwargs)
        now = time.time()
        return jobs.Job(
            jid=jobs.new_jid(),
            cls=worker.name,
            args=list(args),
            kwargs=dict(kwargs),
            queue=options.queue,
            retry=options.retries,
            created_at=now,
            enqueued_at=now,
            at=at,
        )

    async def push(
        self,
        worker: type[Worker],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        options: Options,
        delay: float | None = None,
        at: float | None = None,
    ) -> str:
        """Build, store and PubAck one job; returns its jid.

        Raises:
            TypeError: an argument is not JSON-native.
            EnqueueError: the job could not be stored.
        """
        if delay is not None:
            at = time.time() + delay
        if at is not None and at <= time.time():
            at = None
        job = self.build(worker, args, kwargs, options=options, at=at)
        await self.publish(job)
        return job.jid

    async def push_many(
        self,
        worker: type[Worker],
        args_list: Iterable[Sequence[Any]],
        *,
        options: Options,
        batch_size: int = BULK_BATCH,
    ) -> list[str]:
        """Enqueue one job per argument list, pipelined; returns the jids in order.

        Every argument list is checked before anything is sent. Publishes are
        pipelined ``batch_size`` at a time; a batch's unacknowledged publishes
        are sent again (``Nats-Msg-Id`` makes that safe) before giving up.

        Raises:
            TypeError: an argument is not JSON-native (nothing was sent).
            EnqueueError: some jobs could not be stored; ``exc.stored`` lists
                the jids that were.
        """
        built = []
        for index, args in enumerate(args_list):
            if not isinstance(args, list | tuple):
                raise TypeError(
                    f"item {index} of perform_bulk is a {type(args).__name__}, not a list of arguments"
                )
            try:
                built.append(self.build(worker, args, {}, options=options))
            except TypeError as exc:
                raise TypeError(f"item {index} of perform_bulk: {exc}") from None
        payloads = [self._payload(job) for job in built]
        await self.ensure_queue(options.queue)
        subject = self.names.queue_subject(options.queue)
        stored: list[str] = []
        for start in range(0, len(built), batch_size):
            chunk = list(
                zip(built[start : start + batch_size], payloads[start : start + batch_size], strict=True)
            )
            missing = await self._publish_pipelined(subject, chunk)
            if missing:
                error = EnqueueError(
                    f"{len(missing) + len(built) - start - len(chunk)} of {len(built)} jobs were not stored"
                )
                error.stored = stored + [job.jid for job, _ in chunk if job.jid not in missing]
                raise error
            stored.extend(job.jid for job, _ in chunk)
        return stored

    async def _publish_pipelined(self, subject: str, chunk: list[tuple[jobs.Job, bytes]]) -> set[str]:
        """Publish with ``publish_async``; returns the jids still unacknowledged after retries."""
        pending = chunk
        for _ in range(BULK_ATTEMPTS):
            futures = []
            for job, payload in pending:
                headers = {"Nats-Msg-Id": f"{job.jid}:0"}
                futures.append(await self.js.publish_async(subject, payload, headers=headers))
            failed = []
            with anyio.move_on_after(BULK_ACK_TIMEOUT):
                for (job, payload), future in zip(pending, futures, strict=True):
                    try:
                        await future
                    except (NatsError, JSError) as exc:
                        log.debug("bulk publish of %s failed: %r", job.jid, exc)
                        failed.append((job, payload))
            failed.extend(item for item, future in zip(pending, futures, strict=True) if not future.done())
            for future in futures:
                future.cancel()
            if not failed:
                return set()
            pending = failed
        return {job.jid for job, _ in pending}

    def _payload(self, job: jobs.Job) -> bytes:
        payload = jobs.encode(job)
        if len(payload) > self._max_bytes:
            raise EnqueueError(f"job {job.jid} is {len(payload)} bytes, over the {self._max_bytes}-byte cap")
        return payload

    async def publish(self, job: jobs.Job, *, attempt: int | str = 0) -> None:
        """Store an envelope in its queue's stream (scheduled if ``job.at`` is set)."""
        payload = self._payload(job)
        await self.ensure_queue(job.queue)
        headers = {"Nats-Msg-Id": f"{job.jid}:{attempt}"}
        subject = self.names.queue_subject(job.queue)
        if job.at is not None:
            headers["Nats-Schedule"] = f"@at {rfc3339(job.at)}"
            headers["Nats-Schedule-Target"] = subject
            subject = self.names.scheduled_subject(job.queue, job.jid)
        try:
            await self.js.publish(subject, payload, headers=headers)
        except (NatsError, JSError, TimeoutError) as exc:
            raise EnqueueError(f"job {job.jid} was not stored: {exc!r}") from exc


def connect(
    url: str | None = None,
    *,
    namespace: str | None = None,
    replicas: int | None = None,
    **nats_options: Any,
) -> Client:
    """A client for the NATS server or cluster at ``url``.

    Args:
        url: one URL or a comma-separated list; defaults to ``$NATSKIQ_URL``
            or ``nats://127.0.0.1:4222``.
        namespace: prefix of every subject, stream and bucket; defaults to
            ``$NATSKIQ_NAMESPACE`` or ``natskiq``.
        replicas: replicas of the queue streams this client creates (1, 3
            or 5); None accepts existing streams as they are and creates new
            ones with 1.
        **nats_options: passed to :func:`nats.connect` (user, password,
            token, nkeys_seed, user_credentials, tls, ...).

    Returns:
        A :class:`Client`, to use as ``async with connect(...) as client:``.
    """
    return Client(
        url=url,
        namespace=namespace or os.environ.get("NATSKIQ_NAMESPACE") or "natskiq",
        replicas=replicas,
        nats_options=nats_options,
    )
