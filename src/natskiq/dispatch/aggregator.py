"""Stage 4, the aggregator: the master pulls from the queue streams and
hands jobs to nodes that have free slots.

It runs only in the node holding the lease (see :mod:`natskiq.dispatch.lease`) and
receives:

* demand from every node on ``<ns>.ctl.demand`` (free capacity, queues and
  their order), as a heartbeat every second and whenever slots free up,
  which :class:`~natskiq.dispatch.credit.Peers` keeps as each node's credit;
* job messages from each queue's durable pull consumer ``aggregator``, for
  which it keeps pull requests open for one job per slot of the nodes
  serving the queue plus a few per free slot (so a slot that frees finds
  its next job already here, and the master never holds much more than
  the cluster can run);

and hands on :class:`Delivery` objects: in-process to its own node (a
batch per call, and at once whenever that node has nothing left waiting),
and as a core publish on ``<ns>.ctl.dispatch.<node>`` to the others, each
carrying the JetStream ack subject and the lease's fencing token. Nodes
ack JetStream themselves. Before every hand-off it checks that the lease
is still held; when the lease is lost it stops at once and NAKs what it
still holds, so those jobs are redelivered to the next master right away.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError

from natskiq.dispatch.credit import Peer, Peers
from natskiq.dispatch.protocol import (
    ACK_HEADER,
    FETCH_HEADER,
    HEARTBEAT,
    KEPT_HEADER,
    SHARD_HEADER,
    STALE_MARGIN,
    TOKEN_HEADER,
    Delivery,
    Inbox,
    LocalNode,
    ack_field,
    nak,
)
from natskiq.errors import LeaseLost
from natskiq.job import headers_size
from natskiq.topology import Names, ensure_consumer, read_partitions

log = logging.getLogger(__name__)

PULL_EXPIRES = 2.0  # short, so a master that stops waits little for its open pulls (_refuse_late)
MAX_PULL_BATCH = 1024
PREFETCH = 4
FETCH_ROOM = 32  # bytes for the fetch header, should the dispatch need it
UNPARTITIONED_RECHECK = 30.0  # seconds before a shard looks again whether a queue has its partition


@attrs.define
class _Pull:
    remaining: int
    expires_at: float


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
    _buffers: dict[str, deque[tuple[Msg, float]]] = attrs.field(init=False, factory=dict)
    _pulls: dict[str, deque[_Pull]] = attrs.field(init=False, factory=dict)
    _pending: dict[str, int] = attrs.field(init=False, factory=dict)
    _local_peer: Peer | None = attrs.field(init=False, default=None)
    _changed: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _pull_changed: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _tg: TaskGroup | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._peers = Peers(self.nc, self.names, self.token, self.shard, self.local, self._reported)

    def _notify(self) -> None:
        """Capacity or membership changed: both dispatching and pulling may act."""
        self._wake_dispatch()
        self._wake_pull()

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

    # A wake-up only sets an event; each loop makes its next event itself when
    # it wakes, so a burst of notifications costs one event, not one each.
    def _wake_dispatch(self) -> None:
        self._changed.set()

    def _wake_pull(self) -> None:
        self._pull_changed.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Pull and dispatch until cancelled or the lease is lost."""
        demand_sub = await self.nc.subscribe(self.names.demand_subject)
        if self.local is not None:
            self.local.capacity_hooks.append(self._local_changed)
            self._local_peer = self._peers.add_local(self.local)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._peers.read_demand, demand_sub)
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
                await self._release_held()
                await demand_sub.unsubscribe()

    # -- demand ---------------------------------------------------------

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
        for queue in queues:
            if queue not in self._buffers:
                self._buffers[queue] = deque()
                self._pulls[queue] = deque()
                # Until the queue's consumer has been looked at, assume it has
                # jobs, so strict order does not serve a later queue first.
                self._pending[queue] = 1
                self._tg.start_soon(self._pull, queue, name=f"natskiq pull {queue}")

    # -- pulling --------------------------------------------------------

    async def _pull(self, queue: str) -> None:
        """Keep pull requests open for a job per slot plus PREFETCH per free slot."""
        subject = self.nc.new_inbox()
        inbox = await Inbox.subscribe(self.nc, subject)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_pulled, queue, inbox)
                await self._request_loop(queue, subject)
        finally:
            with anyio.CancelScope(shield=True):
                await self._refuse_late(queue, inbox)
            await inbox.close()

    async def _refuse_late(self, queue: str, inbox: Inbox) -> None:
        """NAK the jobs that still arrive for this master's open pull requests once it lost its lease.

        JetStream keeps serving a pull request until it expires, whoever
        asked: a master that was paused past its lease finds jobs arriving
        for the requests it had open, and one delivered to an inbox nobody
        reads waits out the whole ack wait. Listening until the requests
        have ended (at most :data:`PULL_EXPIRES`) hands each straight back,
        with a NAK delayed until they have ended: a plain NAK makes the job
        the next one the server sends, to these same requests, and a job
        handed back and forth that way up to a batch's size of times
        reaches ``--max-deliveries`` without ever running (a lease handed
        over to balance the shards, or lost to a slow server, leaves
        requests open for up to :data:`PULL_EXPIRES`).
        """
        pulls = self._pulls[queue]
        if self._holds_lease():
            # A graceful stop: no other master can be pulling yet, and the
            # server drops a pull request once nobody listens on its inbox.
            pulls.clear()
            return
        open_pulls = len(pulls)
        now = anyio.current_time()
        until = now + self._until_pulls_end(queue)
        pulls.clear()
        with anyio.move_on_after(max(0.0, until - now)):
            while open_pulls > 0:
                for msg in await inbox.get():
                    if msg.reply:
                        await self._hand_back(msg.reply, delay=until - anyio.current_time())
                    elif (msg.headers or {}).get("Status") in ("408", "409"):
                        open_pulls -= 1

    async def _request_loop(self, queue: str, inbox: str) -> None:
        pulls = self._pulls[queue]
        subject = self.names.pull_subject(queue, self.shard)
        ensured = False
        while True:
            changed = self._pull_changed = anyio.Event()
            now = anyio.current_time()
            while pulls and pulls[0].expires_at < now:
                pulls.popleft()
            if not ensured:
                ensured = await self._ensure_consumer(queue)
            # Hold a job for every slot that serves the queue, so a slot that
            # frees finds its next job already here, plus PREFETCH per free
            # slot; pull in batches of at least a quarter of that, not one
            # by one.
            target = PREFETCH * self._peers.credit_for(queue) + self._peers.slots_for(queue)
            outstanding = sum(p.remaining for p in pulls)
            want = min(MAX_PULL_BATCH, target - len(self._buffers[queue]) - outstanding)
            if ensured and want > 0 and (not outstanding or want >= max(1, target // 4)):
                # A master that was paused past its lease must not pull when
                # it wakes: what it pulled would never be handed out.
                self.check_lease()
                request = {"batch": want, "expires": int(PULL_EXPIRES * 1e9)}
                pulls.append(_Pull(want, now + PULL_EXPIRES + 0.5))
                await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
                continue
            with anyio.move_on_after(1.0):
                await changed.wait()

    async def _ensure_consumer(self, queue: str) -> bool:
        js = self.nc.jetstream()
        try:
            if self.shard and not await self._partitioned(queue):
                return False
            info = await ensure_consumer(js, self.names, queue, ack_wait=self.ack_wait, shard=self.shard)
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("cannot reach queue %s yet: %r", queue, exc)
            self._pending[queue] = 0  # unknown: let the other queues be served meanwhile
            self._wake_dispatch()
            await anyio.sleep(0.5)
            return False
        # The jobs waiting there, until pulled messages tell a newer count.
        self._pending[queue] = info.num_pending or 0
        self._wake_dispatch()
        return True

    async def _partitioned(self, queue: str) -> bool:
        """Whether the queue has this shard's partition (read from its stream's
        subjects); if not, nothing to pull: look again in a while."""
        if await read_partitions(self.nc.jetstream(), self.names, queue) > self.shard:
            return True
        self._pending[queue] = 0
        self._wake_dispatch()
        await anyio.sleep(UNPARTITIONED_RECHECK)
        return False

    async def _read_pulled(self, queue: str, inbox: Inbox) -> None:
        buffer, pulls = self._buffers[queue], self._pulls[queue]
        while True:
            msgs = await inbox.get()
            now = anyio.current_time()
            last_reply = ""
            ended = False
            held = self._holds_lease()
            for msg in msgs:
                # A stored message always has its ack subject; JetStream's
                # status messages have none. (A producer may store a "Status"
                # header of its own: it is a job all the same.)
                status = None if msg.reply else (msg.headers or {}).get("Status")
                if msg.reply and not held:
                    # Pulled under a lease since lost: back, once the open pulls have ended.
                    await self._hand_back(msg.reply, delay=self._until_pulls_end(queue))
                elif msg.reply:
                    buffer.append((msg, now))
                    last_reply = msg.reply
                    if pulls:
                        pulls[0].remaining -= 1
                        if pulls[0].remaining <= 0:
                            pulls.popleft()
                elif status in ("408", "409"):
                    if pulls:
                        pulls.popleft()
                    if status == "408":
                        self._pending[queue] = 0  # the request expired: nothing was left
                    else:
                        log.debug("pull on %s ended: %s", queue, msg.headers)
                    ended = True
            if not held:
                self.check_lease()  # stop now: _refuse_late takes what still comes
            if last_reply:
                # JetStream's count of jobs left in the queue, as of the newest one.
                self._pending[queue] = ack_field(last_reply, "pending")
                self._wake_dispatch()
            if ended:
                self._notify()

    def _until_pulls_end(self, queue: str) -> float:
        """Seconds until every pull request open on ``queue`` has surely ended
        (a little past the latest expiry), the delay of a NAK that must not
        come back to them (see :meth:`_refuse_late`)."""
        now = anyio.current_time()
        return max((pull.expires_at for pull in self._pulls[queue]), default=now) - now + 0.1

    async def _hand_back(self, reply: str, delay: float = 0.0) -> None:
        """NAK a job that arrived too late to dispatch (redelivered after
        ``delay`` seconds), unless JetStream may have redelivered it.

        After a pause the arrival is late by the whole pause: the ack
        subject's delivery time (the server's clock) says how old it really is.
        """
        age = time.time() - ack_field(reply, "ts") / 1e9
        if age < self.ack_wait - STALE_MARGIN:
            await self.nc.publish(reply, nak(delay))
        else:
            log.info("not handing back a job delivered %.1fs ago: JetStream has given it out again", age)

    def _holds_lease(self) -> bool:
        try:
            self.check_lease()
        except LeaseLost:
            return False
        return True

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
            self._wake_pull()  # buffers shrank: pull more
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
            for buffer in self._buffers.values():
                for index, (msg, held_since) in enumerate(buffer):
                    if now - held_since > self.ack_wait / 3:
                        await self.nc.publish(msg.reply, b"+WPI")
                        buffer[index] = (msg, now)
            self._notify()

    async def _release_held(self) -> None:
        """NAK every job still buffered, so the next master gets it at once."""
        now = anyio.current_time()
        for buffer in self._buffers.values():
            while buffer:
                msg, held_since = buffer.popleft()
                if now - held_since > self.ack_wait - STALE_MARGIN:
                    continue  # not kept alive in time (a pause): JetStream has given it out again
                try:
                    await self.nc.publish(msg.reply, b"-NAK")
                except NatsError:
                    return
        try:
            await self.nc.flush(timeout=1)
        except (NatsError, TimeoutError):
            pass
