"""The dispatch protocol between a shard's master and the nodes.

What travels, and how its parts are read: the headers a dispatch carries
(the fencing token, the shard, the JetStream ack subject, the fetch flag,
when the master last kept the job alive), the :class:`Delivery` a node
receives, the NAK bodies, the fields of a JetStream ack subject, the batched
:class:`Inbox` both ends read core messages with, and :class:`LocalNode`,
what a master needs of the node in its own process. Masters send this, nodes
receive it; neither imports the other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

TOKEN_HEADER = "Natskiq-Token"
SHARD_HEADER = "Natskiq-Shard"  # the dispatch shard whose master sent the job (0 when absent)
ACK_HEADER = "Natskiq-Ack"
FETCH_HEADER = "Natskiq-Fetch"  # the dispatch carries no payload: the node reads it from the stream
HEARTBEAT = 1.0
STALE_MARGIN = 0.5  # seconds before its ack wait ends that a held job counts as given away
KEPT_HEADER = "Natskiq-Kept"  # wall time the master last kept the job alive (+WPI or pull)


@attrs.define(slots=True, eq=False)
class Delivery:
    """A job on its way to a node: raw envelope, ack subject, fencing token."""

    data: bytes
    reply: str
    token: int
    delivered_at: float = attrs.field(factory=time.time)
    expires: float = math.inf
    """When (``anyio.current_time()``) JetStream may redeliver the job unless kept alive."""
    shard: int = 0
    """The dispatch shard (queue partition) whose master handed the job out; its token is that shard's."""

    def stale(self, now: float) -> bool:
        """Whether JetStream may have given the job to someone else by ``now``.

        Such a delivery must neither start nor be NAKed: the server matches a
        NAK by stream sequence, so it would hand back the job's new delivery.
        """
        return now > self.expires - STALE_MARGIN

    @property
    def seq(self) -> int:
        """The message's sequence in its queue's stream (from the ack subject)."""
        return ack_field(self.reply, "sseq")


_ACK_FIELDS = ("stream", "consumer", "delivered", "sseq", "cseq", "ts", "pending")


def nak(delay: float = 0.0) -> bytes:
    """A NAK, asking for redelivery after ``delay`` seconds (at once if 0)."""
    if delay <= 0:
        return b"-NAK"
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


def ack_tokens(reply: str) -> tuple[list[str], int]:
    """A JetStream ack subject's tokens, and where its fields start (v1 or v2 form)."""
    tokens = reply.split(".")
    return tokens, (2 if len(tokens) == 9 else 4)


def ack_field(reply: str, name: str, default: int = 0) -> int:
    """A numeric field of a JetStream ack subject (v1 or v2 form)."""
    tokens, offset = ack_tokens(reply)
    try:
        return int(tokens[offset + _ACK_FIELDS.index(name)])
    except (IndexError, ValueError):
        return default


@attrs.define(eq=False)
class Inbox:
    """A core subscription whose messages are taken in batches.

    nats-py's ``sub.messages`` creates a task and an ``asyncio.wait`` for every
    message, which at thousands of jobs a second costs more than the job
    itself. Here nats-py's callback does nothing but append the message to a
    list and wake the reader: no await and no work run on nats-py's task, so
    nothing escapes natskiq's cancel scopes (the reason natskiq otherwise
    never passes ``cb=``), and the reader, a task in natskiq's own task
    group, takes everything that arrived since it last looked in one go.
    Use it only where the sender bounds what arrives (pull requests sized by
    credit, dispatches sized by a node's free slots).
    """

    sub: Any = None
    _msgs: list[Msg] = attrs.field(init=False, factory=list)
    _ready: anyio.Event = attrs.field(init=False, factory=anyio.Event)

    @classmethod
    async def subscribe(cls, nc: NATS, subject: str) -> Inbox:
        """Subscribe to ``subject``; unsubscribe with :meth:`close`."""
        inbox = cls()
        inbox.sub = await nc.subscribe(subject, cb=inbox._put)
        return inbox

    async def _put(self, msg: Msg) -> None:
        self._msgs.append(msg)
        self._ready.set()

    async def get(self) -> list[Msg]:
        """Every message that arrived since the last call; waits for at least one."""
        await self._ready.wait()
        self._ready = anyio.Event()
        msgs, self._msgs = self._msgs, []
        return msgs

    async def close(self) -> None:
        """Unsubscribe (shielded and bounded: safe in a ``finally``)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await self.sub.unsubscribe()


class LocalNode(Protocol):
    """What the aggregator needs of the node in its own process."""

    node_id: str
    concurrency: int
    capacity_hooks: list[Callable[[], None]]

    @property
    def busy(self) -> int: ...

    @property
    def quiet(self) -> bool: ...

    @property
    def queued(self) -> int: ...

    def demand(self) -> dict[str, Any]: ...

    def deliver_many(self, deliveries: list[Delivery]) -> None: ...
