"""Stage 6, retry and failed: where a job goes when ``perform`` raises.

Receives the job, the exception and a way to ack the original message, and
hands on exactly one successor: a new scheduled message on
``<ns>.retry.<queue>.<jid>`` (``Nats-Schedule: @at now+backoff``, targeting
the queue) while retries remain, or a record on ``<ns>.failed.<queue>``
once they are exhausted. It guarantees the successor's PubAck before the
original is acked, so a job is never in neither place; a crash in between
leaves both, and the job runs again (at least once, never zero times).
Payloads that are not valid envelopes go straight to the failed stream with
their raw bytes and the reason.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable

import attrs
from nats.js import JetStreamContext

from . import job as jobs
from .client import rfc3339
from .topology import Names, check_name
from .worker import Worker

log = logging.getLogger(__name__)

INVALID_HEADER = "Natskiq-Invalid"
REASON_HEADER = "Natskiq-Reason"
BACKTRACE_LINES = 20

_backoff_scale = 1.0


def backoff(count: int) -> float:
    """Sidekiq's delay before retry number ``count + 1``, in seconds.

    ``count**4 + 15 + random(0..9) * (count + 1)``: 15-24 s, then 16-34 s,
    31-59 s, ... about 20 days over 25 retries.
    """
    return (count**4 + 15 + random.randint(0, 9) * (count + 1)) * _backoff_scale


def set_backoff_scale(scale: float) -> float:
    """Multiply every retry delay by ``scale`` (0 in tests); returns the old scale."""
    global _backoff_scale
    old, _backoff_scale = _backoff_scale, scale
    return old


def _delay(worker: type[Worker] | None, count: int, exc: BaseException) -> float:
    hook = getattr(worker, "retry_in", None)
    if hook is not None:
        try:
            chosen = hook(count, exc)
            if chosen is not None:
                return float(chosen) * _backoff_scale
        except Exception:
            log.exception("retry_in of %s raised; using the default backoff", worker)
    return backoff(count)


def failed_job(job: jobs.Job, exc: BaseException, *, count: int) -> jobs.Job:
    """The envelope with this failure recorded."""
    now = time.time()
    return attrs.evolve(
        job,
        retry_count=count,
        error_class=type(exc).__qualname__,
        error_message=str(exc)[:1000],
        failed_at=job.failed_at or now,
        retried_at=now if count > 0 else job.retried_at,
        backtrace=traceback.format_exception(exc)[-BACKTRACE_LINES:],
        at=None,
    )


async def route(
    js: JetStreamContext,
    names: Names,
    job: jobs.Job,
    exc: BaseException,
    *,
    worker: type[Worker] | None,
    ack: Callable[[], Awaitable[None]],
) -> str:
    """Store the job's successor (retry or failed), then ack the original.

    Returns:
        ``"retry"`` or ``"failed"``.
    """
    count = 0 if job.retry_count is None else job.retry_count + 1
    if count < job.retry:
        delay = _delay(worker, count, exc)
        successor = attrs.evolve(failed_job(job, exc, count=count), at=time.time() + delay)
        assert successor.at is not None
        headers = {
            "Nats-Msg-Id": f"{job.jid}:{count + 1}",
            "Nats-Schedule": f"@at {rfc3339(successor.at)}",
            "Nats-Schedule-Target": names.queue_subject(job.queue),
        }
        await js.publish(names.retry_subject(job.queue, job.jid), jobs.encode(successor), headers=headers)
        await ack()
        log.info("jid=%s class=%s retry %d in %.1fs: %r", job.jid, job.cls, count + 1, delay, exc)
        return "retry"
    dead = failed_job(job, exc, count=count)
    await js.publish(
        names.failed_subject(job.queue),
        jobs.encode(dead),
        headers={"Nats-Msg-Id": f"{job.jid}:failed:{count}"},
    )
    await ack()
    log.warning("jid=%s class=%s failed for good after %d retries: %r", job.jid, job.cls, count, exc)
    hook = getattr(worker, "retries_exhausted", None)
    if hook is not None:
        try:
            result = hook(dead, exc)
            if isinstance(result, Awaitable):
                await result
        except Exception:
            log.exception("retries_exhausted of %s raised", job.cls)
    return "failed"


async def fail_invalid(
    js: JetStreamContext,
    names: Names,
    raw: bytes,
    reason: str,
    *,
    queue: str,
    ack: Callable[[], Awaitable[None]],
) -> None:
    """Keep an invalid payload, as received, on the failed stream; then ack it."""
    try:
        check_name("queue", queue)
    except ValueError:
        queue = "invalid"
    headers = {INVALID_HEADER: "1", REASON_HEADER: reason[:500].replace("\n", " ").replace("\r", " ")}
    await js.publish(names.failed_subject(queue), raw, headers=headers)
    await ack()
    log.warning("invalid job on queue %s sent to failed: %s", queue, reason)
