"""A job's status and timeline, read back from its lifecycle events.

:func:`job_events` reads every event the stream still holds for one jid,
oldest first (a wildcard filter on the jid, answered by the server's subject
index); :func:`fold` turns them into a :class:`JobStatus`: the current state
with the facts each event added (node, attempt, next run, progress, error,
timestamps). A jid whose events were never published (events off) or have
left the bounded stream has no status.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from natskiq.status.events import STATES, TERMINAL
from natskiq.topology import Names


@attrs.frozen(kw_only=True)
class Event:
    """One lifecycle event as stored: its state, when, and the state's own fields."""

    jid: str
    queue: str
    cls: str
    state: str
    at: float
    seq: int = 0
    """The event's sequence in the events stream."""
    fields: dict[str, Any] = attrs.field(factory=dict)
    """Everything else the event carries (``node``, ``attempt``, ``next_at``, ``error_class``, ...)."""

    @classmethod
    def parse(cls, data: bytes, seq: int = 0) -> Event | None:
        """The event in ``data``, or None for a payload that is not one."""
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        jid, queue, klass, state, at = (doc.pop(k, None) for k in ("jid", "queue", "class", "state", "at"))
        if not all(isinstance(v, str) for v in (jid, queue, klass, state)) or state not in STATES:
            return None
        if not isinstance(at, int | float) or isinstance(at, bool):
            return None
        return cls(jid=jid, queue=queue, cls=klass, state=state, at=float(at), seq=seq, fields=doc)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data (the stored form, plus ``seq``)."""
        return {
            "jid": self.jid, "queue": self.queue, "class": self.cls, "state": self.state,
            "at": self.at, "seq": self.seq, **self.fields,
        }  # fmt: skip


@attrs.frozen(kw_only=True)
class JobStatus:
    """Where a job is, and what happened to it so far.

    ``state`` is the latest of ``queued``, ``scheduled``, ``running``,
    ``retrying``, ``succeeded``, ``failed``, ``cancelled``, ``expired`` and
    ``discarded`` (a ``progress`` event leaves a job ``running``).
    """

    jid: str
    state: str
    queue: str
    cls: str
    updated_at: float
    """When the latest event was published."""
    enqueued_at: float | None = None
    started_at: float | None = None
    """When the latest run started."""
    finished_at: float | None = None
    node: str | None = None
    """The node running the job, or the one that ran it last."""
    attempt: int = 0
    """The run: 1 for the first, 2 for the first retry, ..."""
    next_at: float | None = None
    """When a scheduled or retrying job is due."""
    progress: float | None = None
    message: str | None = None
    """The latest progress message."""
    error_class: str | None = None
    error_message: str | None = None
    events: tuple[Event, ...] = ()
    """The timeline, oldest first."""

    @property
    def finished(self) -> bool:
        """Whether the job reached a state it leaves only by a replay."""
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready data, events included."""
        out = attrs.asdict(self, recurse=False)
        out["class"] = out.pop("cls")
        out["finished"] = self.finished
        out["events"] = [event.to_dict() for event in self.events]
        return out


def fold(events: list[Event]) -> JobStatus | None:
    """The status a job's events add up to (None without events)."""
    if not events:
        return None
    facts: dict[str, Any] = {}
    # A progress event leaves a job running, even when its running event has left the stream.
    state = "running" if events[0].state == "progress" else events[0].state
    state_at = events[0].at
    for event in events:
        fields = event.fields
        # The state is the latest event's by publication time: the producer's
        # queued event can be stored after the node's running or succeeded
        # (two connections), and it does not take the job back.
        if event.state != "progress" and event.at >= state_at:
            state, state_at = event.state, event.at
        if event.state in ("queued", "scheduled"):
            facts["enqueued_at"] = facts.get("enqueued_at") or event.at
            facts["next_at"] = fields.get("next_at") if event.state == "scheduled" else None
        elif event.state == "running":
            facts.update(started_at=event.at, node=fields.get("node"), attempt=fields.get("attempt", 0))
            facts.update(next_at=None, progress=None, message=None)
        elif event.state == "progress":
            facts.update(progress=fields.get("progress"), message=fields.get("message"))
        elif event.state == "retrying":
            facts.update(next_at=fields.get("next_at"))
        if event.state in TERMINAL:
            facts["finished_at"] = event.at
        if event.state in ("retrying", "failed"):
            facts.update(error_class=fields.get("error_class"), error_message=fields.get("error_message"))
    last = events[-1]
    clean = {k: v for k, v in facts.items() if _fits(k, v)}
    return JobStatus(
        jid=last.jid, state=state, queue=last.queue, cls=last.cls, updated_at=last.at,
        events=tuple(events), **clean,
    )  # fmt: skip


_KINDS: dict[str, tuple[type, ...]] = {
    "enqueued_at": (int, float), "started_at": (int, float), "finished_at": (int, float),
    "next_at": (int, float), "progress": (int, float), "node": (str,), "attempt": (int,),
    "message": (str,), "error_class": (str,), "error_message": (str,),
}  # fmt: skip


def _fits(key: str, value: Any) -> bool:
    """Whether an event's field has the type its status field takes (hostile events hold anything)."""
    return value is None or (isinstance(value, _KINDS[key]) and not isinstance(value, bool))


async def job_events(js: JetStreamContext, names: Names, jid: str, *, limit: int = 1000) -> list[Event]:
    """The events the stream holds for ``jid``, oldest first (at most ``limit``)."""
    subject, seq = names.events_filter(jid=jid), 1
    out: list[Event] = []
    while len(out) < limit:
        try:
            msg = await js.get_msg(names.events_stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        event = Event.parse(msg.data or b"", msg.seq or 0)
        if event is not None and event.jid == jid:
            out.append(event)
        seq = (msg.seq or seq) + 1
    return out


async def job_status(js: JetStreamContext, names: Names, jid: str, *, limit: int = 1000) -> JobStatus | None:
    """The status of ``jid`` from its events, or None when the stream holds none.

    A job with more than ``limit`` events (a long run reporting progress) is
    folded from its first ``limit`` and its latest one, so its state is current.
    """
    events = await job_events(js, names, jid, limit=limit)
    if len(events) >= limit:
        last = await last_event(js, names, jid)
        if last is not None and last.seq > events[-1].seq:
            events.append(last)
    return fold(events)


async def last_event(js: JetStreamContext, names: Names, jid: str) -> Event | None:
    """The latest event of ``jid`` (one direct read), or None."""
    try:
        msg = await js.get_msg(names.events_stream, subject=names.events_filter(jid=jid))
    except NotFoundError:
        return None
    event = Event.parse(msg.data or b"", msg.seq or 0)
    return event if event is not None and event.jid == jid else None


async def current_state(js: JetStreamContext, names: Names, jid: str) -> str | None:
    """The state of ``jid`` now (None without events): its latest stored event's, read at
    once, unless that is the producer's ``queued`` or ``scheduled``, which can be stored after
    a fast job's own events (two connections): then the state its events add up to (:func:`fold`)."""
    last = await last_event(js, names, jid)
    if last is None or last.state not in ("queued", "scheduled"):
        return None if last is None else ("running" if last.state == "progress" else last.state)
    status = await job_status(js, names, jid)
    return last.state if status is None else status.state
