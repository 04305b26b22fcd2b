"""What the inspection API reads back: a job found in a stream, the filter
that picks entries, and the times an envelope may claim.

Receives a message a stream stored (:func:`read_entry`) and hands on an
:class:`Entry`: the job it holds or, for a payload that is not a valid
envelope, why not and the bytes as received. Anyone who may publish to a
queue can store anything there, so nothing read back is trusted: a time
goes through :func:`timestamp` before it is shown, compared or computed
with, and :meth:`Entry.to_dict` is always JSON-ready. No I/O happens here;
:mod:`natskiq.api.listing` does the reading.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
from nats.js import api as jsapi

from natskiq import job as jobs
from natskiq.errors import InvalidJob
from natskiq.run.retry import INVALID_HEADER, REASON_HEADER

Kind = Literal["queued", "scheduled", "retry", "failed"]
"""Where an entry was found: a queue's ready jobs, its scheduled jobs, its
retries, or the failed set."""
EARLIEST = 946_684_800.0
"""2000-01-01T00:00:00Z, the earliest time :func:`timestamp` accepts."""
LATEST = 253_402_300_799.0
"""9999-12-31T23:59:59Z, the last second a datetime can show: the latest
time :func:`timestamp` accepts."""
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

    ``kind``, ``stream``, ``seq`` and ``subject`` say where it was found
    (the stream sequence is the message that deleting, replaying or running
    it now acts on), ``queue`` the queue it belongs to. ``job`` is None for
    a payload that was not a valid envelope; then ``reason`` says why, and
    ``raw`` holds it as received. ``stored_at`` is when the server stored
    the message (its clock, not the envelope's).
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
        """The job's id, or None for an entry that is not a valid job."""
        return self.job.jid if self.job else None

    @property
    def chain_id(self) -> str | None:
        """The id of the chain the job is a step of, or None (see :mod:`natskiq.flow.chains`)."""
        return str(self.job.chain["id"]) if self.job is not None and self.job.chain else None

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
    """Which entries to act on; every given field must match.

    ``queue``, ``cls``, ``jid`` and ``error_class`` must equal the entry's;
    ``since`` and ``until`` (epoch seconds, both inclusive) bound when the
    job failed, else when it is due, else when it was enqueued. An entry
    that is not a valid job matches only a filter on its queue, or none.
    """

    queue: str | None = None
    cls: str | None = None
    jid: str | None = None
    error_class: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: Entry) -> bool:
        """Whether ``entry`` passes every field that is set."""
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
        """Whether no field is set (the filter matches every entry)."""
        return all(getattr(self, f.name) is None for f in attrs.fields(Filter))


def _moment(job: jobs.Job) -> float | None:
    """The time a filter compares: when the job failed, else when it runs, else when it was enqueued."""
    for value in (job.failed_at, job.at, job.enqueued_at):
        seconds = timestamp(value)
        if seconds is not None:
            return seconds
    return None


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
    """When the server stored ``msg``, if that is a plausible time."""
    try:
        return timestamp(msg.time.timestamp()) if msg.time is not None else None
    except (OverflowError, OSError, ValueError):
        return None
