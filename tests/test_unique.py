"""Unique jobs (a KV lock per class+queue+args) and expiring jobs, against a real server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from nats.js.errors import KeyNotFoundError

import natskiq
from natskiq import api, testing
from natskiq import job as jobs
from natskiq.enqueue import unique
from natskiq.enqueue.client import MAX_JOB_BYTES
from natskiq.testing import _run_message

from .conftest import until

ran: list[tuple[str, Any]] = []


class Sync(natskiq.Worker, name="tests.unique.Sync", unique_for=600):
    """Unique while pending; records what ran."""

    async def perform(self, account: int, full: bool = False) -> None:
        ran.append((self.jid, account))


class Brief(natskiq.Worker, name="tests.unique.Brief", unique_for=1):
    """Unique for one second only."""

    async def perform(self, n: int) -> None:
        ran.append((self.jid, n))


class Again(natskiq.Worker, name="tests.unique.Again", unique_for=600, unique_until="start"):
    """Enqueues itself while running: its lock is released as it starts."""

    async def perform(self, n: int) -> None:
        ran.append((self.jid, await Again.perform_async(n)))


class AgainLater(natskiq.Worker, name="tests.unique.AgainLater", unique_for=600):
    """Enqueues itself while running: its lock is held until it succeeds."""

    async def perform(self, n: int) -> None:
        ran.append((self.jid, await AgainLater.perform_async(n)))


class Failing(natskiq.Worker, name="tests.unique.Failing", unique_for=600, retries=3):
    """Always fails."""

    async def perform(self, n: int) -> None:
        raise ValueError("no")


class Perishable(natskiq.Worker, name="tests.unique.Perishable", expires_in=3600):
    """Must start within an hour."""

    async def perform(self, n: int) -> None:
        ran.append((self.jid, n))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ran.clear()


async def ready(client: natskiq.Client, queue: str = "default") -> int:
    return (await api.queue_info(client, queue)).ready


async def lock_holder(client: natskiq.Client, job: natskiq.Job) -> str | None:
    """The jid holding ``job``'s lock, or None if it is free."""
    kv = await client.js.key_value(client.names.unique_bucket)
    try:
        entry = await kv.get(unique.lock_key(job))
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def enqueued_anew(enqueue: Callable[[], Awaitable[str]], held_by: str) -> str:
    """Enqueue until the call is no longer a duplicate of ``held_by`` (its lock expired)."""
    jids = [held_by]

    async def fresh() -> bool:
        jids.append(await enqueue())
        return jids[-1] != held_by

    await until(fresh, timeout=15)
    return jids[-1]


# -- the client side -----------------------------------------------------------


async def test_duplicate_enqueue_while_locked_is_dropped(
    client: natskiq.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A second enqueue of the same class and arguments stores nothing and returns the pending job's jid."""
    first = await Sync.perform_async(7, full=True)
    with caplog.at_level(logging.INFO, logger="natskiq.enqueue.client"):
        second = await Sync.perform_async(7, full=True)
    assert second == first
    assert f"jid={first} holds its unique lock" in caplog.text
    assert await ready(client) == 1
    [entry] = await api.find(client, "queued")
    assert entry.job is not None and entry.job.unique_key == unique.lock_key(entry.job)
    assert entry.job.unique_until == "success" and entry.job.unique_revision


async def test_different_arguments_queue_or_class_are_not_dropped(client: natskiq.Client) -> None:
    """Only the same class, queue, args and kwargs count as a duplicate (kwargs in any order)."""
    jids = [
        await Sync.perform_async(1),
        await Sync.perform_async(2),
        await Sync.perform_async(1, full=True),
        await Sync.set(queue="other").perform_async(1),
        await AgainLater.perform_async(1),
    ]
    assert len(set(jids)) == 5
    assert await ready(client) == 4 and await ready(client, "other") == 1
    a = jobs.Job(jid="a", cls="x", args=[1], kwargs={"p": 1, "q": 2})
    assert unique.lock_key(a) == unique.lock_key(attrs.evolve(a, jid="b", kwargs={"q": 2, "p": 1}))


async def test_lock_expires_after_unique_for(client: natskiq.Client) -> None:
    """Once unique_for has passed, the same call is enqueued again (the old job is still queued)."""
    first = await Brief.perform_async(1)
    assert await Brief.perform_async(1) == first
    second = await enqueued_anew(lambda: Brief.perform_async(1), first)
    assert await ready(client) == 2
    assert second != first


async def test_bulk_enqueue_drops_duplicates(client: natskiq.Client) -> None:
    """perform_bulk returns the holder's jid for a duplicate, even one earlier in the same call."""
    held = await Sync.perform_async(3)
    jids = await Sync.perform_bulk([[1], [1], [2], [3]])
    assert jids[1] == jids[0] and jids[3] == held
    assert len({jids[0], jids[2], held}) == 3
    assert await ready(client) == 3


async def test_a_job_that_was_not_stored_leaves_no_lock(client: natskiq.Client) -> None:
    """If storing the job fails, its lock is released, so a retry of the call is not locked out."""
    with pytest.raises(natskiq.EnqueueError, match="byte cap"):
        await Sync.perform_async(1, full="x" * MAX_JOB_BYTES)
    probe = jobs.Job(jid="p", cls=Sync.name, args=[1], kwargs={"full": "x" * MAX_JOB_BYTES})
    assert await lock_holder(client, probe) is None


# -- the node side (natskiq.testing.drain calls the same hooks a node does) ------------


async def test_lock_is_released_on_success_not_before(client: natskiq.Client) -> None:
    """With unique_until="success" a running job's own enqueue is dropped; once it is done, it is not."""
    first = await AgainLater.perform_async(1)
    assert await testing.drain(client) == 1
    assert ran == [(first, first)]  # inside its own run, the enqueue found its own lock
    again = await AgainLater.perform_async(1)
    assert again != first


async def test_unique_until_start_releases_as_the_job_starts(client: natskiq.Client) -> None:
    """With unique_until="start" a running job's identical enqueue is stored as a new job."""
    first = await Again.perform_async(1)
    job = (await api.find(client, "queued"))[0].job
    assert job is not None and await lock_holder(client, job) == first
    await _drain_one(client)
    [(jid, inner)] = ran
    assert jid == first and inner != first
    assert await lock_holder(client, job) == inner


async def _drain_one(client: natskiq.Client) -> None:
    """Run one queued job in-process, as a node would (Again re-enqueues itself forever)."""
    sub = await client.js.pull_subscribe_bind("aggregator", stream=client.names.queue_stream("default"))
    try:
        [msg] = await sub.fetch(1, timeout=5)
        await _run_message(client, "default", msg)
    finally:
        await sub.unsubscribe()


async def test_a_failing_job_keeps_its_lock(client: natskiq.Client) -> None:
    """A job that fails keeps its lock while it waits for a retry."""
    first = await Failing.perform_async(1)
    with pytest.raises(ValueError, match="no"):
        await testing.drain(client)
    assert await Failing.perform_async(1) == first
    assert (await api.queue_info(client, "default")).retries == 1


async def test_release_never_removes_a_newer_lock(client: natskiq.Client) -> None:
    """A job whose lock expired and was taken again does not release the new holder's lock."""
    first = await Brief.perform_async(5)
    [old] = [e.job for e in await api.find(client, "queued") if e.job]
    second = await enqueued_anew(lambda: Brief.perform_async(5), first)
    assert await unique.release(client.js, client.names, old) is False
    assert await lock_holder(client, old) == second
    [new] = [e.job for e in await api.find(client, "queued") if e.job and e.job.jid == second]
    assert await unique.release(client.js, client.names, new) is True
    assert await lock_holder(client, old) is None


# -- expiry ----------------------------------------------------------------------------


async def test_expires_at_is_set_from_expires_in(client: natskiq.Client) -> None:
    """expires_in puts expires_at in the envelope: enqueue time (or the scheduled time) plus expires_in."""
    before = time.time()
    await Perishable.perform_async(1)
    await Perishable.perform_in(600, 2)
    now = await api.find(client, "queued")
    later = await api.find(client, "scheduled")
    job, scheduled = now[0].job, later[0].job
    assert job is not None and scheduled is not None and scheduled.at is not None
    assert job.expires_at == pytest.approx(job.enqueued_at + 3600) and job.enqueued_at >= before
    assert scheduled.expires_at == pytest.approx(scheduled.at + 3600)


async def test_expired_job_is_skipped_and_releases_its_lock(client: natskiq.Client) -> None:
    """A job past its expires_at is acked without running, and its unique lock is released."""
    fresh = await Sync.perform_async(9)
    [entry] = await api.find(client, "queued")
    assert entry.job is not None
    await client.js.purge_stream(client.names.queue_stream("default"))
    await client.publish(attrs.evolve(entry.job, expires_at=time.time() - 1), attempt="expired")
    assert await lock_holder(client, entry.job) == fresh
    assert await testing.drain(client) == 1
    assert ran == []
    assert await ready(client) == 0
    assert await lock_holder(client, entry.job) is None


def test_expired_is_a_plain_check() -> None:
    """expired() compares expires_at with the clock; no expires_at never expires."""
    job = jobs.Job(jid="j", cls="c", expires_at=100.0)
    assert unique.expired(job, now=100.5) and not unique.expired(job, now=99.0)
    assert not unique.expired(attrs.evolve(job, expires_at=None), now=1e12)


# -- options and envelope ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"unique_for": 0.5}, "unique_for must be at least 1 second"),
        ({"unique_for": -1}, "unique_for must be at least 1 second"),
        ({"unique_until": "end"}, "unique_until must be 'start' or 'success'"),
        ({"expires_in": 0}, "expires_in must be a positive number"),
    ],
)
def test_invalid_options_are_refused(keywords: dict[str, Any], message: str) -> None:
    """Options that cannot work raise ConfigError when the class is defined."""
    with pytest.raises(natskiq.ConfigError, match=message):
        natskiq.Options(**keywords)


def test_lock_ttl_counts_from_the_scheduled_time() -> None:
    """A scheduled job's lock lives unique_for past the time it is due."""
    assert unique.lock_ttl(60, None, 1000.0) == 60
    assert unique.lock_ttl(60, 1600.0, 1000.0) == 660
    assert unique.lock_ttl(60, 900.0, 1000.0) == 60


@pytest.mark.parametrize("key", ["a.>", "*", "a b", ""])
def test_decode_refuses_a_unique_key_that_is_not_a_subject_token(key: str) -> None:
    """A hostile unique_key can never reach a subject."""
    raw = json.dumps({"jid": "j", "class": "c", "args": [], "queue": "q", "unique_key": key}).encode()
    with pytest.raises(natskiq.InvalidJob, match="unique_key"):
        jobs.decode(raw)


async def test_a_worker_node_releases_the_lock_on_success(client: natskiq.Client) -> None:
    """On a real node, a unique job's lock is held until it succeeds, then a new enqueue is stored."""
    from .conftest import running_node

    first = await Sync.perform_async(7)
    assert await Sync.perform_async(7) == first  # locked: the holder's jid, nothing stored
    assert await ready(client) == 1
    async with running_node(client.url, client.namespace):

        async def acked() -> bool:
            info = await client.js.consumer_info(client.names.queue_stream("default"), "aggregator")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until(acked)

        async def stored_again() -> bool:
            return await Sync.perform_async(7) not in ("", first)

        await until(stored_again)
