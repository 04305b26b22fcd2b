"""Bulk enqueue (natskiq.enqueue.bulk): perform_bulk's sliding window of publishes, against a real server."""

from __future__ import annotations

import natskiq
from natskiq import api
from natskiq.enqueue.bulk import BULK_WINDOW

from .conftest import stored
from .sample_workers import Record


async def test_bulk_past_the_window_stores_every_job_in_order(client: natskiq.Client) -> None:
    """perform_bulk of more jobs than may be in flight stores them all, in the order given."""
    count = BULK_WINDOW * 2 + 500
    jids = await Record.perform_bulk([[0.0, i] for i in range(count)])
    assert len(set(jids)) == count
    assert (await api.queue_info(client, "default")).ready == count
    for seq in (1, BULK_WINDOW + 1, count):
        job, headers = await stored(client, seq)
        assert (job.jid, job.args) == (jids[seq - 1], [0.0, seq - 1])
        assert headers["Nats-Msg-Id"] == f"{job.jid}:0"


async def test_bulk_with_a_small_window(client: natskiq.Client) -> None:
    """batch_size bounds the publishes in flight; every job is still stored."""
    jids = await Record.perform_bulk([[0.0, i] for i in range(50)], batch_size=7)
    assert len(set(jids)) == 50
    assert (await api.queue_info(client, "default")).ready == 50
