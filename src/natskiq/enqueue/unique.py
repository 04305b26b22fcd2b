"""Stage 1, unique and expiring jobs: what the client checks before storing a
job, and what a node checks before and after running it.

**Unique jobs** (``class Sync(natskiq.Worker, unique_for=600)``): while a job
of a class is pending, enqueueing the same class with the same queue, args
and kwargs again stores nothing. The lock is a KV create (a publish with
``Nats-Expected-Last-Subject-Sequence: 0``) of key :func:`lock_key` in the
bucket ``<ns>_unique``, holding the jid of the job that took it, with a
per-message TTL (``Nats-TTL``) of ``unique_for`` seconds (plus the delay, for
a scheduled job). The client takes it in :func:`acquire` and writes the key
and the lock's revision into the envelope (``unique_key``,
``unique_revision``, ``unique_until``). A node releases it with
:func:`release`: just before ``perform`` starts (``unique_until="start"``)
or once it has succeeded (``"success"``, the default), through
:func:`on_start` and :func:`on_success`. A job that keeps failing keeps its
lock until it succeeds or the TTL ends; nothing is locked after a success
(unlike arq, whose job id stays taken while its result is kept).

The release is a delete marker published with
``Nats-Expected-Last-Subject-Sequence: <unique_revision>``: it can only
remove the lock this job took, never a newer one taken after this one's TTL
ran out. The marker carries a TTL of its own, so released keys leave nothing
behind in the bucket.

**Expiring jobs** (``expires_in=3600``): the client writes ``expires_at``
(enqueue time, or the scheduled time, plus ``expires_in``) and a node skips a
job that has not started by then (:func:`expired`, checked in
:func:`on_start`), acking it without running it. Expiry uses the wall clock
of the node against the producer's, like every envelope timestamp.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import attrs
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NotFoundError
from nats.js.errors import Error as JSError

from natskiq.errors import ConfigError, EnqueueError
from natskiq.job import Job
from natskiq.topology import Names, delete_if, is_tombstone, put_if, ttl_header

log = logging.getLogger(__name__)

UNTIL = ("start", "success")
MARKER_TTL = 1.0  # seconds a release's delete marker (and the bucket's expiry markers) live
RELEASE_TIMEOUT = 5.0
ACQUIRE_ATTEMPTS = 5


def lock_key(job: Job) -> str:
    """The lock's key for ``job``: a hash of its class, queue, args and kwargs.

    The jid, headers and timestamps are left out, so two enqueues of the same
    call share a key; kwargs are hashed with sorted keys, so their order does
    not matter.
    """
    identity = json.dumps([job.cls, job.queue, job.args, job.kwargs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()[:40]


def lock_ttl(unique_for: float, at: float | None, now: float) -> float:
    """Seconds the lock lives: ``unique_for``, counted from when a scheduled job is due."""
    return unique_for + max(0.0, (at or now) - now)


async def _last(js: JetStreamContext, names: Names, key: str) -> jsapi.RawStreamMsg | None:
    try:
        return await js.get_msg(names.kv_stream(names.unique_bucket), subject=names.unique_subject(key))
    except NotFoundError:
        return None


async def acquire(
    js: JetStreamContext, names: Names, job: Job, *, ttl: float, until: str = "success"
) -> tuple[Job, str]:
    """Take ``job``'s unique lock for ``ttl`` seconds (at least 1).

    The ``<ns>_unique`` bucket must exist (the client creates it). Safe to
    call again after an error: a lock this job already holds counts as
    taken.

    Args:
        js: the JetStream context.
        names: the namespace's names.
        job: the job about to be stored.
        ttl: seconds until the lock expires on its own.
        until: when a node releases it, ``"start"`` or ``"success"``.

    Returns:
        ``(job, holder)``: if the lock was free, ``job`` carrying
        ``unique_key``, ``unique_revision`` and ``unique_until``, and its own
        jid; otherwise ``job`` unchanged and the jid of the job holding the
        lock (store nothing then).

    Raises:
        EnqueueError: the lock stayed contended through every attempt.
        nats.errors.Error, nats.js.errors.Error: NATS failed (the caller
            decides whether to retry).
    """
    key = lock_key(job)
    subject = names.unique_subject(key)
    header = ttl_header(ttl)
    expected = 0
    for _ in range(ACQUIRE_ATTEMPTS):
        ack = await put_if(js, subject, job.jid.encode(), expected=expected, ttl=header)
        if ack is not None:
            return attrs.evolve(job, unique_key=key, unique_revision=ack.seq, unique_until=until), job.jid
        last = await _last(js, names, key)
        if last is None:
            expected = 0
        elif is_tombstone(last.headers):
            expected = last.seq or 0
        else:
            holder = last.data.decode(errors="replace") if last.data else ""
            if holder == job.jid:  # ours: an earlier attempt was stored but its ack was lost
                return attrs.evolve(job, unique_key=key, unique_revision=last.seq, unique_until=until), holder
            return job, holder
    raise EnqueueError(f"job {job.jid}: its unique lock {key} stayed contended")


async def release(js: JetStreamContext, names: Names, job: Job) -> bool:
    """Delete ``job``'s unique lock if this job still holds it; True if it did.

    Never raises for a NATS error: a lock that could not be released expires
    on its own (logged as a warning).
    """
    if job.unique_key is None or job.unique_revision is None:
        return False
    try:
        subject = names.unique_subject(job.unique_key)
    except ConfigError:  # decode() validates the key; a Job built by hand may not
        log.warning("jid=%s has an invalid unique_key %r", job.jid, job.unique_key)
        return False
    try:
        ack = await delete_if(
            js, subject, expected=job.unique_revision, ttl=ttl_header(MARKER_TTL), timeout=RELEASE_TIMEOUT
        )
    except APIError as exc:
        log.warning("unique lock %s of jid=%s not released: %r", job.unique_key, job.jid, exc)
        return False
    except (NatsError, JSError, TimeoutError) as exc:
        log.warning(
            "unique lock %s of jid=%s not released (it expires on its own): %r", job.unique_key, job.jid, exc
        )
        return False
    if ack is None:
        log.debug("jid=%s no longer holds unique lock %s (expired)", job.jid, job.unique_key)
        return False
    return True


def expired(job: Job, now: float | None = None) -> bool:
    """Whether ``job`` had to start by ``expires_at`` and that time has passed."""
    return job.expires_at is not None and (time.time() if now is None else now) > job.expires_at


async def on_start(js: JetStreamContext, names: Names, job: Job) -> bool:
    """What a node does just before running ``job``; returns whether to run it.

    False means the job expired: it holds no lock any more (released here),
    and the node should ack it without running it. True: run it; a
    ``unique_until="start"`` lock has been released.
    """
    if expired(job):
        log.info(
            "expired jid=%s class=%s queue=%s: not started by its expires_at, skipped",
            job.jid,
            job.cls,
            job.queue,
        )
        await release(js, names, job)
        return False
    if job.unique_key is not None and job.unique_until == "start":
        await release(js, names, job)
    return True


async def on_success(js: JetStreamContext, names: Names, job: Job) -> None:
    """What a node does once ``job`` succeeded, before acking it: release a
    ``unique_until="success"`` lock (any value other than ``"start"`` counts)."""
    if job.unique_key is not None and job.unique_until != "start":
        await release(js, names, job)
