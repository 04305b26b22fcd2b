"""Workflows, batches: a batch's record in the ``<ns>_batches`` bucket, and what changes it.

The design and its guarantees are told in :mod:`natskiq.flow.batches`; this
module holds the state: :class:`BatchStatus` (what a record says), the
compare-and-set of a record (:func:`change`), the states a change enters
(``firing``) and what they fire (:func:`finish`), and the counting of one
outcome exactly once (:func:`count`). It receives a JetStream context and
the namespace's names; it hands on records and statuses.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import anyio
import attrs
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from natskiq import job as jobs
from natskiq.errors import ConfigError
from natskiq.topology import Names, check_name, put_if, ttl_header

log = logging.getLogger("natskiq.flow.batches")

ACTIVE_TTL = 30 * 86400.0  # seconds a batch record lives after its last change, and a marker
KEEP_FINISHED = 7 * 86400.0  # seconds a completed batch's record is kept
MAX_FAILURES = 100  # failed jids a record keeps
CHANGE_ATTEMPTS = 200  # compare-and-set rounds before a change gives up
COUNTING, COUNTED = b"counting", b"counted"

Record = dict[str, Any]
"""A batch's record as stored (JSON): see docs/wire-format.md."""


@attrs.frozen(kw_only=True)
class BatchStatus:
    """A batch as its record says now (``natskiq.api.batch``)."""

    bid: str
    description: str
    parent: str | None
    created_at: float
    total: int
    succeeded: int
    failed: int
    failures: list[str]
    """The first :data:`MAX_FAILURES` jids that failed for good."""
    open: bool
    """Whether a block may still add jobs (the ``async with`` has not exited)."""
    completed_at: float | None
    callbacks: dict[str, str]
    """The callback class of each of ``success``, ``complete`` and ``death`` that was given."""
    fired: list[str]

    @property
    def pending(self) -> int:
        """Jobs (and child batches) neither succeeded nor failed for good yet."""
        return max(0, self.total - self.succeeded - self.failed)

    @property
    def complete(self) -> bool:
        """Whether every job has succeeded or failed for good."""
        return self.completed_at is not None

    @property
    def progress(self) -> float:
        """The share of jobs done, 0.0 to 1.0 (1.0 for a complete empty batch)."""
        if self.total == 0:
            return 1.0 if self.complete else 0.0
        return min(1.0, (self.succeeded + self.failed) / self.total)

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready data (``natskiq batch --json``)."""
        return {
            **attrs.asdict(self),
            "pending": self.pending,
            "complete": self.complete,
            "success": self.complete and self.failed == 0,
        }


def _status(record: Record) -> BatchStatus:
    return BatchStatus(
        bid=str(record["bid"]),
        description=str(record.get("description", "")),
        parent=record.get("parent"),
        created_at=float(record.get("created_at", 0.0)),
        total=int(record["total"]),
        succeeded=int(record["succeeded"]),
        failed=int(record["failed"]),
        failures=[str(jid) for jid in record.get("failures", [])],
        open=int(record["holds"]) > 0,
        completed_at=record.get("completed_at"),
        callbacks={kind: str(spec["class"]) for kind, spec in record.get("callbacks", {}).items()},
        fired=[str(kind) for kind in record.get("fired", [])],
    )


def _counts(record: Record) -> dict[str, Any]:
    """What a callback receives besides the batch id."""
    return {
        "bid": record["bid"],
        "description": record.get("description", ""),
        "total": record["total"],
        "succeeded": record["succeeded"],
        "failed": record["failed"],
        "pending": record["total"] - record["succeeded"] - record["failed"],
        "failures": record.get("failures", []),
    }


# -- the record: read, compare-and-set, advance -------------------------------------------------


async def read(js: JetStreamContext, names: Names, bid: str) -> tuple[Record, int] | None:
    """A batch's record and its revision, or None when there is none (expired, never made)."""
    msg = await last(js, names, names.batch_subject(bid))
    if msg is None:
        return None
    try:
        record = json.loads(msg[0])
    except ValueError:
        return None
    return (record, msg[1]) if isinstance(record, dict) and "holds" in record else None


async def last(js: JetStreamContext, names: Names, subject: str) -> tuple[bytes, int] | None:
    """The last value on a key's subject and its sequence; None for none, a delete or an expiry."""
    try:
        msg = await js.get_msg(names.kv_stream(names.batches_bucket), subject=subject)
    except NotFoundError:
        return None
    headers = msg.headers or {}
    if not msg.data or headers.get("KV-Operation") or headers.get("Nats-Marker-Reason"):
        return None
    return msg.data, msg.seq or 0


async def write(
    js: JetStreamContext, subject: str, data: bytes, expected: int, ttl: float, msg_id: str | None = None
) -> Literal["stored", "duplicate", "conflict"]:
    """Store ``data`` on a key if its last revision is still ``expected`` (0: no value yet)."""
    ack = await put_if(js, subject, data, expected=expected, ttl=ttl_header(ttl, unit="s"), msg_id=msg_id)
    if ack is None:
        return "conflict"
    return "duplicate" if ack.duplicate else "stored"


def _advance(record: Record) -> None:
    """Enter the states the counts now reach, listing their callbacks in ``firing``."""
    firing = record["firing"]
    if record["failed"] and "death" not in firing:
        firing.append("death")
    done = record["succeeded"] + record["failed"] >= record["total"]
    if record["holds"] <= 0 and done and "complete" not in firing:
        firing.append("complete")
        if not record["failed"]:
            firing.append("success")
        if record.get("parent"):
            firing.append("parent")
        record["completed_at"] = time.time()


async def change(
    js: JetStreamContext, names: Names, bid: str, change: Callable[[Record], None], msg_id: str | None = None
) -> Record | None:
    """Apply ``change`` to a batch's record by compare-and-set, again until no one
    wrote in between; the record as stored, or None when the batch is gone.

    Raises:
        TimeoutError: the record stayed contended through :data:`CHANGE_ATTEMPTS` rounds.
    """
    subject = names.batch_subject(bid)
    for attempt in range(CHANGE_ATTEMPTS):
        found = await read(js, names, bid)
        if found is None:
            return None
        record, revision = found
        change(record)
        _advance(record)
        ttl = KEEP_FINISHED if record.get("completed_at") else ACTIVE_TTL
        written = await write(js, subject, json.dumps(record).encode(), revision, ttl, msg_id)
        if written == "stored":
            return record
        if written == "duplicate":  # applied before (a redelivered job): read what is stored
            again = await read(js, names, bid)
            return None if again is None else again[0]
        await anyio.sleep(random.random() * 0.002 * min(attempt + 1, 20))  # contended: spread out
    raise TimeoutError(f"batch {bid}: its record stayed contended")


async def finish(js: JetStreamContext, names: Names, record: Record) -> None:
    """Carry out what the record lists in ``firing`` and not yet in ``fired``, then record it."""
    todo = [kind for kind in record["firing"] if kind not in record["fired"]]
    if not todo:
        return
    for kind in todo:
        if kind == "parent":
            await count(js, names, record["parent"], record["bid"], succeeded=not record["failed"])
        else:
            await _fire(js, names, record, kind)

    def mark(stored: Record) -> None:
        stored["fired"] = stored["fired"] + [kind for kind in todo if kind not in stored["fired"]]

    await change(js, names, record["bid"], mark)


async def _fire(js: JetStreamContext, names: Names, record: Record, kind: str) -> None:
    """Enqueue the ``kind`` callback, once: ``Nats-Msg-Id: <bid>:<kind>``."""
    spec = record.get("callbacks", {}).get(kind)
    if spec is None:
        return
    try:
        job = jobs.new_job(
            str(spec["class"]), [record["bid"], _counts(record)], {},
            queue=check_name("queue", spec["queue"]), retry=int(spec["retry"]),
        )  # fmt: skip
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        log.error("batch %s: its %s callback %r is not valid: %s", record["bid"], kind, spec, exc)
        return
    headers = {"Nats-Msg-Id": f"{record['bid']}:{kind}"}
    await js.publish(names.enqueue_subject(job.queue), jobs.encode(job), headers=headers)
    log.info("batch %s: %s callback %s enqueued as jid=%s", record["bid"], kind, job.cls, job.jid)


# -- outcomes (on the node) --------------------------------------------------------------------


async def count(js: JetStreamContext, names: Names, bid: str, jid: str, *, succeeded: bool) -> None:
    """Count one outcome (a job's, or a child batch's with its bid as ``jid``) once, then fire
    what it makes due."""
    if await read(js, names, bid) is None:
        log.warning("jid=%s: its batch %s is gone (finished long ago, or never made)", jid, bid)
        return
    marker = names.batch_marker_subject(bid, jid)
    state = await last(js, names, marker)
    if state is None:
        created = await write(js, marker, COUNTING, 0, ACTIVE_TTL)
        state = (COUNTING, 0) if created != "conflict" else await last(js, names, marker)
    if state is not None and state[0] == COUNTED:
        found = await read(js, names, bid)
        record = None if found is None else found[0]
    else:

        def apply(record: Record) -> None:
            if succeeded:
                record["succeeded"] += 1
            else:
                record["failed"] += 1
                if len(record["failures"]) < MAX_FAILURES:
                    record["failures"].append(jid)

        record = await change(js, names, bid, apply, msg_id=f"{bid}:{jid}")
        await js.publish(marker, COUNTED, headers={"Nats-TTL": ttl_header(ACTIVE_TTL, unit="s")})
    if record is not None:
        await finish(js, names, record)


async def read_status(js: JetStreamContext, names: Names, bid: str) -> BatchStatus | None:
    """A batch's status, or None when there is no such batch (any more).

    Raises:
        ConfigError: ``bid`` is not a batch id.
    """
    found = await read(js, names, check_name("batch", bid))
    return None if found is None else _status(found[0])


async def read_statuses(js: JetStreamContext, names: Names, *, limit: int = 100) -> list[BatchStatus]:
    """The batches the bucket holds, newest first, at most ``limit`` (of the first 1000 listed)."""
    try:
        info = await js.stream_info(
            names.kv_stream(names.batches_bucket), subjects_filter=names.batch_records
        )
    except NotFoundError:
        return []
    statuses = []
    for subject in list((info.state.subjects or {}).keys())[-1000:]:
        key = Names.kv_key(names.batches_bucket, subject) or ""
        found = await read(js, names, key.removeprefix("b."))
        if found is not None:
            statuses.append(_status(found[0]))
    statuses.sort(key=lambda status: status.created_at, reverse=True)
    return statuses[:limit]
