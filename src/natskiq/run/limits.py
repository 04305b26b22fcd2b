"""Stage 5, the node's limits: cluster-wide ``concurrency=`` and ``rate=`` of a job class.

A runner hands the executor a job of a limited class; before the job
starts, the executor asks :class:`Limits` to :meth:`~Limits.enter` it. The
limits are slots in one KV bucket, ``<ns>_limits``, shared by every node
and every dispatch shard, so they hold across the whole cluster and need
no master: a failover or a rebalance of the shards changes nothing.

* ``concurrency=N``: keys ``c.<class>.0`` .. ``c.<class>.N-1``. A job takes
  one with a KV create (a publish with ``Nats-Expected-Last-Subject-Sequence``
  of the free key: the compare-and-set), holds it while it runs, renewing
  its TTL (:func:`slot_ttl`, twice the ack wait) every third of the ack
  wait, and deletes it when it ends. A node that dies holding slots frees
  them when their TTL runs out, after JetStream has redelivered its jobs;
  until then those jobs count as running, so a redelivered copy cannot
  start beside a slot still held.
* ``rate="N/s"`` (or ``/m``, ``/h``, ``/d``): keys ``r.<class>.0`` ..
  ``r.<class>.N-1``, each taken as a job starts with a TTL of the window and
  never released: a start holds its slot for one whole window, so no
  window of that length (sliding, not calendar-aligned) has more than N
  starts. Expiry lands a little after the TTL (the server's clock), which
  only errs on the low side.

A job that finds no free slot is put back (:func:`put_back`): stored again
as a message scheduled a moment later (``Nats-Schedule``) on its queue,
and only then acked. It keeps no ack-pending slot while it waits, its
delivery count starts afresh (the put-back is a new message), and the
runner goes straight on to the next job, so other classes in the queue are
never held up behind it. Held jobs lose their place: they run after jobs
enqueued while they waited. The delay grows with how many jobs of the
class this node held in the last second, so a long backlog is retried
gently rather than dispatched again and again.

A job probes at most :data:`MAX_PROBES` slots, picked at random: a limit
is never exceeded, though near full a job may be put back while one slot
is free. When the bucket cannot be reached the job is put back too.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js import api as jsapi
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError
from nats.js.errors import NotFoundError

from natskiq import job as jobs
from natskiq.enqueue.publish import addressed
from natskiq.enqueue.unique import MARKER_TTL
from natskiq.options import Options
from natskiq.topology import Names, delete_if, ensure_bucket, is_tombstone, put_if, ttl_header

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name

MAX_PROBES = 16
HOLD_DELAY = 1.0  # seconds before a job over a concurrency limit is tried again, give or take half
MIN_HOLD = 0.25  # the scheduler fires about every 250 ms: sooner buys nothing
MAX_HOLD = 300.0  # Sidekiq Enterprise's limiters back off by up to five minutes too
RELEASE_TIMEOUT = 5.0


def slot_ttl(ack_wait: float) -> float:
    """Seconds a concurrency slot lives unless renewed: twice the ack wait.

    Renewed every third of the ack wait, it outlives several missed renewals;
    a node killed while running frees its slots this long after its last
    renewal.
    """
    return max(2.0, 2 * ack_wait)


@attrs.frozen
class Entry:
    """What :meth:`Limits.enter` decided: run (holding ``slot``, if any) or put back after ``delay``."""

    delay: float = 0.0
    slot: str | None = None
    """The concurrency slot's KV subject, held until :meth:`Limits.leave`."""
    value: bytes = b""


@attrs.define
class Limits:
    """One node's slots in the cluster-wide limits.

    Args:
        js: the JetStream context.
        names: the namespace's names.
        node_id: this node's id (written into the slots it holds).
        ack_wait: the consumers' ack wait, which sizes a slot's TTL and renewals.
    """

    js: JetStreamContext
    names: Names
    node_id: str
    ack_wait: float
    _ready: bool = attrs.field(init=False, default=False)
    _held: dict[str, tuple[int, bytes]] = attrs.field(init=False, factory=dict)
    """Concurrency slots held by jobs running here: subject -> (revision, value)."""
    _free_at: dict[str, int] = attrs.field(init=False, factory=dict)
    """The sequence each slot's subject was last seen free at (the compare-and-set's expectation)."""
    _pressure: dict[str, tuple[float, int]] = attrs.field(init=False, factory=dict)

    async def enter(self, cls: str, options: Options, jid: str) -> Entry:
        """Take a slot of each of the class's limits, or none: whether the job may start now.

        A rate slot is taken only once a concurrency slot is held, so a job
        put back uses up nothing of the rate; a concurrency slot taken for a
        job that does not start (no rate slot, an error, a cancellation) is
        freed at once.
        """
        value = f"{self.node_id} {jid}".encode()
        taken = Entry(value=value)
        started = False
        try:
            if not self._ready:
                await ensure_bucket(self.js, self.names.limits_bucket, marker_ttl=MARKER_TTL)
                self._ready = True
            if options.concurrency is not None:
                slot = await self._take("c", cls, options.concurrency, slot_ttl(self.ack_wait), value)
                if slot is None:
                    return Entry(self._delay(cls, HOLD_DELAY, options.concurrency))
                self._held[slot[0]] = (slot[1], value)
                taken = Entry(slot=slot[0], value=value)
            rate = options.rate
            if rate is not None and not await self._take("r", cls, rate.count, rate.per, value):
                return Entry(self._delay(cls, max(MIN_HOLD, rate.per / rate.count) * 2, rate.count))
            started = True
            return taken
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("cannot reach the limits bucket (%r): jobs of %s wait", exc, cls)
            return Entry(self._delay(cls, HOLD_DELAY, 1))
        finally:
            if not started:
                with anyio.CancelScope(shield=True):
                    await self.leave(taken)

    async def leave(self, entry: Entry) -> None:
        """Free the job's concurrency slot (never raises: a slot not freed expires)."""
        if entry.slot is None:
            return
        held = self._held.pop(entry.slot, None)
        if held is None:
            return
        ttl = ttl_header(MARKER_TTL)
        try:
            with anyio.fail_after(RELEASE_TIMEOUT):
                ack = await delete_if(self.js, entry.slot, expected=held[0], ttl=ttl)
                if ack is None:
                    # A renewal may have moved the revision on: free it if still ours.
                    last = await self._last(entry.slot)
                    if last is None or last.data != entry.value or last.seq is None:
                        return
                    ack = await delete_if(self.js, entry.slot, expected=last.seq, ttl=ttl)
            if ack is None:
                log.warning("limit slot %s not freed (it expires on its own): changed again", entry.slot)
                return
            self._free_at[entry.slot] = ack.seq
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("limit slot %s not freed (it expires on its own): %r", entry.slot, exc)

    async def run(self) -> None:
        """Renew the TTL of every slot held, every third of the ack wait, until cancelled."""
        ttl = ttl_header(slot_ttl(self.ack_wait))
        while True:
            await anyio.sleep(self.ack_wait / 3)
            for subject, (revision, value) in list(self._held.items()):
                try:
                    ack = await put_if(self.js, subject, value, expected=revision, ttl=ttl)
                except (NatsError, JSError, TimeoutError) as exc:
                    log.debug("limit slot %s not renewed: %r", subject, exc)
                    continue
                if ack is None:
                    if self._held.get(subject, (0,))[0] == revision:
                        log.warning("limit slot %s was lost (not renewed in time)", subject)
                        self._held.pop(subject, None)
                    continue
                if subject in self._held:
                    self._held[subject] = (ack.seq, value)

    async def _take(
        self, kind: str, cls: str, count: int, ttl: float, value: bytes
    ) -> tuple[str, int] | None:
        """One free slot of ``count``, taken for ``ttl`` seconds: (subject, revision), or None."""
        header = ttl_header(ttl)
        for index in random.sample(range(count), min(count, MAX_PROBES)):
            subject = self.names.limit_subject(kind, cls, index)
            for _ in range(2):
                expected = self._free_at.get(subject, 0)
                ack = await put_if(self.js, subject, value, expected=expected, ttl=header)
                if ack is not None:
                    return subject, ack.seq
                last = await self._last(subject)
                if last is not None and not is_tombstone(last.headers):
                    break  # held
                self._free_at[subject] = 0 if last is None else last.seq or 0
        return None

    async def _last(self, subject: str) -> jsapi.RawStreamMsg | None:
        try:
            return await self.js.get_msg(self.names.kv_stream(self.names.limits_bucket), subject=subject)
        except NotFoundError:
            return None

    def _delay(self, cls: str, base: float, limit: int) -> float:
        """Seconds to put a job back for: ``base``, give or take half, times how far
        the jobs this node held in the last second outnumber the limit."""
        now = anyio.current_time()
        since, held = self._pressure.get(cls, (now, 0))
        if now - since > 1.0:
            since, held = now, 0
        self._pressure[cls] = (since, held + 1)
        spread = max(1.0, (held + 1) / limit)
        return min(MAX_HOLD, max(MIN_HOLD, base * random.uniform(0.5, 1.5) * spread))


async def put_back(
    js: JetStreamContext,
    names: Names,
    job: jobs.Job,
    raw: bytes,
    *,
    delay: float,
    seq: int,
    ack: Callable[[], Awaitable[None]],
) -> str:
    """Store ``raw`` again on ``job``'s queue, scheduled ``delay`` seconds from now, then ack it;
    returns ``"held"`` (the node's count of jobs put back).

    Its ``Nats-Msg-Id`` names this delivery's stream sequence, so a put-back
    stored twice (the ack lost, the job redelivered and put back again) is
    kept once.
    """
    subject, headers = addressed(names, job.jid, job.queue, time.time() + delay, f"held:{seq}")
    await js.publish(subject, raw, headers=headers)
    await ack()
    return "held"
