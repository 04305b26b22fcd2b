"""Stage 4, the aggregator's pull side: a shard's master takes jobs from the queues.

For each queue a node serves, :class:`Puller` keeps pull requests open on
the queue's durable consumer ``aggregator`` (its partition of it, on a
partitioned queue) for one job per slot of the nodes serving the queue
plus :data:`PREFETCH` per free slot, from the credit in
:class:`~natskiq.dispatch.credit.Peers`; so a slot that frees finds its
next job already here, and the master never holds much more than the
cluster can run. It receives the job messages and JetStream's status
messages on one inbox per queue, and hands on what it holds: a buffer per
queue of jobs with when they were last kept alive, and JetStream's count of
the jobs still pending, both read by the dispatch loop. It keeps held jobs
alive with in-progress acks and NAKs them when the master stops.

It pulls only while the lease is held. Jobs arriving after the lease was
lost, for requests still open, go back with a NAK delayed until those
requests have ended, so they reach the next master, not these requests
(see :meth:`Puller._refuse_late`).

It pulls nothing from a paused queue (see :mod:`natskiq.topology.pausing`):
it reads the pause from the queue's consumer when it starts, every
:data:`PAUSE_CHECK` seconds, at once when a pause or resume is announced
on ``<ns>.ctl.pause`` (:meth:`Puller.read_pauses`), and when the pause
is due to end. Once it knows of a pause it hands the queue's held jobs back
(NAK), and those still arriving for requests opened before, so a paused
queue dispatches nothing; once the pause has ended it pulls again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api as jsapi
from nats.js.errors import Error as JSError

from natskiq.dispatch.credit import Peers
from natskiq.dispatch.protocol import STALE_MARGIN, Inbox, ack_field, nak
from natskiq.errors import LeaseLost
from natskiq.topology import Names, check_name, ensure_consumer, pause_of, read_partitions

log = logging.getLogger(__name__)

PULL_EXPIRES = 2.0  # short, so a master that stops waits little for its open pulls (_refuse_late)
MAX_PULL_BATCH = 1024
PREFETCH = 4
UNPARTITIONED_RECHECK = 30.0  # seconds before a shard looks again whether a queue has its partition
PAUSE_CHECK = 5.0
"""Seconds between looks at a queue's pause, for one made without an announcement
(another tool, or an announcement lost while the master reconnected)."""
PAUSE_END_MARGIN = 0.05  # seconds past a pause's end before looking whether the server has ended it


@attrs.define
class _Pull:
    remaining: int
    expires_at: float


@attrs.define
class Puller:
    """Pulls every served queue's jobs and holds them until dispatched.

    Args:
        nc: the connection.
        names: the namespace's names.
        shard: the dispatch shard the master leads: partition ``shard`` of every queue.
        ack_wait: the consumers' ack wait, for in-progress acks of held jobs.
        check_lease: raises LeaseLost when the lease is no longer held.
        peers: the nodes, whose slots and credit size the pull requests.
        wake_dispatch: called when jobs arrived or the pending counts changed.
    """

    nc: NATS
    names: Names
    shard: int
    ack_wait: float
    check_lease: Callable[[], int]
    peers: Peers
    wake_dispatch: Callable[[], None]
    buffers: dict[str, deque[tuple[Msg, float]]] = attrs.field(init=False, factory=dict)
    """Each queue's held jobs, with when (``anyio.current_time()``) each was last kept alive."""
    pending: dict[str, int] = attrs.field(init=False, factory=dict)
    """Each queue's jobs left in JetStream, as last told."""
    recheck: float = 1.0
    """Seconds a request loop waits, without a wake-up, before it looks again."""
    paused: dict[str, float] = attrs.field(init=False, factory=dict)
    """The paused queues, each with when (``anyio.current_time()``) its pause ends (``inf``: no end)."""
    _look_at: dict[str, float] = attrs.field(init=False, factory=dict)
    _rearm: dict[str, anyio.Event] = attrs.field(init=False, factory=dict)
    _pulls: dict[str, deque[_Pull]] = attrs.field(init=False, factory=dict)
    _changed: dict[str, anyio.Event] = attrs.field(init=False, factory=dict)

    # A wake-up only sets the events; each queue's request loop makes its next
    # event itself when it wakes, so a burst of notifications costs one event
    # per queue. (One event shared by every queue's loop reached only the loop
    # that made it last: the others waited out ``recheck``.)
    def wake(self) -> None:
        """Credit or buffers changed: the request loops may pull more."""
        for changed in self._changed.values():
            changed.set()

    def serve(self, tg: TaskGroup, queues: list[str]) -> None:
        """Start pulling, in ``tg``, from queues seen for the first time."""
        for queue in queues:
            if queue not in self.buffers:
                self.buffers[queue] = deque()
                self._pulls[queue] = deque()
                # Until the queue's consumer has been looked at, assume it has
                # jobs, so strict order does not serve a later queue first.
                self.pending[queue] = 1
                tg.start_soon(self._pull, queue, name=f"natskiq pull {queue}")

    async def _pull(self, queue: str) -> None:
        """Keep pull requests open for a job per slot plus PREFETCH per free slot."""
        subject = self.nc.new_inbox()
        inbox = await Inbox.subscribe(self.nc, subject)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_pulled, queue, inbox)
                tg.start_soon(self._watch_pause, queue)
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
            changed = self._changed[queue] = anyio.Event()
            now = anyio.current_time()
            while pulls and pulls[0].expires_at < now:
                pulls.popleft()
            if not ensured:
                ensured = await self._ensure_consumer(queue)
            if queue in self.paused:
                # Nothing to pull until the pause ends (_watch_pause, _read_pulled wake this loop).
                with anyio.move_on_after(self.recheck):
                    await changed.wait()
                continue
            # Hold a job for every slot that serves the queue, so a slot that
            # frees finds its next job already here, plus PREFETCH per free
            # slot; pull in batches of at least a quarter of that, not one
            # by one.
            target = PREFETCH * self.peers.credit_for(queue) + self.peers.slots_for(queue)
            outstanding = sum(p.remaining for p in pulls)
            want = min(MAX_PULL_BATCH, target - len(self.buffers[queue]) - outstanding)
            if ensured and want > 0 and (not outstanding or want >= max(1, target // 4)):
                # A master that was paused past its lease must not pull when
                # it wakes: what it pulled would never be handed out.
                self.check_lease()
                request = {"batch": want, "expires": int(PULL_EXPIRES * 1e9)}
                pulls.append(_Pull(want, now + PULL_EXPIRES + 0.5))
                await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
                continue
            with anyio.move_on_after(self.recheck):
                await changed.wait()

    async def _ensure_consumer(self, queue: str) -> bool:
        js = self.nc.jetstream()
        try:
            if self.shard and not await self._partitioned(queue):
                return False
            info = await ensure_consumer(js, self.names, queue, ack_wait=self.ack_wait, shard=self.shard)
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("cannot reach queue %s yet: %r", queue, exc)
            self.pending[queue] = 0  # unknown: let the other queues be served meanwhile
            self.wake_dispatch()
            await anyio.sleep(0.5)
            return False
        # The jobs waiting there, until pulled messages tell a newer count.
        self.pending[queue] = info.num_pending or 0
        await self._learn_pause(queue, info)
        self.wake_dispatch()
        return True

    def look(self, queue: str) -> None:
        """Read the queue's pause from its consumer now (a pause or resume was announced)."""
        if queue in self._look_at:  # else its consumer's first look is still to come
            self._next_look(queue, 0.0)

    async def _watch_pause(self, queue: str) -> None:
        """Look at the queue's pause when due: every PAUSE_CHECK, at its end, at once when told.

        Beside the request loop, so that a slow look (a server failing over)
        never holds up pulling.
        """
        while True:
            rearm = self._rearm[queue] = anyio.Event()
            wait = self._look_at.get(queue, math.inf) - anyio.current_time()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await rearm.wait()
                continue
            await self._look(queue)

    async def read_pauses(self, sub: Any) -> None:
        """Look at once at the pause of each served queue announced on ``sub`` (``<ns>.ctl.pause``).

        An announcement only says where to look: the consumer's own info
        decides, so a forged one costs a look and changes nothing.
        """
        async for msg in sub.messages:
            try:
                queue = check_name("queue", json.loads(msg.data)["queue"])
            except (ValueError, KeyError, TypeError):
                log.debug("ignoring a malformed pause announcement: %r", msg.data[:100])
                continue
            self.look(queue)

    def _next_look(self, queue: str, at: float) -> None:
        """Have :meth:`_watch_pause` look at the queue's pause at ``at`` (``anyio.current_time()``)."""
        self._look_at[queue] = at
        if queue in self._rearm:
            self._rearm[queue].set()

    async def _look(self, queue: str) -> None:
        """Read the queue's consumer, and act on the pause it reports."""
        try:
            info = await self.nc.jetstream().consumer_info(
                self.names.queue_stream(queue), self.names.consumer(self.shard)
            )
        except (NatsError, JSError, TimeoutError) as exc:
            log.debug("cannot read the pause of queue %s: %r", queue, exc)
            self._next_look(queue, anyio.current_time() + PAUSE_CHECK)
            return
        await self._learn_pause(queue, info)

    async def _learn_pause(self, queue: str, info: jsapi.ConsumerInfo) -> None:
        """Take the pause the consumer's ``info`` reports: on a pause, hand the
        held jobs back; on its end, pull again."""
        pause, now = pause_of(info), anyio.current_time()
        if not pause.paused:
            self._next_look(queue, now + PAUSE_CHECK)
            if self.paused.pop(queue, None) is not None:
                log.info("queue %s resumed: dispatching its jobs again", queue)
                # A resume leaves the pull requests open since before the
                # pause unserved (only a pause's own end serves them): pull anew.
                self._pulls[queue].clear()
                self.pending[queue] = info.num_pending or 0
                self._changed[queue].set()
                self.wake_dispatch()
            return
        # Look when the server should have ended it (its own count of the time
        # left, whatever the clocks say), and every PAUSE_CHECK meanwhile.
        self._next_look(queue, now + min(PAUSE_CHECK, pause.remaining + PAUSE_END_MARGIN))
        first = queue not in self.paused
        self.paused[queue] = now + pause.remaining
        self.pending[queue] = 0  # so no node's order waits for this queue
        if first:
            held = list(self.buffers[queue])
            self.buffers[queue].clear()  # before any await: nothing of it is dispatched now
            log.info("queue %s is paused: dispatching none of its jobs (%d handed back)", queue, len(held))
            for msg, held_since in held:
                if now - held_since < self.ack_wait - STALE_MARGIN:  # else JetStream has given it out again
                    await self.nc.publish(msg.reply, nak(self._until_pulls_end(queue)))
            self.wake_dispatch()

    async def _partitioned(self, queue: str) -> bool:
        """Whether the queue has this shard's partition (read from its stream's
        subjects); if not, nothing to pull: look again in a while."""
        if await read_partitions(self.nc.jetstream(), self.names, queue) > self.shard:
            return True
        self.pending[queue] = 0
        self.wake_dispatch()
        await anyio.sleep(UNPARTITIONED_RECHECK)
        return False

    async def _read_pulled(self, queue: str, inbox: Inbox) -> None:
        buffer, pulls = self.buffers[queue], self._pulls[queue]
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
                if msg.reply and queue in self.paused and now >= self.paused[queue] - PAUSE_END_MARGIN:
                    # The pause's end: the server serves the pull requests
                    # still open at once, before a look at the consumer says so.
                    self._pause_ended(queue)
                if msg.reply and not held:
                    # Pulled under a lease since lost: back, once the open pulls have ended.
                    await self._hand_back(msg.reply, delay=self._until_pulls_end(queue))
                elif msg.reply and queue in self.paused:
                    # Delivered, just now, for a request opened before the pause: back,
                    # once the open pulls have ended (not straight back to them).
                    await self.nc.publish(msg.reply, nak(self._until_pulls_end(queue)))
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
                        self.pending[queue] = 0  # the request expired: nothing was left
                    else:
                        log.debug("pull on %s ended: %s", queue, msg.headers)
                    ended = True
            if not held:
                self.check_lease()  # stop now: _refuse_late takes what still comes
            if last_reply:
                # JetStream's count of jobs left in the queue, as of the newest one.
                self.pending[queue] = ack_field(last_reply, "pending")
                self.wake_dispatch()
            if ended:
                # A pull ended: both dispatching and pulling may act.
                self.wake_dispatch()
                self.wake()

    def _pause_ended(self, queue: str) -> None:
        """The server has ended the queue's pause: take its jobs again."""
        del self.paused[queue]
        log.info("queue %s: its pause has ended, dispatching its jobs again", queue)
        self._next_look(queue, anyio.current_time() + PAUSE_CHECK)
        self._changed[queue].set()

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

    async def keep_alive(self, now: float) -> None:
        """Tell JetStream the held jobs are in progress (+WPI) before a third of their ack wait passes."""
        for buffer in self.buffers.values():
            for index, (msg, held_since) in enumerate(buffer):
                if now - held_since > self.ack_wait / 3:
                    await self.nc.publish(msg.reply, b"+WPI")
                    buffer[index] = (msg, now)

    async def release(self) -> None:
        """NAK every job still held, so the next master gets it at once."""
        now = anyio.current_time()
        for buffer in self.buffers.values():
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
