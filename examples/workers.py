"""Example workers. Run a node that serves them (critical first, then default)::

    natskiq worker --app examples.workers --queue critical --queue default

Each job prints one line with its queue and jid, so you can watch it run."""

from __future__ import annotations

import time

import anyio

import natskiq


def say(line: str) -> None:
    """Print a line in one write: jobs in worker threads print too, and lines must not mix."""
    print(line + "\n", end="", flush=True)


class SendEmail(natskiq.Worker, retries=5, timeout=30):
    """Pretends to send an email; an ``async def perform`` runs on the event loop."""

    async def perform(self, to: str, subject: str) -> None:
        await anyio.sleep(0.05)  # the SMTP round trip
        say(f"[{self.job.queue}] sent email to {to}: {subject!r} (jid={self.jid})")


class ResizeImage(natskiq.Worker):
    """Blocking work: a plain ``def perform`` runs in a worker thread."""

    def perform(self, path: str, width: int = 640) -> None:
        time.sleep(0.05)  # pretend to crunch pixels
        say(f"[{self.job.queue}] resized {path} to {width}px (jid={self.jid})")


class BuildReport(natskiq.Worker, keep_result=600):
    """Keeps what it returns for ten minutes (``await handle.result()``) and reports its progress."""

    async def perform(self, month: str, pages: int = 3) -> dict[str, object]:
        for page in range(1, pages + 1):
            await anyio.sleep(0.6)  # render a page
            await self.progress(page / pages, f"page {page} of {pages}")
        say(f"[{self.job.queue}] built the {month} report: {pages} pages (jid={self.jid})")
        return {"month": month, "pages": pages}


class ChargeCard(natskiq.Worker, queue="critical", retries=3):
    """Lives on the ``critical`` queue, which the node above serves first."""

    async def perform(self, order_id: int, cents: int) -> None:
        say(f"[{self.job.queue}] charged order {order_id}: {cents} cents (jid={self.jid})")


class BatchDone(natskiq.Worker):
    """A batch callback (``on_success``): enqueued once, with the batch id and its counts."""

    async def perform(self, bid: str, status: dict[str, object]) -> None:
        done = f"{status['succeeded']} of {status['total']} succeeded"
        say(f"[{self.job.queue}] batch {status['description']} done: {done} (jid={self.jid})")
