"""natskiq's figures: enqueue, processing, latency, schedules, failover, memory.

Producers run in the suite's process; every worker is a real
``python -m natskiq worker --app bench.workers`` subprocess with its own
namespace, so no measurement sees another's streams, lease or jobs.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Sequence

import anyio

import natskiq
from natskiq import api

from .common import (
    Context,
    kill,
    latency_ms,
    measure_processing,
    natskiq_worker,
    pace,
    percentile,
    rss_mib,
    stop,
    throughput,
    wait_records,
)
from .workers import Late, Noop, Sleep, Stamp

QUEUE = "default"
SLEEPING = 10_000
LATE_JOBS = 200
LATE_DELAY = 1.0
LEASE_TTL = 5.0  # natskiq's default --lease-ttl


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


async def processed(ctx: Context, workers: int = 1, extra: Sequence[str] = ()) -> dict[str, float]:
    """N no-op jobs stored first; workers started; first job's start to last job's end."""
    namespace = ctx.name("b")
    rec = ctx.record_file("natskiq-processed")
    async with natskiq.connect(ctx.url, namespace=namespace) as client:
        await Noop.perform_bulk([[i] for i in range(ctx.n)])
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
