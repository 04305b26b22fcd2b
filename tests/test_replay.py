"""Replays and run-now never lose a job: every message id natskiq publishes for a
job names one attempt, so JetStream's duplicate window can never swallow a
successor whose original is then acked (a job in no set at all)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import api, testing

from .conftest import read_ledger, running_node, until
from .sample_workers import Boom

KINDS = ("queued", "scheduled", "retry", "failed")


async def places(client: natskiq.Client, jid: str) -> dict[str, int]:
    """How many copies of the job each set holds."""
    return {kind: len(await api.find(client, kind, api.Filter(jid=jid))) for kind in KINDS}


def runs(ledger: Path, jid: str) -> int:
    return sum(1 for row in read_ledger(ledger) if row.jid == jid)


async def settle_in(client: natskiq.Client, ledger: Path, jid: str, kind: str, total_runs: int) -> None:
    """Wait until the job has run ``total_runs`` times and sits in ``kind`` alone, once."""
    wanted = {k: int(k == kind) for k in KINDS}

    async def there() -> bool:
        return runs(ledger, jid) >= total_runs and await places(client, jid) == wanted

    await until(there, timeout=20)
    assert runs(ledger, jid) == total_runs


async def replay_one(client: natskiq.Client, jid: str) -> None:
    [entry] = await api.find(client, "failed", api.Filter(jid=jid))
    assert await api.replay(client, entry) == jid


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_replay_at_once_after_the_last_retry_runs_every_retry_again(
    client: natskiq.Client, ledger: Path, retries: int
) -> None:
    """A job replayed right after failing for good runs all its retries again and
    ends in the failed set once (its retry ids once collided inside the duplicate window)."""
    jid = await Boom.set(retries=retries).perform_async()
    with testing.fast_retries():
        async with running_node(client.url, client.namespace):
            await settle_in(client, ledger, jid, "failed", retries + 1)
            await replay_one(client, jid)
            await settle_in(client, ledger, jid, "failed", 2 * (retries + 1))
    [entry] = await api.find(client, "failed", api.Filter(jid=jid))
    assert entry.job is not None and entry.job.retry_count == retries


async def test_replay_twice_in_a_row(client: natskiq.Client, ledger: Path) -> None:
    """Replayed, failed again and replayed again at once, the job runs each time and is kept once."""
    jid = await Boom.set(retries=0).perform_async()
    with testing.fast_retries():
        async with running_node(client.url, client.namespace):
            for round_ in range(1, 4):
                await settle_in(client, ledger, jid, "failed", round_)
                if round_ < 3:
                    await replay_one(client, jid)


async def test_the_same_failed_entry_replayed_twice_runs_once(client: natskiq.Client, ledger: Path) -> None:
    """Two replays of one listed entry (two operators, one click twice) store one copy."""
    jid = await Boom.set(retries=0).perform_async()
    with testing.fast_retries():
        async with running_node(client.url, client.namespace):
            await settle_in(client, ledger, jid, "failed", 1)
            [entry] = await api.find(client, "failed", api.Filter(jid=jid))
            async with anyio.create_task_group() as tg:
                tg.start_soon(api.replay, client, entry)
                tg.start_soon(api.replay, client, entry)
            await settle_in(client, ledger, jid, "failed", 2)


async def test_run_now_of_a_retry_twice(client: natskiq.Client, ledger: Path) -> None:
    """A retry run now, failing into its next retry, and run now again: each run
    leaves exactly one retry behind, with its count going up."""
    jid = await Boom.set(retries=5).perform_async()
    async with running_node(client.url, client.namespace):
        for count in range(3):
            await settle_in(client, ledger, jid, "retry", count + 1)
            [entry] = await api.find(client, "retry", api.Filter(jid=jid))
            assert entry.job is not None and entry.job.retry_count == count
            if count < 2:
                assert await api.run_now(client, entry) == jid


async def test_replayed_job_replayed_again_while_its_retry_waits(
    client: natskiq.Client, ledger: Path
) -> None:
    """A stale listing of a failed job, replayed again once the first replay's run
    has scheduled a retry, adds no second copy: the job stays in the retry set alone."""
    jid = await Boom.set(retries=1).perform_async()
    with testing.fast_retries():
        async with running_node(client.url, client.namespace):
            await settle_in(client, ledger, jid, "failed", 2)
            [stale] = await api.find(client, "failed", api.Filter(jid=jid))
            with testing.fast_retries(1.0):  # the replay's retry now waits 15 s or more
                assert await api.replay(client, stale) == jid
                await settle_in(client, ledger, jid, "retry", 3)
                stream = client.names.queue_stream("default")
                last = (await client.js.stream_info(stream)).state.last_seq
                await api.replay(client, stale)
                assert (await client.js.stream_info(stream)).state.last_seq == last  # nothing stored
                await settle_in(client, ledger, jid, "retry", 3)
