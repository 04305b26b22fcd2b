"""The arq side: the echo job and the worker's settings (``arq bench.arq_app.WorkerSettings``).

The worker reads its Redis from ``$BENCH_REDIS_URL``, which the suite sets.
Everything else is arq's default: ``max_jobs`` 10, the queue polled every
0.5 s (``poll_delay``), results kept for an hour (``keep_result``).
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from arq.connections import RedisSettings

from .recorder import record


async def echo(ctx: dict[str, Any], sent: float) -> float:
    """Records when it started against ``sent``, and returns ``sent`` (as ``bench.Echo``)."""
    record(sent, time.time())
    return sent


class WorkerSettings:
    """arq's worker settings: the one function, the suite's Redis."""

    functions: ClassVar[list[Any]] = [echo]
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
