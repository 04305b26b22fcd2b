"""Enqueue a batch of jobs with a callback, then follow the batch until it completes::

    python -m examples.batch [nats://127.0.0.1:4222]

A ``natskiq worker --app examples.workers`` runs the jobs, then ``BatchDone``
once all of them have succeeded. The URL is argv[1], else ``$NATSKIQ_URL``;
``$NATSKIQ_NAMESPACE`` picks the namespace.
"""

from __future__ import annotations

import asyncio
import sys

import natskiq
from examples.workers import BatchDone, SendEmail


async def main(url: str | None) -> None:
    async with natskiq.connect(url):
        # Every job enqueued inside the block joins the batch; it cannot finish before the block exits.
        async with natskiq.batch("newsletter", on_success=BatchDone) as batch:
            await SendEmail.perform_bulk([[f"user{i}@example.com", "November news"] for i in range(5)])
            await SendEmail.perform_async("editor@example.com", "November news sent")
        print(f"batch {batch.bid}")
        status = await batch.status()
        while not status.complete:
            print(f"  {status.succeeded + status.failed}/{status.total} done")
            await asyncio.sleep(0.5)
            status = await batch.status()
    print(f"complete: {status.succeeded} succeeded, {status.failed} failed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
