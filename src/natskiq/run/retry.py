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

from natskiq import job as jobs
from natskiq.enqueue.publish import rfc3339
from natskiq.errors import EnqueueError, Retry
from natskiq.flow import batches
from natskiq.status.events import Emitter
from natskiq.status.results import encode_failure, store_result
from natskiq.topology import Names, check_name
from natskiq.worker import Worker

log = logging.getLogger(__name__)

INVALID_HEADER = "Natskiq-Invalid"
REASON_HEADER = "Natskiq-Reason"
TRUNCATED_HEADER = "Natskiq-Truncated"
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
            try:
                return max(0.0, float(chosen)) * _backoff_scale
            except (TypeError, ValueError, OverflowError):
                log.error(
                    "retry_in of %s returned %r, not seconds; using the default backoff", worker, chosen
                )
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
        error_message=describe(exc)[:ERROR_CHARS],
        failed_at=job.failed_at or now,
        retried_at=now if count > 0 else job.retried_at,
        backtrace=_backtrace(exc, backtrace) if backtrace else None,
        at=None,
    )


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__qualname__}: its __str__ raised>"


def _backtrace(exc: BaseException, lines: int) -> list[str] | None:
    try:
        return traceback.format_exception(exc)[-lines:]
    except Exception:
        return None


def fit(record: jobs.Job, limit: int) -> bytes | None:
    """The record's wire form in at most ``limit`` bytes, or None if even its job does not fit.

    A failure adds its error (up to :data:`ERROR_CHARS` characters, six bytes
    each once escaped) and an opt-in backtrace to the envelope; when that
    would take the record past what the server accepts, the backtrace and
    then most of the error message give way, never the job's own fields.
    """
    payload = jobs.encode(record)
    if len(payload) > limit and record.backtrace:
        record = attrs.evolve(record, backtrace=None)
        payload = jobs.encode(record)
    if len(payload) > limit and record.error_message:
        record = attrs.evolve(record, error_message=record.error_message[:100] + " [cut to fit]")
        payload = jobs.encode(record)
    return payload if len(payload) <= limit else None


async def route(
    js: JetStreamContext,
    names: Names,
    job: jobs.Job,
    exc: BaseException,
    *,
    worker: type[Worker] | None,
    ack: Callable[[], Awaitable[None]],
    seq: int,
    raw: bytes,
    max_payload: int,
    kill: bool = False,
    emitter: Emitter | None = None,
) -> Outcome:
    """Store the job's successor (retry or failed), then ack the original.

    Args:
        js: where to store the successor.
        names: the namespace's names.
        job: the job that failed (as decoded from ``raw``).
        exc: what it raised.
        worker: its worker class (None when there is none, e.g. unknown).
        ack: acks the original message.
        seq: the original message's stream sequence. The successor's
            ``Nats-Msg-Id`` is made from it (see :func:`successor_id`): a
            successor published twice for one delivery (a node that died
            between the PubAck and the ack, its job redelivered) is stored
            once, and any other attempt, however a replay reset its
            ``retry_count``, gets an id of its own.
        raw: the original payload, kept as it came (see
            :func:`fail_invalid`) if even the job's failed record would
            exceed the server's size limit.
        max_payload: the server's limit for a message, headers included.
        kill: skip the retries and go to the failed set at once.
        emitter: publishes the job's ``retrying``, ``failed`` or ``discarded``
            event once the original is acked. A job that keeps its result
            (``keep_result``) has its failure stored there before the ack.
    """
    count = 0 if job.retry_count is None else job.retry_count + 1
    options = worker.options if worker is not None else None
    now = time.time()
    record = failed_job(job, exc, count=count, backtrace=options.backtrace if options else 0, now=now)
    verdict = decide(worker, count, exc) if count < job.retry and not kill else "kill"
    error = {"attempt": count + 1, "error_class": record.error_class, "error_message": record.error_message}
    if not isinstance(verdict, str):
        delay = min(verdict, MAX_DELAY)
        if await _store_retry(js, names, attrs.evolve(record, at=now + delay), seq, max_payload):
            await ack()
            log.info("jid=%s class=%s retry %d in %.1fs: %r", job.jid, job.cls, count + 1, delay, exc)
            await _emit(emitter, "retrying", job, next_at=now + delay, **error)
            return "retry"
    await batches.settle(js, names, job, succeeded=False)  # failed for good (or discarded): an outcome
    if verdict == "discard":
        await ack()
        log.info("jid=%s class=%s discarded by retry_in: %r", job.jid, job.cls, exc)
        await _emit(emitter, "discarded", job, **error)
        return "discarded"
    # From here on the job has failed for good: its failure is its result.
    await _keep_failure(js, names, job, record, max_payload, emitter)
    if isinstance(verdict, str) and options is not None and not options.dead:
        await ack()  # dropped, as the worker asks (dead=False)
        log.warning("jid=%s class=%s dropped after %d retries (dead=False): %r", job.jid, job.cls, count, exc)
        await _emit(emitter, "failed", job, **error)
        await _call_death_hooks(worker, record, exc)
        return "failed"
    if isinstance(verdict, str) and await _store_failed(js, names, record, seq, max_payload):
        await ack()
        log.warning("jid=%s class=%s failed for good after %d retries: %r", job.jid, job.cls, count, exc)
        await _emit(emitter, "failed", job, **error)
        await _call_death_hooks(worker, record, exc)
        return "failed"
    # Too large to carry its error: it can be neither retried nor kept as a
    # failed job. Keep it as it came, with the reason.
    reason = f"{type(exc).__qualname__}: {describe(exc)[:200]} (too large to record the failure)"
    await fail_invalid(js, names, raw, reason, queue=job.queue, ack=ack, seq=seq, max_payload=max_payload)
    await _emit(emitter, "failed", job, **error)
    return "failed"


async def _emit(emitter: Emitter | None, state: str, job: jobs.Job, **fields: Any) -> None:
    if emitter is not None:
        await emitter.emit(state, job.jid, job.queue, job.cls, **fields)


async def _keep_failure(
    js: JetStreamContext,
    names: Names,
    job: jobs.Job,
    record: jobs.Job,
    max_payload: int,
    emitter: Emitter | None,
) -> None:
    """Store the failure as the job's result when it keeps one (before the ack),
    and tell the client waiting for it."""
    if job.keep_result is not None:
        doc = encode_failure(record.error_class or "", record.error_message or "", record.backtrace)
        try:
            await store_result(js, names, job.jid, doc, job.keep_result, max_payload)
        except EnqueueError as exc:
            log.warning("jid=%s class=%s: failure not kept as its result: %s", job.jid, job.cls, exc)
            return
        if emitter is not None:
            await emitter.reply(job.reply, job.jid, doc)


async def _store_retry(
    js: JetStreamContext, names: Names, successor: jobs.Job, seq: int, max_payload: int
) -> bool:
    """Schedule the retry at ``successor.at``; False if it would not fit in a message."""
    assert successor.at is not None
    headers = {
        "Nats-Msg-Id": successor_id(successor, "retry", seq),
        "Nats-Schedule": f"@at {rfc3339(successor.at)}",
        "Nats-Schedule-Target": names.enqueue_subject(successor.queue),
    }
    payload = fit(successor, max_payload - jobs.headers_size(headers))
    if payload is None:
        return False
    await js.publish(names.retry_subject(successor.queue, successor.jid), payload, headers=headers)
    return True


async def _store_failed(
    js: JetStreamContext, names: Names, record: jobs.Job, seq: int, max_payload: int
) -> bool:
    """Keep the record in the failed set; False if it would not fit in a message."""
    headers = {"Nats-Msg-Id": successor_id(record, "failed", seq)}
    payload = fit(record, max_payload - jobs.headers_size(headers))
    if payload is None:
        return False
    await js.publish(names.failed_subject(record.queue), payload, headers=headers)
    return True


def successor_id(job: jobs.Job, kind: Literal["retry", "failed"], seq: int) -> str:
    """The ``Nats-Msg-Id`` of the successor of the message at ``seq`` of ``job.queue``'s stream.

    JetStream remembers a message id for the whole duplicate window, even
    after the message is gone, and answers a publish with a known id
    "duplicate" without storing it. An id made from the job's retry count
    would come back after a replay (which resets the count) and the retry
    would be dropped while the original is acked: the job lost. A stream
    sequence is never reused, so this id names one attempt only: a duplicate
    answer means this very attempt's successor is already stored, and acking
    the original is then right. The failed stream serves every queue, hence
    the queue in the failed record's id.
    """
    if kind == "retry":
        return f"{job.jid}:retry:{seq}"
    return f"{job.jid}:failed:{job.queue}:{seq}"


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
    seq: int | None = None,
    max_payload: int | None = None,
) -> None:
    """Keep a payload, as received, on the failed stream with the reason; then ack it.

    For payloads that are not valid envelopes, and for jobs whose failure
    cannot be recorded any other way. Given ``seq`` (the message's stream
    sequence), the record's ``Nats-Msg-Id`` names that message, so storing
    it again after a crash stores it once. A payload so close to
    ``max_payload`` that the record's headers do not fit beside it is cut to
    fit, and its header ``Natskiq-Truncated`` gives its size before.
    """
    try:
        check_name("queue", queue)
    except ValueError:
        queue = "invalid"
    clean = "".join(c if c.isprintable() else " " for c in reason)[:500]
    headers = {INVALID_HEADER: "1", REASON_HEADER: clean}
    if seq is not None:
        headers["Nats-Msg-Id"] = f"invalid:{queue}:{seq}"
    if max_payload is not None:
        room = max_payload - jobs.headers_size({**headers, TRUNCATED_HEADER: str(len(raw))})
        if len(raw) > room:
            headers[TRUNCATED_HEADER] = str(len(raw))
            raw = raw[: max(0, room)]
    await js.publish(names.failed_subject(queue), raw, headers=headers)
    await ack()
    log.warning("invalid job on queue %s sent to failed: %s", queue, clean)
