"""natskiq.testing: inline and fake modes, drain against a real server, fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

import natskiq
from natskiq import testing

from .conftest import read_ledger
from .sample_workers import Boom, Flaky, Record, SyncRecord


class Chain(natskiq.Worker, name="tests.Chain"):
    """Enqueues a Record from inside its own run."""

    async def perform(self, note: str) -> None:
        await Record.perform_async(note=f"from {note}")


async def test_inline_runs_jobs_at_once_through_json(ledger: Path) -> None:
    """Inline mode runs perform right away, with JSON-round-tripped arguments."""
    with testing.inline():
        jid = await Record.perform_async(note={"k": [1, 2]})
        await SyncRecord.perform_in(3600, note="later runs now")
        with pytest.raises(TypeError, match="keyword argument 'note'"):
            await Record.perform_async(note=(1, 2))  # a tuple would not survive JSON
        with pytest.raises(ValueError, match="boom"):
            await Boom.perform_async()
    rows = read_ledger(ledger)
    assert [r.note for r in rows] == [{"k": [1, 2]}, "later runs now", "boom"]
    assert rows[0].jid == jid
    with pytest.raises(natskiq.NotConnected):
        await Record.perform_async(note="no mode, no client")


async def test_fake_records_jobs_per_worker(ledger: Path) -> None:
    """Fake mode records jobs per worker; clear() forgets them; drain() runs them."""
    with testing.fake() as fake:
        await Record.perform_async(note=1)
        await Record.set(queue="critical").perform_async(note=2)
        await Chain.perform_async("chain")
        await Record.perform_bulk([[0.0, 3]])
        assert [j.kwargs.get("note", j.args[-1] if j.args else None) for j in Record.jobs] == [1, 2, 3]
        assert [j.queue for j in Record.jobs] == ["default", "critical", "default"]
        assert len(Chain.jobs) == 1 and Chain.jobs[0].args == ["chain"]
        Record.clear()
        assert Record.jobs == []
        assert await fake.drain() == 2  # Chain, then the Record it enqueued
        assert Record.jobs == [] and Chain.jobs == []
    assert [r.note for r in read_ledger(ledger)] == ["from chain"]
    with pytest.raises(RuntimeError, match="only inside natskiq.testing.fake"):
        Record.jobs  # noqa: B018


async def test_modes_nest_and_restore() -> None:
    """The innermost mode wins and each restores the previous one on exit."""
    with testing.fake():
        with testing.inline():
            await Record.perform_async(note="inline")
        await Record.perform_async(note="fake")
        assert [j.kwargs["note"] for j in Record.jobs] == ["fake"]


async def test_drain_runs_queued_jobs_in_process(client: natskiq.Client, ledger: Path) -> None:
    """drain() runs every ready job of the namespace here, and raises a job's failure."""
    jids = [await Record.perform_async(note=i) for i in range(5)]
    assert await testing.drain(client) == 5
    assert sorted(r.jid for r in read_ledger(ledger)) == sorted(jids)
    with testing.zero_backoff():
        await Flaky.perform_async(failures=1)
        with pytest.raises(RuntimeError, match="flaky"):
            await testing.drain(client)
        assert await testing.drain(client) == 1  # the retry, due at once, succeeds
    assert (await natskiq.api.queue_info(client, "default")).ready == 0


def test_plugin_fixtures_give_a_client(pytester: pytest.Pytester) -> None:
    """The pytest plugin's fixtures start a server and yield a connected client."""
    pytester.makepyfile(
        """
        import natskiq

        async def test_client(natskiq_client, natskiq_namespace):
            assert natskiq_client.namespace == natskiq_namespace
            assert await natskiq.api.queue_names(natskiq_client) == []
        """
    )
    # The plugin is loaded through its pytest11 entry point, as in a user's project.
    result = pytester.runpytest_subprocess(
        "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=1)
