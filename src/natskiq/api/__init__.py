"""Inspection and operations: queues, scheduled and retry sets, the failed
set, nodes, the master and cluster-wide stats."""

from __future__ import annotations

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
from natskiq.api.listing import find, queue_names
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
    "cancel",
    "clear",
    "command",
    "counter",
    "delete",
    "failed_set_size",
    "find",
    "master",
    "masters",
    "nodes",
    "periodic_jobs",
    "queue_info",
    "queue_names",
    "queues",
    "read_entry",
    "remove_periodic",
    "replay",
    "run_now",
    "stats",
    "timestamp",
]
