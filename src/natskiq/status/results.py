"""Kept results: the outcome of a job that keeps it (``keep_result``), and waiting for one.

A node stores the outcome under the job's jid in the KV bucket
``<ns>_results``, with a per-key TTL of ``keep_result`` seconds, before it
acks the job: ``{"state": "succeeded", "result": <value>}``, or for a job
that failed for good ``{"state": "failed", "error_class", "error_message",
"backtrace"}``, or ``{"state": "cancelled"}``. Storing is a JetStream publish
awaited for its PubAck, so a result that was reported is durable.

Waiting needs no polling and no consumer: :func:`wait_result` subscribes to
the key's subject (a stored result is also published there), then reads the
key once, so a result stored before the subscription is found and one stored
after arrives on it.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError
from nats.js.errors import NotFoundError

from natskiq.errors import EnqueueError, JobCancelled, JobFailed
from natskiq.topology import Names

RESULT_TIMEOUT = 10.0  # seconds a node waits for the PubAck of a result


def encode_result(value: Any) -> bytes:
    """A succeeded job's outcome document.

    Raises:
        TypeError: ``value`` is not JSON-serialisable (names its type).
    """
    try:
        return json.dumps({"state": "succeeded", "result": value}, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the return value of perform ({type(value).__name__}) is not JSON-serialisable: {exc}"
        ) from None


def encode_failure(error_class: str, error_message: str, backtrace: list[str] | None) -> bytes:
    """A failed-for-good job's outcome document."""
    doc = {"state": "failed", "error_class": error_class, "error_message": error_message}
    return json.dumps({**doc, "backtrace": list(backtrace or [])}).encode()


CANCELLED = json.dumps({"state": "cancelled"}).encode()


async def store_result(
    js: JetStreamContext, names: Names, jid: str, doc: bytes, keep: float, max_payload: int
) -> None:
    """Store an outcome for ``keep`` seconds, waiting for its PubAck.

    Raises:
        EnqueueError: the document is larger than the server takes, or could not be stored.
    """
    if len(doc) > max_payload - 512:
        raise EnqueueError(f"the result of job {jid} is {len(doc)} bytes, over the server's {max_payload}")
    headers = {"Nats-TTL": f"{max(1, round(keep))}s"}
    try:
        await js.publish(names.result_subject(jid), doc, timeout=RESULT_TIMEOUT, headers=headers)
    except (NatsError, JSError, TimeoutError) as exc:
        raise EnqueueError(f"cannot store the result of job {jid}: {exc}") from exc


def outcome(jid: str, data: bytes) -> Any:
    """The value an outcome document holds, or the error it stands for.

    Raises:
        JobFailed: the job failed for good.
        JobCancelled: the job was cancelled.
    """
    doc = json.loads(data)
    state = doc.get("state") if isinstance(doc, dict) else None
    if state == "succeeded":
        return doc.get("result")
    if state == "failed":
        backtrace = doc.get("backtrace")
        return _raise(
            JobFailed(
                jid, str(doc.get("error_class", "")), str(doc.get("error_message", "")),
                [str(line) for line in backtrace] if isinstance(backtrace, list) else [],
            )
        )  # fmt: skip
    if state == "cancelled":
        return _raise(JobCancelled(jid))
    raise ValueError(f"result of job {jid} is not an outcome document")


def is_outcome(data: bytes) -> bool:
    """Whether ``data`` is an outcome document (:func:`outcome` reads it without a ValueError)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("state") in ("succeeded", "failed", "cancelled")


def _raise(exc: Exception) -> Any:
    raise exc


async def read_result(js: JetStreamContext, names: Names, jid: str) -> bytes | None:
    """The stored outcome of ``jid`` (raw), or None when there is none (not kept, expired, not yet)."""
    try:
        msg = await js.get_msg(names.kv_stream(names.results_bucket), subject=names.result_subject(jid))
    except NotFoundError:
        return None
    if not msg.data or _marker(msg.headers):
        return None
    return msg.data


async def unsubscribe(sub: Subscription) -> None:
    """End a subscription, shielded (safe in a ``finally``); one already ended is left alone."""
    with anyio.CancelScope(shield=True):
        try:
            await sub.unsubscribe()
        except NatsError:
            pass


def _marker(headers: dict[str, str] | None) -> bool:
    """Whether a message on a result's subject is a delete, a purge or an expiry marker."""
    return bool(headers and (headers.get("KV-Operation") or headers.get("Nats-Marker-Reason")))


async def wait_result(
    nc: NATS, js: JetStreamContext, names: Names, jid: str, finished: anyio.Event | None = None
) -> bytes | None:
    """The outcome of ``jid`` once it is stored; None if ``finished`` is set first with none stored.

    Cancel it (e.g. with ``anyio.fail_after``) to stop waiting.
    """
    sub = await nc.subscribe(names.result_subject(jid))
    try:
        stored = await read_result(js, names, jid)
        if stored is not None:
            return stored
        async with anyio.create_task_group() as tg:
            found: list[bytes] = []

            async def arrival() -> None:
                while True:
                    msg = await sub.next_msg(timeout=None)
                    if msg.data and not _marker(msg.headers):
                        break  # not a delete or an expiry marker
                found.append(msg.data)
                tg.cancel_scope.cancel()

            async def done() -> None:
                assert finished is not None
                await finished.wait()
                # The node stores a result before it reports the end: read once more.
                late = await read_result(js, names, jid)
                if late is not None:
                    found.append(late)
                tg.cancel_scope.cancel()

            tg.start_soon(arrival)
            if finished is not None:
                tg.start_soon(done)
        return found[0] if found else None
    finally:
        await unsubscribe(sub)
