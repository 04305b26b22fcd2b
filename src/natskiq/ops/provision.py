"""Provisioning one ``natskiq worker`` process: the streams and buckets it needs, created before it runs.

The :class:`~natskiq.ops.launcher.Launcher` hands :func:`provision` its open
client and its :class:`~natskiq.ops.settings.Settings`. Created (or found as
they are: every ``ensure_*`` is idempotent) are each queue's stream and
consumers with the partitions asked for, the failed set, the stats stream,
the app's periodic job definitions, the lease bucket and the nodes bucket.
What comes back is :class:`Provisioned`: how many dispatch shards the queues
make, and the nodes bucket. Several nodes starting together on a cluster
create the same streams at once, and a stream's first leader election can
time an API request out, so what is transient is tried again for up to
:data:`SETUP_TIMEOUT` seconds; past that it raises a
:class:`~natskiq.errors.ConfigError`.
"""

from __future__ import annotations

import logging

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from nats.js.kv import KeyValue

from natskiq.enqueue import cron
from natskiq.enqueue.client import Client
from natskiq.enqueue.unique import MARKER_TTL
from natskiq.errors import ConfigError
from natskiq.ops.settings import Settings
from natskiq.topology import (
    ensure_bucket,
    ensure_events,
    ensure_failed,
    ensure_queue,
    ensure_results,
    ensure_stats,
)
from natskiq.worker import registered

# The launcher's messages: they log under its name, the one users configure.
log = logging.getLogger("natskiq.ops.launcher")

SETUP_TIMEOUT = 30.0


@attrs.frozen(kw_only=True)
class Provisioned:
    """What a process's streams and buckets are, once created."""

    shards: int
    """Dispatch shards: the most partitions any of the process's queues has."""
    nodes_kv: KeyValue
    """The nodes bucket, where each node keeps its entry."""


async def provision(client: Client, settings: Settings) -> Provisioned:
    """Create what ``settings`` need, trying again what is transient.

    Raises:
        ConfigError: it could not be done within :data:`SETUP_TIMEOUT`, or a
            setting does not fit what the server has.
    """
    deadline = anyio.current_time() + SETUP_TIMEOUT
    while True:
        try:
            return await _create(client, settings)
        except (NatsError, JSError, TimeoutError) as exc:
            if anyio.current_time() > deadline:
                raise ConfigError(f"cannot set up streams and buckets: {exc!r}") from exc
            log.info("setting up streams and buckets: %r; trying again", exc)
            await anyio.sleep(0.5)


async def _create(client: Client, settings: Settings) -> Provisioned:
    """One try at every stream and bucket, in order."""
    s, js, names = settings, client.js, client.names
    counts = [
        await ensure_queue(
            js, names, queue, replicas=s.replicas, ack_wait=s.ack_wait, partitions=s.partitions
        )
        for queue, _ in s.queue_order[0]
    ]
    shards = max(counts)
    max_age = s.failed_max_days * 86400 if s.failed_max_days else None
    await ensure_failed(js, names, replicas=s.replicas, max_jobs=s.failed_max_jobs, max_age=max_age)
    await ensure_stats(js, names, replicas=s.replicas)
    events_age = None if s.events_max_days is None else s.events_max_days * 24 * 3600
    await ensure_events(
        js, names, replicas=s.replicas, max_msgs=s.events_max_msgs, max_bytes=s.events_max_bytes,
        max_age=events_age,
    )  # fmt: skip
    await ensure_results(js, names, replicas=s.replicas)
    await _register_periodic(client)
    await ensure_bucket(js, names.lease_bucket, replicas=s.replicas)
    if any(worker.options.limited for worker in registered().values()):
        # The limits' slots (concurrency=, rate=); nodes would create it on
        # their first limited job, but without the replicas.
        await ensure_bucket(js, names.limits_bucket, replicas=s.replicas, marker_ttl=MARKER_TTL)
    nodes_kv = await ensure_bucket(js, names.nodes_bucket, replicas=s.replicas)
    return Provisioned(shards=shards, nodes_kv=nodes_kv)


async def _register_periodic(client: Client) -> None:
    """Store this app's periodic job definitions (unchanged ones are left alone)."""
    definitions = cron.registered()
    for queue in sorted({d.queue for d in definitions}):
        await client.ensure_queue(queue)
    written = await cron.register(client.js, client.names, definitions)
    if definitions:
        log.info("periodic jobs: %d defined, %d stored anew", len(definitions), written)
