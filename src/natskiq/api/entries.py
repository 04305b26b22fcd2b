"""Inspection and operations: queues, scheduled and retry sets, the failed
set, nodes, the master and cluster-wide stats.

Every function takes an open :class:`~natskiq.enqueue.client.Client`. Jobs are
read straight from their streams (a queue stream holds the ready jobs on
``<ns>.queue.<q>``, the scheduled ones on ``<ns>.scheduled.<q>.<jid>`` and the
retries on ``<ns>.retry.<q>.<jid>``; the failed stream holds the dead set),
and every change keeps DESIGN's invariant: a job is republished and its
PubAck received *before* the copy it replaces is deleted, so an operation
interrupted half-way leaves a job twice, never zero times.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import attrs
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from natskiq import job as jobs
from natskiq.enqueue.client import Client
from natskiq.errors import InvalidJob, NatskiqError, NotFound
from natskiq.run.retry import INVALID_HEADER, REASON_HEADER
from natskiq.topology import check_name

Kind = Literal["queued", "scheduled", "retry", "failed"]
EARLIEST = 946_684_800.0  # 2000-01-01T00:00:00Z
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second a datetime can show
TIMES = ("created_at", "enqueued_at", "failed_at", "retried_at", "at", "expires_at")
"""The envelope fields that hold epoch seconds."""


def timestamp(value: object) -> float | None:
    """``value`` as epoch seconds if it is a time between the years 2000 and 9999, else None.

    Anyone who may publish to a queue can store any number in an envelope
    (``1e308``, ``-1e400`` which parses as -inf, an int of 400 digits, a
    string): whatever is read back from a stream goes through this before it
    is shown, compared or computed with, so that unknown times show as
    unknown rather than as an error.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return seconds if EARLIEST <= seconds <= LATEST else None  # NaN fails both comparisons


def json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot carry (inf, NaN) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    return value


@attrs.frozen(kw_only=True)
class Entry:
    """A job found in a stream.

    ``job`` is None for a payload that was not a valid envelope; then
    ``reason`` says why, and ``raw`` holds it as received. ``stored_at``
    is when the server stored the message (its clock, not the envelope's).
    """

    kind: Kind
    stream: str
    seq: int
    subject: str
    queue: str
    job: jobs.Job | None
    raw: bytes
    reason: str | None = None
    stored_at: float | None = None

    @property
    def jid(self) -> str | None:
        return self.job.jid if self.job else None

    @property
    def enqueued_at(self) -> float | None:
        """When the job entered its queue: the envelope's time if plausible, else the server's."""
        since = timestamp(self.job.enqueued_at) if self.job is not None else None
        return since if since is not None else self.stored_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the envelope, or the raw payload and reason).

        Times that are not plausible epoch seconds (see :func:`timestamp`)
        are null, and so is any float JSON cannot carry.
        """
        out: dict[str, Any] = {"kind": self.kind, "seq": self.seq, "queue": self.queue}
        try:
            job = json_safe(self.job.to_dict()) if self.job is not None else None
        except RecursionError:  # arguments nested deeper than Python recurses (an old decode)
            job = None
        if job is not None:
            out["job"] = job | {key: timestamp(job[key]) for key in TIMES if key in job}
        else:
            out["invalid"] = self.reason or "the job is nested too deeply to show"
            out["raw"] = self.raw.decode("utf-8", errors="backslashreplace")[:2000]
        return out


@attrs.frozen(kw_only=True)
class Filter:
    """Which entries to act on; every given field must match."""

    queue: str | None = None
    cls: str | None = None
    jid: str | None = None
    error_class: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: Entry) -> bool:
        job = entry.job
        if self.queue is not None and entry.queue != self.queue:
            return False
        if job is None:
            return self.cls is None and self.jid is None and self.error_class is None and self._in_time(None)
        return (
            (self.cls is None or job.cls == self.cls)
            and (self.jid is None or job.jid == self.jid)
            and (self.error_class is None or job.error_class == self.error_class)
            and self._in_time(_moment(job))
        )

    def _in_time(self, when: float | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (self.until is None or when <= self.until)

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in attrs.fields(Filter))


def _moment(job: jobs.Job) -> float | None:
    """The time a filter compares: when the job failed, else when it runs, else when it was enqueued."""
    for value in (job.failed_at, job.at, job.enqueued_at):
        seconds = timestamp(value)
        if seconds is not None:
            return seconds
    return None


# -- reading streams ---------------------------------------------------------


def _queue_prefix(client: Client) -> str:
    return f"{client.names.namespace.upper()}_Q_"


async def queue_names(client: Client) -> list[str]:
    """Every queue with a stream in the client's namespace.

    Asks JetStream for the names of the streams holding ``<ns>.queue.*``,
    page by page (a server answers at most 1,024 names at a time).
    """
    prefix = _queue_prefix(client)
    subject = f"{client.names.namespace}.queue.*"
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
    check_name("queue", queue)
    if queue not in await queue_names(client):
        raise NotFound(f"no queue named {queue!r} in namespace {client.names.namespace!r}")


def read_entry(kind: Kind, stream: str, queue: str, msg: jsapi.RawStreamMsg) -> Entry:
    """The entry a stored message makes: its job, or why it is not one."""
    raw = msg.data or b""
    headers = msg.headers or {}
    reason = headers.get(REASON_HEADER) if headers.get(INVALID_HEADER) else None
    job = None
    if reason is None:
        try:
            job = jobs.decode(raw)
        except InvalidJob as exc:
            reason = exc.reason
        except Exception as exc:
            # Anyone may publish to a queue: a payload decode() trips on
            # (a null or 400-digit timestamp) is still only an invalid entry.
            reason = f"payload is not a valid job ({type(exc).__name__}: {exc})"
    return Entry(
        kind=kind, stream=stream, seq=msg.seq or 0, subject=msg.subject or "",
        queue=queue, job=job, raw=raw, reason=reason, stored_at=_stored_at(msg),
    )  # fmt: skip


def _stored_at(msg: jsapi.RawStreamMsg) -> float | None:
    try:
        return timestamp(msg.time.timestamp()) if msg.time is not None else None
    except (OverflowError, OSError, ValueError):
        return None


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
                "scheduled": f"{names.namespace}.scheduled.{queue}.*",
                "retry": f"{names.namespace}.retry.{queue}.*",
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
    try:
        info = await client.js.stream_info(client.names.failed_stream, subjects_filter=">")
    except NotFoundError:
        return []
    prefix = f"{client.names.namespace}.failed."
    return sorted(s[len(prefix) :] for s in (info.state.subjects or {}) if s.startswith(prefix))


async def find(
    client: Client, kind: Kind, where: Filter | None = None, *, limit: int | None = None
) -> list[Entry]:
    """Jobs of one kind (queued, scheduled, retry or failed) matching ``where``, oldest first.

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
