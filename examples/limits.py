"""Cluster-wide limits: at most 2 reports render at once, at most 5 emails a second::

    natskiq worker --app examples.limits     # runs them (start several: the limits are shared)
    python -m examples.limits [nats://127.0.0.1:4222]

The URL is argv[1], else ``$NATSKIQ_URL``; ``$NATSKIQ_NAMESPACE`` picks the namespace.
"""

from __future__ import annotations

import asyncio
import sys
import time

import natskiq


# Named: run as `python -m`, this module is __main__ here and examples.limits in the worker.
class RenderReport(natskiq.Worker, name="examples.limits.RenderReport", concurrency=2):
    async def perform(self, report: int) -> None:
        print(
            f"[{self.job.queue}] rendering report {report} at {time.time():.3f} (jid={self.jid})", flush=True
        )
        await asyncio.sleep(0.5)  # at most 2 of these run at once, whatever the number of nodes


class SendEmail(natskiq.Worker, name="examples.limits.SendEmail", rate="5/s"):
    async def perform(self, to: str) -> None:
        # At most 5 start in any second across the cluster; the rest wait their turn.
        print(f"[{self.job.queue}] emailed {to} at {time.time():.3f} (jid={self.jid})", flush=True)


async def main(url: str | None) -> None:
    async with natskiq.connect(url):
        reports = [await RenderReport.perform_async(i) for i in range(6)]
        emails = [await SendEmail.perform_async(f"user{i}@example.com") for i in range(12)]
        print("reports", *reports)
        print("emails", *emails)
        for handle in [*reports, *emails]:
            await handle.wait(timeout=60)
        print("all done")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
