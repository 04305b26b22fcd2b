"""Stage 5, the node's settler: what goes back on a job's ack subject.

The node holds every delivery it received and has not settled (``held``,
the set it shares with the settler). While a job waits or runs, the
settler sends an in-progress ack (``+WPI``) every third of the ack wait,
so JetStream does not redeliver it mid-run. Then it settles each one
exactly once: ``+ACK`` (queued, and sent in batches that share socket
writes while the node runs, with the node's queued lifecycle events just
before them), a NAK (back to the queue, at once or after a
delay), or, for a run that failed, a successor stored first through a
route of :mod:`natskiq.run.retry` (retried while NATS is unreachable),
which acks the job itself once that record's PubAck is in.

It guarantees that a delivery which may be another node's by now (held
past its ack wait) is neither kept alive nor NAKed, and that an ack which
could not be sent leaves the job to JetStream's redelivery (at least once).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq.dispatch.protocol import Delivery
from natskiq.status.events import Emitter
from natskiq.topology import Names

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name

SETTLE_TIMEOUT = 5.0
SETTLE_ATTEMPTS = 5
ACK_LINGER = 0.001


@attrs.define
class Settler:
    """Acks, NAKs, in-progress acks and stored successors for one node's deliveries.

    Args:
        nc: the connection.
        js: its JetStream context.
        names: the namespace's names.
        held: the node's deliveries received and not yet settled (shared with it).
        ack_wait: the consumers' ack wait, for in-progress acks.
        emitter: the node's lifecycle events, which go out with its acks while it runs.
    """

    nc: NATS
    js: JetStreamContext
    names: Names
    held: set[Delivery]
    ack_wait: float
    emitter: Emitter | None = None
    outcomes: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    """Where the node's jobs went when not acked as run: ``retry``, ``failed``,
    ``discarded``, or ``held`` (put back for a limit)."""
    _batching: bool = attrs.field(init=False, default=False)
    _acks: list[str] = attrs.field(init=False, factory=list)
    _acks_ready: anyio.Event = attrs.field(init=False, factory=anyio.Event)

    async def settle(self, delivery: Delivery, verdict: bytes) -> None:
        """Send ``verdict`` (``+ACK`` or a NAK) for ``delivery``, which is no longer held."""
        self.held.discard(delivery)
        if verdict.startswith(b"-NAK") and delivery.stale(anyio.current_time()):
            return  # it may be another node's by now: a NAK would hand back that delivery
        if verdict == b"+ACK" and self._batching:
            # Acks go out in batches (see send_acks): one socket write for
            # many jobs instead of one each.
            self._acks.append(delivery.reply)
            self._acks_ready.set()
            return
        try:
            await self.nc.publish(delivery.reply, verdict)
        except NatsError as exc:
            log.warning("could not send %s: %r", verdict.decode(), exc)

    async def store(self, route: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Store a successor, retrying while NATS is unreachable; returns the route's outcome.

        If it still fails, the job is left unacked and JetStream redelivers
        it after the ack wait: it runs again rather than being lost.
        """
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                with anyio.fail_after(SETTLE_TIMEOUT):
                    outcome = await route(self.js, self.names, *args, **kwargs)
                if outcome is not None:
                    self.outcomes[outcome] += 1
                return outcome
            except (NatsError, JSError, TimeoutError) as exc:
                log.warning("could not store a retry/failed record (attempt %d): %r", attempt + 1, exc)
                await anyio.sleep(0.2 * (attempt + 1))
        return None

    @property
    def batching(self) -> bool:
        """Whether acks (and the emitter's events) are queued for :meth:`send_acks`
        (while the node runs) rather than sent one by one."""
        return self._batching

    @batching.setter
    def batching(self, on: bool) -> None:
        self._batching = on
        if self.emitter is not None:
            self.emitter.batched = self._wake if on else None

    def _wake(self) -> None:
        self._acks_ready.set()

    async def send_acks(self) -> None:
        """Send queued events and acks after a short linger, so they share socket writes."""
        while True:
            await self._acks_ready.wait()
            await anyio.sleep(ACK_LINGER)
            self._acks_ready = anyio.Event()
            await self.flush_acks()

    async def flush_acks(self) -> None:
        """Send every queued event, then every queued ack, now (a job's events before
        its ack, as they happened)."""
        if self.emitter is not None:
            await self.emitter.flush()
        acks, self._acks = self._acks, []
        for index, reply in enumerate(acks):
            try:
                await self.nc.publish(reply, b"+ACK")
            except NatsError as exc:
                # Not acked: JetStream redelivers these after the ack wait (at least once).
                log.warning("could not send %d ack(s): %r", len(acks) - index, exc)
                return

    async def hand_back(self) -> None:
        """On the way out: send the queued acks, then NAK every delivery still held (never started)."""
        await self.flush_acks()
        for delivery in list(self.held):
            # Received but never started: back to the queue at once.
            await self.settle(delivery, b"-NAK")

    async def keep_alive(self) -> None:
        """In-progress acks for every job held, so none is redelivered mid-run.

        Only for jobs still this node's: one whose ack wait has lapsed (the
        node was paused, or a job blocked the event loop) may be running
        elsewhere already, and must not be made to look fresh.
        """
        last = anyio.current_time()
        while True:
            await anyio.sleep(self.ack_wait / 3)
            now = anyio.current_time()
            if now - last > self.ack_wait * 0.75:
                log.warning(
                    "this node could not keep its jobs alive for %.1fs (paused, or a job blocked the "
                    "event loop): jobs held past the %.0fs ack wait may run elsewhere too",
                    now - last, self.ack_wait,
                )  # fmt: skip
            last = now
            for delivery in list(self.held):
                if delivery.stale(now):
                    continue
                try:
                    await self.nc.publish(delivery.reply, b"+WPI")
                except NatsError as exc:
                    log.debug("in-progress ack not sent: %r", exc)
                    continue
                delivery.expires = now + self.ack_wait
