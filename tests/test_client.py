"""Enqueue: what perform_async stores, against a real server (perform_bulk: test_bulk.py)."""

from __future__ import annotations

import time

import pytest

import natskiq
from natskiq import api
from natskiq.enqueue.client import MAX_JOB_BYTES

from .conftest import stored
from .sample_workers import Record


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
