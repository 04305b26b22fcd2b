"""Stage 5, the node's intake: dispatches from masters in other processes.

A shard's master that runs elsewhere sends each job it hands this node on
``<ns>.ctl.dispatch.<node>`` (:mod:`natskiq.dispatch.protocol`): the
envelope as the body (or, with ``Natskiq-Fetch``, no body for a job too
large to forward, read here from its stream), and in headers its master's
fencing token, its shard and the job's ack subject. The intake reads them
in batches, makes each a :class:`Delivery` with its deadline in this
node's clock, and hands the batch to the node (``deliver``). A message
without a token, an ack subject or a valid shard is dropped with a warning.

It guarantees that a token newer than the fence's runs nothing until the
shard's lease confirms it: deliveries whose token it does not confirm go
back to the queue (delayed), and the rest are handed on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq.dispatch.protocol import (
    ACK_HEADER,
    FETCH_HEADER,
    KEPT_HEADER,
    SHARD_HEADER,
    TOKEN_HEADER,
    Delivery,
    Inbox,
    ack_field,
    ack_tokens,
    nak,
)
from natskiq.run.fence import Fence
from natskiq.run.settle import Settler
from natskiq.topology import MAX_PARTITIONS

log = logging.getLogger("natskiq.run.node")  # the node's logger: `natskiq worker` prints its name

UNCONFIRMED_DELAY = 1.0  # seconds before a dispatch whose token could not be confirmed comes back


@attrs.define
class Intake:
    """Turns one node's dispatch messages into deliveries.

    Args:
        nc: the connection.
        js: its JetStream context (to read large jobs from their streams).
        fence: the node's fence (tokens are checked and confirmed there).
        settler: the node's settler (it sends back what does not run).
        ack_wait: the consumers' ack wait, for each delivery's deadline.
        deliver: the node's :meth:`~natskiq.run.node.Node.deliver_many`.
    """

    nc: NATS
    js: JetStreamContext
    fence: Fence
    settler: Settler
    ack_wait: float
    deliver: Callable[[list[Delivery]], None]

    async def read(self, inbox: Inbox) -> None:
        """Hand on every batch of dispatches that arrives on ``inbox``, until cancelled."""
        fence = self.fence
        while True:
            batch = []
            for msg in await inbox.get():
                headers = msg.headers or {}
                try:
                    token = int(headers[TOKEN_HEADER])
                    reply = headers[ACK_HEADER]
                except (KeyError, ValueError):
                    log.warning("ignoring a dispatch without token or ack subject")
                    continue
                try:
                    shard = int(headers.get(SHARD_HEADER, 0))
                except ValueError:
                    shard = -1
                if not 0 <= shard < MAX_PARTITIONS:
                    log.warning("ignoring a dispatch for shard %r", headers.get(SHARD_HEADER))
                    continue
                data = msg.data
                if headers.get(FETCH_HEADER) and not (data := await self._fetch(reply)):
                    continue
                batch.append(Delivery(data, reply, token, expires=self._expires(headers, reply), shard=shard))
            newest: dict[int, int] = {}
            for delivery in batch:
                newest[delivery.shard] = max(newest.get(delivery.shard, 0), delivery.token)
            unconfirmed = False
            for shard, token in newest.items():
                if token > fence.newest.get(shard, 0):
                    await fence.confirm(token, shard)
                    unconfirmed = True
            if unconfirmed:
                batch = await self._drop_unconfirmed(batch)
            if batch:
                self.deliver(batch)

    def _expires(self, headers: dict[str, str], reply: str) -> float:
        """When JetStream may redeliver a dispatched job: an ack wait after the
        master last kept it alive (or after JetStream delivered it).

        Wall-clock times, from the master and the server, turned into this
        node's clock once on arrival: a dispatch that sat in the socket while
        this node was paused arrives already stale.
        """
        try:
            kept = float(headers[KEPT_HEADER])
        except (KeyError, ValueError):
            kept = ack_field(reply, "ts") / 1e9
        age = max(0.0, time.time() - kept) if math.isfinite(kept) else self.ack_wait
        return anyio.current_time() + self.ack_wait - age

    async def _drop_unconfirmed(self, batch: list[Delivery]) -> list[Delivery]:
        """Deliveries whose token the lease did not confirm go back and do not run.

        The NAK is delayed by :data:`UNCONFIRMED_DELAY`: when the lease
        cannot be read (a server restarting), a plain NAK would have the
        master send the job straight back, and every round trip would count
        a delivery towards ``max_deliveries``.
        """
        newest = self.fence.newest
        kept = [d for d in batch if d.token <= newest.get(d.shard, 0)]
        for delivery in batch:
            if delivery.token > newest.get(delivery.shard, 0):
                await self.settler.settle(delivery, nak(UNCONFIRMED_DELAY))
        return kept

    async def _fetch(self, reply: str) -> bytes:
        """The payload of a job too large to forward with its dispatch headers, read from its stream."""
        tokens, offset = ack_tokens(reply)
        try:
            msg = await self.js.get_msg(tokens[offset], seq=ack_field(reply, "sseq"))
        except (NatsError, JSError, TimeoutError, IndexError) as exc:
            log.warning("could not read a large job from its stream: %r", exc)
            try:
                await self.nc.publish(reply, b"-NAK")
            except NatsError:
                pass
            return b""
        return msg.data or b""
