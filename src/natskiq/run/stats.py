"""Stage 5, the node's stats: Sidekiq's processed and failed counts.

The node counts every run it finishes (:meth:`Stats.count`): each one is
processed, and a failed one failed too. The counts are kept here, and
added every second (:data:`STATS_INTERVAL`, and once more on the way out)
to the cluster-wide counters: a JetStream counter stream with a subject
for all time and one for each day, read by :mod:`natskiq.api`.

It guarantees that an increment is added once: each subject has at most
one increment in flight, sent again under the same ``Nats-Msg-Id`` (the
stream's duplicate window) until it is acknowledged.
"""

from __future__ import annotations

import collections
import logging
import time

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq.topology import Names

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name

STATS_INTERVAL = 1.0


@attrs.define
class Stats:
    """One node's processed and failed counts, and their share of the cluster's.

    Args:
        js: the connection's JetStream context.
        names: the namespace's names.
        node_id: this node's id (part of every increment's message id).
    """

    js: JetStreamContext
    names: Names
    node_id: str
    processed: int = attrs.field(init=False, default=0)
    failed: int = attrs.field(init=False, default=0)
    _unflushed: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _pending: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _inflight: dict[str, tuple[str, int]] = attrs.field(init=False, factory=dict)
    _ids: int = attrs.field(init=False, default=0)
    _started: str = attrs.field(init=False, factory=lambda: f"{time.time():.6f}")

    def count(self, *, failed: bool) -> None:
        """Sidekiq's stats: every finished run is processed; failures also failed."""
        self.processed += 1
        self._unflushed["processed"] += 1
        if failed:
            self.failed += 1
            self._unflushed["failed"] += 1

    async def flush(self) -> None:
        """Add this node's counts to the cluster-wide counters (a JetStream counter stream).

        Each subject has at most one increment in flight, sent again with the
        same ``Nats-Msg-Id`` until it is acknowledged: an increment stored
        whose PubAck was lost is not added twice.
        """
        day = time.strftime("%Y-%m-%d", time.gmtime())
        for name in ("processed", "failed"):
            count, self._unflushed[name] = self._unflushed[name], 0
            if count:
                for subject in (self.names.stats_subject(name), self.names.stats_subject(name, day)):
                    self._pending[subject] += count
        for subject, count in list(self._pending.items()):
            if subject not in self._inflight and count:
                self._ids += 1
                self._inflight[subject] = (f"{self.node_id}:{self._started}:{self._ids}", count)
                del self._pending[subject]
        for subject, (msg_id, count) in list(self._inflight.items()):
            try:
                await self.js.publish(subject, b"", headers={"Nats-Incr": f"+{count}", "Nats-Msg-Id": msg_id})
            except (NatsError, JSError, TimeoutError) as exc:
                log.debug("stats not flushed yet: %r", exc)
                return
            del self._inflight[subject]

    async def run(self) -> None:
        """Flush the counts every :data:`STATS_INTERVAL` until cancelled, then once more."""
        try:
            while True:
                await anyio.sleep(STATS_INTERVAL)
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.flush()
