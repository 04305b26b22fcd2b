"""What a running node keeps an eye on beside its jobs: commands sent to it, partitions added, the failed set.

The :class:`~natskiq.ops.launcher.Launcher` runs each of these loops in its
task group until it stops; each looks at one thing on the server and acts
on what changed:

* :func:`read_commands`: ``quiet`` and ``stop`` sent to this node
  (``natskiq.api.command``), obeyed through the launcher's own verbs and
  answered;
* :func:`watch_partitions`: the queues' partition counts, read from their
  streams; when another node has raised them, this one takes part in the
  new shards' elections (no restart needed);
* :func:`watch_failed`: the failed set's trim count, while this node is
  shard 0's master; when its limits have pushed failed jobs out since the
  last look, a WARNING says how many (the master says it, no other node).

A look that fails (a server briefly away) is skipped; the next one follows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError

from natskiq import api
from natskiq.dispatch.lease import Lease
from natskiq.dispatch.shards import Shards
from natskiq.enqueue.client import Client
from natskiq.run.node import Node
from natskiq.topology import read_partitions

# The launcher's messages: they log under its name, the one users configure.
log = logging.getLogger("natskiq.ops.launcher")


async def read_commands(
    client: Client, node_id: str, quiet: Callable[[], None], stop: Callable[[], None]
) -> None:
    """Obey ``quiet`` and ``stop`` sent to this node (``natskiq.api.command``)."""
    sub = await client.nc.subscribe(client.names.command_subject(node_id))
    try:
        async for msg in sub.messages:
            verb = msg.data.decode(errors="replace").strip()
            if verb == "quiet":
                quiet()
            elif verb == "stop":
                stop()
            if msg.reply:
                answer = "ok" if verb in ("quiet", "stop") else f"unknown command {verb[:40]!r}"
                await client.nc.publish(msg.reply, answer.encode())
            log.info("command %r received", verb[:40])
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await sub.unsubscribe()


async def watch_partitions(
    client: Client, queues: list[str], node: Node, shards: Shards, every: float
) -> None:
    """Every ``every`` seconds, read the queues' partition counts from their
    streams: when another node has raised them, take part in the new
    shards' elections (no restart needed)."""
    js, names = client.js, client.names
    while True:
        await anyio.sleep(every)
        try:
            count = max([await read_partitions(js, names, queue) for queue in queues], default=1)
        except (NatsError, JSError, TimeoutError) as exc:
            log.debug("cannot read the queues' partitions: %r", exc)
            continue
        if count > shards.count:
            node.shards = count
            shards.grow(count)


async def watch_failed(client: Client, lease: Lease, every: float) -> None:
    """Log when the failed set's limits push jobs out (the master of ``lease``'s shard says it, once)."""
    seen: int | None = None
    while True:
        await anyio.sleep(every)
        if not lease.held:
            seen = None
            continue
        try:
            _, trimmed = await api.failed_set_size(client)
        except (NatsError, JSError, TimeoutError):
            continue
        if seen is not None and trimmed > seen:
            log.warning(
                "the failed set is full: %d failed job(s) were dropped by its limits (%d in all); "
                "raise --failed-max-jobs / --failed-max-days or replay/delete failed jobs",
                trimmed - seen, trimmed,
            )  # fmt: skip
        seen = trimmed
