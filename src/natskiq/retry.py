"""Stage 6, retry and failed: where a job goes when ``perform`` raises.

Receives the job, the exception and a way to ack the original message, and
hands on at most one successor:

* while retries remain, a new scheduled message on
  ``<ns>.retry.<queue>.<jid>`` (``Nats-Schedule: @at now+delay``, targeting
  the queue), with ``retry_count``, the error and the times recorded;
* once they are exhausted (or the worker's ``retry_in`` says ``"kill"``), a
  record on ``<ns>.failed.<queue>``, the dead set, unless the worker has
  ``dead=False`` (or ``retry_in`` says ``"discard"``), which drops it.

It guarantees the successor's PubAck before the original is acked, so a job
is never in neither place; a crash in between leaves both, and the job runs
again (at least once, never zero times). Retries are new messages, never a
delayed NAK, which would hold an ack-pending slot for the whole delay.
Payloads that are not valid envelopes go straight to the failed stream with
their raw bytes and the reason.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
from nats.js import JetStreamContext

from . import job as jobs
from .client import rfc3339
from .errors import Retry
from .topology import Names, check_name
from .worker import Worker

log = logging.getLogger(__name__)

INVALID_HEADER = "Natskiq-Invalid"
REASON_HEADER = "Natskiq-Reason"
ERROR_CHARS = 2000
MAX_DELAY = 365 * 86400.0  # a retry is never scheduled more than a year ahead

DeathHandler = Callable[[jobs.Job, BaseException], Any]
Outcome = Literal["retry", "failed", "discarded"]

death_handlers: list[DeathHandler] = []
_backoff_scale = 1.0


def on_death(handler: DeathHandler) -> DeathHandler:
    """Register a global handler called (sync or async) with ``(job, exc)``
    whenever a job fails for good, whatever its worker. Usable as a decorator.
    """
    death_handlers.append(handler)
    return handler


def backoff(count: int) -> float:
    """Sidekiq's delay before retry number ``count + 1``, in seconds.

    ``count**4 + 15 + random(0..9) * (count + 1)``: 15-24 s, then 16-34 s,
    31-59 s, ... about 20 days over 25 retries.
    """
    return float(count**4 + 15 + random.randint(0, 9) * (count + 1)) * _backoff_scale


def set_backoff_scale(scale: float) -> float:
    """Multiply every retry delay by ``scale`` (0 in tests); returns the old scale."""
    global _backoff_scale
    old, _backoff_scale = _backoff_scale, float(scale)
    return old


def decide(worker: type[Worker] | None, count: int, exc: BaseException) -> float | str:
    """Seconds until the next attempt, or ``"discard"`` / ``"kill"``."""
    if isinstance(exc, Retry) and exc.defer is not None:
        return exc.defer * _backoff_scale
    hook = _hook(worker, "retry_in")
    if hook is not None:
        try:
            chosen = hook(count, exc)
        except Exception:
            log.exception("retry_in of %s raised; using the default backoff", worker)
            chosen = None
        if chosen in ("discard", "kill"):
            return str(chosen)
        if chosen is not None:
            return max(0.0, float(chosen)) * _backoff_scale
    return backoff(count)


def _hook(worker: type[Worker] | None, name: str) -> Callable[..., Any] | None:
    """A worker's optional hook, bound to a fresh instance (methods of any kind work)."""
    if worker is None or not hasattr(worker, name):
        return None
    hook: Callable[..., Any] = getattr(worker(), name)
    return hook


def failed_job(
    job: jobs.Job, exc: BaseException, *, count: int, backtrace: int = 0, now: float | None = None
) -> jobs.Job:
    """The envelope with this failure (at ``now``) recorded."""
    now = time.time() if now is None else now
    return attrs.evolve(
        job,
        retry_count=count,
        error_class=type(exc).__qualname__,
        error_message=str(exc)[:ERROR_CHARS],
        failed_at=job.failed_at or now,
        retried_at=now if count > 0 else job.retried_at,
        backtrace=traceback.format_exception(exc)[-backtrace:] if backtrace else None,
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
    kill: bool = False,
) -> Outcome:
    """Store the job's successor (retry or failed), then ack the original.

    ``kill=True`` skips the retries and goes to the failed set at once.
    """
    count = 0 if job.retry_count is None else job.retry_count + 1
    options = worker.options if worker is not None else None
    now = time.time()
    record = failed_job(job, exc, count=count, backtrace=options.backtrace if options else 0, now=now)
    verdict = decide(worker, count, exc) if count < job.retry and not kill else "kill"
    if verdict == "discard":
        await ack()
        log.info("jid=%s class=%s discarded by retry_in: %r", job.jid, job.cls, exc)
        return "discarded"
    if not isinstance(verdict, str):
        verdict = min(verdict, MAX_DELAY)
        await _schedule_retry(js, names, attrs.evolve(record, at=now + verdict))
        await ack()
        log.info("jid=%s class=%s retry %d in %.1fs: %r", job.jid, job.cls, count + 1, verdict, exc)
        return "retry"
    if options is None or options.dead:
        await js.publish(
            names.failed_subject(job.queue),
            jobs.encode(record),
            headers={"Nats-Msg-Id": f"{job.jid}:failed:{count}"},
        )
    await ack()
    log.warning("jid=%s class=%s failed for good after %d retries: %r", job.jid, job.cls, count, exc)
    await _call_death_hooks(worker, record, exc)
    return "failed"


async def _schedule_retry(js: JetStreamContext, names: Names, successor: jobs.Job) -> None:
    assert successor.at is not None and successor.retry_count is not None
    headers = {
        "Nats-Msg-Id": f"{successor.jid}:{successor.retry_count + 1}",
        "Nats-Schedule": f"@at {rfc3339(successor.at)}",
        "Nats-Schedule-Target": names.queue_subject(successor.queue),
    }
    subject = names.retry_subject(successor.queue, successor.jid)
    await js.publish(subject, jobs.encode(successor), headers=headers)


async def _call_death_hooks(worker: type[Worker] | None, job: jobs.Job, exc: BaseException) -> None:
    own = _hook(worker, "retries_exhausted")
    hooks = ([own] if own is not None else []) + death_handlers
    for hook in hooks:
        try:
            result = hook(job, exc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("a death handler raised for jid=%s", job.jid)


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
    clean = "".join(c if c.isprintable() else " " for c in reason)[:500]
    await js.publish(names.failed_subject(queue), raw, headers={INVALID_HEADER: "1", REASON_HEADER: clean})
    await ack()
    log.warning("invalid job on queue %s sent to failed: %s", queue, clean)
