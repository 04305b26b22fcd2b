"""taskiq with taskiq-nats on the same server: enqueue/s, processed/s, latency.

The worker is ``python -m taskiq worker bench.taskiq_app:make_broker
--workers 1`` (one worker process, as natskiq's one node; taskiq's default is
two), otherwise with taskiq's defaults (``--max-async-tasks 100``, ack when
the result is saved, INFO logging with one line per task).
"""

from __future__ import annotations

import subprocess
import sys
import time

import nats

from . import recorder
from .common import (
    Context,
    kill,
    latency_ms,
    measure_processing,
    pace,
    spawn,
    throughput,
    wait_records,
    wait_until,
)
from .taskiq_app import Broker, make_broker


def _worker(ctx: Context, stream: str, rec: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "taskiq", "worker", "bench.taskiq_app:make_broker", "--workers", "1"]
    env = {"BENCH_NATS_URL": ctx.url, "BENCH_TASKIQ_STREAM": stream, recorder.ENV: rec}
    return spawn(ctx, "taskiq-worker", cmd, env)


async def _drop(ctx: Context, stream: str) -> None:
    nc = await nats.connect(ctx.url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def enqueue_and_process(ctx: Context) -> dict[str, float]:
    """``noop.kiq(i)`` N times (timed), then one worker runs them (first start to last end)."""
    stream = ctx.name("TASKIQ")
    rec = ctx.record_file("taskiq-processed")
    broker: Broker = make_broker(ctx.url, stream)
    await broker.startup()
    try:
        started = time.perf_counter()
        for i in range(ctx.n):
            await broker.noop.kiq(i)
        enqueue = ctx.n / (time.perf_counter() - started)
    finally:
        await broker.shutdown()
    proc = _worker(ctx, stream, str(rec))
    try:
        records, cpu = await measure_processing(ctx, rec, ctx.n, [proc], timeout=180)
    finally:
        kill([proc])  # its graceful stop takes seconds and is not measured
        await _drop(ctx, stream)
    if len(records) < ctx.n:
        raise RuntimeError(f"taskiq ran only {len(records)} of {ctx.n} jobs within 180 s")
    done = throughput(records)
    return {"enqueue_per_s": enqueue, "processed_per_s": done["per_s"], "seconds": done["seconds"], **cpu}


async def latency(ctx: Context) -> dict[str, float]:
    """``stamp.kiq(time.time())`` -> task start, one job at a time."""
    stream = ctx.name("TASKIQ")
    rec = ctx.record_file("taskiq-latency")
    warmup = 20
    broker: Broker = make_broker(ctx.url, stream)
    await broker.startup()
    proc = _worker(ctx, stream, str(rec))
    try:
        await broker.stamp.kiq(time.time())
        if not await wait_until(lambda: recorder.count(rec) >= 1, timeout=30):
            raise RuntimeError("the taskiq worker did not start")
        for _ in range(warmup - 1 + ctx.samples):
            await pace()
            await broker.stamp.kiq(time.time())
        records = await wait_records(rec, warmup + ctx.samples, 30, [proc], ctx)
    finally:
        kill([proc])  # its graceful stop takes seconds and is not measured
        await broker.shutdown()
        await _drop(ctx, stream)
    return latency_ms(records[warmup:])
