"""Enqueue a job that keeps its result, wait for the result, then print the job's timeline::

    python -m examples.results [nats://127.0.0.1:4222]

A ``natskiq worker --app examples.workers`` runs the job. The URL is argv[1],
else ``$NATSKIQ_URL``; ``$NATSKIQ_NAMESPACE`` picks the namespace.
"""

from __future__ import annotations

import asyncio
import json
import sys

import natskiq
from examples.workers import BuildReport


async def main(url: str | None) -> None:
    async with natskiq.connect(url):
        handle = await BuildReport.perform_async("2025-11", pages=3)  # a str: the jid
        print(f"queued jid={handle}")
        report = await handle.result(timeout=60)  # as soon as the job has run
        print(f"result {json.dumps(report)}")
        # The node stores the result, then reports the end: wait() returns once it has.
        status = await handle.wait(timeout=10)
    print(f"status {status.state} on {status.node} (attempt {status.attempt})")
    start = min(event.at for event in status.events)
    for event in status.events:  # the timeline, oldest first
        fields = " ".join(f"{key}={value}" for key, value in event.fields.items())
        print(f"  +{event.at - start:.2f}s {event.state:<9} {fields}".rstrip())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
