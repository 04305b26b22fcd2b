"""Helpers for testing code that uses natskiq; natskiq's own tests use them too.

Against a real server:

* :func:`server` runs a JetStream server on a free port for a block;
* :func:`unique_namespace` gives each test its own streams and buckets;
* :func:`drain` runs the jobs queued in the client's namespace in this
  process until the queues are empty, and re-raises the first failure
  (skipping expired jobs and releasing unique locks as a node does);
* :func:`fast_retries` (alias :func:`zero_backoff`) shrinks retry delays.

Without a server, like Sidekiq's testing modes:

* :func:`inline` runs each ``perform_*`` call's job at once, in the caller,
  its arguments round-tripped through JSON so serialisation bugs still show;
* :func:`fake` records jobs per worker instead (``SendEmail.jobs``,
  ``SendEmail.clear()``, and ``fake.drain()`` to run them).

Both modes pass each job through the process-wide client middleware; unique
locks and expiry need a server and do not apply in them. Both run chains
(:func:`natskiq.chain`), as :func:`drain` does: ``inline`` every step at
once, ``fake`` records the first step and ``fake.drain()`` runs the rest. Each mode restores
the previous state when its block ends. Installed as a
pytest plugin, natskiq also provides the fixtures ``natskiq_server`` (one
server per session), ``natskiq_namespace`` and ``natskiq_client`` (an open
client on that server, in a fresh namespace).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from natskiq import job as jobs
from natskiq import middleware, worker
from natskiq.enqueue import unique
from natskiq.enqueue.client import Client
from natskiq.errors import InvalidJob
from natskiq.flow import batches, chains
from natskiq.ops.server import Server
from natskiq.options import Options
from natskiq.run import retry
from natskiq.status.handle import JobHandle
from natskiq.worker import Worker, lookup


@contextlib.contextmanager
def server(store_dir: Path | str | None = None) -> Iterator[Server]:
    """A JetStream server on a free loopback port for the block (``.url``, ``.kill()``...)."""
    srv = Server(store_dir=Path(store_dir) if store_dir else None)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def unique_namespace() -> str:
    """A fresh namespace, so tests never share streams, buckets or jobs."""
    return f"t{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def fast_retries(scale: float = 0.0) -> Iterator[None]:
    """Multiply retry delays by ``scale`` (0: retry at once) inside the block."""
    old = retry.set_backoff_scale(scale)
    try:
        yield
    finally:
        retry.set_backoff_scale(old)


zero_backoff = fast_retries


# -- running jobs in this process ------------------------------------------------


async def run_job(job: jobs.Job) -> Any:
    """Run one job's ``perform`` here and now (a plain ``def`` in a thread)."""
    cls = lookup(job.cls)
    instance = cls()
    instance.jid, instance.job = job.jid, job
    instance.lease_token, instance.delivered_at = 0, job.enqueued_at
    instance.batch = batches.handle(job.batch)
    if inspect.iscoroutinefunction(cls.perform):
        return await instance.perform(*job.args, **job.kwargs)
    return await anyio.to_thread.run_sync(functools.partial(instance.perform, *job.args, **job.kwargs))


async def drain(client: Client, queues: Sequence[str] | None = None, *, batch: int = 100) -> int:
    """Run every ready job of ``queues`` (all of the namespace's by default) in
    this process until they are empty; returns how many ran.

    A failing job is routed as a node would route it (retry or failed set),
    then its exception is raised; under :func:`zero_backoff` its retry is due
    at once, and the next ``drain()`` runs it. Jobs scheduled for later are
    left alone; ones due now are waited for. Run it while no worker serves
    the namespace.
    """
    from natskiq.api import queue_names

    names = await queue_names(client) if queues is None else list(queues)
    ran = 0
    while True:
        count = 0
        for queue in names:
            count += await _drain_queue(client, queue, batch)
        ran += count
        if not count and not await _due_soon(client, names):
            return ran


async def _due_soon(client: Client, queues: list[str]) -> bool:
    """Whether a scheduled job or retry is due now (the server is about to move it)."""
    from natskiq.api import Filter, find

    horizon = time.time() + 0.05
    for kind in ("retry", "scheduled"):
        for queue in queues:
            for entry in await find(client, kind, Filter(queue=queue)):
                if entry.job is not None and (entry.job.at or 0) <= horizon:
                    await anyio.sleep(0.05)
                    return True
    return False


async def _drain_queue(client: Client, queue: str, batch: int) -> int:
    await client.ensure_queue(queue)
    ran = 0
    for shard in range(client.names.partitions(queue)):
        ran += await _drain_partition(client, queue, shard, batch)
    return ran


async def _drain_partition(client: Client, queue: str, shard: int, batch: int) -> int:
    names = client.names
    sub = await client.js.pull_subscribe_bind(names.consumer(shard), stream=names.queue_stream(queue))
    ran = 0
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=0.2)
            except TimeoutError:
                return ran
            for msg in msgs:
                ran += 1
                await _run_message(client, queue, msg)
    finally:
        await sub.unsubscribe()


async def _run_message(client: Client, queue: str, msg: Any) -> None:
    seq, limit = msg.metadata.sequence.stream, client.nc.max_payload
    try:
        job = jobs.decode(msg.data)
    except InvalidJob as exc:
        await retry.fail_invalid(
            client.js,
            client.names,
            msg.data,
            exc.reason,
            queue=queue,
            ack=msg.ack,
            seq=seq,
            max_payload=limit,
        )
        raise
    if job.queue != queue:
        job = attrs.evolve(job, queue=queue)  # the stream it came from, as a node trusts it
    if not await unique.on_start(client.js, client.names, job):
        await msg.ack()  # expired: skipped, as a node skips it
        return
    try:
        value = await run_job(job)
        # The next step of a chain, stored as a node stores it.
        await chains.advance(client.js, client.names, job, value, max_payload=limit, emitter=None)
    except Exception as exc:
        cls = worker.registered().get(job.cls)
        await retry.route(
            client.js,
            client.names,
            job,
            exc,
            worker=cls,
            ack=msg.ack,
            seq=seq,
            raw=msg.data,
            max_payload=limit,
        )
        raise
    await batches.settle(client.js, client.names, job, succeeded=True)
    await unique.on_success(client.js, client.names, job)
    await msg.ack()


# -- modes without a server --------------------------------------------------------


def _round_trip(
    worker_cls: type[Worker], args: Sequence[Any], kwargs: dict[str, Any], options: Options, at: float | None
) -> jobs.Job:
    if not (isinstance(worker_cls, type) and issubclass(worker_cls, Worker)):
        raise TypeError(f"{worker_cls!r} is not a natskiq.Worker subclass")
    job = jobs.new_job(
        worker_cls.name, list(args), kwargs, queue=options.queue, retry=options.retries, at=at,
        keep_result=options.keep_result,
    )  # fmt: skip
    return jobs.decode(jobs.encode(job))


@attrs.define
class _Mode:
    """What both modes share: each job goes through the process-wide client
    middleware (:func:`natskiq.client_middleware`) and, unless vetoed, to
    :meth:`take`. Unique locks and expiry need a server and do not apply."""

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
        if delay is not None:
            at = time.time() + delay
        return JobHandle(await self._accept(_round_trip(worker, args, kwargs, options, at)), None)

    async def push_many(
        self,
        worker: type[Worker],
        args_list: Iterable[Sequence[Any]],
        *,
        options: Options,
        batch_size: int = 4000,
    ) -> list[JobHandle]:
        built = [_round_trip(worker, list(args), {}, options, None) for args in args_list]
        return [JobHandle(await self._accept(job), None) for job in built]

    async def push_job(self, job: jobs.Job) -> JobHandle:
        """Take a built envelope (a chain's first step), round-tripped through JSON; client
        middleware does not see it, as a client's does not (see :mod:`natskiq.flow.chains`)."""
        job = jobs.decode(jobs.encode(job))
        await self.take(job)
        return JobHandle(job.jid, None)

    async def _accept(self, job: jobs.Job) -> str:
        """Take the job through the client middleware; its jid, or "" if vetoed (as a client does)."""
        chain = middleware.client_chain()
        if not chain:
            await self.take(job)
            return job.jid
        taken = await middleware.run_client(chain, job, self._take_changed)
        return "" if taken is None else taken.jid

    async def _take_changed(self, job: jobs.Job) -> jobs.Job:
        jobs.check_job(job)  # middleware may have changed it: round-trip it again
        job = jobs.decode(jobs.encode(job))
        await self.take(job)
        return job

    async def take(self, job: jobs.Job) -> None:
        raise NotImplementedError


@attrs.define
class Inline(_Mode):
    """Runs each job as soon as it is enqueued (``perform_*`` waits for it)."""

    async def take(self, job: jobs.Job) -> None:
        while True:  # a chain's steps run one after the other, each as its own job
            value = await run_job(job)
            successor = chains.following(job, value)
            if successor is None:
                return
            job = jobs.decode(jobs.encode(successor))


@attrs.define
class Fake(_Mode):
    """Records jobs instead of sending them; ``Worker.jobs`` shows them."""

    enqueued: dict[str, list[jobs.Job]] = attrs.field(factory=dict)

    async def take(self, job: jobs.Job) -> None:
        self.enqueued.setdefault(job.cls, []).append(job)

    def jobs_of(self, cls: type[Worker]) -> list[jobs.Job]:
        return self.enqueued.setdefault(cls.name, [])

    def clear(self) -> None:
        """Forget every recorded job."""
        self.enqueued.clear()

    async def drain(self, cls: type[Worker] | None = None) -> int:
        """Run the recorded jobs (of one worker, or all) until none are left,
        including jobs they enqueue; returns how many ran. Failures propagate."""
        ran = 0
        while True:
            pending = [cls.name] if cls is not None else list(self.enqueued)
            batch = [job for name in pending for job in self.enqueued.get(name, [])]
            if not batch:
                return ran
            for name in pending:
                self.enqueued[name] = []
            for job in batch:
                ran += 1
                successor = chains.following(job, await run_job(job))
                if successor is not None:  # a chain's next step, recorded as a node would store it
                    await self.take(jobs.decode(jobs.encode(successor)))


@contextlib.contextmanager
def _mode(mode: Any) -> Iterator[Any]:
    worker._modes.append(mode)
    try:
        yield mode
    finally:
        worker._modes.remove(mode)


def inline() -> contextlib.AbstractContextManager[Inline]:
    """Run every job at once, in the caller, inside the block (no server needed)."""
    return _mode(Inline())


def fake() -> contextlib.AbstractContextManager[Fake]:
    """Record jobs per worker inside the block instead of enqueueing them."""
    return _mode(Fake())


# -- pytest plugin -------------------------------------------------------------------

try:
    import pytest
    import pytest_asyncio
except ImportError:  # natskiq itself needs neither
    pass
else:

    @pytest.fixture(scope="session")
    def natskiq_server() -> Iterator[Server]:
        """A JetStream server for the test session."""
        with server() as srv:
            yield srv

    @pytest.fixture
    def natskiq_namespace() -> str:
        """A namespace of this test's own."""
        return unique_namespace()

    @pytest_asyncio.fixture
    async def natskiq_client(natskiq_server: Server, natskiq_namespace: str) -> AsyncIterator[Client]:
        """An open client (the default one) on the session's server, in a fresh namespace."""
        async with Client(url=natskiq_server.url, namespace=natskiq_namespace) as client:
            yield client


__all__ = [
    "Fake",
    "Inline",
    "drain",
    "fake",
    "fast_retries",
    "inline",
    "run_job",
    "server",
    "unique_namespace",
    "zero_backoff",
]
