"""What a form's buttons do: find the jobs it names, and act on each with :mod:`natskiq.api`.

A row button or a checkbox names a job as ``queue:seq`` (its stream
sequence): :func:`entries_at` reads exactly those messages, and keeps only
those that still hold a job of the page's kind, so a stale page can never
act on something else. "All that match" goes through :func:`natskiq.api.find`
with the page's filter. :func:`apply` then replays, runs now or deletes them
one by one; each api call stores the job again before it deletes the old
copy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from starlette.exceptions import HTTPException

from natskiq import api
from natskiq.enqueue.client import Client
from natskiq.errors import ConfigError, NatskiqError
from natskiq.topology import check_name

log = logging.getLogger(__name__)


def valid_name(kind: str, value: str) -> str:
    """``value`` if it can name a queue (or jid); a 404 otherwise."""
    try:
        return check_name(kind, value)
    except ConfigError:
        raise HTTPException(404, f"no {kind} named {value!r}") from None


def where_of(params: Mapping[str, str]) -> dict[str, str]:
    """The filter fields a page was asked for (queue, class, jid, error), stripped."""
    return {
        key: params[key].strip() for key in ("queue", "class", "jid", "error") if params.get(key, "").strip()
    }


def filter_of(where: Mapping[str, str]) -> api.Filter:
    if "queue" in where:
        valid_name("queue", where["queue"])
    return api.Filter(
        queue=where.get("queue"), cls=where.get("class"), jid=where.get("jid"), error_class=where.get("error")
    )


async def entries_at(client: Client, kind: api.Kind, items: list[str]) -> list[api.Entry]:
    """The entries a form names as ``queue:seq``, read straight from their stream.

    An entry is returned only if it still holds a job of ``kind`` (a stale
    page can name a sequence that has since gone or been reused for nothing
    else: sequences are never reused within a stream).
    """
    out = []
    for item in items:
        queue, _, seq = item.rpartition(":")
        if not seq.isdigit():
            continue
        entry = await _entry_at(client, kind, valid_name("queue", queue), int(seq))
        if entry is not None:
            out.append(entry)
    return out


async def _entry_at(client: Client, kind: api.Kind, queue: str, seq: int) -> api.Entry | None:
    names = client.names
    stream = names.failed_stream if kind == "failed" else names.queue_stream(queue)
    try:
        msg = await client.js.get_msg(stream, seq=seq)
    except (JSError, NatsError):
        return None
    if names.kind_of(queue, msg.subject or "") != kind:
        return None
    entry = attrs.evolve(api.read_entry(kind, stream, queue, msg), seq=seq)
    if entry.job is not None and entry.job.periodic is not None:
        return None  # a periodic definition, not a job: removed from the periodic page
    return entry


async def apply(client: Client, action: str, entries: list[api.Entry]) -> int:
    """Do ``action`` to each entry, one at a time; returns how many it was done to."""
    calls: dict[str, Callable[[Client, api.Entry], Awaitable[object]]] = {
        "replay": api.replay, "run_now": api.run_now, "delete": api.delete,
    }  # fmt: skip
    done = 0
    for entry in entries:
        try:
            await calls[action](client, entry)
        except NatskiqError as exc:
            log.info("dashboard: %s of %s %s skipped: %s", action, entry.kind, entry.seq, exc)
            continue
        done += 1
    return done
