"""Acting on entries: run a scheduled job or a retry now, replay a failed
job, delete an entry, clear a queue.

Receives :class:`~natskiq.api.entries.Entry` values from a listing, which
may be stale by the time they are acted on; :func:`run_now` and
:func:`replay` store their jobs again through the client, with a message id
that names the entry. Every change keeps DESIGN's invariant: a job is
republished and its PubAck received *before* the copy it replaces is
deleted, so an operation interrupted half-way leaves a job twice, never
zero times. An entry gone since it was listed is left alone, so a stale
listing cannot run a job twice; an entry that is not a valid job, or whose
job cannot be encoded again, can only be deleted.
"""

from __future__ import annotations

import time

import attrs
from nats.js.errors import APIError, NotFoundError

from natskiq import job as jobs
from natskiq.api.entries import Entry, timestamp
from natskiq.api.totals import incr, queue_info
from natskiq.enqueue.client import Client
from natskiq.errors import NatskiqError
from natskiq.flow import batches

MSG_DELETE_FAILED = 10057
"""JetStream's error code for a message delete that failed."""


async def run_now(client: Client, entry: Entry) -> str:
    """Move a scheduled job or a retry to its queue now; returns its jid.

    An entry that is gone already (fired, run now or deleted since it was
    listed) is left alone: nothing is stored, so the job does not run twice.

    Raises:
        NatskiqError: the entry is not a scheduled job or a retry, is not a
            valid job, or holds arguments that cannot be stored again.
    """
    if entry.kind not in ("scheduled", "retry"):
        raise NatskiqError(f"run_now takes scheduled jobs and retries, not {entry.kind} ones")
    job = _require_job(entry)
    if not await _still_there(client, entry):
        return job.jid
    now = time.time()
    moved = attrs.evolve(
        job, at=None, created_at=_time_or(job.created_at, now), enqueued_at=now,
        failed_at=timestamp(job.failed_at), retried_at=timestamp(job.retried_at),
        expires_at=timestamp(job.expires_at),
    )  # fmt: skip
    await client.publish(_encodable(entry, moved), attempt=f"now{entry.seq}")
    # The job may already have run, failed and scheduled its next retry on
    # the same subject, which replaced this message: then it is gone already.
    await _remove(client, entry)
    return job.jid


async def replay(client: Client, entry: Entry) -> str:
    """Republish a failed job to its queue with its retry count reset; returns its jid.

    The failed copy is deleted only after the queue has stored the job. An
    entry that is gone already (replayed or deleted since it was listed) is
    left alone: nothing is stored, so a stale listing cannot run a job twice.
    Two replays of one entry at once store it once (its message id names
    the entry).

    Raises:
        NatskiqError: the entry is not a failed job, is not a valid job, or
            holds arguments that cannot be stored again.
    """
    if entry.kind != "failed":
        raise NatskiqError(f"replay takes failed jobs, not {entry.kind} ones")
    job = _require_job(entry)
    if not await _still_there(client, entry):
        return job.jid
    now = time.time()
    fresh = jobs.Job(
        jid=job.jid, cls=job.cls, args=job.args, kwargs=job.kwargs, queue=entry.queue,
        retry=job.retry, created_at=_time_or(job.created_at, now), enqueued_at=now,
        keep_result=job.keep_result, chain=job.chain,
    )  # fmt: skip
    await client.publish(_encodable(entry, fresh), attempt=f"replay{entry.seq}")
    await _remove(client, entry)
    return job.jid


async def delete(client: Client, entry: Entry) -> None:
    """Delete one queued, scheduled, retry or failed entry.

    An entry gone already (trimmed, replaced or removed by someone else) is
    no error; a failed one deleted is counted, so that
    :func:`~natskiq.api.failed_set_size` tells deletes from trims; a job of
    a batch deleted before it ran counts as failed in its batch.
    """
    await _remove(client, entry)


async def clear(client: Client, queue: str) -> int:
    """Delete every ready job of a queue (not scheduled ones or retries); returns how many.

    Raises:
        NotFound: no such queue.
    """
    info = await queue_info(client, queue)
    await client.js.purge_stream(client.names.queue_stream(queue), subject=client.names.ready_filter)
    return info.ready


async def _still_there(client: Client, entry: Entry) -> bool:
    try:
        await client.js.get_msg(entry.stream, entry.seq)
    except NotFoundError:
        return False
    return True


async def _remove(client: Client, entry: Entry) -> None:
    try:
        await client.js.delete_msg(entry.stream, entry.seq)
    except NotFoundError:
        return  # already gone: trimmed, or removed by someone else
    except APIError as exc:
        # A message replaced since it was listed (a retry superseded by the
        # job's next retry on the same subject) is reported as a failed
        # delete (500, err_code 10057, "no message found"), not as a 404.
        if exc.err_code == MSG_DELETE_FAILED and "no message found" in str(exc.description):
            return
        raise
    if entry.kind == "failed":
        await incr(client, "failed_removed", 1)
    elif entry.job is not None and entry.job.batch is not None:
        # A job of a batch deleted before it ran (cancelled, or deleted by hand)
        # counts as failed there, so its batch can still complete.
        await batches.settle(client.js, client.names, entry.job, succeeded=False)


def _require_job(entry: Entry) -> jobs.Job:
    if entry.job is None:
        raise NatskiqError(f"entry {entry.seq} is not a valid job ({entry.reason}); it can only be deleted")
    return entry.job


def _time_or(value: float, default: float) -> float:
    """``value`` if it is a plausible time, else ``default``: a job is never stored again with inf."""
    seconds = timestamp(value)
    return default if seconds is None else seconds


def _encodable(entry: Entry, job: jobs.Job) -> jobs.Job:
    """``job`` if it encodes, else a NatskiqError (arguments JSON cannot carry, such as inf)."""
    try:
        jobs.encode(job)
    except (TypeError, ValueError, RecursionError) as exc:
        raise NatskiqError(
            f"entry {entry.seq} cannot be stored again ({exc}); it can only be deleted"
        ) from None
    return job
