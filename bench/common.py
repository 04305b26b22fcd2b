"""Helpers shared by the benchmarks: the run context, statistics, subprocesses."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import attrs

from . import recorder
from .recorder import Record

ROOT = Path(__file__).resolve().parent.parent
LATENCY_GAP = (0.005, 0.015)  # seconds between low-load jobs: ~100/s, far below capacity


@attrs.define
class Context:
    """What every measurement gets: the server, sizes, and a scratch directory."""

    url: str
    n: int
    samples: int
    scratch: Path
    server_pid: int = 0
    sleepers: int = 50_000  # jobs of the many-sleeping-jobs figure (--quick: 5,000)
    redis_url: str = ""  # the suite's redis-server, for arq ("" when it runs none)
    logs: dict[int, Path] = attrs.field(factory=dict)

    def name(self, prefix: str) -> str:
        """A fresh namespace / stream name, so measurements never share state."""
        return f"{prefix}{uuid.uuid4().hex[:8]}"

    def record_file(self, label: str) -> Path:
        """A fresh file for :mod:`bench.recorder` records."""
        path = self.scratch / f"{label}-{uuid.uuid4().hex[:6]}.rec"
        path.touch()
        return path


# -- statistics -----------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linearly interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def latency_ms(records: list[Record]) -> dict[str, float]:
    """p50/p99/max of ``start - sent`` in milliseconds."""
    delays = [(r.start - r.sent) * 1000 for r in records]
    return {
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays) if delays else float("nan"),
        "samples": len(delays),
    }


WARMUP = 20  # low-load jobs dropped before the samples


async def round_trips(ctx: Context, trip: Callable[[float], Awaitable[object]]) -> list[float]:
    """Seconds from enqueue to result in the caller, at low load; the warm-up jobs dropped.

    One ``trip(sent)`` starts every 5-15 ms (:func:`pace`), each in its own
    task, whatever the earlier ones are doing; ``sent`` is ``time.time()``
    just before it enqueues, and ``trip`` returns the job's result, which
    must be ``sent`` back.
    """
    taken: dict[int, float] = {}

    async def one(i: int) -> None:
        sent, begun = time.time(), time.perf_counter()
        value = await trip(sent)
        taken[i] = time.perf_counter() - begun
        if value != sent:
            raise RuntimeError(f"job {i} returned {value!r}, not {sent!r}")

    async with anyio.create_task_group() as tg:
        for i in range(WARMUP + ctx.samples):
            await pace()
            tg.start_soon(one, i)
    return [taken[i] for i in sorted(taken) if i >= WARMUP]


def round_trip_ms(trips: list[float], records: list[Record]) -> dict[str, float]:
    """p50/p99/max of the round trips in ms, and of enqueue -> job start (``start_*``) from the records."""
    started = latency_ms(sorted(records, key=lambda r: r.sent)[WARMUP:])
    ms = [t * 1000 for t in trips]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "samples": len(ms),
        "start_p50_ms": started["p50_ms"],
        "start_p99_ms": started["p99_ms"],
    }


def throughput(records: list[Record]) -> dict[str, float]:
    """Jobs per second from the first job's start to the last job's end.

    ``busiest_share`` is the fraction of the jobs that the busiest process
    ran (from each record's pid); ``distinct`` counts different ``sent``
    values, which throughput jobs set to their job number.
    """
    first = min(r.start for r in records)
    last = max(r.end for r in records)
    by_process = collections.Counter(r.pid for r in records)
    return {
        "per_s": len(records) / (last - first),
        "seconds": last - first,
        "jobs": len(records),
        "distinct": len({r.sent for r in records}),
        "processes": len(by_process),
        "busiest_share": max(by_process.values()) / len(records),
    }


def share_of(records: list[Record], pid: int) -> float:
    """The fraction of the jobs that process ``pid`` ran."""
    return sum(1 for r in records if r.pid == pid) / len(records) if records else float("nan")


async def pace() -> None:
    """Wait between two low-load jobs (random, so nothing syncs with a timer)."""
    await anyio.sleep(random.uniform(*LATENCY_GAP))


async def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``check`` until it is true or ``timeout`` passes; returns the last result."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(interval)
    return True


async def wait_records(
    path: Path,
    n: int,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    ctx: Context | None = None,
    interval: float = 0.02,
) -> list[Record]:
    """Wait for ``n`` records (or the timeout) and return them all.

    Raises:
        RuntimeError: one of ``procs`` exited first (with the end of its log).
    """

    def done() -> bool:
        for proc in procs:
            if proc.poll() is not None:
                tail = ctx.logs[proc.pid].read_text(errors="replace")[-1500:] if ctx else ""
                raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}:\n{tail}")
        return recorder.count(path) >= n

    await wait_until(done, timeout, interval)
    return recorder.read(path)


async def wait_jobs(
    path: Path,
    n: int,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    ctx: Context | None = None,
    interval: float = 0.02,
) -> list[Record]:
    """As :func:`wait_records`, until ``n`` distinct ``sent`` values (job numbers) are in.

    A job that ran twice (redelivered) writes two records: counting records
    would stop before every job ran.
    """
    deadline = time.monotonic() + timeout
    want = n
    while True:
        records = await wait_records(path, want, max(0.0, deadline - time.monotonic()), procs, ctx, interval)
        missing = n - len({r.sent for r in records})
        if missing <= 0 or time.monotonic() >= deadline:
            return records
        want = len(records) + missing


# -- processes --------------------------------------------------------------------


def spawn(ctx: Context, label: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a subprocess from the repository root, its output in a log file."""
    log = ctx.scratch / f"{label}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctx.logs[proc.pid] = log
    return proc


def natskiq_worker(ctx: Context, namespace: str, record: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m natskiq worker --app bench.workers`` on the suite's server."""
    cmd = [sys.executable, "-m", "natskiq", "worker", "--app", "bench.workers"]
    cmd += ["--url", ctx.url, "--namespace", namespace, *args]
    return spawn(ctx, "natskiq-worker", cmd, {recorder.ENV: str(record)})


def stop(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still running after ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGKILL at once, with every descendant (taskiq's worker forks its workers)."""
    for proc in procs:
        for pid in descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def descendants(pid: int) -> list[int]:
    """The live children of a process, their children, and so on (``/proc``)."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    except FileNotFoundError:
        pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (``/proc``)."""
    total = 0.0
    for each in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class CpuMeter:
    """CPU seconds that some processes spend between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.begin: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self.begin = self._now()

    def stop(self) -> None:
        self.used = {name: value - self.begin.get(name, 0.0) for name, value in self._now().items()}

    def per_job_us(self, jobs: int) -> dict[str, float]:
        """``cpu_us_per_job_<name>`` for each group of processes."""
        return {f"cpu_us_per_job_{name}": used / jobs * 1e6 for name, used in self.used.items()}


async def measure_processing(
    ctx: Context,
    rec: Path,
    n: int,
    procs: Sequence[subprocess.Popen[bytes]],
    timeout: float,
    groups: dict[str, list[int]] | None = None,
) -> tuple[list[Record], dict[str, float]]:
    """Wait for ``n`` records; CPU per job of ``procs`` (and the server) from the first to the last.

    ``groups`` names the processes to meter (``cpu_us_per_job_<name>``); by
    default all of ``procs`` together, as ``workers``.
    """
    pids = groups if groups is not None else {"workers": [proc.pid for proc in procs]}
    meter = CpuMeter({**pids, "server": [ctx.server_pid]})
    await wait_records(rec, 1, timeout, procs, ctx, interval=0.002)
    meter.start()
    first = recorder.count(rec)
    records = await wait_records(rec, n, timeout, procs, ctx)
    meter.stop()
    return records, meter.per_job_us(max(1, len(records) - first))


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A ``/proc/<pid>/status`` memory field in MiB (VmRSS: resident now; VmHWM: peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} for pid {pid}")
