"""Workflows, batches: jobs that finish together, with callbacks when they do.

``async with natskiq.batch(description=..., on_success=Done, on_complete=Report,
on_death=Alert) as b:`` opens a batch; every job stored inside the block joins
it (:mod:`natskiq.enqueue.joining` stamps the envelope's ``batch`` field and
counts the job). Callbacks are worker classes, enqueued with
``(bid, status)``: ``on_death`` when the first job fails for good,
``on_complete`` once every job has succeeded or failed for good, then
``on_success`` if none failed.

State lives in the KV bucket ``<ns>_batches``: a JSON record per batch
(key ``b.<bid>``) and a marker per counted outcome (key ``m.<bid>.<jid>``).
Every change to a record is a compare-and-set (a publish with
``Nats-Expected-Last-Subject-Sequence``), so concurrent nodes never lose an
update, and the one whose write moves the record into a state (first
death, complete) is the one that fires its callbacks. What it guarantees:

* A batch completes only once it is closed: it holds one "open block" from
  creation until the ``async with`` exits, and a job adding jobs to its own
  batch (``async with self.batch.jobs():``) holds one too. The jobs'
  count is added in the same write that releases the hold.
* An outcome counts once, although a job may run more than once: the node
  creates the job's marker (``counting``), applies the outcome to the
  record with ``Nats-Msg-Id: <bid>:<jid>`` and then marks it ``counted``,
  all before it acks the job. Killed in between, its job is redelivered
  after the ack wait (4 s), well within the bucket's 2-minute duplicate
  window: the repeated write is answered "duplicate" and not applied. A
  marker already ``counted`` skips the write for good.
* Each callback fires once: the write that enters a state lists it in the
  record's ``firing``; the callback job is then published with
  ``Nats-Msg-Id: <bid>:<kind>`` and recorded in ``fired``. Any later
  settle of a job of the batch (the redelivered job of a node killed in
  between) finishes what is in ``firing`` and not in ``fired``; the
  duplicate window drops a second copy of a callback.
* A child batch (opened inside another batch's block, or with
  ``parent=self.batch`` in a job) counts as one job of its parent: it
  succeeds when it completes with no failure, else it fails.

Records expire :data:`KEEP_FINISHED` after a batch completes and
:data:`ACTIVE_TTL` after the last change of one that does not; markers
after :data:`ACTIVE_TTL`. A record keeps the first :data:`MAX_FAILURES`
failed jids (and the count of all).

This module holds what users call (:func:`batch`, :class:`Batch`) and what
the node calls once a job's outcome is known (:func:`settle`, :func:`settled`,
before the ack); the record itself, its compare-and-set, the counting and
the firing are :mod:`natskiq.flow.records`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq import job as jobs
from natskiq.enqueue.client import Client, current_client
from natskiq.enqueue.joining import Joining, current
from natskiq.errors import BatchError, NotFound
from natskiq.flow.records import (
    ACTIVE_TTL,
    KEEP_FINISHED,
    MAX_FAILURES,
    BatchStatus,
    Record,
    change,
    count,
    finish,
    read_status,
    read_statuses,
    write,
)
from natskiq.topology import Names, check_name, ensure_bucket
from natskiq.worker import Worker

__all__ = [
    "ACTIVE_TTL",
    "KEEP_FINISHED",
    "MAX_FAILURES",
    "Batch",
    "BatchStatus",
    "Block",
    "Opening",
    "batch",
    "handle",
    "read_status",
    "read_statuses",
    "settle",
    "settled",
]

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 1000
SETTLE_ATTEMPTS = 5
SETTLE_TIMEOUT = 10.0
RELEASE_TIMEOUT = 30.0  # seconds a closing block may take, even when cancelled


async def settle(js: JetStreamContext, names: Names, job: jobs.Job, *, succeeded: bool) -> None:
    """Count a job's outcome in its batch (nothing for a job of none), before the job is acked.

    Called by the node once a job has succeeded, or has failed for good
    (kept in the failed set, or dropped); a retry is not an outcome yet.
    Safe to call again for the same job: its outcome counts once.

    Raises:
        nats.errors.Error, nats.js.errors.Error, TimeoutError: NATS failed; the
            caller leaves the job unacked (its redelivery counts it).
    """
    if job.batch is not None:
        await count(js, names, job.batch, job.jid, succeeded=succeeded)


async def settled(js: JetStreamContext, names: Names, job: jobs.Job, *, succeeded: bool) -> bool:
    """:func:`settle`, tried again while NATS fails; False if it never got through."""
    for attempt in range(SETTLE_ATTEMPTS):
        try:
            with anyio.fail_after(SETTLE_TIMEOUT):
                await settle(js, names, job, succeeded=succeeded)
            return True
        except (NatsError, JSError, TimeoutError) as exc:
            log.warning("jid=%s: batch %s not updated (attempt %d): %r", job.jid, job.batch, attempt + 1, exc)
            await anyio.sleep(0.2 * (attempt + 1))
    return False


# -- opening, adding to and closing batches (any process) ---------------------------------------


@attrs.define
class Batch:
    """A batch, by id: what ``async with natskiq.batch(...)`` gives, and ``self.batch``
    in a job of one.

    Args:
        bid: the batch id.
        client: the client to reach it with (the default client if None).
    """

    bid: str
    client: Client | None = attrs.field(default=None, repr=False)

    def _client(self) -> Client:
        return self.client or current_client()

    def jobs(self) -> Block:
        """``async with self.batch.jobs():`` in a job of the batch: jobs enqueued inside join it.

        The batch cannot complete while the block is open; the jobs are
        added to its total when it exits.

        Raises:
            BatchError: (on entering) the batch has completed or is gone.
        """
        return Block(self)

    async def status(self) -> BatchStatus:
        """The batch's status now.

        Raises:
            NotFound: there is no such batch (any more).
        """
        client = self._client()
        status = await read_status(client.js, client.names, self.bid)
        if status is None:
            raise NotFound(f"no batch {self.bid}")
        return status


def _refuse_finished(record: Record) -> None:
    if "complete" in record["firing"]:
        raise BatchError(f"batch {record['bid']} has completed: no job can join it")


async def _hold(client: Client, bid: str, block: str, *, child: str | None = None) -> None:
    """Hold a batch open for a block (or count a new child batch in it); BatchError if finished.

    The write's ``Nats-Msg-Id`` names the block (or the child), so a write
    whose PubAck was lost and is sent again counts once.
    """

    def hold(record: Record) -> None:
        _refuse_finished(record)
        if child is None:
            record["holds"] += 1
        else:
            record["total"] += 1

    msg_id = f"{bid}:hold:{block}" if child is None else f"{bid}:child:{child}"
    try:
        found = await change(client.js, client.names, bid, hold, msg_id)
    except (NatsError, JSError, TimeoutError) as exc:
        raise BatchError(f"batch {bid} could not be opened: {exc}") from exc
    if found is None:
        raise BatchError(f"no batch {bid} (finished long ago, or never made)")


async def _release(client: Client, bid: str, joined: int, block: str) -> None:
    """Close a block: add the jobs that joined to the total, drop its hold, fire what is due."""

    def release(record: Record) -> None:
        record["total"] += joined
        record["holds"] -= 1

    js, names = client.js, client.names
    try:
        with anyio.fail_after(RELEASE_TIMEOUT):
            record = await change(js, names, bid, release, msg_id=f"{bid}:close:{block}")
            if record is not None:
                await finish(js, names, record)
    except (NatsError, JSError, TimeoutError) as exc:
        raise BatchError(f"batch {bid} could not be closed ({joined} jobs joined it): {exc}") from exc


@attrs.define
class Block:
    """An open block of a batch (``async with``): jobs stored inside join it."""

    batch: Batch
    _joining: Joining | None = attrs.field(init=False, default=None)
    _token: Any = attrs.field(init=False, default=None)
    _created: bool = attrs.field(init=False, default=False)
    _id: str = attrs.field(init=False, factory=jobs.new_jid)
    """Names this block in the ``Nats-Msg-Id`` of its hold and its release."""

    async def __aenter__(self) -> Batch:
        if not self._created:
            await _hold(self.batch._client(), self.batch.bid, self._id)
        self._joining = Joining(self.batch.bid)
        self._token = current.set(self._joining)
        return self.batch

    async def __aexit__(self, *exc_info: object) -> None:
        # An exception inside the block keeps the jobs already stored, as Sidekiq does. A
        # cancelled block (a job's timeout) closes too, shielded: an unreleased hold would keep
        # the batch from ever completing.
        current.reset(self._token)
        assert self._joining is not None
        with anyio.CancelScope(shield=True):
            await _release(self.batch._client(), self.batch.bid, self._joining.count, self._id)


@attrs.define
class Opening(Block):
    """``natskiq.batch(...)``: creates the batch as the block opens."""

    description: str = ""
    callbacks: dict[str, type[Worker]] = attrs.field(factory=dict)
    parent: Batch | str | None = None

    async def __aenter__(self) -> Batch:
        client = self.batch._client()
        self.batch.client = client
        specs = {}
        for kind, worker in self.callbacks.items():
            await client.ensure_queue(worker.options.queue)
            specs[kind] = {
                "class": worker.name,
                "queue": worker.options.queue,
                "retry": worker.options.retries,
            }
        try:
            await ensure_bucket(client.js, client.names.batches_bucket, replicas=client.replicas)
        except (NatsError, JSError, TimeoutError) as exc:
            raise BatchError(f"cannot create the batches bucket: {exc}") from exc
        outer = current.get()
        parent = self.parent.bid if isinstance(self.parent, Batch) else self.parent
        if parent is None and outer is not None:
            parent = outer.bid
        if parent is not None and (outer is None or outer.bid != parent):
            # In a job of the parent: the child is one more job of it, counted before it exists.
            await _hold(client, check_name("batch", parent), self._id, child=self.batch.bid)
        await self._create(client, specs, parent)
        if outer is not None and outer.bid == parent:
            outer.joined()
        self._created = True
        return await super().__aenter__()

    async def _create(self, client: Client, specs: dict[str, Any], parent: str | None) -> None:
        record: Record = {
            "bid": self.batch.bid, "description": self.description, "parent": parent,
            "created_at": time.time(), "total": 0, "succeeded": 0, "failed": 0, "holds": 1,
            "failures": [], "callbacks": specs, "firing": [], "fired": [], "completed_at": None,
        }  # fmt: skip
        subject = client.names.batch_subject(self.batch.bid)
        try:
            await write(client.js, subject, json.dumps(record).encode(), 0, ACTIVE_TTL)
        except (NatsError, JSError, TimeoutError) as exc:
            raise BatchError(f"batch {self.batch.bid} could not be created: {exc}") from exc


def batch(
    description: str = "",
    *,
    on_success: type[Worker] | None = None,
    on_complete: type[Worker] | None = None,
    on_death: type[Worker] | None = None,
    parent: Batch | str | None = None,
    client: Client | None = None,
) -> Opening:
    """A new batch: ``async with natskiq.batch("import 42", on_success=Done) as b:``.

    Every job stored inside the block (``perform_async``, ``perform_in``,
    ``perform_at``, ``perform_bulk``, ``client.enqueue``) joins the batch; a
    batch opened inside the block is a child, counted as one job. Each
    callback is a worker class enqueued with ``(bid, status)`` (``status``:
    ``total``, ``succeeded``, ``failed``, ``pending``, ``failures``,
    ``description``, ``bid``).

    Args:
        description: shown by ``natskiq batch`` and the dashboard (at most 1000 characters).
        on_success: enqueued once every job has succeeded (retries included).
        on_complete: enqueued once every job has succeeded or failed for good.
        on_death: enqueued when the first job fails for good.
        parent: the parent batch of a child opened in a job (``parent=self.batch``).
        client: the client to use (the default client if None).

    Raises:
        TypeError: a callback is not a Worker subclass, or the description not a string.
        BatchError: (on entering or leaving the block) NATS failed, or the parent has completed.
    """
    if not isinstance(description, str):
        raise TypeError(f"description must be a string, not {type(description).__name__}")
    callbacks = {"success": on_success, "complete": on_complete, "death": on_death}
    for kind, worker in callbacks.items():
        if worker is not None and not (isinstance(worker, type) and issubclass(worker, Worker)):
            raise TypeError(f"on_{kind} must be a natskiq.Worker subclass, not {worker!r}")
    return Opening(
        Batch(jobs.new_jid(), client),
        description=description[:MAX_DESCRIPTION],
        callbacks={kind: worker for kind, worker in callbacks.items() if worker is not None},
        parent=parent,
    )


def handle(bid: str | None) -> Batch | None:
    """``self.batch`` of a job: its batch (reached through the default client), or None."""
    return None if bid is None else Batch(bid)
