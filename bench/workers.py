"""The natskiq jobs the suite runs (``natskiq worker --app bench.workers``).

All are ``async def`` and do nothing but stamp :func:`bench.recorder.record`
(``Sleep`` and ``Nap`` also sleep, as an I/O-bound job waits; ``Kept`` and
``Echo`` return a value that the node keeps, ``keep_result``), so what is
measured is natskiq's own cost per job.
"""

from __future__ import annotations

import time

import anyio

import natskiq

from .recorder import record


class Noop(natskiq.Worker, name="bench.Noop"):
    """A no-op job (throughput); records its number ``n`` in place of ``sent``."""

    async def perform(self, n: int) -> None:
        record(n, time.time())


class Stamp(natskiq.Worker, name="bench.Stamp"):
    """Records when it started against ``sent``, the producer's clock before enqueueing."""

    async def perform(self, sent: float) -> None:
        record(sent, time.time())


class Late(natskiq.Worker, name="bench.Late"):
    """Records when it started against the time it was scheduled for (``perform_in``)."""

    async def perform(self) -> None:
        start = time.time()
        record(self.job.at or 0.0, start)


class Sleep(natskiq.Worker, name="bench.Sleep"):
    """Records its start, then sleeps (memory with many jobs in flight)."""

    async def perform(self, seconds: float) -> None:
        record(0.0, time.time())
        await anyio.sleep(seconds)


class Nap(natskiq.Worker, name="bench.Nap"):
    """An I/O-bound job, ``await anyio.sleep(seconds)``; then records its number ``n``,
    its start and its end (I/O-bound scaling, many jobs running at once)."""

    async def perform(self, n: int, seconds: float) -> None:
        start = time.time()
        await anyio.sleep(seconds)
        record(n, start)


class Kept(natskiq.Worker, name="bench.Kept", keep_result=600):
    """:class:`Noop` that keeps its outcome (``keep_result``): processed/s with results on."""

    async def perform(self, n: int) -> int:
        record(n, time.time())
        return n


class Echo(natskiq.Worker, name="bench.Echo", keep_result=600):
    """Records when it started against ``sent`` and returns ``sent`` as its result (round trip)."""

    async def perform(self, sent: float) -> float:
        record(sent, time.time())
        return sent
