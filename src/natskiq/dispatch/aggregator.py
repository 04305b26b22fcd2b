"""Stage 4, the aggregator: the master pulls from the queue streams and
hands jobs to nodes that have free slots.

It runs only in the node holding the lease (see :mod:`natskiq.dispatch.lease`),
and wires two collaborators to its dispatch loop:

* :class:`~natskiq.dispatch.credit.Peers` takes the demand every node
  reports on ``<ns>.ctl.demand`` (free capacity, queues and their order),
  as a heartbeat every second and whenever slots free up, and keeps each
  node's credit;
* :class:`~natskiq.dispatch.pulls.Puller` keeps pull requests open on each
  served queue's durable consumer ``aggregator``, sized by that credit, and
  holds the jobs that arrive until they are dispatched; it pulls nothing
  from a paused queue, and learns of a pause or its end at once from the
  announcements on ``<ns>.ctl.pause``.

Whenever either changes, a dispatch round picks, for each node with
credit, the queue its order serves next, and hands on :class:`Delivery`
objects: in-process to its own node (a batch per call, and at once
whenever that node has nothing left waiting), and as a core publish on
``<ns>.ctl.dispatch.<node>`` to the others, each carrying the JetStream
ack subject and the lease's fencing token. Nodes ack JetStream themselves.
Before every hand-off it checks that the lease is still held; when the
lease is lost it stops at once and NAKs what it still holds, so those jobs
are redelivered to the next master right away.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natskiq.dispatch.credit import Peer, Peers
from natskiq.dispatch.protocol import (
    ACK_HEADER,
    FETCH_HEADER,
    HEARTBEAT,
    KEPT_HEADER,
    SHARD_HEADER,
    TOKEN_HEADER,
    Delivery,
    LocalNode,
)
from natskiq.dispatch.pulls import Puller
from natskiq.errors import LeaseLost
from natskiq.job import headers_size
from natskiq.topology import Names

FETCH_ROOM = 32  # bytes for the fetch header, should the dispatch need it


@attrs.define
class Aggregator:
    """The master's dispatch loop, run while the lease is held.

    Args:
        nc: the connection (shared with the local node).
        names: the namespace's names.
        token: the lease's fencing token.
        check_lease: raises LeaseLost when the lease is no longer held.
        local: the node in this process, served without a network hop.
        ack_wait: the consumers' ack wait, for in-progress acks of held jobs.
        shard: the dispatch shard it leads: partition ``shard`` of every queue.
    """

    nc: NATS
    names: Names
    token: int
    check_lease: Callable[[], int]
    local: LocalNode | None = None
    ack_wait: float = 4.0
    shard: int = 0
    _peers: Peers = attrs.field(init=False)
    _puller: Puller = attrs.field(init=False)
    # The puller's holdings, read on every hand-off.
    _buffers: dict[str, deque[tuple[Msg, float]]] = attrs.field(init=False)
    _pending: dict[str, int] = attrs.field(init=False)
    _local_peer: Peer | None = attrs.field(init=False, default=None)
    _changed: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _tg: TaskGroup | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._peers = Peers(self.nc, self.names, self.token, self.shard, self.local, self._reported)
        self._puller = Puller(
            self.nc, self.names, self.shard, self.ack_wait, self.check_lease, self._peers, self._wake_dispatch
        )
        self._buffers, self._pending = self._puller.buffers, self._puller.pending

    def _notify(self) -> None:
        """Capacity or membership changed: both dispatching and pulling may act."""
        self._wake_dispatch()
        self._puller.wake()

    def _local_changed(self) -> None:
        """The node in this process freed slots: refill them from the buffers at
        once, without a pass through the event loop, so a node running short
        jobs goes from one to the next; then let pulling and the other nodes'
        dispatch catch up."""
        assert self.local is not None
        peer = self._local_peer
        # Refill once the node has nothing waiting, so it gets its free slots
        # in one batch rather than one job per finished job.
        if peer is not None and self.local.queued == 0:
            try:
                self._hand_off_local(peer, self.local)
            except LeaseLost:
                pass  # the dispatch loop finds out too, and stops this aggregator
        self._notify()

    # A wake-up only sets an event; the loop makes its next event itself when
    # it wakes, so a burst of notifications costs one event, not one each.
    def _wake_dispatch(self) -> None:
        self._changed.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Pull and dispatch until cancelled or the lease is lost."""
        demand_sub = await self.nc.subscribe(self.names.demand_subject)
        pause_sub = await self.nc.subscribe(self.names.pause_subject)
        if self.local is not None:
            self.local.capacity_hooks.append(self._local_changed)
            self._local_peer = self._peers.add_local(self.local)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._peers.read_demand, demand_sub)
                tg.start_soon(self._puller.read_pauses, pause_sub)
                tg.start_soon(self._housekeeping)
                announcement = {"token": self.token, "shard": self.shard}
                await self.nc.publish(self.names.master_subject, json.dumps(announcement).encode())
                self._refresh_local()
                task_status.started()
                await self._dispatch_loop()
        finally:
            if self.local is not None and self._local_changed in self.local.capacity_hooks:
                self.local.capacity_hooks.remove(self._local_changed)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._puller.release()
                await demand_sub.unsubscribe()
                await pause_sub.unsubscribe()

    def _reported(self, peer: Peer) -> None:
        """Another node's demand report was taken: serve its queues, and act on its credit."""
        self._serve(peer.queues)
        self._notify()

    def _refresh_local(self) -> None:
        """Take the local node's queues and order (its credit is read live)."""
        if self.local is not None and self._local_peer is not None:
            self._local_peer.update(self.local.demand(), self.token, self.shard)
            self._serve(self._local_peer.queues)

    def _serve(self, queues: list[str]) -> None:
        """Start pulling from queues seen for the first time."""
        assert self._tg is not None
        self._puller.serve(self._tg, queues)

    # -- dispatch -------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            changed = self._changed = anyio.Event()
            await self._dispatch_round()
            await changed.wait()

    async def _dispatch_round(self) -> bool:
        """Hand out as many buffered jobs as nodes have credit for."""
        moved = False
        peers = list(self._peers.by_id.values())
        random.shuffle(peers)
        for peer in peers:
            if peer.local is not None:
                moved = self._hand_off_local(peer, peer.local) or moved
                continue
            while peer.credit > 0:
                queue = peer.pick(self._buffers, self._pending)
                if queue is None:
                    break
                msg, held_since = self._buffers[queue].popleft()
                await self._hand_off(peer, msg, held_since)
                moved = True
        if moved:
            self._puller.wake()  # buffers shrank: pull more
        return moved

    def _hand_off_local(self, peer: Peer, local: LocalNode) -> bool:
        """Hand the node in this process every job it has credit for, in one call.

        Nothing here awaits, so the lease checked once holds for the whole batch.
        """
        batch: list[Delivery] = []
        credit = peer.credit
        token = 0
        now = time.time()
        while credit > 0:
            queue = peer.pick(self._buffers, self._pending)
            if queue is None:
                break
            if not batch:
                token = self.check_lease()
            buffer = self._buffers[queue]
            # Strict order takes a run from the chosen queue; weighted order
            # draws again for every job.
            take = min(credit, len(buffer)) if peer.strict else 1
            for _ in range(take):
                msg, held_since = buffer.popleft()
                batch.append(
                    Delivery(msg.data, msg.reply, token, now, held_since + self.ack_wait, self.shard)
                )
            credit -= take
        if not batch:
            return False
        peer.sent += len(batch)
        local.deliver_many(batch)
        return True

    async def _hand_off(self, peer: Peer, msg: Msg, held_since: float) -> None:
        token = self.check_lease()
        peer.sent += 1
        kept = time.time() - (anyio.current_time() - held_since)
        headers = {TOKEN_HEADER: str(token), ACK_HEADER: msg.reply, KEPT_HEADER: f"{kept:.3f}"}
        if self.shard:
            headers[SHARD_HEADER] = str(self.shard)
        data = msg.data
        if len(data) + headers_size(headers) + FETCH_ROOM > self.nc.max_payload:
            # The server closes a connection that publishes past its max
            # payload, headers included: a job stored just under the limit
            # would not fit beside the dispatch headers. The node reads it
            # from its stream instead.
            headers[FETCH_HEADER] = "1"
            data = b""
        await self.nc.publish(self.names.dispatch_subject(peer.node_id), data, headers=headers)

    # -- housekeeping ---------------------------------------------------

    async def _housekeeping(self) -> None:
        """Drop silent nodes and keep held jobs alive."""
        while True:
            await anyio.sleep(HEARTBEAT / 2)
            self.check_lease()
            now = anyio.current_time()
            self._peers.drop_silent(now)
            await self._puller.keep_alive(now)
            self._notify()
