"""Stage 1, enqueue: the connection, and how a job gets into its stream.

:func:`connect` returns a :class:`Client`. Opened (``async with`` or
``await``), it becomes the default for ``Worker.perform_*``. Enqueueing
builds the envelope, publishes it with ``Nats-Msg-Id: <jid>:<attempt>`` and
waits for the PubAck: when ``perform_async`` returns, the job is stored in
JetStream (replicated, if the stream is) and will run at least once. A
delayed job is a JetStream message schedule (``Nats-Schedule: @at ...``) on
its own subject ``<ns>.scheduled.<queue>.<jid>``, which the server moves to
the queue's subject when it is due; natskiq runs no poller for it. Bulk enqueue
(``perform_bulk``, pipelined) lives in :mod:`natskiq.enqueue.bulk`.

The client is the front its collaborators stand behind:
:mod:`natskiq.enqueue.connection` opens the connection (saying why it
cannot) and logs its outages, :mod:`natskiq.enqueue.publish` stores one
envelope and rides out a failover, and :mod:`natskiq.enqueue.unique_locks`
takes a unique worker's lock before its job is stored. They log as
``natskiq.enqueue.client``, as the client itself does.

Authentication and TLS live in :mod:`natskiq.enqueue.auth`: a client whose options
carry no credentials (or no TLS) takes them from the ``NATSKIQ_*``
environment when it opens. Secrets never reach a log line or an error
message: URLs are shown with their ``user:password@`` part redacted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Coroutine, Generator, Iterable, Sequence
from typing import Any, cast

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq import job as jobs
from natskiq import middleware
from natskiq.enqueue import bulk
from natskiq.enqueue.auth import env_auth, redact_url
from natskiq.enqueue.bulk import BULK_WINDOW
from natskiq.enqueue.connection import Connector, nats_defaults, split_urls
from natskiq.enqueue.joining import current as current_batch
from natskiq.enqueue.publish import addressed, store, store_retrying
from natskiq.enqueue.unique_locks import UniqueLocks
from natskiq.errors import ConfigError, EnqueueError, NotConnected
from natskiq.middleware import ClientMiddleware
from natskiq.options import Options
from natskiq.status.events import Emitter
from natskiq.status.handle import JobHandle
from natskiq.status.replies import Replies
from natskiq.topology import Names, check_name, ensure_queue
from natskiq.worker import Worker, open_clients

log = logging.getLogger(__name__)

MAX_JOB_BYTES = 1024 * 1024
REENSURE = 60.0  # seconds before a client looks at a queue's stream again (new partitions)


def current_client() -> Client:
    """The client opened last (the default for ``Worker.perform_*``).

    Raises:
        NotConnected: no client is open.
    """
    if not open_clients:
        raise NotConnected()
    return cast(Client, open_clients[-1])


@attrs.define
class Client:
    """A connection to NATS that enqueues jobs.

    Create it with :func:`connect`; use it as ``async with`` (or ``await`` it
    and later ``await client.close()``). When ``nats_options`` carry no
    credentials (and the URL no ``user:password@``), it takes them from the
    ``NATSKIQ_*`` environment variables :func:`natskiq.enqueue.auth.auth_options` reads; likewise
    for TLS. ``middleware`` is client middleware for this client's enqueues,
    run after the process-wide chain (:func:`natskiq.client_middleware`).
    """

    url: str | None = attrs.field(default=None, repr=lambda url: repr(url and redact_url(url)))
    namespace: str = "natskiq"
    replicas: int | None = None
    nats_options: dict[str, Any] = attrs.field(factory=dict, repr=False)
    publish_timeout: float = 10.0
    middleware: list[ClientMiddleware] = attrs.field(factory=list, repr=False)
    events: bool = True
    names: Names = attrs.field(init=False)
    _nc: NATS | None = attrs.field(init=False, default=None)
    _js: JetStreamContext | None = attrs.field(init=False, default=None)
    _ensured: dict[str, float] = attrs.field(init=False, factory=dict)
    """Queues ensured, with when to look at their stream again (partitions may be added)."""
    _max_bytes: int = attrs.field(init=False, default=MAX_JOB_BYTES)
    _locks: UniqueLocks = attrs.field(init=False, default=attrs.Factory(UniqueLocks, takes_self=True))
    _emitter: Emitter | None = attrs.field(init=False, default=None, repr=False)
    _replies: Replies | None = attrs.field(init=False, default=None, repr=False)

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
        urls = split_urls(self.url)
        connector = Connector(urls, lambda: self._nc)
        options = {**nats_defaults(), **connector.callbacks(), **self.nats_options}
        options.update(env_auth(self.nats_options, urls))
        self._nc = await connector.connect(options)
        self._js = self._nc.jetstream()
        self._emitter = Emitter(self._nc, self.names, enabled=self.events)
        self._replies = Replies(self._nc, self.names)
        # Room for what natskiq adds on the way: enqueue, dispatch and retry
        # headers, a failure's error fields (the server's limit counts headers).
        self._max_bytes = min(MAX_JOB_BYTES, self._nc.max_payload or MAX_JOB_BYTES) - jobs.MAX_OVERHEAD
        open_clients.append(self)
        return self

    async def close(self) -> None:
        """Flush and disconnect; stop being the default client."""
        if self in open_clients:
            open_clients.remove(self)
        if self._replies is not None:
            await self._replies.close()
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
        """Create the queue's stream and consumers once per client, and learn its
        partitions (looked at again every minute: workers may add some)."""
        if self._ensured.get(queue, 0.0) < anyio.current_time():
            try:
                await ensure_queue(self.js, self.names, queue, replicas=self.replicas)
            except (NatsError, JSError, TimeoutError) as exc:
                raise EnqueueError(f"cannot create queue {queue!r}: {exc}") from exc
            self._ensured[queue] = anyio.current_time() + REENSURE

    def job(self, jid: str) -> JobHandle:
        """The handle of a job enqueued elsewhere (another process, an HTTP request), by jid.

        Raises:
            ConfigError: ``jid`` is not a jid.
        """
        return JobHandle(check_name("jid", jid), self)

    async def enqueue(self, worker: type[Worker], *args: Any, **kwargs: Any) -> JobHandle:
        """Enqueue ``worker`` with these arguments now; returns its handle (see :meth:`push`)."""
        _check_worker(worker)
        return await self.push(worker, args, kwargs, options=worker.options)

    async def enqueue_many(self, worker: type[Worker], args_list: Iterable[Sequence[Any]]) -> list[JobHandle]:
        """Enqueue one ``worker`` job per argument list, pipelined; returns their handles."""
        _check_worker(worker)
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
        """The envelope for a call, checking that the arguments are JSON-native; inside a
        batch block (:data:`natskiq.enqueue.joining.current`) it carries the batch's id."""
        _check_worker(worker)
        now = time.time()
        joining = current_batch.get()
        return jobs.new_job(
            worker.name, args, kwargs, queue=options.queue, retry=options.retries, at=at, now=now,
            expires_at=_expires_at(options, at, now), keep_result=options.keep_result,
            reply=self._reply_token(options),
            batch=None if joining is None else joining.bid,
        )  # fmt: skip

    @property
    def replies(self) -> Replies:
        """Where the outcomes of this client's jobs that keep their result arrive."""
        if self._replies is None:
            raise NotConnected()
        return self._replies

    async def listen(self, options: Options) -> None:
        """Before storing jobs that keep their result: subscribe to their replies (once)."""
        if options.keep_result is not None and not self.replies.listening:
            await self.replies.listen()

    def _reply_token(self, options: Options) -> str | None:
        """The envelope's ``reply``: this client's token, for a job that keeps its result."""
        if options.keep_result is None or self._replies is None or not self._replies.listening:
            return None
        return self._replies.token

    def _handle(self, jid: str, options: Options) -> JobHandle:
        """The handle of a job this client has just stored."""
        replied = options.keep_result if self._reply_token(options) is not None else None
        return JobHandle(jid, self, known=True, replied=replied)

    async def push(
        self,
        worker: type[Worker],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        options: Options,
        delay: float | None = None,
        at: float | None = None,
    ) -> JobHandle:
        """Build one job, pass it through the client middleware, store it and
        wait for its PubAck.

        Returns:
            The handle (a ``str``: the jid) of the job that will run this call: the new job's; for a
            ``unique_for`` worker whose lock is held, the jid of the pending
            job holding it (nothing is stored, and an INFO line says so); or
            ``""`` when client middleware vetoed the job (nothing is stored;
            an INFO line gives the jid it would have had). Sidekiq returns
            nil for a veto; ``""`` is as falsy, so ``if jid:`` reads the same,
            while keeping the return type ``str``. Returning the jid the job
            would have had was the other choice, but a caller could then not
            tell a stored job from a dropped one.

        Raises:
            TypeError: an argument (or a header middleware added) is not
                JSON-native.
            EnqueueError: the job could not be stored.
        """
        now = time.time()
        if delay is not None:
            at = now + delay
        if at is not None and at <= now:
            at = None
        await self.listen(options)
        chain = middleware.client_chain(self.middleware)
        if chain or current_batch.get() is not None:  # a batch's job is built by build()
            job = self.build(worker, args, kwargs, options=options, at=at)
            return self._handle(await self._push_through(chain, job, options), options)
        if options.unique_for is not None:
            job = self.build(worker, args, kwargs, options=options, at=at)
            holder = (await self._locks.store(job, options))[1]
            # The jid of the job holding the lock may be another client's: no reply comes here.
            return self._handle(holder, options) if holder == job.jid else JobHandle(holder, self, known=True)
        # The plain enqueue, the hot path: its envelope encoded straight from the call.
        _check_worker(worker)
        jobs.check_arguments(args, kwargs)
        jid = jobs.new_jid()
        payload = jobs.encode_new(
            jid, worker.name, args, kwargs, queue=options.queue, retry=options.retries, now=now, at=at,
            expires_at=_expires_at(options, at, now), keep_result=options.keep_result,
            reply=self._reply_token(options),
        )  # fmt: skip
        self._check_size(jid, payload)
        await self._send(jid, options.queue, at, payload)
        await self._stored(jid, options.queue, worker.name, at, now)
        return self._handle(jid, options)

    async def _push_through(self, chain: list[ClientMiddleware], job: jobs.Job, options: Options) -> str:
        """push() for a job that client middleware sees first."""
        outcome: list[str] = []

        async def store(current: jobs.Job) -> jobs.Job | None:
            if current is not job:
                jobs.check_job(current)
            if options.unique_for is not None:
                stored, jid = await self._locks.store(current, options)
            else:
                await self.publish(current)
                stored, jid = current, current.jid
            outcome.append(jid)
            return stored

        await middleware.run_client(chain, job, store)
        if not outcome:
            log.info("jid=%s class=%s queue=%s vetoed by client middleware", job.jid, job.cls, job.queue)
            return ""
        return outcome[-1]

    async def push_many(
        self,
        worker: type[Worker],
        args_list: Iterable[Sequence[Any]],
        *,
        options: Options,
        batch_size: int = BULK_WINDOW,
    ) -> list[JobHandle]:
        """Enqueue one job per argument list, pipelined; returns the jids in order.

        Every argument list is checked before anything is sent. Publishes are
        pipelined with at most ``batch_size`` (capped at nats-py's
        :data:`BULK_WINDOW`) awaiting their PubAck at once, a sliding
        window; unacknowledged publishes are sent again (``Nats-Msg-Id``
        makes that safe) before giving up. Client middleware sees each job
        in turn, and ``call_next`` returns once the job is accepted into the
        batch; the batch is stored after the last job went through (as
        Sidekiq's ``push_bulk`` does). A unique worker takes its locks one
        job at a time, a round trip each.

        Returns:
            One jid per argument list, as :meth:`push` returns it: the new
            job's, the holder's for a unique duplicate, ``""`` for a veto.

        Raises:
            TypeError: an argument is not JSON-native (nothing was sent).
            EnqueueError: some jobs could not be stored; ``exc.stored`` lists
                the jids that were.
        """
        _check_worker(worker)
        await self.listen(options)
        jids = await bulk.push_many(self, worker, args_list, options=options, batch_size=batch_size)
        return [self._handle(jid, options) for jid in jids]

    def _check_size(self, jid: str, payload: bytes) -> None:
        if len(payload) > self._max_bytes:
            raise EnqueueError(f"job {jid} is {len(payload)} bytes, over the {self._max_bytes}-byte cap")

    def _payload(self, job: jobs.Job) -> bytes:
        payload = jobs.encode(job)
        self._check_size(job.jid, payload)
        return payload

    async def publish(self, job: jobs.Job, *, attempt: int | str = 0) -> None:
        """Store an envelope in its queue's stream (scheduled if ``job.at`` is set)."""
        await self._send(job.jid, job.queue, job.at, self._payload(job), attempt)
        await self._stored(job.jid, job.queue, job.cls, job.at, job.enqueued_at)

    async def _stored(self, jid: str, queue: str, cls: str, at: float | None, enqueued_at: float) -> None:
        """The ``queued`` (or ``scheduled``) event of a job JetStream has just stored
        (and, inside a batch block, the job counted in its batch).

        Stamped with the envelope's ``enqueued_at``, taken before the publish:
        a fast job can run and finish before its PubAck is back here, and its
        status is that of its latest event by that stamp.
        """
        joining = current_batch.get()
        if joining is not None:
            joining.joined()
        if self._emitter is not None:
            if at is None:
                await self._emitter.emit("queued", jid, queue, cls, at=enqueued_at)
            else:
                await self._emitter.emit("scheduled", jid, queue, cls, at=enqueued_at, next_at=at)

    async def _send(
        self, jid: str, queue: str, at: float | None, payload: bytes, attempt: int | str = 0
    ) -> None:
        """Publish an encoded envelope with ``Nats-Msg-Id: <jid>:<attempt>`` and wait for its PubAck."""
        if self._ensured.get(queue, 0.0) < anyio.current_time():
            await self.ensure_queue(queue)
        subject, headers = addressed(self.names, jid, queue, at, attempt)
        try:
            await store(self.nc, subject, payload, headers)
        except (NatsError, JSError, TimeoutError) as exc:
            await store_retrying(self, jid, subject, payload, headers, exc)

    def _lock(
        self, job: jobs.Job, unique_for: float, until: str
    ) -> Coroutine[Any, Any, tuple[jobs.Job, str]]:
        """:meth:`UniqueLocks.take <natskiq.enqueue.unique_locks.UniqueLocks.take>`, for
        :mod:`natskiq.enqueue.bulk` (its coroutine, handed on without an await of its own)."""
        return self._locks.take(job, unique_for, until)


def _check_worker(worker: object) -> None:
    if not (isinstance(worker, type) and issubclass(worker, Worker)):
        raise TypeError(f"{worker!r} is not a natskiq.Worker subclass")


def _expires_at(options: Options, at: float | None, now: float) -> float | None:
    """When a job must have started by: ``expires_in`` after it is due."""
    return None if options.expires_in is None else (at or now) + options.expires_in


def connect(
    url: str | None = None,
    *,
    namespace: str | None = None,
    replicas: int | None = None,
    middleware: Sequence[ClientMiddleware] = (),
    events: bool = True,
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
        middleware: client middleware for this client's enqueues (see
            :mod:`natskiq.middleware`), run inside the chain registered with
            :func:`natskiq.client_middleware`, in the order given.
        events: publish the ``queued`` and ``scheduled`` lifecycle events of
            the jobs this client stores (see :mod:`natskiq.status.events`).
        **nats_options: passed to :func:`nats.connect` (user, password,
            token, nkeys_seed, user_credentials, tls, ...); build the
            credential and TLS ones with :func:`natskiq.enqueue.auth.auth_options`. When none of
            the credential options is given (and no URL has a
            ``user:password@`` part), the client takes them from
            ``$NATSKIQ_USER`` / ``$NATSKIQ_PASSWORD``, ``$NATSKIQ_TOKEN``,
            ``$NATSKIQ_NKEY_SEED`` or ``$NATSKIQ_CREDS``; without ``tls``,
            from ``$NATSKIQ_TLS_CA``, ``$NATSKIQ_TLS_CERT`` and
            ``$NATSKIQ_TLS_KEY``.

    Returns:
        A :class:`Client`, to use as ``async with connect(...) as client:``.
    """
    return Client(
        url=url,
        namespace=namespace or os.environ.get("NATSKIQ_NAMESPACE") or "natskiq",
        replicas=replicas,
        middleware=list(middleware),
        events=events,
        nats_options=nats_options,
    )
