"""Workers the tests run, in-process and in `natskiq worker` subprocesses.

Each job appends ``<jid> <pid> <kind> <time> <note>`` lines to the ledger
file named by ``$NATSKIQ_TEST_LEDGER`` (kind ``start`` when a sleeping job
begins, ``done`` when any job ends): one short write with O_APPEND, so
concurrent processes never interleave lines.
"""

from __future__ import annotations

import json
import os
import time

import anyio

import natskiq


def record(jid: str, started: float, note: object = None, kind: str = "done") -> None:
    path = os.environ.get("NATSKIQ_TEST_LEDGER")
    if not path:
        return
    line = f"{jid} {os.getpid()} {kind} {started:.6f} {json.dumps(note)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Record(natskiq.Worker, name="tests.Record"):
    """Records that it ran; optionally sleeps first (async)."""

    async def perform(self, sleep: float = 0.0, note: object = None) -> None:
        started = time.time()
        if sleep:
            record(self.jid, started, note, kind="start")
            await anyio.sleep(sleep)
        record(self.jid, started, note)


class SyncRecord(natskiq.Worker, name="tests.SyncRecord"):
    """Records that it ran, from a worker thread (plain def)."""

    def perform(self, sleep: float = 0.0, note: object = None) -> None:  # type: ignore[override]
        started = time.time()
        if sleep:
            record(self.jid, started, note, kind="start")
            time.sleep(sleep)
        record(self.jid, started, note)


class Urgent(natskiq.Worker, queue="critical", name="tests.Urgent"):
    """Records, on the critical queue."""

    async def perform(self, note: object = None) -> None:
        record(self.jid, time.time(), note)


class Boom(natskiq.Worker, retries=2, name="tests.Boom"):
    """Always raises."""

    async def perform(self) -> None:
        record(self.jid, time.time(), "boom")
        raise ValueError("boom")


class Slow(natskiq.Worker, timeout=0.2, name="tests.Slow"):
    """Takes longer than its timeout."""

    async def perform(self) -> None:
        record(self.jid, time.time(), "slow")
        await anyio.sleep(5)
