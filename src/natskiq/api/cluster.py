"""The cluster: who leads each dispatch shard, which nodes are alive, and
what to tell them.

Receives an open :class:`~natskiq.enqueue.client.Client`. Reads the lease
bucket (:func:`master`, :func:`masters`) and the nodes' heartbeat bucket
(:func:`nodes`), and hands on what they hold as plain dicts, by shard or
by node; a bucket not created yet reads as nobody. Talks to the nodes over
core NATS: :func:`cancel` deletes a job wherever it waits and asks every
node to stop it if running, :func:`command` tells one node to go quiet or
to stop. Nothing waits long for a node that does not answer: a cancel
listens for replies for ``wait`` seconds, a command waits two seconds and
then raises :class:`~natskiq.errors.NotFound`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import anyio
from nats.errors import NoRespondersError
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.errors import Error as JSError

from natskiq.api.changes import delete
from natskiq.api.entries import Filter
from natskiq.api.listing import find
from natskiq.dispatch import shards
from natskiq.enqueue.client import Client
from natskiq.errors import NatskiqError, NotFound
from natskiq.topology import LEASE_KEY, check_name


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


async def masters(client: Client) -> list[dict[str, Any]]:
    """Who leads each dispatch shard: ``shard``, ``node``, ``host``, ``pid``,
    ``token`` (its fencing token), ``won`` (when it took the lease), ``since``
    (its last renewal) and ``revision``, by shard; shards without a master
    are left out."""
    try:
        found = await shards.latest(client.js, client.names.lease_bucket)
    except (NotFoundError, JSError):
        return []
    out = []
    for key, value in found.items():
        shard = client.names.shard_of_key(key)
        if shard is not None:
            out.append({"token": value["revision"], **value, "shard": shard})
    return sorted(out, key=lambda m: int(m["shard"]))


async def nodes(client: Client) -> list[dict[str, Any]]:
    """Every live node's last heartbeat: id, host, pid, queues, concurrency,
    busy, started, master, quiet, processed, failed."""
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


async def cancel(client: Client, jid: str, *, wait: float = 0.5) -> dict[str, Any]:
    """Cancel a job wherever it is: deleted if queued, scheduled or waiting for a
    retry; stopped (its cancel scope cancelled, then acked) if a node runs it.

    A job in transit to a node is remembered there for ten minutes and
    dropped instead of started.

    Returns:
        ``{"deleted": [kinds...], "running_on": [node ids...]}``.

    Raises:
        NotFound: the job was found nowhere.
    """
    check_name("jid", jid)
    deleted = []
    for kind in ("queued", "scheduled", "retry"):
        for entry in await find(client, kind, Filter(jid=jid)):
            await delete(client, entry)
            deleted.append(kind)
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    running = []
    try:
        await client.nc.publish(client.names.cancel_subject, json.dumps({"jid": jid}).encode(), reply=inbox)
        with anyio.move_on_after(wait):
            async for msg in sub.messages:
                if msg.headers and msg.headers.get("Status"):
                    break  # no responders: no node is listening
                node = _replying_node(msg.data)
                if node is not None:
                    running.append(node)
    finally:
        await sub.unsubscribe()
    if not deleted and not running:
        raise NotFound(f"job {jid} is not queued, scheduled, retrying or running (it may have finished)")
    return {"deleted": deleted, "running_on": running}


def _replying_node(data: bytes) -> str | None:
    """The node id in a reply to a cancel request, or None for a reply that is not
    ``{"node": "<id>"}`` (anyone who can publish to the inbox can send one)."""
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    node = reply.get("node") if isinstance(reply, dict) else None
    return node if isinstance(node, str) else None


async def command(client: Client, node_id: str, verb: Literal["quiet", "stop"]) -> None:
    """Tell a node to go quiet (take no new jobs) or to stop gracefully, as
    SIGTSTP and SIGTERM would.

    Raises:
        NotFound: no live node has that id.
    """
    check_name("node", node_id)
    if verb not in ("quiet", "stop"):
        raise NatskiqError(f"unknown node command {verb!r}: use 'quiet' or 'stop'")
    try:
        reply = await client.nc.request(client.names.command_subject(node_id), verb.encode(), timeout=2)
    except (NoRespondersError, TimeoutError):
        raise NotFound(f"no live node {node_id!r} answered") from None
    if reply.data != b"ok":
        raise NatskiqError(f"node {node_id} refused {verb!r}: {reply.data.decode(errors='replace')}")
