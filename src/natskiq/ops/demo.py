"""``natskiq demo``: a server, a worker and a few jobs, in one process.

It starts an embedded JetStream server on a free port with a temporary
store, runs one node with :data:`DEMO_QUEUES`, enqueues immediate, delayed
and failing-then-succeeding jobs, reports each as it runs and exits once all
of them are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from natskiq.enqueue.client import Client
from natskiq.ops.launcher import Launcher, Settings
from natskiq.ops.server import Server
from natskiq.run import retry
from natskiq.worker import Worker

_events: list[Callable[[str], None]] = []


def _report(line: str) -> None:
    for out in _events:
        out(line)


class Greet(Worker, queue="default", name="demo.Greet"):
    """Says hello."""

    async def perform(self, name: str) -> None:
        _report(f"  ran    {f'Greet({name!r})':32} jid={self.jid} queue={self.job.queue}")


class Resize(Worker, queue="images", name="demo.Resize"):
    """Pretends to resize an image in a thread (a plain `def perform`)."""

    def perform(self, path: str, width: int = 640) -> None:
        time.sleep(0.05)
        _report(f"  ran    {f'Resize({path!r}, width={width})':32} in a worker thread")


class Remind(Worker, queue="default", name="demo.Remind"):
    """A delayed job."""

    async def perform(self, text: str, due: float) -> None:
        _report(f"  ran    {f'Remind({text!r})':32} {time.time() - due:+.2f}s from its due time")


class Flaky(Worker, queue="default", retries=3, name="demo.Flaky"):
    """Fails twice, then succeeds (retried with a shortened backoff)."""

    attempts: dict[str, int] = {}

    async def perform(self, label: str) -> None:
        count = self.attempts[self.jid] = self.attempts.get(self.jid, 0) + 1
        if count < 3:
            _report(f"  fail   {f'Flaky({label!r})':32} attempt {count} raised: retried with backoff")
            raise RuntimeError(f"attempt {count} fails on purpose")
        _report(f"  ran    {f'Flaky({label!r})':32} on attempt {count}")


async def run_demo(out: Callable[[str], None]) -> None:
    """Run the demo, printing with ``out``; returns when every job has run."""
    done = anyio.Event()
    expected = 9
    seen: list[str] = []

    def count(line: str) -> None:
        out(line)
        if line.lstrip().startswith("ran"):
            seen.append(line)
            if len(seen) >= expected:
                done.set()

    server = Server()
    url = await anyio.to_thread.run_sync(server.start)
    out(f"natskiq demo: JetStream server at {url}")
    _events.append(count)
    old_scale = retry.set_backoff_scale(0.02)
    try:
        launcher = Launcher(Settings(url=url, queues=("default", "images"), concurrency=5, lease_ttl=2))
        async with anyio.create_task_group() as tg:
            await tg.start(launcher.run)
            out(f"natskiq demo: worker node {launcher.settings.node_id} is running")
            async with Client(url=url) as client:
                await _enqueue(client, out)
            with anyio.fail_after(60):
                await done.wait()
            out("natskiq demo: all jobs ran; stopping")
            launcher.stop()
    finally:
        retry.set_backoff_scale(old_scale)
        _events.remove(count)
        await anyio.to_thread.run_sync(server.stop)


async def _enqueue(client: Client, out: Callable[[str], None]) -> None:
    def queued(label: str, jid: str) -> None:
        out(f"  queued {label:32} jid={jid}")

    for name in ("Ada", "Grace", "Linus"):
        queued(f"Greet({name!r})", await Greet.perform_async(name))
    for path in ("cat.png", "dog.png"):
        queued(f"Resize({path!r})", await Resize.perform_async(path, width=320))
    for delay in (1.0, 2.0):
        due = time.time() + delay
        queued(f"Remind in {delay:.0f}s", await Remind.perform_in(delay, f"{delay:.0f}s", due))
    queued("Flaky('x')", await Flaky.perform_async("x"))
    queued("Greet via set(queue='images')", await Greet.set(queue="images").perform_async("Q"))
