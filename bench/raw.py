"""The baseline: what nats-py alone does on the same server, in the same run.

Every raw figure uses what natskiq uses: a file-backed work-queue stream, a
payload the size of a natskiq envelope, a ``Nats-Msg-Id`` header on every
publish (natskiq sends one for de-duplication), and a durable pull consumer
with explicit acks. So a natskiq/raw ratio is natskiq's own overhead.

``python -m bench.raw consume URL STREAM`` is the low-load consumer process
of the latency figure (fetch one, stamp, ack).
"""

from __future__ import annotations

import struct
import sys
import time
import uuid

import anyio
import nats
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as jsapi

from natskiq import job as jobs

from . import recorder
from .common import Context, cpu_seconds, latency_ms, pace, spawn, stop, wait_records, wait_until

FETCH_BATCH = 100
DURABLE = "raw"
SENT = struct.Struct("<d")


def envelope_bytes(n: int = 0) -> bytes:
    """A natskiq envelope for a no-op job, to size raw payloads like natskiq's."""
    job = jobs.Job(jid=jobs.new_jid(), cls="bench.Noop", args=[n], queue="default", retry=25)
    return jobs.encode(job)


async def _stream(js: JetStreamContext, name: str) -> str:
    subject = f"raw.{name}"
    await js.add_stream(
        name=name,
        subjects=[subject],
        retention=jsapi.RetentionPolicy.WORK_QUEUE,
        storage=jsapi.StorageType.FILE,
        num_replicas=1,
    )
    return subject


async def _consumer(js: JetStreamContext, stream: str, subject: str) -> None:
    config = jsapi.ConsumerConfig(
        durable_name=DURABLE,
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        filter_subject=subject,
        max_ack_pending=100_000,  # as natskiq's consumer
        ack_wait=30,
    )
    await js.add_consumer(stream, config)


async def _publish_async_all(js: JetStreamContext, subject: str, payload: bytes, n: int) -> None:
    prefix = uuid.uuid4().hex[:12]
    futures = [
        await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"{prefix}-{i}"}) for i in range(n)
    ]
    for future in futures:
        await future  # raises on a refused publish: a benchmark must not count those


async def publish_sequential(ctx: Context) -> dict[str, float]:
    """``await js.publish()`` one after another (each waits for its PubAck)."""
    nc = await nats.connect(ctx.url)
    try:
        js = nc.jetstream()
        stream = ctx.name("RAWSEQ")
        subject = await _stream(js, stream)
        payload, prefix = envelope_bytes(), uuid.uuid4().hex[:12]
        started = time.perf_counter()
        for i in range(ctx.n):
            await js.publish(subject, payload, headers={"Nats-Msg-Id": f"{prefix}-{i}"})
        elapsed = time.perf_counter() - started
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return {"per_s": ctx.n / elapsed}


async def publish_pipelined(ctx: Context) -> dict[str, float]:
    """``js.publish_async()`` for all N, then every PubAck awaited."""
    nc = await nats.connect(ctx.url)
    try:
        js = nc.jetstream()
        stream = ctx.name("RAWASYNC")
        subject = await _stream(js, stream)
        payload = envelope_bytes()
        started = time.perf_counter()
        await _publish_async_all(js, subject, payload, ctx.n)
        elapsed = time.perf_counter() - started
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return {"per_s": ctx.n / elapsed}


async def fetch_ack(ctx: Context) -> dict[str, float]:
    """N stored messages, then ``fetch(batch)`` + ``msg.ack()`` for each until all are acked."""
    nc = await nats.connect(ctx.url)
    try:
        js = nc.jetstream()
        stream = ctx.name("RAWFETCH")
        subject = await _stream(js, stream)
        await _publish_async_all(js, subject, envelope_bytes(), ctx.n)
        await _consumer(js, stream, subject)
        sub = await js.pull_subscribe_bind(durable=DURABLE, stream=stream)
        got = 0
        server_cpu, own_cpu = cpu_seconds(ctx.server_pid), time.process_time()
        started = time.perf_counter()
        while got < ctx.n:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except NatsTimeout:
                continue
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        await nc.flush()
        elapsed = time.perf_counter() - started
        own_cpu, server_cpu = time.process_time() - own_cpu, cpu_seconds(ctx.server_pid) - server_cpu
        acked = await _all_acked(js, stream)
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return {
        "per_s": ctx.n / elapsed,
        "batch": FETCH_BATCH,
        "cpu_us_per_job_consumer": own_cpu / ctx.n * 1e6,
        "cpu_us_per_job_server": server_cpu / ctx.n * 1e6,
        "all_acked": float(acked),
    }


async def _all_acked(js: JetStreamContext, stream: str) -> bool:
    """Whether the server has applied every ack (it does so asynchronously)."""
    for _ in range(100):
        info = await js.consumer_info(stream, DURABLE)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return True
        await anyio.sleep(0.05)
    return False


async def latency(ctx: Context) -> dict[str, float]:
    """``js.publish`` -> handler start in another process, one message at a time."""
    nc = await nats.connect(ctx.url)
    rec = ctx.record_file("raw-latency")
    proc = None
    try:
        js = nc.jetstream()
        stream = ctx.name("RAWLAT")
        subject = await _stream(js, stream)
        await _consumer(js, stream, subject)
        cmd = [sys.executable, "-m", "bench.raw", "consume", ctx.url, stream]
        proc = spawn(ctx, "raw-consumer", cmd, {recorder.ENV: str(rec)})
        pad = envelope_bytes()[SENT.size :]
        warmup = 20
        await js.publish(subject, SENT.pack(time.time()) + pad)
        if not await wait_until(lambda: recorder.count(rec) >= 1, timeout=30):
            raise RuntimeError("the raw consumer did not start")
        for _ in range(warmup - 1 + ctx.samples):
            await pace()
            await js.publish(subject, SENT.pack(time.time()) + pad)
        records = await wait_records(rec, warmup + ctx.samples, 30, [proc], ctx)
        await js.delete_stream(stream)
    finally:
        if proc is not None:
            stop([proc])
        await nc.close()
    return latency_ms(records[warmup:])


async def consume(url: str, stream: str) -> None:
    """The latency consumer: fetch one message at a time, stamp it, ack it."""
    nc: NATS = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=DURABLE, stream=stream)
    while True:
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except NatsTimeout:
            continue
        for msg in msgs:
            start = time.time()
            recorder.record(SENT.unpack_from(msg.data)[0], start)
            await msg.ack()


if __name__ == "__main__":
    if sys.argv[1:2] == ["consume"] and len(sys.argv) == 4:
        try:
            anyio.run(consume, sys.argv[2], sys.argv[3])
        except KeyboardInterrupt:
            pass
    else:
        sys.exit("usage: python -m bench.raw consume URL STREAM")
