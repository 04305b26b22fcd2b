"""natskiq's figures: enqueue, processing, latency, schedules, failover, memory.

Producers run in the suite's process; every worker is a real
``python -m natskiq worker --app bench.workers`` subprocess with its own
namespace, so no measurement sees another's streams, lease or jobs.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio

import natskiq
from natskiq import api
from natskiq.topology import ensure_queue

from . import recorder
from .common import (
    Context,
    CpuMeter,
    cpu_seconds,
    kill,
    latency_ms,
    measure_processing,
    natskiq_worker,
    pace,
    percentile,
    round_trip_ms,
    round_trips,
    rss_mib,
    share_of,
    stop,
    throughput,
    wait_jobs,
    wait_records,
)
from .recorder import Record
from .workers import Echo, Kept, Late, Nap, Noop, Sleep, Stamp

QUEUE = "default"
SLEEPING = 10_000
LATE_JOBS = 200
LATE_DELAY = 1.0
LEASE_TTL = 5.0  # natskiq's default --lease-ttl
HEARTBEAT = 1.0  # seconds between two demand reports of a node (natskiq.dispatch.protocol.HEARTBEAT)


async def perform_async(ctx: Context) -> dict[str, float]:
    """``Noop.perform_async(i)`` one after another (each waits for its PubAck)."""
    async with natskiq.connect(ctx.url, namespace=ctx.name("b")) as client:
        await client.ensure_queue(QUEUE)  # the stream is created once, outside the timing
        started = time.perf_counter()
        for i in range(ctx.n):
            await Noop.perform_async(i)
        elapsed = time.perf_counter() - started
    return {"per_s": ctx.n / elapsed}


async def perform_bulk(ctx: Context) -> dict[str, float]:
    """``Noop.perform_bulk([[0], [1], ...])``: N jobs built, checked and pipelined."""
    async with natskiq.connect(ctx.url, namespace=ctx.name("b")) as client:
        await client.ensure_queue(QUEUE)
        args = [[i] for i in range(ctx.n)]
        started = time.perf_counter()
        jids = await Noop.perform_bulk(args)
        elapsed = time.perf_counter() - started
    assert len(jids) == ctx.n
    return {"per_s": ctx.n / elapsed}


async def _drained(client: natskiq.Client) -> bool:
    """Whether the queue has no ready and no unacked job left (acks apply asynchronously)."""
    for _ in range(100):
        info = await api.queue_info(client, QUEUE)
        if info.ready == 0 and info.running == 0:
            return True
        await anyio.sleep(0.05)
    return False


async def processed(
    ctx: Context, workers: int = 1, extra: Sequence[str] = (), job: type[Noop | Kept] = Noop
) -> dict[str, float]:
    """N no-op jobs stored first; workers started; first job's start to last job's end."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-processed")
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await job.perform_bulk([[i] for i in range(ctx.n)])
        procs = [natskiq_worker(ctx, namespace, rec, *extra) for _ in range(workers)]
        try:
            records, cpu = await measure_processing(ctx, rec, ctx.n, procs, timeout=120)
            drained = await _drained(client)
        finally:
            stop(procs)
    if len(records) < ctx.n:
        raise RuntimeError(f"only {len(records)} of {ctx.n} jobs ran within 120 s")
    checks = {"all_acked": float(drained), "duplicates": float(len(records) - ctx.n)}
    return {**throughput(records), **cpu, **checks}


async def processed_two(ctx: Context) -> dict[str, float]:
    return await processed(ctx, workers=2)


async def processed_no_events(ctx: Context) -> dict[str, float]:
    """As :func:`processed`, with ``--no-events`` (the node publishes no lifecycle event)."""
    return await processed(ctx, extra=["--no-events"])


async def processed_results(ctx: Context) -> dict[str, float]:
    """As :func:`processed`, the jobs keeping their result (``Kept``, ``keep_result``)."""
    return await processed(ctx, job=Kept)


async def processed_quiet_logs(ctx: Context) -> dict[str, float]:
    """As :func:`processed`, with ``--log-level warning`` (no per-job log lines)."""
    return await processed(ctx, extra=["--log-level", "warning"])


async def processed_uvloop(ctx: Context) -> dict[str, float]:
    """As :func:`processed`, with ``--event-loop uvloop``."""
    return await processed(ctx, extra=["--event-loop", "uvloop"])


async def processed_c100(ctx: Context) -> dict[str, float]:
    """As :func:`processed`, with ``--concurrency 100``."""
    return await processed(ctx, extra=["--concurrency", "100"])


async def _master(client: natskiq.Client, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await api.master(client)
        if found is not None:
            return found
        await anyio.sleep(0.02)
    raise RuntimeError(f"no master within {timeout} s")


async def latency(ctx: Context) -> dict[str, float]:
    """``Stamp.perform_async(time.time())`` -> perform start, one job at a time."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-latency")
    warmup = 20
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        proc = natskiq_worker(ctx, namespace, rec)
        try:
            await _master(client)
            for _ in range(warmup + ctx.samples):
                await pace()
                await Stamp.perform_async(time.time())
            records = await wait_records(rec, warmup + ctx.samples, 30, [proc], ctx)
        finally:
            stop([proc])
    return latency_ms(records[warmup:])


async def result_round_trip(ctx: Context) -> dict[str, float]:
    """``await (await Echo.perform_async(sent)).result()``, one every 5-15 ms: enqueue -> result."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-round-trip")

    async def trip(sent: float) -> object:
        handle = await Echo.perform_async(sent)
        return await handle.result(timeout=30)

    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        proc = natskiq_worker(ctx, namespace, rec)
        try:
            await _master(client)
            trips = await round_trips(ctx, trip)
        finally:
            stop([proc])
    return round_trip_ms(trips, recorder.read(rec))


async def perform_in_lateness(ctx: Context) -> dict[str, float]:
    """``Late.perform_in(1.0)`` as a trickle (~100/s); lateness = perform start - due time."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-late")
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        proc = natskiq_worker(ctx, namespace, rec)
        try:
            await _master(client)
            for _ in range(LATE_JOBS):
                await Late.perform_in(LATE_DELAY)
                await pace()
            records = await wait_records(rec, LATE_JOBS, 30, [proc], ctx)
        finally:
            stop([proc])
    late = [(r.start - r.sent) * 1000 for r in records]
    return {
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late),
        "samples": len(late),
    }


async def failover(ctx: Context, nodes: int = 3) -> dict[str, float]:
    """kill -9 the master of 3 nodes; time until another holds the lease, and until a new job runs."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-failover")
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        procs = [natskiq_worker(ctx, namespace, rec) for _ in range(nodes)]
        try:
            await _master(client)
            if not await _all_nodes(client, nodes):
                raise RuntimeError(f"{nodes} nodes did not register")
            # Let the master hear every node's demand, then kill at a random
            # point of its renew cycle (it renews every TTL/3).
            await anyio.sleep(1.5 + random.uniform(0, LEASE_TTL / 3))
            old = await _master(client)
            victim = next(p for p in procs if p.pid == old["pid"])
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            # Enqueue once the process is gone: a job published while it is
            # still dying can land in its open pull request and then waits
            # for the ack wait (30 s) like any job a dead master held.
            victim.wait()
            await Stamp.perform_async(killed_at)
            await _new_master(client, str(old["node"]))
            master_s = time.time() - killed_at
            records = await wait_records(rec, 1, timeout=60)
        finally:
            stop(procs)
    if not records:
        raise RuntimeError("the job enqueued after the kill never ran")
    return {
        "master_s": master_s,
        "job_s": records[0].start - killed_at,
        "lease_ttl_s": LEASE_TTL,
    }


async def _all_nodes(client: natskiq.Client, nodes: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(await api.nodes(client)) >= nodes:
            return True
        await anyio.sleep(0.05)
    return False


async def _new_master(client: natskiq.Client, old: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = await api.master(client)
        if found is not None and found["node"] != old:
            return found
        await anyio.sleep(0.01)
    raise RuntimeError("no new master within 60 s")


async def rss(ctx: Context) -> dict[str, float]:
    """VmRSS of one worker: idle after start-up, then with 10,000 sleeping jobs."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-rss")
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        proc = natskiq_worker(ctx, namespace, rec, "--concurrency", str(SLEEPING))
        try:
            await _master(client)
            await anyio.sleep(2.0)  # settle: heartbeats, demand reports, the first pulls
            idle = rss_mib(proc.pid)
            await Sleep.perform_bulk([[120.0]] * SLEEPING)
            records = await wait_records(rec, SLEEPING, 120, [proc], ctx)
            await anyio.sleep(0.5)
            busy, peak = rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
        finally:
            kill([proc])  # the sleeping jobs die with it; the namespace is thrown away
    return {"idle_mib": idle, "sleeping_mib": busy, "peak_mib": peak, "sleeping_jobs": float(len(records))}


# -- scale-out: dispatch cost, scaling, many sleeping jobs -------------

IDLE_QUEUE = "idle"  # a queue nobody enqueues to: the master's own node runs nothing
IO_SLEEP = 0.01  # the I/O-bound job: await anyio.sleep(0.01)
IO_CONCURRENCY = 500
NAP_SECONDS = 10.0  # long enough for every job of the many-sleeping-jobs figure to be running at once
NAP_NODES = 3
NAP_CONCURRENCY = 20_000
RSS_EVERY = 0.1  # seconds between two VmRSS samples


async def _idle_cpu(pid: int, seconds: float = 1.0) -> float:
    """The share of one core that ``pid`` uses over ``seconds`` (heartbeats, renewals, demand)."""
    before, started = cpu_seconds(pid), time.monotonic()
    await anyio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


async def _cluster(
    ctx: Context, client: natskiq.Client, namespace: str, rec: Path, count: int, *args: str
) -> list[subprocess.Popen[bytes]]:
    """``count`` workers on one namespace, the master first, once the master knows them all.

    Jobs are enqueued only after this: stored before, they would all go to
    the first node while the others are still starting.
    """
    procs = [natskiq_worker(ctx, namespace, rec, *args) for _ in range(count)]
    try:
        master = await _master(client)
        if not await _all_nodes(client, count):
            raise RuntimeError(f"{count} nodes did not register")
        await anyio.sleep(HEARTBEAT + 0.5)  # every node's demand has reached the master
    except BaseException:
        stop(procs)
        raise
    return sorted(procs, key=lambda proc: proc.pid != master["pid"])


async def dispatch_cpu(ctx: Context, extra: Sequence[str] = ()) -> dict[str, float]:
    """CPU per job of a master whose own node runs nothing, and of the node it dispatches to.

    N no-op jobs are stored first; one worker serving only :data:`IDLE_QUEUE`
    becomes master (its idle CPU is taken for a second), then a second
    worker serving the bench queue starts (with ``extra`` flags); CPU from
    the first job's start to the last job's end, divided by the jobs run in
    that window.
    """
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-dispatch")
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await Noop.perform_bulk([[i] for i in range(ctx.n)])
        master = natskiq_worker(ctx, namespace, rec, "--queue", IDLE_QUEUE)
        procs = [master]
        try:
            found = await _master(client)
            if found["pid"] != master.pid:
                raise RuntimeError(f"the master is pid {found['pid']}, not the idle worker {master.pid}")
            idle = await _idle_cpu(master.pid)
            node = natskiq_worker(ctx, namespace, rec, *extra)
            procs.append(node)
            groups = {"master": [master.pid], "node": [node.pid]}
            records, cpu = await measure_processing(ctx, rec, ctx.n, procs, timeout=120, groups=groups)
            drained = await _drained(client)
        finally:
            stop(procs)
    if len(records) < ctx.n:
        raise RuntimeError(f"only {len(records)} of {ctx.n} jobs ran within 120 s")
    done = throughput(records)
    # What the master would have spent idle over the window, per job.
    idle_us = idle * done["seconds"] / done["jobs"] * 1e6
    return {
        "per_s": done["per_s"],
        "seconds": done["seconds"],
        **cpu,
        "master_idle_core_share": idle,
        "cpu_us_per_job_master_less_idle": cpu["cpu_us_per_job_master"] - idle_us,
        "master_share": share_of(records, master.pid),
        "all_acked": float(drained),
        "duplicates": float(len(records) - ctx.n),
    }


async def dispatch_cpu_c100(ctx: Context) -> dict[str, float]:
    """As :func:`dispatch_cpu`, the node dispatched to with ``--concurrency 100``."""
    return await dispatch_cpu(ctx, ["--concurrency", "100"])


async def scaling(ctx: Context, processes: int, io: bool) -> dict[str, float]:
    """N jobs (no-op, or ``anyio.sleep(0.01)`` with ``--concurrency 500``) on ``processes`` workers.

    The workers start first and the master learns them all; then the N jobs
    are enqueued with ``perform_bulk`` (``enqueue_s``). Jobs/s is N over the
    first job's start to the last job's end; CPU per job over enqueue and
    processing together, for the workers and for the server.
    """
    namespace = ctx.name("b")
    rec = ctx.record_file(f"natskiq-scale-{processes}")
    args = ["--concurrency", str(IO_CONCURRENCY)] if io else []
    args += ["--partitions", str(processes)]  # a shard, hence a master, per process
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        procs = await _cluster(ctx, client, namespace, rec, processes, *args)
        await _learn_partitions(client, processes)
        try:
            meter = CpuMeter({"workers": [proc.pid for proc in procs], "server": [ctx.server_pid]})
            meter.start()
            started = time.monotonic()
            if io:
                await Nap.perform_bulk([[i, IO_SLEEP] for i in range(ctx.n)])
            else:
                await Noop.perform_bulk([[i] for i in range(ctx.n)])
            enqueue_s = time.monotonic() - started
            records = await wait_jobs(rec, ctx.n, 120, procs, ctx)
            meter.stop()
            drained = await _drained(client)
        finally:
            stop(procs)
    done = throughput(records)
    if done["distinct"] < ctx.n:
        raise RuntimeError(f"only {done['distinct']} of {ctx.n} jobs ran within 120 s")
    return {
        **done,
        "master_share": share_of(records, procs[0].pid),
        "enqueue_s": enqueue_s,
        **meter.per_job_us(len(records)),
        "all_acked": float(drained),
        "duplicates": float(len(records) - done["distinct"]),
    }


async def _learn_partitions(client: natskiq.Client, partitions: int) -> None:
    """Have the producer learn the partitions the workers created (it would
    within a minute by itself), and wait until every shard has a master."""
    await ensure_queue(client.js, client.names, QUEUE)
    assert client.names.partitions(QUEUE) == partitions
    with anyio.fail_after(30):
        while True:
            masters = await api.masters(client)
            spread = len({m["node"] for m in masters}) >= min(partitions, len(await api.nodes(client)))
            if len(masters) == partitions and spread:
                return
            await anyio.sleep(0.1)


def _scaling(processes: int, io: bool) -> Callable[[Context], Awaitable[dict[str, float]]]:
    async def measure(ctx: Context) -> dict[str, float]:
        return await scaling(ctx, processes, io)

    measure.__name__ = f"scaling_{'io' if io else 'noop'}_{processes}"
    return measure


scaling_noop_1, scaling_noop_2, scaling_noop_3 = (_scaling(p, io=False) for p in (1, 2, 3))
scaling_io_1, scaling_io_2, scaling_io_3 = (_scaling(p, io=True) for p in (1, 2, 3))


async def _sample_rss(pids: list[int], into: list[tuple[float, list[float]]]) -> None:
    """Append ``(time, [VmRSS of each pid])`` every :data:`RSS_EVERY` seconds until cancelled."""
    while True:
        try:
            into.append((time.time(), [rss_mib(pid) for pid in pids]))
        except (FileNotFoundError, LookupError):
            return  # a node is gone: wait_jobs reports why
        await anyio.sleep(RSS_EVERY)


def _running(records: list[Record], pid: int) -> tuple[list[float], list[float]]:
    """Sorted start and end times of the jobs that ``pid`` ran."""
    mine = [r for r in records if r.pid == pid]
    return sorted(r.start for r in mine), sorted(r.end for r in mine)


async def many_sleeping(ctx: Context) -> dict[str, float]:
    """``ctx.sleepers`` jobs sleeping :data:`NAP_SECONDS` on 3 nodes with ``--concurrency 20000``.

    Each node's VmRSS is sampled every 0.1 s while they run; each job
    records its start and end (when it finished), so afterwards the sample
    taken when most jobs were running (over the 3 nodes) is the one
    reported, with how many each node was running then. Bounded: whatever
    has not finished 120 s after the sleep would have ended is reported as
    missing, and the nodes are killed.
    """
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-sleeping")
    n = ctx.sleepers
    samples: list[tuple[float, list[float]]] = []
    args = ["--concurrency", str(NAP_CONCURRENCY), "--partitions", str(NAP_NODES)]
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await client.ensure_queue(QUEUE)
        procs = await _cluster(ctx, client, namespace, rec, NAP_NODES, *args)
        await _learn_partitions(client, NAP_NODES)
        pids = [proc.pid for proc in procs]
        try:
            idle = [rss_mib(pid) for pid in pids]
            async with anyio.create_task_group() as tg:
                tg.start_soon(_sample_rss, pids, samples)
                started = time.time()
                await Nap.perform_bulk([[i, NAP_SECONDS] for i in range(n)])
                enqueue_s = time.time() - started
                records = await wait_jobs(rec, n, NAP_SECONDS + 120, procs, ctx, interval=0.2)
                tg.cancel_scope.cancel()
            peak = [rss_mib(pid, "VmHWM") for pid in pids]
        finally:
            kill(procs)  # the namespace is thrown away
    done = throughput(records) if records else {"seconds": math.nan, "busiest_share": math.nan, "distinct": 0}
    runs = {pid: _running(records, pid) for pid in pids}

    def running_at(pid: int, t: float) -> int:
        starts, ends = runs[pid]
        return bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)

    if not samples:
        raise RuntimeError("no VmRSS sample was taken")
    best_t, best_rss = max(samples, key=lambda s: sum(running_at(pid, s[0]) for pid in pids))
    out: dict[str, float] = {
        "jobs": float(done["distinct"]),  # different jobs that ran
        "records": float(len(records)),
        "all_ran": float(done["distinct"] == n),
        # Redelivered jobs that had finished a second time when the last job finished.
        "duplicates": float(len(records) - done["distinct"]),
        "seconds": done["seconds"],  # first job's start to last job's end
        "enqueue_to_done_s": (max(r.end for r in records) - started) if records else math.nan,
        "enqueue_s": enqueue_s,
        "all_started_s": (max(r.start for r in records) - started) if records else math.nan,
        "sleep_s": NAP_SECONDS,
        "max_running": float(sum(running_at(pid, best_t) for pid in pids)),
        "busiest_share": done["busiest_share"],
        "samples": float(len(samples)),
    }
    # Node 0 is the master; the others follow by how many jobs they were running
    # then, so that a median over rounds compares like with like.
    others = sorted(range(1, len(pids)), key=lambda i: -running_at(pids[i], best_t))
    for slot, i in enumerate([0, *others]):
        out[f"node{slot}_running"] = float(running_at(pids[i], best_t))
        out[f"node{slot}_rss_mib"] = best_rss[i]
        out[f"node{slot}_idle_mib"] = idle[i]
        out[f"node{slot}_peak_mib"] = peak[i]
        out[f"node{slot}_share"] = share_of(records, pids[i])
    worst = max(range(len(pids)), key=lambda i: best_rss[i])
    running = running_at(pids[worst], best_t)
    out["max_node_rss_mib"] = best_rss[worst]
    out["max_node_running"] = float(running)
    # What each running job adds to a node's RSS, from the node that used the most.
    out["kib_per_running_job"] = (best_rss[worst] - idle[worst]) * 1024 / running if running else math.nan
    return out
