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
    _prefixes: dict[tuple[str, str], str] = attrs.field(init=False, factory=dict)

    def _prefix(self, queue: str, cls: str) -> str:
        prefix = self._prefixes.get((queue, cls))
        if prefix is None:
            if len(self._prefixes) > 10_000:
                self._prefixes.clear()
            prefix = self._prefixes[queue, cls] = f"{self.names.namespace}.evt.{queue}.{class_token(cls)}."
        return prefix

    async def emit(self, state: str, jid: str, queue: str, cls: str, **fields: Any) -> None:
        """Publish one event; never raises for a connection problem."""
        if not self.enabled:
            return
        doc = {"jid": jid, "queue": queue, "class": cls, "state": state, "at": time.time(), **fields}
        try:
            await self.nc.publish(f"{self._prefix(queue, cls)}{state}.{jid}", json.dumps(doc).encode())
        except NatsError as exc:
            log.debug("event %s of job %s not published: %s", state, jid, exc)
