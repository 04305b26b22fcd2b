"""The launcher: one ``natskiq worker`` process, wired together.

Like Sidekiq's Launcher it owns the parts of a node and their life cycle:
it connects, creates the streams and buckets it needs, starts the
:class:`~natskiq.run.node.Node`, runs the election (and the
:class:`~natskiq.dispatch.aggregator.Aggregator` while this node holds the lease),
keeps the node's entry in the nodes bucket fresh, and shuts down in
Sidekiq's two steps: ``quiet`` (take no new work, give up the lease so
another node takes over at once) and ``stop`` (wait up to ``timeout`` for
running jobs, then cancel them, which NAKs them so they run elsewhere).

It receives :class:`~natskiq.ops.settings.Settings` (re-exported here, with
:func:`~natskiq.ops.settings.import_app` and :data:`EVENT_LOOPS`) and hands
the parts to its collaborators: :func:`~natskiq.ops.provision.provision`
creates the streams and buckets, a :class:`~natskiq.ops.heartbeat.Heartbeat`
keeps the node's entry, and :mod:`natskiq.ops.watches` reads the commands
sent to the node and looks at the partitions and the failed set. The
launcher itself keeps the election, what a shard's master runs, and the
two steps of a shutdown (by command or by signal).
"""

from __future__ import annotations

import functools
import logging
import signal
import time

import anyio
import attrs
from anyio.abc import TaskStatus

from natskiq import api
from natskiq.dispatch.aggregator import Aggregator
from natskiq.dispatch.lease import Lease
from natskiq.dispatch.shards import Shards
from natskiq.enqueue.client import Client
from natskiq.errors import ConfigError
from natskiq.ops.heartbeat import Heartbeat
from natskiq.ops.metrics import Metrics
from natskiq.ops.metrics import serve as serve_metrics
from natskiq.ops.provision import provision
from natskiq.ops.settings import EVENT_LOOPS, Settings, import_app
from natskiq.ops.watches import read_commands, watch_failed, watch_partitions
from natskiq.run import sweep
from natskiq.run.node import Node

__all__ = ["EVENT_LOOPS", "Launcher", "Settings", "import_app"]

log = logging.getLogger(__name__)

PARTITIONS_RECHECK = 10.0  # seconds between looks at the queues' partition counts
FAILED_CHECK = 10.0  # seconds between looks at the failed set's trim count


@attrs.define
class Launcher:
    """One node: connection, node, election, aggregator, heartbeat, shutdown."""

    settings: Settings
    client: Client = attrs.field(init=False)
    node: Node = attrs.field(init=False)
    shards: Shards = attrs.field(init=False)
    started_at: float = attrs.field(init=False, factory=time.time)
    _scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    _elect_scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    _stopping: anyio.Event | None = attrs.field(init=False, default=None)
    _heartbeat: Heartbeat = attrs.field(init=False)
    metrics: Metrics | None = attrs.field(init=False, default=None)
    metrics_address: int | None = attrs.field(init=False, default=None)

    @property
    def lease(self) -> Lease:
        """Shard 0's lease: its master also sweeps and watches the failed set."""
        return self.shards.leases[0]

    @property
    def is_master(self) -> bool:
        """Whether this node leads at least one shard."""
        return bool(self.shards.led())

    async def _setup(self) -> None:
        s = self.settings
        self.client = Client(
            url=s.url,
            namespace=s.namespace,
            replicas=s.replicas,
            nats_options=s.nats_options,
            events=s.events,
        )
        await self.client.open()
        order, strict = s.queue_order
        try:
            provisioned = await provision(self.client, s)
        except ConfigError:
            await self.client.close()
            raise
        self.node = Node(
            self.client.nc,
            self.client.names,
            s.node_id,
            order,
            strict=strict,
            concurrency=s.concurrency,
            ack_wait=s.ack_wait,
            max_deliveries=s.max_deliveries,
            shards=provisioned.shards,
            events=s.events,
        )
        if s.metrics_port is not None:
            self.metrics = Metrics(outcomes=self.node.outcomes)
            self.node.middleware.append(self.metrics)
        self.shards = Shards(
            self.client.nc, self.client.names, s.node_id, provisioned.shards, self._lead, ttl=s.lease_ttl
        )
        self._heartbeat = Heartbeat(
            s, self.client, self.node, self.shards, provisioned.nodes_kv, started_at=self.started_at
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the node until :meth:`stop` (or a signal, via :meth:`serve`)."""
        self._stopping = self._stopping or anyio.Event()
        self._elect_scope = anyio.CancelScope()
        await self._setup()
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                await tg.start(self.node.run)
                tg.start_soon(self._elect)
                tg.start_soon(self._heartbeat.run)
                tg.start_soon(read_commands, self.client, self.settings.node_id, self.quiet, self.stop)
                tg.start_soon(watch_failed, self.client, self.lease, FAILED_CHECK)
                if self.metrics is not None and self.settings.metrics_port is not None:
                    self.metrics_address = await tg.start(
                        serve_metrics, self.metrics, self.client, self.settings.metrics_port
                    )
                log.info(
                    "node %s started: queues=%s concurrency=%d",
                    self.settings.node_id,
                    ",".join(self.settings.queues),
                    self.settings.concurrency,
                )
                task_status.started()
                await self._stopping.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                await self._heartbeat.forget()
                await self.client.close()
            log.info("node %s stopped", self.settings.node_id)

    async def _elect(self) -> None:
        assert self._elect_scope is not None
        with self._elect_scope:
            async with anyio.create_task_group() as tg:
                queues = [queue for queue, _ in self.settings.queue_order[0]]
                tg.start_soon(
                    watch_partitions,
                    self.client,
                    queues,
                    self.node,
                    self.shards,
                    PARTITIONS_RECHECK,
                    name="natskiq partitions",
                )
                await self.shards.run()
                tg.cancel_scope.cancel()

    async def _lead(self, shard: int, token: int) -> None:
        aggregator = Aggregator(
            self.client.nc,
            self.client.names,
            token,
            self.shards.leases[shard].check,
            local=self.node,
            ack_wait=self.settings.ack_wait,
            shard=shard,
        )
        if shard:
            await aggregator.run()
            return
        client = self.client
        async with anyio.create_task_group() as tg:
            # Messages on schedule subjects that would never fire go to the failed set.
            sweeping = functools.partial(api.queue_names, client)
            tg.start_soon(
                functools.partial(
                    sweep.keep_swept, client.js, client.names, sweeping, max_payload=client.nc.max_payload
                ),
                name="natskiq sweep",
            )
            await aggregator.run()
            tg.cancel_scope.cancel()

    def quiet(self) -> None:
        """Take no new jobs and hand the lease over; running jobs carry on."""
        self.node.set_quiet()
        if self._elect_scope is not None:
            self._elect_scope.cancel()

    def stop(self) -> None:
        """Begin a graceful stop (as SIGTERM does)."""
        if self._stopping is None:
            self._stopping = anyio.Event()
        self._stopping.set()

    async def _shutdown(self) -> None:
        self.quiet()
        timeout = self.settings.timeout
        log.info("stopping: waiting up to %.0fs for %d running job(s)", timeout, self.node.busy)
        with anyio.move_on_after(timeout):
            await self.node.wait_idle()
        if self.node.busy:
            log.warning(
                "%d job(s) still running after %.0fs: they go back to the queue", self.node.busy, timeout
            )

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT (graceful stop) with SIGTSTP as quiet."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals)
            await self.run()
            tg.cancel_scope.cancel()

    async def _signals(self) -> None:
        wanted = [signal.SIGTERM, signal.SIGINT]
        if hasattr(signal, "SIGTSTP"):
            wanted.append(signal.SIGTSTP)
        with anyio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if signum == getattr(signal, "SIGTSTP", None):
                    log.info("SIGTSTP: quiet")
                    self.quiet()
                elif self._stopping is not None and self._stopping.is_set():
                    log.warning("second signal: stopping now")
                    if self._scope is not None:
                        self._scope.cancel()
                else:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    self.stop()
