"""arq with Redis: enqueue -> result in the caller (``await job.result()``), at low load.

The suite starts its own ``redis-server`` (:class:`RedisServer`: loopback,
a free port, a temporary directory, otherwise Redis's defaults) and one
``arq bench.arq_app.WorkerSettings`` worker, with arq's defaults on both
sides: the worker polls the queue every 0.5 s and ``job.result()`` polls
for the result every 0.5 s (``poll_delay``). Those two polls are arq's
design, so they are measured as they are, not tuned away.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import attrs
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from . import recorder
from .common import Context, round_trip_ms, round_trips, spawn, stop

START_TIMEOUT = 15.0


def redis_binary() -> str | None:
    """The ``redis-server`` on ``$PATH`` (``apt-get install redis-server``), or None."""
    return shutil.which("redis-server")


@attrs.define
class RedisServer:
    """One ``redis-server`` on loopback and a free port, its files in ``directory``."""

    directory: Path
    _proc: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)
    url: str = attrs.field(init=False, default="")

    @property
    def pid(self) -> int:
        assert self._proc is not None, "redis-server not started"
        return self._proc.pid

    def start(self) -> str:
        """Start it and wait until it answers ``PING``; returns its URL."""
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.directory)]
        with (self.directory / "redis.log").open("wb") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not _pong(port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.directory / "redis.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"redis-server did not start on port {port}:\n{tail}")
            time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{port}"
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it takes longer than ``timeout``."""
        if self._proc is not None:
            stop([self._proc], timeout)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _worker(ctx: Context, rec: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "arq", "bench.arq_app.WorkerSettings"]
    return spawn(ctx, "arq-worker", cmd, {"BENCH_REDIS_URL": ctx.redis_url, recorder.ENV: str(rec)})


async def _trip(pool: ArqRedis, sent: float) -> object:
    job = await pool.enqueue_job("echo", sent)
    if job is None:
        raise RuntimeError("arq did not enqueue the job (its id exists)")
    return await job.result(timeout=30)  # arq's default poll_delay: 0.5 s


async def result_round_trip(ctx: Context) -> dict[str, float]:
    """``await (await pool.enqueue_job("echo", sent)).result()``, one every 5-15 ms."""
    if not ctx.redis_url:
        raise RuntimeError("the suite started no redis-server")
    rec = ctx.record_file("arq-round-trip")
    pool = await create_pool(RedisSettings.from_dsn(ctx.redis_url))
    proc = _worker(ctx, rec)
    try:
        with anyio.fail_after(30):
            await _trip(pool, time.time())  # the worker is up (not counted)
        trips = await round_trips(ctx, lambda sent: _trip(pool, sent))
    finally:
        stop([proc])
        await pool.flushdb()
        await pool.aclose()
    return round_trip_ms(trips, recorder.read(rec)[1:])
