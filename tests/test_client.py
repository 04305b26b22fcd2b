"""Enqueue: what perform_async and perform_bulk store, against a real server."""

from __future__ import annotations

import time

import pytest

import natskiq
from natskiq import api
from natskiq import job as jobs
from natskiq.client import BULK_WINDOW, MAX_JOB_BYTES

from .sample_workers import Record


async def stored(client: natskiq.Client, seq: int, queue: str = "default") -> tuple[jobs.Job, dict[str, str]]:
    """The job at stream sequence ``seq`` of a queue, and its headers."""
    msg = await client.js.get_msg(client.names.queue_stream(queue), seq=seq)
    return jobs.decode(msg.data), dict(msg.headers or {})


async def test_perform_async_stores_the_envelope_with_a_msg_id(client: natskiq.Client) -> None:
    """perform_async stores the job's envelope, with Nats-Msg-Id <jid>:0 for de-duplication."""
    before = time.time()
    jid = await Record.set(retries=3).perform_async(0.0, "n", note={"k": [1]})
    job, headers = await stored(client, 1)
    assert headers["Nats-Msg-Id"] == f"{jid}:0"
    assert (job.jid, job.cls, job.args, job.kwargs) == (jid, "tests.Record", [0.0, "n"], {"note": {"k": [1]}})
    assert (job.queue, job.retry, job.at, job.expires_at) == ("default", 3, None, None)
    assert before <= job.created_at == job.enqueued_at <= time.time()


async def test_enqueue_refuses_what_is_not_a_worker(client: natskiq.Client) -> None:
    """Enqueueing a class that is not a Worker subclass raises TypeError, single or bulk."""
    with pytest.raises(TypeError, match="not a natskiq.Worker subclass"):
        await client.enqueue(int, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a natskiq.Worker subclass"):
        await client.enqueue_many(int, [[1]])  # type: ignore[arg-type]


async def test_a_job_over_the_size_cap_is_refused(client: natskiq.Client) -> None:
    """A job over the cap raises EnqueueError naming its size; a bulk call then sends nothing."""
    big = "x" * MAX_JOB_BYTES
    with pytest.raises(natskiq.EnqueueError, match="byte cap"):
        await Record.perform_async(note=big)
    with pytest.raises(natskiq.EnqueueError, match="byte cap"):
        await Record.perform_bulk([[0.0, "ok"], [0.0, big]])
    assert await api.queue_names(client) == []


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
