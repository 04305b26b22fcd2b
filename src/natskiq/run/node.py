"""Stage 5, the node: runs the jobs the master hands it, then settles them.

Every ``natskiq worker`` process is one node. It receives :class:`Delivery`
objects (in-process from its own aggregator when it is master, otherwise on
``<ns>.ctl.dispatch.<node>``), and for each one:

1. refuses it (NAK, so it runs elsewhere at once) if it carries a fencing
   token older than the newest it has seen, or if the node is quiet;
2. waits for one of its runner tasks (at most ``concurrency``, started as
   work needs them);
3. decodes the envelope, looks the worker class up in the registry and runs
   ``perform`` in its task group (a plain ``def`` in a worker thread), under
   the worker's timeout;
4. settles exactly once: ack on success; on an exception, a retry or failed
   record stored first (PubAck) and then the ack (:mod:`natskiq.run.retry`); on
   cancellation (shutdown past its timeout), a shielded, bounded NAK.

While a job waits or runs, an in-progress ack (``+WPI``) every third of the
ack wait keeps JetStream from redelivering it mid-run. The node reports its
free capacity on ``<ns>.ctl.demand`` every second and whenever slots free
up, and answers a new master's announcement at once.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from natskiq import job as jobs
from natskiq import middleware
from natskiq.dispatch.protocol import Delivery, Inbox, ack_tokens
from natskiq.enqueue import unique
from natskiq.errors import DeliveryLimit, InvalidJob, UnknownWorker
from natskiq.run import retry
from natskiq.run.demand import Demand
from natskiq.run.fence import Fence
from natskiq.run.intake import Intake
from natskiq.run.settle import SETTLE_TIMEOUT, Settler
from natskiq.run.stats import Stats
from natskiq.topology import Names
from natskiq.worker import Worker, is_async, lookup

log = logging.getLogger(__name__)

RUN_SLICE = 0.005  # seconds a runner may run jobs back to back before it yields
MAX_DELIVERIES = 25
CANCEL_MEMORY = 600.0  # seconds a cancel request waits for a job that has not started


@attrs.define
class Node:
    """The processor pool of one worker process.

    Args:
        nc: the connection.
        names: the namespace's names.
        node_id: this node's id (a subject token).
        queues: ``(queue, weight)`` pairs in order.
        strict: serve queues in strict order rather than weighted.
        concurrency: jobs run at once.
        ack_wait: the consumers' ack wait, for in-progress acks.
        shards: how many dispatch shards the cluster runs (one master each).
    """

    nc: NATS
    names: Names
    node_id: str
    queues: list[tuple[str, int]]
    strict: bool = True
    concurrency: int = 10
    ack_wait: float = 4.0
    max_deliveries: int = MAX_DELIVERIES
    middleware: list[middleware.ServerMiddleware] = attrs.field(factory=middleware.server_chain)
    shards: int = 1
    capacity_hooks: list[Callable[[], None]] = attrs.field(factory=list)
    """The masters in this process (one per shard it leads), told at once when slots free up."""
    _busy: int = attrs.field(init=False, default=0)
    _quiet: bool = attrs.field(init=False, default=False)
    _held: set[Delivery] = attrs.field(init=False, factory=set)
    """Deliveries received and not yet settled (the settler's and the executor's too)."""
    _running: dict[str, anyio.CancelScope] = attrs.field(init=False, factory=dict)
    _running_info: dict[str, dict[str, Any]] = attrs.field(init=False, factory=dict)
    _cancelled: dict[str, float] = attrs.field(init=False, factory=dict)
    _threads: anyio.CapacityLimiter = attrs.field(init=False)
    _send: MemoryObjectSendStream[Delivery] = attrs.field(init=False)
    _recv: MemoryObjectReceiveStream[Delivery] = attrs.field(init=False)
    _idle: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _tg: TaskGroup | None = attrs.field(init=False, default=None)
    _runners: int = attrs.field(init=False, default=0)
    _waiting: int = attrs.field(init=False, default=0)
    _queued: int = attrs.field(init=False, default=0)
    _js: JetStreamContext | None = attrs.field(init=False, default=None)
    _fence: Fence = attrs.field(init=False)
    _settler: Settler = attrs.field(init=False)
    _stats: Stats = attrs.field(init=False)
    _intake: Intake = attrs.field(init=False)
    _demand: Demand = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._threads = anyio.CapacityLimiter(self.concurrency)
        self._send, self._recv = anyio.create_memory_object_stream[Delivery](math.inf)
        self._idle.set()
        js = self._jetstream()
        self._fence = Fence(js, self.names)
        self._settler = Settler(self.nc, js, self.names, self._held, self.ack_wait)
        self._stats = Stats(js, self.names, self.node_id)
        self._intake = Intake(self.nc, js, self._fence, self._settler, self.ack_wait, self.deliver_many)
        self._demand = Demand(self.nc, self.names, self._fence, self.demand)

    @property
    def busy(self) -> int:
        """Jobs received and not yet settled (running or waiting for a slot)."""
        return self._busy

    @property
    def queued(self) -> int:
        """Jobs received and waiting for a runner."""
        return self._queued

    @property
    def quiet(self) -> bool:
        """Whether the node takes no new jobs (told to be quiet, or not running)."""
        return self._quiet or self._tg is None

    @property
    def processed(self) -> int:
        """Runs this node finished (Sidekiq's processed)."""
        return self._stats.processed

    @property
    def failed(self) -> int:
        """Runs this node finished that failed."""
        return self._stats.failed

    @property
    def outcomes(self) -> collections.Counter[str]:
        """Where this node's failed runs went: ``retry``, ``failed`` or ``discarded``."""
        return self._settler.outcomes

    def running_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The jobs running here now (jid, class, queue, started), oldest first."""
        return sorted(self._running_info.values(), key=lambda j: float(j["started"]))[:limit]

    def demand(self) -> dict[str, Any]:
        """This node's capacity report, as sent to the master."""
        tokens, received = self._fence.report()
        return {
            "node": self.node_id,
            "concurrency": self.concurrency,
            "busy": self._busy,
            "queues": self.queues,
            "strict": self.strict,
            "tokens": tokens,
            "received": received,
            "quiet": self._quiet,
        }

    def _changed(self) -> None:
        hooks = self.capacity_hooks
        if len(hooks) < self.shards:
            self._demand.changed.set()  # a master elsewhere: report soon
        if len(hooks) > 1:
            # Several shards led here: each in turn gets the first go at the
            # free slots, so no partition waits behind another.
            hooks.append(hooks.pop(0))
        for hook in hooks:
            hook()  # this node's own masters, in-process

    def deliver_many(self, deliveries: list[Delivery]) -> None:
        """Accept jobs from the master (never blocks; refusals happen in the runner)."""
        # The fence's tables, kept here rather than through a call to it: this runs for every job.
        tokens, received = self._fence.newest, self._fence.received
        for delivery in deliveries:
            shard = delivery.shard
            newest = tokens.get(shard, 0)
            if delivery.token > newest:
                tokens[shard], received[shard] = delivery.token, 0
            if delivery.token >= newest:
                received[shard] = received.get(shard, 0) + 1
            self._held.add(delivery)
            self._send.send_nowait(delivery)
        self._busy += len(deliveries)
        self._queued += len(deliveries)
        if self._idle.is_set():
            self._idle = anyio.Event()
        # Runners are started as work needs them, up to the concurrency: an
        # idle node holds few tasks, a busy one no more than it may run.
        while self._queued > self._waiting and self._runners < self.concurrency and self._tg is not None:
            self._runners += 1
            self._waiting += 1
            self._tg.start_soon(self._runner)

    def set_quiet(self) -> None:
        """Stop taking new jobs (Sidekiq's quiet); running ones carry on."""
        if not self._quiet:
            log.info("node %s is quiet: no new jobs", self.node_id)
            self._quiet = True
            self._changed()

    async def wait_idle(self) -> None:
        """Return once no job is running or waiting on this node."""
        await self._idle.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive, run and settle jobs until cancelled."""
        dispatch_inbox = await Inbox.subscribe(self.nc, self.names.dispatch_subject(self.node_id))
        master_sub = await self.nc.subscribe(self.names.master_subject)
        cancel_sub = await self.nc.subscribe(self.names.cancel_subject)
        settler = self._settler
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._intake.read, dispatch_inbox)
                tg.start_soon(self._demand.answer, master_sub)
                tg.start_soon(self._read_cancels, cancel_sub)
                tg.start_soon(self._demand.run)
                tg.start_soon(settler.keep_alive)
                tg.start_soon(self._stats.run)
                tg.start_soon(settler.send_acks)
                self._tg, settler.batching = tg, True
                task_status.started()
        finally:
            self._tg, settler.batching = None, False
            self._send.close()
            self._recv.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
                await settler.hand_back()
            await dispatch_inbox.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await master_sub.unsubscribe()
                await cancel_sub.unsubscribe()

    async def _read_cancels(self, sub: Any) -> None:
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
                await self.nc.publish(msg.reply, json.dumps({"node": self.node_id, "jid": jid}).encode())

    # -- running --------------------------------------------------------

    def _done(self, delivery: Delivery) -> None:
        self._held.discard(delivery)
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()
        self._changed()

    async def _runner(self) -> None:
        """Run deliveries one at a time, for as long as the node runs.

        Jobs run in the runner's cancel scope: :func:`natskiq.api.cancel`
        cancels it to stop the job running there, and the runner goes on in
        a fresh one. (One scope per runner, not per job: entering and leaving
        a scope costs about as much as a short job's own bookkeeping.)
        """
        while True:
            with anyio.CancelScope() as scope:
                await self._run_jobs(scope)
                if not scope.cancel_called:
                    return  # no more deliveries: the node is stopping

    async def _run_jobs(self, scope: anyio.CancelScope) -> None:
        # The parts every job goes to, looked up once per runner rather than once per job.
        newest, settle = self._fence.newest, self._settler.settle
        slice_ends = time.perf_counter() + RUN_SLICE
        while not scope.cancel_called:
            try:
                try:
                    # Take a job that is already waiting without a pass through
                    # the event loop (receive() always makes one): a runner
                    # works through a burst of quick jobs in one go.
                    delivery = self._recv.receive_nowait()
                except anyio.WouldBlock:
                    delivery = await self._recv.receive()
                    slice_ends = time.perf_counter() + RUN_SLICE
            except anyio.EndOfStream:
                return
            finally:
                self._waiting -= 1
            self._queued -= 1
            try:
                if delivery.stale(anyio.current_time()):
                    # Not kept alive in time: JetStream has likely given the
                    # job to another node (fencing per delivery). Neither run
                    # nor NAK it; if it was not redelivered, it is once its
                    # ack wait ends.
                    self._held.discard(delivery)
                    log.warning("not starting a job held past its ack wait: %s", delivery.reply)
                elif self._quiet or delivery.token < newest.get(delivery.shard, 0):
                    # Quiet means no new job starts here, and a job handed out
                    # by a master that has since been replaced does not start
                    # either (fencing): back to the queue, to run at once.
                    await settle(delivery, b"-NAK")
                else:
                    await self._process(delivery, scope)
            except anyio.get_cancelled_exc_class():
                if delivery in self._held:
                    # Shut down while running: hand the job back at once.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
                        await settle(delivery, b"-NAK")
                raise
            finally:
                self._done(delivery)
                self._waiting += 1
            if time.perf_counter() > slice_ends:
                # Quick jobs run back to back without the loop's help; after
                # 5 ms of them (or one job that never awaited), the rest of
                # the process (pulls, acks, the lease's renewals) has a turn.
                await anyio.lowlevel.checkpoint()
                slice_ends = time.perf_counter() + RUN_SLICE

    async def _process(self, delivery: Delivery, scope: anyio.CancelScope) -> None:
        """Run one delivery; whatever goes wrong handling it stays with this job.

        A job whose handling raises (anything but its own ``perform``, which
        is routed to retry) is kept in the failed set as it came, with the
        reason: one hostile payload can neither take the node down nor be
        redelivered to take the next one down.
        """
        try:
            await self._handle(delivery, scope)
        except Exception as exc:
            if delivery not in self._held:
                log.exception("error after a job from %s was settled", delivery.reply)
                return
            log.exception("could not handle a job from %s; keeping it in the failed set", delivery.reply)
            self._stats.count(failed=True)
            reason = f"natskiq could not handle this job: {type(exc).__qualname__}: {retry.describe(exc)}"
            await self._settler.store(
                retry.fail_invalid, delivery.data, reason, queue=_origin(delivery.reply)[0],
                ack=functools.partial(self._settler.settle, delivery, b"+ACK"), seq=delivery.seq,
                max_payload=self.nc.max_payload,
            )  # fmt: skip

    async def _handle(self, delivery: Delivery, scope: anyio.CancelScope) -> None:
        ack = functools.partial(self._settler.settle, delivery, b"+ACK")
        queue, delivered = _origin(delivery.reply)
        where = {"ack": ack, "seq": delivery.seq, "max_payload": self.nc.max_payload}
        try:
            job = jobs.decode(delivery.data)
        except InvalidJob as exc:
            self._stats.count(failed=True)
            await self._settler.store(retry.fail_invalid, delivery.data, exc.reason, queue=queue, **where)
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
            self._stats.count(failed=True)
            limit = DeliveryLimit(delivered)
            await self._settler.store(retry.route, job, limit, worker=None, kill=True, **where)
            return
        try:
            worker: type[Worker] | None = lookup(job.cls)
        except UnknownWorker as exc:
            self._stats.count(failed=True)
            await self._settler.store(retry.route, job, exc, worker=None, **where)
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
        js = self._jetstream()
        ack = where["ack"]
        if self._cancelled and self._cancelled.pop(job.jid, None) is not None:
            log.info("cancelled jid=%s class=%s queue=%s before it started", job.jid, job.cls, job.queue)
            await unique.release(js, self.names, job)
            await ack()
            return
        locked = job.unique_key is not None
        if (locked or job.expires_at is not None) and not await unique.on_start(js, self.names, job):
            await ack()  # expired before it could start (expires_in): skipped, not run
            return
        self._running_info[job.jid] = {
            "jid": job.jid,
            "class": job.cls,
            "queue": job.queue,
            "started": time.time(),
        }
        self._running[job.jid] = scope
        try:
            await self._perform(worker, job, delivery)
        except anyio.get_cancelled_exc_class():
            if scope.cancel_called:
                # Cancelled on request (natskiq.api.cancel): the job is dropped.
                log.info("cancelled jid=%s class=%s queue=%s while running", job.jid, job.cls, job.queue)
                with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
                    await unique.release(js, self.names, job)
                    await ack()
            raise
        except Exception as exc:
            self._stats.count(failed=True)
            await self._settler.store(retry.route, job, exc, worker=worker, **where)
            return
        finally:
            self._running.pop(job.jid, None)
            self._running_info.pop(job.jid, None)
        self._stats.count(failed=False)
        if locked:
            await unique.on_success(js, self.names, job)
        await ack()

    def _jetstream(self) -> JetStreamContext:
        """The connection's JetStream context, made once (nats-py builds a new one per call)."""
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    async def _perform(self, worker: type[Worker], job: jobs.Job, delivery: Delivery) -> None:
        instance = worker()
        instance.jid, instance.job = job.jid, job
        instance.lease_token, instance.delivered_at = delivery.token, delivery.delivered_at
        instance.lease_shard = delivery.shard
        timeout = worker.options.timeout
        call = functools.partial(instance.perform, *job.args, **job.kwargs)
        if timeout is None and is_async(worker):
            # The common case, without a closure or a timeout scope around it.
            await middleware.run_server(self.middleware, instance, job, call)
            return

        async def perform() -> Any:
            with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
                if is_async(worker):
                    return await call()
                return await anyio.to_thread.run_sync(call, limiter=self._threads, abandon_on_cancel=True)

        await middleware.run_server(self.middleware, instance, job, perform)


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
