"""Inspection and operations: queues, scheduled and retry sets, the failed
set, nodes, the masters, cancellation, node commands, periodic jobs,
pausing queues and cluster-wide stats, for Python code (the ``natskiq``
CLI and the dashboard are built on it).

Every function takes an open :class:`~natskiq.enqueue.client.Client`::

    async with natskiq.connect(url) as client:
        for entry in await natskiq.api.find(client, "failed", natskiq.api.Filter(queue="emails")):
            await natskiq.api.replay(client, entry)

Jobs are read straight from their streams, and every change keeps DESIGN's
invariant: a job is republished and its PubAck received *before* the copy
it replaces is deleted, so an operation interrupted half-way leaves a job
twice, never zero times. Every public name lives here; the modules behind
them, each one role, lowest first:

- :mod:`~natskiq.api.entries`: what is read back (:class:`Entry`,
  :class:`Filter`, :func:`timestamp`), trusting nothing a stream holds;
- :mod:`~natskiq.api.listing`: reading streams (:func:`queue_names`,
  :func:`find`);
- :mod:`~natskiq.api.totals`: sizes and counts (:func:`queues`,
  :func:`queue_info`, :func:`stats`, :func:`counter`);
- :mod:`~natskiq.api.changes`: acting on entries (:func:`run_now`,
  :func:`replay`, :func:`delete`, :func:`clear`);
- :mod:`~natskiq.api.periodic`: periodic job definitions
  (:func:`periodic_jobs`, :func:`remove_periodic`);
- :mod:`~natskiq.api.jobs`: one job by jid (:func:`job`, :func:`result`)
  and the lifecycle events (:func:`events`, :func:`follow`);
- :mod:`~natskiq.api.batches`: batches (:func:`batch`, :func:`batches`);
- :mod:`~natskiq.api.cluster`: the masters and nodes (:func:`masters`,
  :func:`nodes`) and what to tell them (:func:`cancel`, :func:`command`);
- :mod:`~natskiq.api.pauses`: pausing and resuming a queue (:func:`pause`,
  :func:`resume`).
"""

from __future__ import annotations

from natskiq.api.batches import batch, batches
from natskiq.api.changes import MSG_DELETE_FAILED, clear, delete, replay, run_now
from natskiq.api.cluster import cancel, command, master, masters, nodes
from natskiq.api.entries import (
    EARLIEST,
    LATEST,
    TIMES,
    Entry,
    Filter,
    Kind,
    read_entry,
    timestamp,
)
from natskiq.api.jobs import events, follow, job, result
from natskiq.api.listing import find, queue_names
from natskiq.api.pauses import pause, resume
from natskiq.api.periodic import PeriodicInfo, periodic_jobs, remove_periodic
from natskiq.api.totals import QueueInfo, Stats, counter, failed_set_size, queue_info, queues, stats

__all__ = [
    "EARLIEST",
    "LATEST",
    "MSG_DELETE_FAILED",
    "TIMES",
    "Entry",
    "Filter",
    "Kind",
    "PeriodicInfo",
    "QueueInfo",
    "Stats",
    "batch",
    "batches",
    "cancel",
    "clear",
    "command",
    "counter",
    "delete",
    "events",
    "failed_set_size",
    "find",
    "follow",
    "job",
    "master",
    "masters",
    "nodes",
    "pause",
    "periodic_jobs",
    "queue_info",
    "queue_names",
    "queues",
    "read_entry",
    "remove_periodic",
    "replay",
    "result",
    "resume",
    "run_now",
    "stats",
    "timestamp",
]
