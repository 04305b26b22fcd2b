"""Periodic jobs: JetStream itself fires them, once per tick, cluster-wide::

    natskiq worker --app examples.cron
    natskiq periodic list

Every worker importing this module registers both definitions (idempotently:
an unchanged one keeps its timer). Needs nats-server 2.14+.
``$HEARTBEAT_EVERY`` (default ``30s``) sets the heartbeat's interval.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import natskiq


class NightlyReport(natskiq.Worker):
    async def perform(self, kind: str) -> None:
        print(f"[{self.job.queue}] {kind} report at {datetime.now(UTC):%H:%M:%S} UTC", flush=True)


class Heartbeat(natskiq.Worker):
    async def perform(self) -> None:
        # Each tick is its own job with its own jid (<definition>-<sequence>).
        print(f"[{self.job.queue}] heartbeat (jid={self.jid})", flush=True)


# 03:00 in Paris, whatever the servers' time zone (cron: min hour dom month dow).
natskiq.periodic("0 3 * * *", NightlyReport, "sales", tz="Europe/Paris", name="nightly-sales")
natskiq.periodic(f"@every {os.environ.get('HEARTBEAT_EVERY', '30s')}", Heartbeat)
