"""Stage 3, election across shards: which node leads which part of the dispatch.

A queue may be split into partitions: ready jobs of partition 0 are stored
on ``<ns>.queue.<q>``, those of partition ``p`` on ``<ns>.queue.<q>.<p>``,
and producers fill the partitions in turn. Partition ``p`` of every queue
forms dispatch shard ``p``, led by its own master: the node holding the
lease key ``aggregator`` (shard 0) or ``aggregator-<p>`` in the leases
bucket, with its own fencing token (see :mod:`natskiq.dispatch.lease`). Each master
pulls its partition of every queue and hands the jobs to every node, so
with as many shards as nodes every node leads one and no process carries
the whole cluster's dispatch.

:class:`Shards` receives the shard count and a ``lead(shard, token)``
coroutine; it runs one election per shard and guarantees:

* a vacant shard is always taken by some live node (no cap on winning): a
  node waits :data:`HANDICAP` seconds per shard it already leads before it
  tries, so that the node leading fewest usually wins the race;
* every :data:`BALANCE_EVERY` seconds it reads who leads what (the leases
  bucket) and which nodes are live and not quiet (the nodes bucket), and a
  node that leads two or more shards more than the live node leading the
  fewest hands one over: it gives up that lease (deleting the key, so the
  others race for it at once) and keeps out of that shard's race for
  :data:`COOLDOWN` seconds (if nobody took it meanwhile, it wins it back and
  waits :data:`RETRY_BALANCE` before trying again). Nodes joining and leaving thus even out within
  seconds, and the fencing stays per shard: a handed-over shard's new
  master has a higher token, and nodes refuse the old one's dispatches.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import Error as JSError
from nats.js.errors import NotFoundError

from natskiq.dispatch.lease import Lease, elect
from natskiq.topology import Names, is_tombstone

log = logging.getLogger(__name__)

HANDICAP = 0.25
"""Seconds a node waits, per shard it already leads, before trying for a vacant one."""
BALANCE_EVERY = 2.0
COOLDOWN = 1.0
"""Seconds a node keeps out of the race for a shard it has just handed over
(the others race for it at once: one takes it within milliseconds)."""
RETRY_BALANCE = (4.0, 30.0)
"""Seconds before handing over again after a hand-over nobody took (the
node that looked least loaded had just died or paused), doubling to the second."""
LIVE = 5.0
"""A node whose heartbeat (every 2 s) is older than this counts as gone."""


@attrs.define
class Shards:
    """This node's elections, one per shard, and the balance between nodes.

    Args:
        nc: the node's connection.
        names: the namespace's names.
        node_id: this node.
        count: how many shards the cluster runs.
        lead: run as master of ``shard`` with ``token``; cancelled when the lease goes.
        ttl: the leases' TTL.
    """

    nc: NATS
    names: Names
    node_id: str
    count: int
    lead: Callable[[int, int], Awaitable[None]]
    ttl: float = 5.0
    leases: list[Lease] = attrs.field(init=False)
    _cooldown: dict[int, float] = attrs.field(init=False, factory=dict)
    _js: JetStreamContext = attrs.field(init=False)
    _tg: anyio.abc.TaskGroup | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.leases = [
            Lease(self.nc, self.names, self.node_id, self.ttl, shard) for shard in range(self.count)
        ]
        self._js = self.nc.jetstream()

    def led(self) -> list[int]:
        """The shards this node leads now (by its own clock)."""
        return [lease.shard for lease in self.leases if lease.held]

    async def run(self) -> None:
        """Take part in every shard's election, and keep the shards balanced, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for lease in self.leases:
                self._start(lease)
            tg.start_soon(self._balance, name="natskiq shard balance")

    def _start(self, lease: Lease) -> None:
        assert self._tg is not None
        lead = functools.partial(self.lead, lease.shard)
        before = functools.partial(self._before_try, lease.shard)
        self._tg.start_soon(
            functools.partial(elect, lease, lead, before_try=before), name=f"natskiq shard {lease.shard}"
        )

    def grow(self, count: int) -> None:
        """Take part in the elections of shards up to ``count`` too (a node
        raised a queue's partitions while this one ran); never shrinks."""
        for shard in range(self.count, count):
            lease = Lease(self.nc, self.names, self.node_id, self.ttl, shard)
            self.leases.append(lease)
            if self._tg is not None:
                self._start(lease)
        if count > self.count:
            log.info("node %s now takes part in %d shards' elections", self.node_id, count)
            self.count = count

    async def _before_try(self, shard: int) -> None:
        wait = HANDICAP * len(self.led())
        until = self._cooldown.pop(shard, 0.0) - anyio.current_time()
        await anyio.sleep(max(wait, until))

    async def _balance(self) -> None:
        backoff = 0.0
        while True:
            await anyio.sleep(BALANCE_EVERY)
            mine = self.led()
            if len(mine) < 2:
                continue
            try:
                counts = await self.counts()
            except (NatsError, JSError, TimeoutError) as exc:
                log.debug("cannot see the shards' balance: %r", exc)
                continue
            counts[self.node_id] = len(mine)
            fewest = min(counts.values())
            if len(mine) >= fewest + 2:
                shard = max(mine)
                log.info(
                    "node %s leads %d shards, a live node leads %d: handing shard %d over",
                    self.node_id, len(mine), fewest, shard,
                )  # fmt: skip
                self._cooldown[shard] = anyio.current_time() + COOLDOWN
                self.leases[shard].give_up()
                await anyio.sleep(COOLDOWN + BALANCE_EVERY)  # let the others take it, and the views catch up
                if shard in self.led():
                    # Nobody took it (the node leading fewest had just died or
                    # paused, its heartbeat not yet stale): this node won it
                    # back after the cooldown. Wait longer before trying again.
                    backoff = min(RETRY_BALANCE[1], backoff * 2) if backoff else RETRY_BALANCE[0]
                    log.info("nobody took shard %d; balancing again in %.0f s", shard, backoff)
                    await anyio.sleep(backoff)
                else:
                    backoff = 0.0

    async def counts(self) -> dict[str, int]:
        """How many shards each live, non-quiet node leads (from the buckets)."""
        counts = dict.fromkeys(await live_nodes(self._js, self.names), 0)
        for holder in (await holders(self._js, self.names, self.count)).values():
            if holder in counts:
                counts[holder] += 1
        return counts


async def latest(js: JetStreamContext, bucket: str) -> dict[str, dict[str, Any]]:
    """Every live key of a KV bucket with its JSON value and ``revision``
    (keys deleted or expired, and values not JSON objects, left out)."""
    stream = Names.kv_stream(bucket)
    try:
        info = await js.stream_info(stream, subjects_filter=">")
    except NotFoundError:
        return {}
    out = {}
    for subject in info.state.subjects or {}:
        try:
            msg = await js.get_msg(stream, subject=subject)
        except NotFoundError:
            continue
        if is_tombstone(msg.headers) or not msg.data:
            continue
        try:
            value = json.loads(msg.data)
        except ValueError:
            continue
        key = Names.kv_key(bucket, subject)
        if isinstance(value, dict) and key is not None:
            out[key] = {**value, "revision": msg.seq}
    return out


async def live_nodes(js: JetStreamContext, names: Names) -> list[str]:
    """The nodes whose heartbeat is fresh and which are not quiet."""
    now = time.time()
    return [
        node
        for node, info in (await latest(js, names.nodes_bucket)).items()
        if not info.get("quiet") and now - float(info.get("at", 0)) < LIVE
    ]


async def holders(js: JetStreamContext, names: Names, count: int | None = None) -> dict[int, str]:
    """Who leads each shard that has a master: ``{shard: node}``."""
    out = {}
    for key, value in (await latest(js, names.lease_bucket)).items():
        shard = names.shard_of_key(key)
        if shard is not None and (count is None or shard < count) and isinstance(value.get("node"), str):
            out[shard] = value["node"]
    return out
