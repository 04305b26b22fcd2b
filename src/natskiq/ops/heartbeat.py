"""A node's heartbeat: its entry in the nodes bucket, kept fresh while it runs and removed when it stops.

The :class:`~natskiq.ops.launcher.Launcher` builds a :class:`Heartbeat` from
its settings, client, node and shards, runs :meth:`Heartbeat.run` beside the
node and calls :meth:`Heartbeat.forget` on the way out. Every
:data:`NODE_BEAT` seconds the entry is written again: who the node is, what
it runs (busy count, running jobs, counters) and which shards it leads;
``natskiq.api`` and the shards' balance read it. The entry carries a
per-message TTL of :data:`NODE_TTL`, so a node that dies leaves the bucket
within that time without anyone deleting it; a heartbeat that cannot be
stored is skipped (the next one follows).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from nats.js.kv import KeyValue

from natskiq.dispatch.shards import Shards
from natskiq.enqueue.client import Client
from natskiq.ops.settings import Settings
from natskiq.run.node import Node

# The launcher's messages: they log under its name, the one users configure.
log = logging.getLogger("natskiq.ops.launcher")

NODE_TTL = 15.0
NODE_BEAT = 2.0  # how often a node refreshes its entry (busy counts, running jobs)


@attrs.define
class Heartbeat:
    """One node's entry in the nodes bucket."""

    settings: Settings
    client: Client
    node: Node
    shards: Shards
    nodes_kv: KeyValue
    started_at: float

    async def run(self) -> None:
        """Keep this node's entry in the nodes bucket fresh (it expires if we die)."""
        js, subject = self.client.js, self.client.names.node_subject(self.settings.node_id)
        while True:
            try:
                await js.publish(subject, self._info(), headers={"Nats-TTL": f"{int(NODE_TTL)}s"})
            except (NatsError, JSError, TimeoutError) as exc:
                log.debug("node heartbeat not stored: %r", exc)
            await anyio.sleep(NODE_BEAT)

    async def forget(self) -> None:
        """Remove this node's entry now (a node that stopped is gone at once, not after its TTL)."""
        try:
            await self.nodes_kv.delete(self.settings.node_id)
        except (NatsError, JSError, TimeoutError):
            pass

    def _info(self) -> bytes:
        s, node = self.settings, self.node
        return json.dumps(
            {
                "node": s.node_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": list(s.queues),
                "concurrency": s.concurrency,
                "busy": node.busy,
                "started": self.started_at,
                "master": bool(self.shards.led()),
                "shards": self.shards.led(),
                "quiet": node.quiet,
                "processed": node.processed,
                "failed": node.failed,
                "running": node.running_jobs(),
                "at": time.time(),
            }
        ).encode()
