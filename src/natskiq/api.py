"""Inspection: what is queued, who is running, who is master.

Read-only views over the streams and buckets, for operators, the CLI and
tests. Every function takes an open :class:`~natskiq.client.Client`.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.errors import Error as JSError

from .client import Client
from .topology import CONSUMER, LEASE_KEY


@attrs.frozen(kw_only=True)
class QueueInfo:
    """One queue: jobs ready, jobs running (delivered, not yet acked), jobs scheduled."""

    name: str
    ready: int
    running: int
    scheduled: int


async def queues(client: Client) -> list[QueueInfo]:
    """Every queue stream in the client's namespace, by name."""
    prefix = f"{client.names.namespace.upper()}_Q_"
    out = []
    for info in await client.js.streams_info():
        name = info.config.name or ""
        if not name.startswith(prefix):
            continue
        queue = name[len(prefix) :]
        try:
            consumer = await client.js.consumer_info(name, CONSUMER)
            ready, running = consumer.num_pending or 0, consumer.num_ack_pending or 0
        except NotFoundError:
            ready, running = info.state.messages, 0
        scheduled = max(0, info.state.messages - ready - running)
        out.append(QueueInfo(name=queue, ready=ready, running=running, scheduled=scheduled))
    return sorted(out, key=lambda q: q.name)


async def master(client: Client) -> dict[str, Any] | None:
    """The node holding the master lease (its id, host, pid, since), or None."""
    try:
        kv = await client.js.key_value(client.names.lease_bucket)
        entry = await kv.get(LEASE_KEY)
    except (BucketNotFoundError, NotFoundError, JSError):
        return None
    if not entry.value:
        return None
    data: dict[str, Any] = json.loads(entry.value)
    data["revision"] = entry.revision
    return data


async def nodes(client: Client) -> list[dict[str, Any]]:
    """Every live node's last heartbeat (id, host, pid, queues, concurrency, busy, ...)."""
    try:
        kv = await client.js.key_value(client.names.nodes_bucket)
        keys = await kv.keys()
    except (BucketNotFoundError, NotFoundError, JSError):
        return []
    out = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except (NotFoundError, JSError):
            continue
        if entry.value:
            out.append(json.loads(entry.value))
    return sorted(out, key=lambda n: n.get("node", ""))
