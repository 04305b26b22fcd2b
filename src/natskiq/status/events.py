"""Lifecycle events: every state change of a job, published into the events stream.

Producers publish ``queued`` and ``scheduled`` once JetStream has stored the
job; nodes publish ``running``, ``progress``, ``retrying``, ``succeeded``,
``failed``, ``cancelled``, ``expired`` and ``discarded``. Each event is one
JSON object (``jid``, ``queue``, ``class``, ``state``, ``at`` and the
state's own fields) on ``<ns>.evt.<queue>.<class>.<state>.<jid>``, which the
bounded stream ``<NS>_EVENTS`` captures.

An event is a core publish: the stream stores it, but the publisher does not
wait for its PubAck, so an event costs one buffered write and never delays
or fails the job it describes (a lost connection loses the event, logged at
debug). Events one process publishes about a job arrive in the order it
published them. A running node queues its events and sends them with its
acks, about a millisecond later, in one socket write for many jobs (see
:attr:`Emitter.batched`): a publish on its own costs a write of its own.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from natskiq.topology import Names, class_token

log = logging.getLogger(__name__)

STATES = (
    "queued", "scheduled", "running", "progress", "retrying",
    "succeeded", "failed", "cancelled", "expired", "discarded",
)  # fmt: skip
"""Every state an event can report, in the order a job meets them."""

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired", "discarded"})
"""The states after which a job never runs again (until it is replayed)."""


@attrs.define(eq=False)
class Emitter:
    """Publishes a process's lifecycle events (or nothing, when ``enabled`` is False).

    Args:
        nc: the connection.
        names: the namespace's names.
        enabled: publish events at all (``events=False`` turns them off).
    """

    nc: NATS
    names: Names
    enabled: bool = True
    batched: Callable[[], None] | None = None
    """When set, events are queued rather than published, and this is called to
    have them flushed soon (a node's settler sends them with its acks); None
    (the default, a producer's): each event is published at once."""
    _queued: list[tuple[str, str]] = attrs.field(init=False, factory=list)
    _heads: dict[tuple[str, str, str], tuple[str, str]] = attrs.field(init=False, factory=dict)
    _nodes: dict[str, str] = attrs.field(init=False, factory=dict)

    async def emit(
        self, state: str, jid: str, queue: str, cls: str, *, at: float | None = None, **fields: Any
    ) -> None:
        """Publish one event (``at`` when it happened, now by default); never raises for a
        connection problem."""
        if not self.enabled:
            return
        tail = "".join([f',"{key}":{_json(value)}' for key, value in fields.items()]) if fields else ""
        event = self._event(state, jid, queue, cls, tail, at)
        if self._queue(event):
            return
        try:
            await self.nc.publish(event[0], event[1].encode())
        except NatsError as exc:
            _lost(state, jid, exc)

    async def emit_run(self, state: str, jid: str, queue: str, cls: str, node: str, attempt: int) -> None:
        """``emit(state, jid, queue, cls, node=node, attempt=attempt)``, the same subject and
        document, the node's part cached: a node's ``running`` and ``succeeded``, two per job."""
        if not self.enabled:
            return
        tail = self._nodes.get(node) or self._node(node)
        event = self._event(state, jid, queue, cls, f"{tail}{attempt}")
        if self._queue(event):
            return
        try:
            await self.nc.publish(event[0], event[1].encode())
        except NatsError as exc:
            _lost(state, jid, exc)

    def _queue(self, event: tuple[str, str]) -> bool:
        """Queue ``event`` for the next flush while batched (True), else leave it (False)."""
        if self.batched is None:
            return False
        if not self._queued:
            self.batched()  # a flush is due (later events join the same one)
        self._queued.append(event)
        return True

    async def flush(self) -> None:
        """Publish every queued event now, in the order they were emitted."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        nc = self.nc
        if _RAW and nc.is_connected:
            # Every event's PUB command in one buffered write: what nats-py's
            # publish does per message (its checks included: the subjects are
            # built from validated names, and each document is sized below),
            # at a fraction of its cost per call.
            text = "".join([f"PUB {s} {len(d)}\r\n{d}\r\n" for s, d in queued])
            if text.isascii() and len(text) <= nc.max_payload:
                # Each document's length is its size, and none can be over the limit.
                data = text.encode()
            else:
                data = _commands(queued, nc.max_payload)
            nc.stats["out_msgs"] += len(queued)
            nc.stats["out_bytes"] += len(data)
            await nc._send_command(data)
            if nc._flush_queue is not None and nc._flush_queue.empty():
                await nc._flush_pending()
            return
        for index, (subject, doc) in enumerate(queued):
            try:
                await nc.publish(subject, doc.encode())
            except MaxPayloadError:
                log.debug("event on %s over the server's max payload not published", subject)
            except NatsError as exc:
                log.debug("%d event(s) not published: %s", len(queued) - index, exc)
                return

    async def reply(self, token: str | None, jid: str, doc: bytes) -> None:
        """Tell the client that enqueued ``jid`` (its envelope's ``reply`` token) the
        outcome just kept, even with events off; never raises for a connection problem
        (the client finds the outcome in the results bucket all the same)."""
        if token is None:
            return
        if self._queued:
            await self.flush()  # the job's events before its outcome, as they happened
        try:
            await self.nc.publish(self.names.reply_subject(token, jid), doc)
        except NatsError as exc:
            log.debug("outcome of job %s not replied: %s", jid, exc)

    def _event(
        self, state: str, jid: str, queue: str, cls: str, tail: str, at: float | None = None
    ) -> tuple[str, str]:
        """An event's subject and document, ``tail`` its own fields in JSON (each after a comma).

        Built by hand from cached pieces: json.dumps of the whole dict costs
        more than the publish.
        """
        subject, middle = self._heads.get((state, queue, cls)) or self._head(state, queue, cls)
        stamp = time.time() if at is None else at
        return subject + jid, f'{{"jid":{_quote(jid)}{middle}{stamp!r}{tail}}}'

    def _head(self, state: str, queue: str, cls: str) -> tuple[str, str]:
        """The subject up to the jid and the JSON from ``,"queue":`` to ``"at":`` of a state, queue, class."""
        if len(self._heads) > 10_000:
            self._heads.clear()
        subject = f"{self.names.namespace}.evt.{queue}.{class_token(cls)}.{state}."
        middle = f',"queue":{json.dumps(queue)},"class":{json.dumps(cls)},"state":"{state}","at":'
        head = self._heads[state, queue, cls] = (subject, middle)
        return head

    def _node(self, node: str) -> str:
        """``,"node":<node>,"attempt":`` in JSON."""
        if len(self._nodes) > 100:
            self._nodes.clear()
        tail = self._nodes[node] = f',"node":{_quote(node)},"attempt":'
        return tail


_RAW = all(hasattr(NATS, name) for name in ("_send_command", "_flush_pending"))
"""Whether nats-py has the internals :meth:`Emitter.flush` writes a batch through
(2.16 has); if not, it publishes each event."""


def _commands(events: list[tuple[str, str]], limit: int) -> bytes:
    """The PUB commands of ``events`` (subject and document), each sized in bytes, leaving
    out any over the server's max payload (which it would close the connection for)."""
    commands = []
    for subject, doc in events:
        data = doc.encode()
        if len(data) > limit:
            log.debug(
                "event on %s over the server's max payload (%d bytes) not published", subject, len(data)
            )
            continue
        commands.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))
    return b"".join(commands)


def _lost(state: str, jid: str, exc: Exception) -> None:
    log.debug("event %s of job %s not published: %s", state, jid, exc)


_quote = encode_basestring_ascii
"""A ``str`` in JSON, as ``json.dumps`` writes it (which calls this), without its dispatch."""


def _json(value: Any) -> str:
    """A field's value in JSON (strs, ints and floats directly, the rest by json.dumps)."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is int:
        return str(value)
    if kind is float and value == value and value not in (math.inf, -math.inf):
        return repr(value)
    return json.dumps(value)
