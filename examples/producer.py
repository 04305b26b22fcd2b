"""Enqueue one job of each kind for ``examples.workers``, then exit::

    python -m examples.producer [nats://127.0.0.1:4222]

The URL is argv[1], else ``$NATSKIQ_URL``; ``$NATSKIQ_NAMESPACE`` picks the namespace.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

import natskiq
from examples.workers import ChargeCard, ResizeImage, SendEmail


async def main(url: str | None) -> None:
    # None makes connect() read $NATSKIQ_URL (default nats://127.0.0.1:4222).
    async with natskiq.connect(url) as client:  # the default client for perform_*
        soon = datetime.now(UTC) + timedelta(seconds=3)
        urgent = SendEmail.set(queue="critical")  # options for one call
        jobs = [
            ("perform_async", await SendEmail.perform_async("ada@example.com", "Welcome")),
            ("plain def", await ResizeImage.perform_async("cat.png", width=320)),
            ("perform_in 2s", await SendEmail.perform_in(2, "grace@example.com", "Trial ends soon")),
            ("perform_at +3s", await ChargeCard.perform_at(soon, 1001, 4200)),
            ("set(queue=critical)", await urgent.perform_async("ops@example.com", "Disk full")),
            ("client.enqueue", await client.enqueue(ChargeCard, 1002, 990)),
        ]
    for how, jid in jobs:
        print(f"queued {how:20} jid={jid}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
