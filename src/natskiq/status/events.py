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
published them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

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
    _heads: dict[tuple[str, str], tuple[str, str]] = attrs.field(init=False, factory=dict)

    def _head(self, queue: str, cls: str) -> tuple[str, str]:
        """The subject prefix and the JSON ``"queue":...,"class":...`` of a queue and class."""
        head = self._heads.get((queue, cls))
        if head is None:
            if len(self._heads) > 10_000:
                self._heads.clear()
            subject = f"{self.names.namespace}.evt.{queue}.{class_token(cls)}."
            fields = f'"queue":{json.dumps(queue)},"class":{json.dumps(cls)}'
            head = self._heads[queue, cls] = (subject, fields)
        return head

    async def emit(self, state: str, jid: str, queue: str, cls: str, **fields: Any) -> None:
        """Publish one event; never raises for a connection problem."""
        if not self.enabled:
            return
        subject, head = self._head(queue, cls)
        # Built by hand: json.dumps of the whole dict costs more than the publish.
        text = f'{{"jid":{json.dumps(jid)},{head},"state":"{state}","at":{time.time()!r}'
        for key, value in fields.items():
            text += f',"{key}":{_json(value)}'
        try:
            await self.nc.publish(f"{subject}{state}.{jid}", (text + "}").encode())
        except NatsError as exc:
            log.debug("event %s of job %s not published: %s", state, jid, exc)


def _json(value: Any) -> str:
    """A field's value in JSON (ints and floats as they are, the rest by json.dumps)."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float and value == value and value not in (math.inf, -math.inf):
        return repr(value)
    return json.dumps(value)
