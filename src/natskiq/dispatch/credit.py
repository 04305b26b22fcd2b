"""Stage 4, the aggregator's credit: what a shard's master knows of the nodes.

It receives the demand reports every node publishes on ``<ns>.ctl.demand``
(free capacity, queues and their order, the tokens of the masters it has
seen and how many of their jobs it received), as a heartbeat every second
and whenever slots free up, and keeps a :class:`Peer` for each node: its
queues, strict or weighted order, and credit (the jobs it can take now).
:class:`Peers` is the table of them; it hands on each report that changed
a node to the aggregator, and the slots and credit serving a queue to the
pull side. Credit errs on the low side: a job sent counts as running until
the node has reported receiving it from this master. A report of a newer
master makes it step down only once the lease's key agrees.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError

from natskiq.dispatch.lease import current_token
from natskiq.dispatch.protocol import HEARTBEAT, LocalNode
from natskiq.errors import LeaseLost
from natskiq.topology import Names, check_name

log = logging.getLogger(__name__)

PEER_TIMEOUT = 3 * HEARTBEAT


@attrs.define
class Peer:
    """The master's view of one node: its queues, order and credit."""

    node_id: str
    queues: list[str] = attrs.field(factory=list)
    weights: list[int] = attrs.field(factory=list)
    strict: bool = True
    concurrency: int = 0
    busy: int = 0
    received: int = 0
    sent: int = 0
    seen_at: float = 0.0
    choice: str | None = None

    local: LocalNode | None = None

    @property
    def credit(self) -> int:
        if self.local is not None:
            # The node in this process: its own counters, exact and current.
            return 0 if self.local.quiet else self.local.concurrency - self.local.busy
        return self.concurrency - self.busy - max(0, self.sent - self.received)

    @property
    def slots(self) -> int:
        """How many jobs the node runs at once; 0 while it is quiet."""
        if self.local is not None:
            return 0 if self.local.quiet else self.local.concurrency
        return self.concurrency  # a quiet node reports 0

    def update(self, demand: dict[str, Any], token: int, shard: int = 0) -> None:
        """Take a demand report; ``received`` counts only this master's dispatches."""
        pairs = [(check_name("queue", str(q)), int(w)) for q, w in demand.get("queues", [])]
        self.queues = [q for q, _ in pairs]
        self.weights = [max(1, w) for _, w in pairs]
        self.strict = bool(demand.get("strict", True))
        self.concurrency = 0 if demand.get("quiet") else int(demand.get("concurrency", 0))
        self.busy = int(demand.get("busy", 0))
        # Until the node has seen this master's token, every job sent to it
        # counts as still in transit: credit errs on the low side.
        same = shard_value(demand, "tokens", shard) == token
        self.received = shard_value(demand, "received", shard) if same else 0
        self.seen_at = anyio.current_time()

    def pick(self, buffers: dict[str, deque[tuple[Msg, float]]], pending: dict[str, int]) -> str | None:
        """The queue to serve next for this node, by its strict or weighted order.

        A queue has jobs if some are buffered or JetStream said more are
        pending (from the ack subjects). Strict order takes the first such
        queue; weighted order draws one, weighted, as Sidekiq does. If the
        chosen queue's next job is still on its way, the node waits for it
        (None) rather than letting another queue jump ahead.
        """
        has_jobs = [
            (q, w)
            for q, w in zip(self.queues, self.weights, strict=True)
            if buffers.get(q) or pending.get(q, 0) > 0
        ]
        if not has_jobs:
            self.choice = None
            return None
        if self.choice not in {q for q, _ in has_jobs}:
            if self.strict:
                self.choice = has_jobs[0][0]
            else:
                self.choice = random.choices([q for q, _ in has_jobs], weights=[w for _, w in has_jobs])[0]
        if not buffers.get(self.choice):
            return None
        chosen, self.choice = self.choice, None
        return chosen


def shard_value(demand: dict[str, Any], key: str, shard: int) -> int:
    """A node's per-shard count in its demand report (``{"0": n, ...}``); 0 if absent."""
    values = demand.get(key)
    if not isinstance(values, dict):
        return 0
    return int(values.get(str(shard), 0))


@attrs.define
class Peers:
    """The nodes a shard's master serves, by node id, kept from their demand reports.

    Args:
        nc: the connection, to read the lease when a node reports a newer master.
        names: the namespace's names.
        token: the lease's fencing token.
        shard: the dispatch shard the master leads.
        local: the node in this process, whose peer is kept by :meth:`add_local`.
        on_report: called with each other node's peer once its report is taken.
    """

    nc: NATS
    names: Names
    token: int
    shard: int
    local: LocalNode | None
    on_report: Callable[[Peer], None]
    by_id: dict[str, Peer] = attrs.field(init=False, factory=dict)

    def add_local(self, local: LocalNode) -> Peer:
        """The peer of the node in this process (its credit is read live)."""
        peer = self.by_id[local.node_id] = Peer(local.node_id, local=local)
        return peer

    async def read_demand(self, sub: Any) -> None:
        """Take the demand reports arriving on ``sub`` until cancelled or the lease is lost."""
        async for msg in sub.messages:
            try:
                demand = json.loads(msg.data)
                node_id = check_name("node", str(demand["node"]))
                if shard_value(demand, "tokens", self.shard) > self.token:
                    await self._check_newer_master(node_id)
                    continue
                peer = self.by_id.get(node_id) or Peer(node_id)
                peer.update(demand, self.token, self.shard)
            except LeaseLost:
                raise
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring a malformed demand report: %s", exc)
                continue
            if self.local is None or node_id != self.local.node_id:
                self.by_id[node_id] = peer
                self.on_report(peer)

    async def _check_newer_master(self, node_id: str) -> None:
        """A node reports a newer master: step down if the lease's key agrees.

        Nodes report only tokens they have confirmed, but a report itself can
        be forged; believing it would make the master step down at once, and
        again after each election.
        """
        try:
            current = await current_token(self.nc.jetstream(), self.names, self.shard)
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("could not read the lease after node %s reported a newer master: %r", node_id, exc)
            return
        if current != self.token:
            raise LeaseLost(f"node {node_id} has seen a newer master (lease token {current})")
        log.warning("ignoring a report from %s of a newer master: the lease is still %d", node_id, self.token)

    def drop_silent(self, now: float) -> None:
        """Forget the other nodes not heard from in :data:`PEER_TIMEOUT`: they get no more jobs."""
        for node_id, peer in list(self.by_id.items()):
            is_local = self.local is not None and node_id == self.local.node_id
            if not is_local and now - peer.seen_at > PEER_TIMEOUT:
                log.info("node %s went silent; it gets no more jobs", node_id)
                del self.by_id[node_id]

    def slots_for(self, queue: str) -> int:
        """The slots of the nodes serving ``queue``."""
        return sum(p.slots for p in self.by_id.values() if queue in p.queues)

    def credit_for(self, queue: str) -> int:
        """The free slots of the nodes serving ``queue``."""
        return sum(max(0, p.credit) for p in self.by_id.values() if queue in p.queues)
