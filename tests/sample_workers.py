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

    def perform(self, sleep: float = 0.0, note: object = None) -> None:
        started = time.time()
        if sleep:
            record(self.jid, started, note, kind="start")
            time.sleep(sleep)
        record(self.jid, started, note)


loop_ticks = 0
"""Advanced by a test's task on each of its turns in the event loop (see :class:`Hog`)."""
hog_ticks: list[int] = []


class Hog(natskiq.Worker, name="tests.Hog"):
    """Blocks the event loop (a bug in a job, which a node must survive), then records.

    It notes :data:`loop_ticks` as it starts, in :data:`hog_ticks`: two runs
    that note the same value ran with no turn for other tasks between them.
    """

    async def perform(self, seconds: float) -> None:
        started = time.time()
        hog_ticks.append(loop_ticks)
        time.sleep(seconds)  # noqa: ASYNC251 - blocking on purpose
        record(self.jid, started, "hog")


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


def runs_of(jid: str) -> int:
    """How many times a job has finished a run so far (from the ledger)."""
    path = os.environ.get("NATSKIQ_TEST_LEDGER")
    if not path or not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.startswith(jid + " ") and " done " in line)


class Flaky(natskiq.Worker, retries=5, name="tests.Flaky"):
    """Fails the first ``failures`` runs, then succeeds; records each run's retry timing."""

    async def perform(self, failures: int = 2) -> None:
        job = self.job
        failed = job.retried_at or job.failed_at
        delay = None if job.at is None or failed is None else job.at - failed
        record(self.jid, time.time(), {"retry_count": job.retry_count, "delay": delay, "at": job.at})
        if runs_of(self.jid) <= failures:
            raise RuntimeError("flaky")


class Growing(natskiq.Worker, retries=3, name="tests.Growing"):
    """Always fails; its retry_in hook makes each delay longer than the last."""

    def retry_in(self, count: int, exc: Exception) -> float:
        return 0.2 * (count + 1)

    async def perform(self) -> None:
        record(self.jid, time.time(), {"retry_count": self.job.retry_count})
        raise RuntimeError("again")


class FixedByFile(natskiq.Worker, retries=1, name="tests.FixedByFile"):
    """Fails until the file named in its argument exists (a bug fixed by a deploy)."""

    def perform(self, path: str) -> None:
        record(self.jid, time.time(), "try")
        if not os.path.exists(path):
            raise LookupError(f"{path} is missing")


class Choosy(natskiq.Worker, retries=5, name="tests.Choosy"):
    """Fails; retry_in answers with what the job asked for ('discard', 'kill' or seconds)."""

    def retry_in(self, count: int, exc: Exception) -> object:
        choice = str(exc)
        return choice if choice in ("discard", "kill") else float(choice)

    async def perform(self, choice: str) -> None:
        record(self.jid, time.time(), choice)
        raise RuntimeError(choice)


class Deferred(natskiq.Worker, retries=3, name="tests.Deferred"):
    """Asks to be retried after a chosen delay once, then succeeds."""

    async def perform(self) -> None:
        record(self.jid, time.time(), {"at": self.job.at, "failed_at": self.job.failed_at})
        if self.job.retry_count is None:
            raise natskiq.Retry(defer=0.3)


class Dropped(natskiq.Worker, retries=0, dead=False, name="tests.Dropped"):
    """Fails with dead=False: dropped, not kept."""

    async def perform(self) -> None:
        record(self.jid, time.time(), "dropped")
        raise RuntimeError("not kept")


class Exhausted(natskiq.Worker, retries=0, backtrace=True, name="tests.Exhausted"):
    """Fails for good; its retries_exhausted hook records the failure."""

    async def retries_exhausted(self, job: natskiq.Job, exc: BaseException) -> None:
        record(job.jid, time.time(), {"exhausted": type(exc).__name__}, kind="hook")

    async def perform(self) -> None:
        raise KeyError("gone")


class Crash(natskiq.Worker, name="tests.Crash"):
    """Kills the process that runs it, as a segfault or the OOM killer would."""

    def perform(self) -> None:
        record(self.jid, time.time(), "crash", kind="start")
        os._exit(17)


if os.environ.get("NATSKIQ_TEST_BACKOFF_SCALE"):
    # Worker processes started by the tests shrink retry delays the same way.
    from natskiq.run import retry as _retry

    _retry.set_backoff_scale(float(os.environ["NATSKIQ_TEST_BACKOFF_SCALE"]))


class Chaos(natskiq.Worker, name="tests.Chaos"):
    """A job for fault-injection runs: records the lease token it was dispatched
    under and when its node received it, so stale-lease runs can be found."""

    async def perform(self, sleep: float = 0.0) -> None:
        started = time.time()
        note = {"token": self.lease_token, "shard": self.lease_shard, "delivered": self.delivered_at}
        record(self.jid, started, note, kind="start")
        if sleep:
            await anyio.sleep(sleep)
        record(self.jid, started, note)


class Kept(natskiq.Worker, keep_result=300, name="tests.Kept"):
    """Records its start and end around a sleep; keeps its result: the note and the pid that ran it."""

    async def perform(self, sleep: float = 0.0, note: object = None) -> dict[str, object]:
        started = time.time()
        record(self.jid, started, note, kind="start")
        await anyio.sleep(sleep)
        record(self.jid, started, note)
        return {"note": note, "pid": os.getpid()}


class Tick(natskiq.Worker, name="tests.Tick"):
    """A periodic job: records each run."""

    async def perform(self, label: str) -> None:
        record(self.jid, time.time(), label)


class BatchCallback(natskiq.Worker, name="tests.BatchCallback"):
    """A batch callback: records ``cb`` with its kind, the batch id and the counts it was given."""

    kind = "?"

    async def perform(self, bid: str, status: dict[str, object]) -> None:
        record(self.jid, time.time(), {"kind": self.kind, "bid": bid, "status": status}, kind="cb")


class OnSuccess(BatchCallback, name="tests.OnSuccess"):
    kind = "success"


class OnComplete(BatchCallback, name="tests.OnComplete"):
    kind = "complete"


class OnDeath(BatchCallback, name="tests.OnDeath"):
    kind = "death"


class Doomed(natskiq.Worker, retries=0, name="tests.Doomed"):
    """Fails for good at once."""

    async def perform(self) -> None:
        raise RuntimeError("doomed")


class SecondTime(natskiq.Worker, retries=3, name="tests.SecondTime"):
    """Fails its first attempt, then succeeds and records."""

    async def perform(self) -> None:
        if self.job.retry_count is None:
            raise RuntimeError("first attempt fails")
        record(self.jid, time.time(), "second")


class Adder(natskiq.Worker, name="tests.Adder"):
    """Adds ``count`` Record jobs to its own batch, and opens a child batch of one job."""

    async def perform(self, count: int) -> None:
        assert self.batch is not None
        async with self.batch.jobs():
            await Record.perform_bulk([[0, "added"]] * count)
        async with natskiq.batch("child", parent=self.batch, on_success=OnSuccess):
            await Record.perform_async(0, "grandchild")
        record(self.jid, time.time(), {"batch": self.batch_id})


class StuckAdder(natskiq.Worker, timeout=0.3, retries=0, name="tests.StuckAdder"):
    """Adds a Record job to its batch, then overruns its timeout inside the block."""

    async def perform(self) -> None:
        assert self.batch is not None
        async with self.batch.jobs():
            await Record.perform_async(0, "added before the timeout")
            await anyio.sleep(30)


class Limited(natskiq.Worker, name="tests.Limited", concurrency=3):
    """At most 3 run at once across the cluster; records its start and its end."""

    async def perform(self, sleep: float = 0.4) -> None:
        record(self.jid, time.time(), "limited", kind="start")
        await anyio.sleep(sleep)
        record(self.jid, time.time(), "limited")


class Rated(natskiq.Worker, name="tests.Rated", rate="20/s"):
    """At most 20 start in any second across the cluster; records when it started."""

    async def perform(self) -> None:
        record(self.jid, time.time(), "rated")
