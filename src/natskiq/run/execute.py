"""Stage 5, the node's executor: one delivery, from its bytes to its verdict.

A runner of the node hands the executor each delivery it may start. The
executor decodes the envelope (trusting the stream the job came from for
its queue; a periodic job's run gets a jid of its own), looks the worker
class up in the registry, and runs ``perform`` through the server
middleware, under the worker's timeout (a plain ``def`` in a worker
thread), in the runner's cancel scope; then it counts the run
(:mod:`natskiq.run.stats`) and settles it (:mod:`natskiq.run.settle`): ack
on success, the retry or failed record of :mod:`natskiq.run.retry` on an
exception. A job of a class with a cluster-wide limit (``concurrency=``,
``rate=``) starts only with a slot from :mod:`natskiq.run.limits`, which
it frees when it ends; without one it is put back, scheduled a moment
later. It also takes cancel requests (``natskiq.api.cancel``): a job
running here is cancelled at once and dropped; one not started yet is
remembered for a while (:data:`CANCEL_MEMORY`) and skipped when it comes.

It guarantees that whatever goes wrong handling a job stays with that job:
an envelope that does not decode, an unknown worker, a job delivered past
``max_deliveries`` and an error of natskiq's own all end in the failed set,
and the node carries on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from natskiq import job as jobs
from natskiq import middleware
from natskiq.dispatch.protocol import Delivery, ack_tokens
from natskiq.enqueue import unique
from natskiq.errors import DeliveryLimit, EnqueueError, InvalidJob, UnknownWorker
from natskiq.flow import batches, chains
from natskiq.run import retry
from natskiq.run.limits import Limits, put_back
from natskiq.run.settle import SETTLE_TIMEOUT, Settler
from natskiq.run.stats import Stats
from natskiq.status.events import Emitter
from natskiq.status.results import CANCELLED, encode_result, store_result
from natskiq.topology import Names
from natskiq.worker import Worker, is_async, lookup

PROGRESS_EVERY = 0.5  # seconds: at most one progress event per job this often

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name

CANCEL_MEMORY = 600.0  # seconds a cancel request waits for a job that has not started


@attrs.define
class Executor:
    """Runs one node's deliveries: decode, look up, perform, count, settle.

    Each runs in the cancel scope of the runner that took it, and a cancel
    request for a job running here cancels that scope.

    Args:
        nc: the connection.
        js: its JetStream context.
        names: the namespace's names.
        node_id: this node's id (in answers to cancel requests).
        held: the node's deliveries received and not yet settled (shared with it).
        settler: the node's settler.
        stats: the node's stats.
        middleware: the server middleware every job runs through (the node's list).
        max_deliveries: deliveries after which a job is kept in the failed set, not run.
        threads: the limiter for worker threads (a plain ``def perform``).
        emitter: publishes the jobs' lifecycle events (and their progress).
        limits: the node's slots in the cluster-wide limits.
    """

    nc: NATS
    js: JetStreamContext
    names: Names
    node_id: str
    held: set[Delivery]
    settler: Settler
    stats: Stats
    middleware: list[middleware.ServerMiddleware]
    max_deliveries: int
    threads: anyio.CapacityLimiter
    emitter: Emitter
    limits: Limits | None = None
    """The cluster-wide limits (``concurrency=``, ``rate=``) a limited class's jobs start through."""
    _report: Callable[[Worker, float, str], Awaitable[None]] = attrs.field(init=False)
    _running: dict[str, anyio.CancelScope] = attrs.field(init=False, factory=dict)
    _running_info: dict[str, dict[str, Any]] = attrs.field(init=False, factory=dict)
    _cancelled: dict[str, float] = attrs.field(init=False, factory=dict)

    def running_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The jobs running here now (jid, class, queue, started), oldest first."""
        return sorted(self._running_info.values(), key=lambda j: float(j["started"]))[:limit]

    def __attrs_post_init__(self) -> None:
        self._report = functools.partial(report_progress, self.emitter, self.node_id)

    async def read_cancels(self, sub: Any) -> None:
        """Cancel a job on request: at once if running here, else when it would start."""
        async for msg in sub.messages:
            try:
                jid = str(json.loads(msg.data)["jid"])
            except (ValueError, KeyError, TypeError):
                continue
            now = anyio.current_time()
            self._cancelled = {j: t for j, t in self._cancelled.items() if t > now}
            scope = self._running.get(jid)
            if scope is None:
                self._cancelled[jid] = now + CANCEL_MEMORY
                continue
            scope.cancel()
            if msg.reply:
                try:
                    await self.nc.publish(msg.reply, json.dumps({"node": self.node_id, "jid": jid}).encode())
                except NatsError as exc:  # the connection closing: the canceller hears nothing
                    log.debug("cancel of job %s: no reply sent: %s", jid, exc)

    async def process(self, delivery: Delivery, scope: anyio.CancelScope) -> None:
        """Run one delivery; whatever goes wrong handling it stays with this job.

        A job whose handling raises (anything but its own ``perform``, which
        is routed to retry) is kept in the failed set as it came, with the
        reason: one hostile payload can neither take the node down nor be
        redelivered to take the next one down.
        """
        try:
            await self._handle(delivery, scope)
        except Exception as exc:
            if delivery not in self.held:
                log.exception("error after a job from %s was settled", delivery.reply)
                return
            log.exception("could not handle a job from %s; keeping it in the failed set", delivery.reply)
            self.stats.count(failed=True)
            reason = f"natskiq could not handle this job: {type(exc).__qualname__}: {retry.describe(exc)}"
            await self.settler.store(
                retry.fail_invalid, delivery.data, reason, queue=_origin(delivery.reply)[0],
                ack=functools.partial(self.settler.settle, delivery, b"+ACK"), seq=delivery.seq,
                max_payload=self.nc.max_payload,
            )  # fmt: skip

    async def _handle(self, delivery: Delivery, scope: anyio.CancelScope) -> None:
        ack = functools.partial(self.settler.settle, delivery, b"+ACK")
        queue, delivered = _origin(delivery.reply)
        where = {"ack": ack, "seq": delivery.seq, "max_payload": self.nc.max_payload}
        try:
            job = jobs.decode(delivery.data)
        except InvalidJob as exc:
            self.stats.count(failed=True)
            await self.settler.store(retry.fail_invalid, delivery.data, exc.reason, queue=queue, **where)
            return
        if job.queue != queue:
            # Trust the stream the job came from, not what its producer wrote.
            job = attrs.evolve(job, queue=queue)
        if job.periodic is not None:
            # Every tick of a periodic job carries the same envelope: give
            # each run its own jid, from the message's stream sequence.
            job = attrs.evolve(job, jid=f"{job.jid[:40]}-{delivery.seq}", enqueued_at=time.time())
        where["raw"] = delivery.data
        if delivered > self.max_deliveries:
            # Delivered again and again, never settled: it likely kills the
            # process that runs it. Keep it in the failed set, don't run it.
            self.stats.count(failed=True)
            limit = DeliveryLimit(delivered)
            await self.settler.store(
                retry.route, job, limit, worker=None, kill=True, emitter=self.emitter, **where
            )
            return
        try:
            worker: type[Worker] | None = lookup(job.cls)
        except UnknownWorker as exc:
            self.stats.count(failed=True)
            await self.settler.store(retry.route, job, exc, worker=None, emitter=self.emitter, **where)
            return
        assert worker is not None
        await self._execute(worker, job, where, delivery, scope)

    async def _execute(
        self,
        worker: type[Worker],
        job: jobs.Job,
        where: dict[str, Any],
        delivery: Delivery,
        scope: anyio.CancelScope,
    ) -> None:
        if self._cancelled and self._cancelled.pop(job.jid, None) is not None:
            await self._drop_cancelled(job, delivery, where["ack"], "before it started")
            return
        if worker.options.limited and self.limits is not None:
            await self._limited(worker, job, where, delivery, scope, self.limits)
        else:
            await self._start(worker, job, where, delivery, scope)

    async def _limited(
        self,
        worker: type[Worker],
        job: jobs.Job,
        where: dict[str, Any],
        delivery: Delivery,
        scope: anyio.CancelScope,
        limits: Limits,
    ) -> None:
        """Start a job of a class with a cluster-wide limit if a slot is free, else put it back."""
        entry = await limits.enter(job.cls, worker.options, job.jid)
        if entry.delay:
            log.debug("jid=%s class=%s over its limit: back in %.2fs", job.jid, job.cls, entry.delay)
            held = await self.settler.store(
                put_back, job, delivery.data, delay=entry.delay, seq=delivery.seq, ack=where["ack"]
            )
            if held is not None:
                # Its status reads scheduled, with when it is tried again, not queued.
                next_at = time.time() + entry.delay
                await self.emitter.emit("scheduled", job.jid, job.queue, job.cls, next_at=next_at, held=True)
            return
        try:
            await self._start(worker, job, where, delivery, scope)
        finally:
            with anyio.CancelScope(shield=True):
                await limits.leave(entry)

    async def _start(
        self,
        worker: type[Worker],
        job: jobs.Job,
        where: dict[str, Any],
        delivery: Delivery,
        scope: anyio.CancelScope,
    ) -> None:
        """Run the job, unless it expired, and settle it."""
        js, emit = self.js, self.emitter.emit
        ack = where["ack"]
        locked = job.unique_key is not None
        if (locked or job.expires_at is not None) and not await unique.on_start(js, self.names, job):
            if not await self._counted(job, delivery, succeeded=False):
                return
            await ack()  # expired before it could start (expires_in): skipped, not run
            await emit("expired", job.jid, job.queue, job.cls, node=self.node_id)
            return
        attempt = 1 if job.retry_count is None else job.retry_count + 2
        await self.emitter.emit_run("running", job.jid, job.queue, job.cls, self.node_id, attempt)
        self._running_info[job.jid] = {
            "jid": job.jid,
            "class": job.cls,
            "queue": job.queue,
            "started": time.time(),
        }
        self._running[job.jid] = scope
        try:
            value = await self._perform(worker, job, delivery)
            if job.chain is not None:
                # The next step is stored before this one is acked (and before its
                # result, so a step whose successor cannot be stored fails as a whole).
                await chains.advance(
                    js, self.names, job, value, max_payload=self.nc.max_payload, emitter=self.emitter
                )
            if job.keep_result is not None:
                # Stored before the ack: a result that was reported is durable.
                await self._keep(job, encode_result(value), raising=True)
        except anyio.get_cancelled_exc_class():
            if scope.cancel_called:
                with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
                    await self._drop_cancelled(job, delivery, ack, "while running", attempt=attempt)
            raise
        except Exception as exc:
            self.stats.count(failed=True)
            await self.settler.store(retry.route, job, exc, worker=worker, emitter=self.emitter, **where)
            return
        finally:
            self._running.pop(job.jid, None)
            self._running_info.pop(job.jid, None)
        self.stats.count(failed=False)
        if not await self._counted(job, delivery, succeeded=True):
            return
        if locked:
            await unique.on_success(js, self.names, job)
        await ack()
        await self.emitter.emit_run("succeeded", job.jid, job.queue, job.cls, self.node_id, attempt)

    async def _drop_cancelled(
        self, job: jobs.Job, delivery: Delivery, ack: Callable[[], Awaitable[None]], when: str, **fields: Any
    ) -> None:
        """Settle a job cancelled on request (natskiq.api.cancel): dropped, its outcome kept
        as cancelled, counted as failed in its batch, acked, then reported."""
        log.info("cancelled jid=%s class=%s queue=%s %s", job.jid, job.cls, job.queue, when)
        await unique.release(self.js, self.names, job)
        await self._keep(job, CANCELLED)
        if not await self._counted(job, delivery, succeeded=False):
            return
        await ack()
        await self.emitter.emit("cancelled", job.jid, job.queue, job.cls, node=self.node_id, **fields)

    async def _counted(self, job: jobs.Job, delivery: Delivery, *, succeeded: bool) -> bool:
        """Count the job's outcome in its batch, if it has one (a cancelled or expired job
        counts as failed: the batch cannot succeed without it); False when that could not
        be done, and the job is left unacked for JetStream to redeliver."""
        if job.batch is None or await batches.settled(self.js, self.names, job, succeeded=succeeded):
            return True
        self.held.discard(delivery)
        return False

    async def _keep(self, job: jobs.Job, doc: bytes, *, raising: bool = False) -> None:
        """Store ``doc`` as the job's result when it keeps one (``keep_result``).

        Raises:
            EnqueueError: with ``raising``, when it could not be stored (else logged).
        """
        if job.keep_result is None:
            return
        try:
            await store_result(self.js, self.names, job.jid, doc, job.keep_result, self.nc.max_payload)
        except EnqueueError as exc:
            if raising:
                raise
            log.warning("jid=%s class=%s: outcome not kept: %s", job.jid, job.cls, exc)
            return
        await self.emitter.reply(job.reply, job.jid, doc)

    async def _perform(self, worker: type[Worker], job: jobs.Job, delivery: Delivery) -> Any:
        instance = worker()
        instance.jid, instance.job = job.jid, job
        instance.report_progress = self._report
        instance.lease_token, instance.delivered_at = delivery.token, delivery.delivered_at
        instance.lease_shard = delivery.shard
        instance.batch = batches.handle(job.batch)
        timeout = worker.options.timeout
        call = functools.partial(instance.perform, *job.args, **job.kwargs)
        if timeout is None and is_async(worker):
            # The common case, without a closure or a timeout scope around it.
            return await middleware.run_server(self.middleware, instance, job, call)

        async def perform() -> Any:
            with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
                if is_async(worker):
                    return await call()
                return await anyio.to_thread.run_sync(call, limiter=self.threads, abandon_on_cancel=True)

        return await middleware.run_server(self.middleware, instance, job, perform)


async def report_progress(
    emitter: Emitter, node_id: str, worker: Worker, fraction: float, message: str
) -> None:
    """A running job's progress report (``Worker.progress``), published as a
    ``progress`` event at most every :data:`PROGRESS_EVERY` seconds: a report
    within that time of the previous one is dropped, unless it is the first
    to reach 1.0."""
    now = anyio.current_time()
    last = worker.__dict__.get("_progress_at", -math.inf)
    if now - last < PROGRESS_EVERY and fraction < 1.0:
        return
    worker.__dict__["_progress_at"] = now if fraction < 1.0 else math.inf
    job = worker.job
    await emitter.emit(
        "progress", job.jid, job.queue, job.cls, node=node_id, progress=fraction, message=message
    )


def _origin(reply: str) -> tuple[str, int]:
    """The queue a message came from (its ack subject's stream name) and how
    many times JetStream has delivered it, from one split of the subject."""
    tokens, offset = ack_tokens(reply)
    stream = tokens[offset] if len(tokens) > offset else ""
    try:
        delivered = int(tokens[offset + 2])
    except (IndexError, ValueError):
        delivered = 1
    return (stream.split("_Q_", 1)[1] if "_Q_" in stream else "invalid"), delivered
