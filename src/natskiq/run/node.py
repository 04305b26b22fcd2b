"""Stage 5, the node: runs the jobs the masters hand it, then settles them.

Every ``natskiq worker`` process is one node. It receives :class:`Delivery`
objects (in-process from its own aggregators, one per shard it leads, or
from masters elsewhere on ``<ns>.ctl.dispatch.<node>``, through the
:mod:`~natskiq.run.intake`), and for each one:

1. refuses it (NAK, so it runs elsewhere at once) if it carries a fencing
   token older than the newest its :mod:`~natskiq.run.fence` has seen for
   its shard, or if the node is quiet; one held past its ack wait is
   neither run nor NAKed (it may be another node's by now);
2. waits for one of its runner tasks (at most ``concurrency``, started as
   work needs them);
3. hands it to the executor (:mod:`~natskiq.run.execute`), which decodes
   the envelope, looks the worker class up in the registry, runs
   ``perform`` in the runner's cancel scope (a plain ``def`` in a worker
   thread), under the worker's timeout, and counts the run
   (:mod:`~natskiq.run.stats`);
4. settles exactly once (:mod:`~natskiq.run.settle`): ack on success; on an
   exception, a retry or failed record stored first (PubAck) and then the
   ack (:mod:`natskiq.run.retry`); on cancellation (shutdown past its
   timeout), a shielded, bounded NAK.

While a job waits or runs, the settler's in-progress ack (``+WPI``) every
third of the ack wait keeps JetStream from redelivering it mid-run. The
node reports its free capacity on ``<ns>.ctl.demand`` every second and
whenever slots free up, and answers a new master's announcement at once
(:mod:`~natskiq.run.demand`); the masters in this process are told at
once through ``capacity_hooks``.

The :class:`Node` keeps what every job passes through (taking deliveries
in, the runners, the busy and queued counts) itself rather than behind
calls to its parts, and starts and stops the parts, each in a module of
its own.
"""

from __future__ import annotations

import collections
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

from natskiq import middleware
from natskiq.dispatch.protocol import Delivery, Inbox
from natskiq.run.demand import Demand
from natskiq.run.execute import Executor
from natskiq.run.fence import Fence
from natskiq.run.intake import Intake
from natskiq.run.limits import Limits
from natskiq.run.settle import SETTLE_TIMEOUT, Settler
from natskiq.run.stats import Stats
from natskiq.status.events import Emitter
from natskiq.topology import Names

log = logging.getLogger(__name__)

RUN_SLICE = 0.005  # seconds a runner may run jobs back to back before it yields
MAX_DELIVERIES = 25


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
        events: publish the jobs' lifecycle events (see :mod:`natskiq.status.events`).
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
    events: bool = True
    """The masters in this process (one per shard it leads), told at once when slots free up."""
    _busy: int = attrs.field(init=False, default=0)
    _quiet: bool = attrs.field(init=False, default=False)
    _held: set[Delivery] = attrs.field(init=False, factory=set)
    """Deliveries received and not yet settled (the settler's and the executor's too)."""
    _send: MemoryObjectSendStream[Delivery] = attrs.field(init=False)
    _recv: MemoryObjectReceiveStream[Delivery] = attrs.field(init=False)
    _idle: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _tg: TaskGroup | None = attrs.field(init=False, default=None)
    _runners: int = attrs.field(init=False, default=0)
    _waiting: int = attrs.field(init=False, default=0)
    _queued: int = attrs.field(init=False, default=0)
    _fence: Fence = attrs.field(init=False)
    _settler: Settler = attrs.field(init=False)
    _stats: Stats = attrs.field(init=False)
    _executor: Executor = attrs.field(init=False)
    _limits: Limits = attrs.field(init=False)
    _intake: Intake = attrs.field(init=False)
    _demand: Demand = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[Delivery](math.inf)
        self._idle.set()
        nc, names = self.nc, self.names
        js = nc.jetstream()  # one context for every part: nats-py builds a new one per call
        self._fence = Fence(js, names)
        emitter = Emitter(nc, names, enabled=self.events)
        self._settler = Settler(nc, js, names, self._held, self.ack_wait, emitter)
        self._stats = Stats(js, names, self.node_id)
        self._limits = Limits(js, names, self.node_id, self.ack_wait)
        self._executor = Executor(
            nc, js, names, self.node_id, self._held, self._settler, self._stats,
            self.middleware, self.max_deliveries, anyio.CapacityLimiter(self.concurrency),
            emitter, self._limits,
        )  # fmt: skip
        self._intake = Intake(nc, js, self._fence, self._settler, self.ack_wait, self.deliver_many)
        self._demand = Demand(nc, names, self._fence, self.demand)

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
        return self._executor.running_jobs(limit)

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
                tg.start_soon(self._executor.read_cancels, cancel_sub)
                tg.start_soon(self._demand.run)
                tg.start_soon(settler.keep_alive)
                tg.start_soon(self._stats.run)
                tg.start_soon(settler.send_acks)
                tg.start_soon(self._limits.run)
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
        newest, settle, process = self._fence.newest, self._settler.settle, self._executor.process
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
                    await process(delivery, scope)
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
