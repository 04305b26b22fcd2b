"""The taskiq-nats side: a JetStream broker and the same no-op and stamp jobs.

``taskiq worker bench.taskiq_app:make_broker`` calls :func:`make_broker`
with no arguments, so the worker reads the server and stream from
``$BENCH_NATS_URL`` and ``$BENCH_TASKIQ_STREAM``; the suite passes them
explicitly. ``PullBasedJetStreamBroker`` is taskiq-nats' durable pull
consumer, the closest to natskiq's design (and the only one whose producer
does not also consume: the push broker subscribes in ``startup()`` on both
sides). Its settings are taskiq-nats' defaults: stream with limits retention,
``fetch(batch=1)`` with no timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Coroutine
from typing import Any

from taskiq import AsyncTaskiqDecoratedTask
from taskiq_nats import PullBasedJetStreamBroker

from .recorder import record


async def noop(n: int) -> None:
    record(n, time.time())


async def stamp(sent: float) -> None:
    record(sent, time.time())


class Broker(PullBasedJetStreamBroker):
    """The broker, with its two tasks at hand for the producer."""

    noop: AsyncTaskiqDecoratedTask[[int], Coroutine[Any, Any, None]]
    stamp: AsyncTaskiqDecoratedTask[[float], Coroutine[Any, Any, None]]


def make_broker(url: str | None = None, stream: str | None = None) -> Broker:
    """A broker on ``stream`` (subject ``<stream>.tasks``, durable ``<stream>_durable``)."""
    url = url or os.environ["BENCH_NATS_URL"]
    stream = stream or os.environ["BENCH_TASKIQ_STREAM"]
    broker = Broker(servers=url, subject=f"{stream}.tasks", stream_name=stream, durable=f"{stream}_durable")
    broker.noop = broker.register_task(noop, task_name="bench.noop")
    broker.stamp = broker.register_task(stamp, task_name="bench.stamp")
    return broker
