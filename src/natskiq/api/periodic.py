"""Periodic jobs: the definitions ``natskiq.periodic`` stores, as JetStream holds them.

A worker stores each definition it registers as a repeating message
schedule in its queue's stream, on ``<ns>.scheduled.<queue>.periodic-<name>``
beside the scheduled jobs (see :mod:`natskiq.enqueue.cron`). Receives an
open :class:`~natskiq.enqueue.client.Client`; :func:`periodic_jobs` reads
the definitions back as :class:`PeriodicInfo` values (the schedule from the
message's headers, the job from its envelope), and :func:`remove_periodic`
purges one by name from every queue, so the server fires it no more.
"""

from __future__ import annotations

from typing import Any

import attrs

from natskiq.api.entries import json_safe, read_entry
from natskiq.api.listing import queue_names, scan
from natskiq.enqueue.client import Client
from natskiq.errors import NotFound


@attrs.frozen(kw_only=True)
class PeriodicInfo:
    """A periodic job definition stored in a queue stream.

    ``schedule`` is its ``Nats-Schedule`` header (a cron line, an alias
    such as ``@daily``, or ``@every 30s``), ``tz`` its time zone if it has
    one, and ``next_at`` the server's ``Nats-Schedule-Next`` header, if
    any; ``cls``, ``args`` and ``kwargs`` are what each tick runs.
    """

    name: str
    queue: str
    schedule: str
    tz: str | None
    cls: str
    args: list[Any]
    kwargs: dict[str, Any]
    next_at: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: every field, with any float JSON cannot carry as null."""
        out: dict[str, Any] = json_safe(attrs.asdict(self))  # arguments may hold inf (an old decode)
        return out


async def periodic_jobs(client: Client) -> list[PeriodicInfo]:
    """Every periodic job definition in the namespace, by name."""
    out = []
    for queue in await queue_names(client):
        stream = client.names.queue_stream(queue)
        async for msg in scan(client, stream, client.names.scheduled_filter(queue), None):
            entry = read_entry("scheduled", stream, queue, msg)
            headers = msg.headers or {}
            if entry.job is None or entry.job.periodic is None:
                continue
            out.append(
                PeriodicInfo(
                    name=entry.job.periodic,
                    queue=queue,
                    schedule=headers.get("Nats-Schedule", ""),
                    tz=headers.get("Nats-Schedule-Time-Zone"),
                    cls=entry.job.cls,
                    args=entry.job.args,
                    kwargs=entry.job.kwargs,
                    next_at=headers.get("Nats-Schedule-Next"),
                )  # fmt: skip
            )
    return sorted(out, key=lambda p: (p.name, p.queue))


async def remove_periodic(client: Client, name: str) -> int:
    """Delete a periodic job definition (from every queue); returns how many were removed.

    Raises:
        NotFound: no definition has that name.
    """
    found = [p for p in await periodic_jobs(client) if p.name == name]
    if not found:
        raise NotFound(f"no periodic job named {name!r}")
    for definition in found:
        subject = client.names.periodic_subject(definition.queue, name)
        await client.js.purge_stream(client.names.queue_stream(definition.queue), subject=subject)
    return len(found)
