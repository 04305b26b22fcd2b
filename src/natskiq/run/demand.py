"""Stage 5, the node's demand: telling the masters how much it can take.

The node's capacity report (:meth:`natskiq.run.node.Node.demand`: its
queues and their order, concurrency, busy slots, the fence's tokens and
received counts, whether it is quiet) is what a master sizes its credit
for the node by. The reporter publishes it on ``<ns>.ctl.demand`` every
heartbeat, and soon after the node says it changed (slots freed up, the
node went quiet); a burst of changes within 2 ms makes one report.

A new master announces itself on ``<ns>.ctl.master``: the reporter has
the fence confirm its token against the lease, so the report carries it,
and answers at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from natskiq.dispatch.protocol import HEARTBEAT
from natskiq.run.fence import Fence
from natskiq.topology import MAX_PARTITIONS, Names

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name


@attrs.define
class Demand:
    """Publishes one node's capacity report to the masters.

    Args:
        nc: the connection.
        names: the namespace's names.
        fence: the node's fence (a master's announced token is confirmed there).
        report: the node's :meth:`~natskiq.run.node.Node.demand`.
    """

    nc: NATS
    names: Names
    fence: Fence
    report: Callable[[], dict[str, Any]]
    changed: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    """Set it to have the report sent now rather than at the next heartbeat."""

    async def run(self) -> None:
        """Publish the report every heartbeat and soon after it changes, until cancelled."""
        subject = self.names.demand_subject
        while True:
            changed = self.changed = anyio.Event()
            try:
                await self.nc.publish(subject, json.dumps(self.report()).encode())
            except NatsError as exc:
                log.debug("demand not sent: %r", exc)
            with anyio.move_on_after(HEARTBEAT):
                await changed.wait()
            await anyio.sleep(0.002)  # coalesce a burst of freed slots into one report

    async def answer(self, sub: Any) -> None:
        """Report at once to every master that announces itself on ``sub``, its token confirmed first."""
        async for msg in sub.messages:
            try:
                announcement = json.loads(msg.data)
                token, shard = int(announcement["token"]), int(announcement.get("shard", 0))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if not 0 <= shard < MAX_PARTITIONS:
                continue
            if token > self.fence.newest.get(shard, 0):
                await self.fence.confirm(token, shard)
            self.changed.set()
