"""Pause a queue while what its jobs need is down, then resume it::

    python -m examples.pausing [nats://127.0.0.1:4222]

A ``natskiq worker --app examples.workers --queue critical --queue default``
runs the jobs. The URL is argv[1], else ``$NATSKIQ_URL``;
``$NATSKIQ_NAMESPACE`` picks the namespace. The same from a shell::

    natskiq queue pause default [--until 30m]
    natskiq queue resume default
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import natskiq
from examples.workers import ChargeCard, SendEmail


async def main(url: str | None) -> None:
    async with natskiq.connect(url) as client:
        await natskiq.api.pause(client, "default")  # the mail server is down for maintenance
        # keep_result: result() returns once each job has run (here, None).
        email = await SendEmail.set(keep_result=60).perform_async("ada@example.com", "Your invoice")
        charge = await ChargeCard.set(keep_result=60).perform_async(1003, 1250)
        await charge.result(timeout=30)  # the critical queue still runs
        info = await natskiq.api.queue_info(client, "default")
        print(f"charge done; email {(await email.status()).state}")
        print(f"default paused={info.paused} ready={info.ready}")
        await natskiq.api.resume(client, "default")  # back up: the email goes out now
        await email.result(timeout=30)
        print("email sent after resume")

        # A pause with an end: the server ends it by itself.
        await natskiq.api.pause(client, "default", timedelta(seconds=1))
        later = await SendEmail.set(keep_result=60).perform_async("ada@example.com", "After the pause")
        await later.result(timeout=30)
        print("email sent once the pause ended")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
