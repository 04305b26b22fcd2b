"""Reading streams: the queues of a namespace and the entries stored in them.

Receives an open :class:`~natskiq.enqueue.client.Client` and hands on
:class:`~natskiq.api.entries.Entry` values, oldest first. Jobs are read
straight from their streams: a queue stream holds the ready jobs on
``<ns>.queue.<q>``, the scheduled ones on ``<ns>.scheduled.<q>.<jid>`` and
the retries on ``<ns>.retry.<q>.<jid>``; the failed stream holds the dead
set. Messages are read one at a time with JetStream's message get (the
next one on a subject from a sequence on), which consumes and acknowledges
nothing, so reading never disturbs dispatch. Periodic definitions, stored beside the scheduled jobs, are left
out of listings (:mod:`natskiq.api.periodic` reads them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from natskiq.api.entries import Entry, Filter, Kind, read_entry
from natskiq.enqueue.client import Client
from natskiq.errors import NatskiqError, NotFound
from natskiq.topology import check_name


async def queue_names(client: Client) -> list[str]:
    """Every queue with a stream in the client's namespace.

    Asks JetStream for the names of the streams holding ``<ns>.queue.*``,
    page by page (a server answers at most 1,024 names at a time).

    Raises:
        NatskiqError: the server refused the request.
    """
    prefix = client.names.queue_stream_prefix
    subject = client.names.any_queue_subject
    found: list[str] = []
    while True:
        request = json.dumps({"offset": len(found), "subject": subject}).encode()
        reply = await client.nc.request("$JS.API.STREAM.NAMES", request, timeout=5)
        page = json.loads(reply.data)
        if "error" in page:
            raise NatskiqError(f"cannot list queues: {page['error'].get('description', page['error'])}")
        names = page.get("streams") or []
        found.extend(names)
        if not names or len(found) >= int(page.get("total", 0)):
            break
    return sorted(name[len(prefix) :] for name in found if name.startswith(prefix))


async def _check_queue(client: Client, queue: str) -> None:
    """NotFound unless ``queue`` is a queue of the namespace."""
    check_name("queue", queue)
    if queue not in await queue_names(client):
        raise NotFound(f"no queue named {queue!r} in namespace {client.names.namespace!r}")


async def scan(
    client: Client, stream: str, subject: str, limit: int | None
) -> AsyncIterator[jsapi.RawStreamMsg]:
    """Messages of ``stream`` on ``subject`` (wildcards allowed), oldest first."""
    seq, found = 1, 0
    while limit is None or found < limit:
        try:
            msg = await client.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        found += 1
        yield msg
        seq = (msg.seq or seq) + 1


async def find_in(
    client: Client, kind: Kind, queues: Sequence[str], where: Filter, limit: int | None
) -> list[Entry]:
    """The entries of one kind in these queues that match ``where``, periodic definitions left out."""
    names, out = client.names, []
    for queue in queues:
        if kind == "failed":
            stream, subject = names.failed_stream, names.failed_subject(queue)
        else:
            stream = names.queue_stream(queue)
            subject = {
                "queued": names.ready_filter,
                "scheduled": names.scheduled_filter(queue),
                "retry": names.retry_filter(queue),
            }[kind]
        try:
            async for msg in scan(client, stream, subject, None):
                entry = read_entry(kind, stream, queue, msg)
                if entry.job is not None and entry.job.periodic is not None:
                    continue  # a periodic definition, not a job (see periodic_jobs)
                if where.matches(entry):
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        return out
        except NotFoundError:
            continue
    return out


async def _failed_queues(client: Client) -> list[str]:
    """The queues the failed set holds jobs of, by name."""
    try:
        info = await client.js.stream_info(client.names.failed_stream, subjects_filter=">")
    except NotFoundError:
        return []
    queues = (client.names.queue_of_failed(s) for s in info.state.subjects or {})
    return sorted(q for q in queues if q is not None)


async def find(
    client: Client, kind: Kind, where: Filter | None = None, *, limit: int | None = None
) -> list[Entry]:
    """Jobs of one kind (queued, scheduled, retry or failed) matching ``where``, oldest first.

    Every queue is searched unless ``where.queue`` names one, and the search
    stops once ``limit`` entries are found. Periodic definitions are not
    jobs and are left out (see :func:`~natskiq.api.periodic_jobs`).

    Raises:
        NotFound: ``where.queue`` names a queue that does not exist.
    """
    where = where or Filter()
    if where.queue is not None:
        check_name("queue", where.queue)
        if kind != "failed":
            await _check_queue(client, where.queue)
        queues = [where.queue]
    else:
        queues = await _failed_queues(client) if kind == "failed" else await queue_names(client)
    return await find_in(client, kind, queues, where, limit)
