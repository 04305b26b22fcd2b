"""Failures: retries with backoff, the failed set, replay, hooks, stats."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import api, testing
from natskiq import job as job_mod
from natskiq.ops import launcher

from .conftest import failed_count, read_ledger, running_node, until, wait_for_ledger
from .sample_workers import (
    Boom,
    Choosy,
    Deferred,
    Dropped,
    Exhausted,
    FixedByFile,
    Flaky,
    Growing,
    Record,
)


async def has_failed(client: natskiq.Client, count: int = 1) -> bool:
    return await failed_count(client) >= count


async def test_fails_twice_then_succeeds_with_backoff_delays(client: natskiq.Client, ledger: Path) -> None:
    """A job failing twice then succeeding runs 3 times, each retry delayed by Sidekiq's
    (scaled) backoff and never run before its time."""
    scale = 0.01
    with testing.fast_retries(scale):
        jid = await Flaky.perform_async(failures=2)
        async with running_node(client.url, client.namespace):
            rows = await wait_for_ledger(ledger, 3, timeout=20)
            await until(lambda: _acked(client))
    assert [r.jid for r in rows] == [jid] * 3
    notes = [r.note for r in rows]
    assert [n["retry_count"] for n in notes] == [None, 0, 1]
    for count, row in enumerate(rows[1:]):
        low, high = (count**4 + 15) * scale, (count**4 + 15 + 9 * (count + 1)) * scale
        assert low - 1e-6 <= row.note["delay"] <= high + 1e-6
        assert row.at >= row.note["at"]  # never before its scheduled time
    assert await failed_count(client) == 0


async def _acked(client: natskiq.Client, queue: str = "default") -> bool:
    info = await client.js.consumer_info(client.names.queue_stream(queue), "aggregator")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_retry_in_hook_sets_growing_delays(client: natskiq.Client, ledger: Path) -> None:
    """retry_in chooses each delay; the job's envelope records them, longer each time."""
    jid = await Growing.perform_async()
    async with running_node(client.url, client.namespace):
        await wait_for_ledger(ledger, 4, timeout=20)
        await until(lambda: has_failed(client))
    entries = await api.find(client, "failed", api.Filter(jid=jid))
    assert len(entries) == 1
    record = entries[0].job
    assert record is not None
    assert (record.retry_count, record.error_class, record.error_message) == (3, "RuntimeError", "again")
    assert [r.note["retry_count"] for r in read_ledger(ledger)] == [None, 0, 1, 2]


async def test_retry_exception_defers_the_next_attempt(client: natskiq.Client, ledger: Path) -> None:
    """raise natskiq.Retry(defer=...) schedules the next attempt that far ahead."""
    await Deferred.perform_async()
    async with running_node(client.url, client.namespace):
        rows = await wait_for_ledger(ledger, 2, timeout=10)
    second = rows[1].note
    assert second["at"] - second["failed_at"] == pytest.approx(0.3, abs=0.01)
    assert rows[1].at >= second["at"]


async def test_retry_in_discard_and_kill(client: natskiq.Client, ledger: Path) -> None:
    """retry_in may answer 'discard' (dropped) or 'kill' (failed at once, no retries)."""
    discarded = await Choosy.perform_async("discard")
    killed = await Choosy.perform_async("kill")
    async with running_node(client.url, client.namespace):
        await wait_for_ledger(ledger, 2)
        await until(lambda: has_failed(client))
        await until(lambda: _acked(client))
    assert [e.jid for e in await api.find(client, "failed")] == [killed]
    assert sorted(r.jid for r in read_ledger(ledger)) == sorted([discarded, killed])
    assert await api.find(client, "retry") == []


async def test_dead_false_drops_and_hooks_run(client: natskiq.Client, ledger: Path) -> None:
    """dead=False drops an exhausted job; retries_exhausted and global death handlers run."""
    seen: list[tuple[str, str]] = []

    @natskiq.on_death
    def remember(job: natskiq.Job, exc: BaseException) -> None:
        seen.append((job.jid, type(exc).__name__))

    try:
        dropped = await Dropped.perform_async()
        exhausted = await Exhausted.perform_async()
        async with running_node(client.url, client.namespace):
            await wait_for_ledger(ledger, 1, kind="hook")
            await until(lambda: len(seen) == 2)
            await until(lambda: _acked(client))
    finally:
        natskiq.run.retry.death_handlers.remove(remember)
    assert sorted(seen) == sorted([(dropped, "RuntimeError"), (exhausted, "KeyError")])
    failed = await api.find(client, "failed")
    assert [e.jid for e in failed] == [exhausted]
    assert failed[0].job is not None and failed[0].job.backtrace  # backtrace=True keeps it
    assert read_ledger(ledger, "hook")[0].note == {"exhausted": "KeyError"}


async def test_replay_runs_a_failed_job_again(client: natskiq.Client, ledger: Path, tmp_path: Path) -> None:
    """A job with retries=1 ends in the failed set with its error; replay runs it
    again with its retry count reset, and removes the failed copy."""
    fix = tmp_path / "fixed"
    jid = await FixedByFile.perform_async(str(fix))
    with testing.fast_retries():
        await _fail_then_replay(client, ledger, fix, jid)
    assert await api.find(client, "failed") == []
    assert (await api.stats(client)).trimmed == 0


async def _fail_then_replay(client: natskiq.Client, ledger: Path, fix: Path, jid: str) -> None:
    async with running_node(client.url, client.namespace):
        await until(lambda: has_failed(client))
        [entry] = await api.find(client, "failed", api.Filter(jid=jid))
        assert entry.job is not None
        assert (entry.job.error_class, entry.job.retry_count) == ("LookupError", 1)
        await anyio.Path(fix).touch()
        assert await api.replay(client, entry) == jid
        await wait_for_ledger(ledger, 3)
        await until(lambda: _acked(client))


async def test_scheduled_and_retry_sets(client: natskiq.Client, ledger: Path) -> None:
    """Scheduled jobs and retries can be listed, run now, or deleted."""
    keep = await Record.perform_in(3600, note="run now")
    drop = await Record.perform_in(3600, note="delete me")
    scheduled = await api.find(client, "scheduled")
    assert {e.jid for e in scheduled} == {keep, drop}
    by_jid = {e.jid: e for e in scheduled}
    await api.delete(client, by_jid[drop])
    assert await api.run_now(client, by_jid[keep]) == keep
    assert await api.find(client, "scheduled") == []
    info = await api.queue_info(client, "default")
    assert (info.ready, info.scheduled) == (1, 0)

    with testing.fast_retries(1000):  # retries far in the future
        failing = await Boom.perform_async()
        async with running_node(client.url, client.namespace):
            await wait_for_ledger(ledger, 2)

            async def retry_listed() -> bool:
                return len(await api.find(client, "retry")) == 1

            await until(retry_listed)
            [retry] = await api.find(client, "retry", api.Filter(cls="tests.Boom"))
            assert retry.job is not None and retry.job.jid == failing
            assert await api.find(client, "retry", api.Filter(cls="tests.Other")) == []
            await api.run_now(client, retry)
            await wait_for_ledger(ledger, 3)
    assert [r.note for r in read_ledger(ledger)] == ["run now", "boom", "boom"]


async def test_run_now_or_delete_of_an_entry_already_gone(client: natskiq.Client) -> None:
    """run_now or delete of an entry already gone (run by someone else, or replaced) is not an error."""
    later = await Record.perform_in(3600, note="twice")
    [entry] = await api.find(client, "scheduled")
    assert await api.run_now(client, entry) == later
    assert await api.run_now(client, entry) == later  # a second click: the copy is a duplicate, stored once
    await api.delete(client, entry)
    info = await api.queue_info(client, "default")
    assert (info.ready, info.scheduled) == (1, 0)


async def test_queue_inspection_peek_latency_clear(client: natskiq.Client) -> None:
    """Queues report size and latency; peek lists jobs with arguments; clear empties them."""
    jids = [await Record.perform_async(note=i) for i in range(3)]
    await anyio.sleep(0.05)
    info = await api.queue_info(client, "default")
    assert info.ready == 3 and info.latency > 0
    peeked = await api.find(client, "queued", api.Filter(queue="default"), limit=2)
    assert [e.jid for e in peeked] == jids[:2]
    assert peeked[0].job is not None and peeked[0].job.kwargs == {"note": 0}
    assert await api.clear(client, "default") == 3
    assert (await api.queue_info(client, "default")).ready == 0
    with pytest.raises(natskiq.NotFound, match="no queue named 'nope'"):
        await api.queue_info(client, "nope")
    with pytest.raises(natskiq.ConfigError):
        await api.find(client, "queued", api.Filter(queue="bad.name"))


async def test_failed_filters(client: natskiq.Client, ledger: Path) -> None:
    """The failed set filters by queue, class, jid, error class and time."""
    a = await Boom.set(retries=0).perform_async()
    b = await Exhausted.perform_async()
    c = await Boom.set(retries=0, queue="other").perform_async()
    async with running_node(client.url, client.namespace, queues=("default", "other")):
        await until(lambda: has_failed(client, 3))
    everything = await api.find(client, "failed")
    assert {e.jid for e in everything} == {a, b, c}
    assert {e.jid for e in await api.find(client, "failed", api.Filter(queue="other"))} == {c}
    assert {e.jid for e in await api.find(client, "failed", api.Filter(cls="tests.Boom"))} == {a, c}
    assert {e.jid for e in await api.find(client, "failed", api.Filter(error_class="KeyError"))} == {b}
    first = min(e.job.failed_at for e in everything if e.job and e.job.failed_at)
    later = await api.find(client, "failed", api.Filter(since=first + 3600))
    assert later == []
    assert len(await api.find(client, "failed", api.Filter(until=first + 3600))) == 3


async def test_failed_set_trimming_is_counted_and_logged(
    client: natskiq.Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its job limit the failed set drops its oldest entries: stats count them, the master logs it."""
    monkeypatch.setattr(launcher, "FAILED_CHECK", 0.1)
    caplog.set_level(logging.WARNING, logger="natskiq.ops.launcher")
    async with running_node(client.url, client.namespace, failed_max_jobs=3):
        await Boom.set(retries=0).perform_async()

        async def one_failed() -> bool:
            return (await api.stats(client)).dead == 1

        await until(one_failed)
        await anyio.sleep(0.3)  # the master has looked at the failed set once
        for _ in range(4):
            await Boom.set(retries=0).perform_async()

        async def trimmed() -> bool:
            return (await api.stats(client)).trimmed == 2

        await until(trimmed)
        await until(lambda: "the failed set is full" in caplog.text)
    totals = await api.stats(client)
    assert (totals.dead, totals.trimmed, totals.failed) == (3, 2, 5)


async def test_stats_survive_worker_restarts(client: natskiq.Client, ledger: Path) -> None:
    """processed and failed totals live in JetStream, so a new node sees and adds to them."""
    for i in range(4):
        await Record.perform_async(note=i)
    await Boom.set(retries=0).perform_async()
    async with running_node(client.url, client.namespace):
        await wait_for_ledger(ledger, 5)

        async def counted() -> bool:
            s = await api.stats(client)
            return (s.processed, s.failed) == (5, 1)

        await until(counted)
    await Record.perform_async(note="after")
    async with running_node(client.url, client.namespace):
        await wait_for_ledger(ledger, 6)

        async def counted_again() -> bool:
            s = await api.stats(client)
            return (s.processed, s.failed) == (6, 1)

        await until(counted_again)


async def test_oversized_arguments_are_refused_at_enqueue(client: natskiq.Client) -> None:
    """Arguments over the size cap raise EnqueueError before anything is sent."""
    with pytest.raises(natskiq.EnqueueError, match="over the"):
        await Record.perform_async(note="x" * (2 * 1024 * 1024))
    assert await api.queue_names(client) == []


def test_failed_record_keeps_the_error() -> None:
    """failed_job() records the error class, message, count and times."""
    job = job_mod.Job(jid="j1", cls="c", queue="default")
    record = natskiq.run.retry.failed_job(job, ValueError("bad"), count=0, backtrace=5)
    assert (record.error_class, record.error_message, record.retry_count) == ("ValueError", "bad", 0)
    assert record.failed_at is not None and record.retried_at is None
    assert record.backtrace and len(record.backtrace) <= 5


async def test_cancel_a_queued_and_a_running_job(client: natskiq.Client, ledger: Path) -> None:
    """api.cancel deletes a queued or scheduled job and stops a running one (acked, not retried)."""
    later = await Record.perform_in(3600, note="never")
    assert (await api.cancel(client, later))["deleted"] == ["scheduled"]
    long = await Record.perform_async(sleep=30, note="cancel me")
    async with running_node(client.url, client.namespace, node_id="canceller", concurrency=1):
        await wait_for_ledger(ledger, 1, kind="start")
        result = await api.cancel(client, long)
        assert result["running_on"] == ["canceller"]  # (its message, still unacked, is deleted too)
        await until(lambda: _acked(client))
        # The node's only runner goes on with the next jobs, which are not cancelled.
        after = {await Record.perform_async(sleep=0.05, note="after") for _ in range(3)}
        rows = await wait_for_ledger(ledger, 3)
    assert {row.jid for row in rows} == after  # the cancelled job never finished
    assert await api.find(client, "retry") == [] and await failed_count(client) == 0
    with pytest.raises(natskiq.NotFound):
        await api.cancel(client, long)


async def test_cancel_ignores_replies_that_are_not_a_node(client: natskiq.Client) -> None:
    """Replies to a cancel request that are not ``{"node": "<id>"}`` (bytes, JSON of
    another shape) are skipped: cancel reports the real node and raises nothing else."""

    async def answer(msg: object) -> None:
        for junk in (b"\xff\xfe", b"[1, 2]", b'{"node": 7}', b"{}", b'"node"', b'{"node": "real"}'):
            await client.nc.publish(msg.reply, junk)  # type: ignore[attr-defined]

    sub = await client.nc.subscribe(client.names.cancel_subject, cb=answer)
    try:
        later = await Record.perform_in(3600, note="never")
        result = await api.cancel(client, later)
    finally:
        await sub.unsubscribe()
    assert result == {"deleted": ["scheduled"], "running_on": ["real"]}


async def test_queues_are_listed_past_a_page_of_streams(private_server: object) -> None:
    """Queue listing pages through JetStream's stream names (more than one page of 256 streams)."""
    url = private_server.url  # type: ignore[attr-defined]
    async with natskiq.connect(url, namespace="crowd") as crowd:
        for i in range(260):
            await crowd.ensure_queue(f"q{i}")
        assert len(await api.queue_names(crowd)) == 260
    async with natskiq.connect(url, namespace="late") as late:
        await late.ensure_queue("x")
        assert await api.queue_names(late) == ["x"]


async def test_a_stats_increment_sent_again_counts_once(client: natskiq.Client) -> None:
    """An increment whose PubAck was lost is sent again under the same message id and
    counted once (a node used to add it again with its next counts)."""
    from natskiq.run.node import Node
    from natskiq.topology import ensure_stats

    await ensure_stats(client.js, client.names)
    node = Node(client.nc, client.names, "n1", [("default", 1)])
    node._stats.count(failed=False)
    node._stats.count(failed=False)
    await node._stats.flush()
    sent = dict(node._stats._inflight)
    assert sent == {}  # both subjects acknowledged
    subject = client.names.stats_subject("processed")
    node._stats._inflight[subject] = ("n1:replayed:1", 5)  # as if stored but its PubAck lost
    await node._stats.flush()
    node._stats._inflight[subject] = ("n1:replayed:1", 5)  # sent again after the "timeout"
    await node._stats.flush()
    assert await api.counter(client, "processed") == 2 + 5
    node._send.close()  # the node never ran: close its job stream as run() would
    node._recv.close()


async def test_a_queue_whose_consumer_is_not_made_yet_still_has_its_info(client: natskiq.Client) -> None:
    """While a worker starting up has made a queue's stream but not yet its consumer, the
    queue's info (natskiq stats) reports it with nothing ready or running, not as missing."""
    await client.ensure_queue("early")
    await client.js.delete_consumer(client.names.queue_stream("early"), client.names.consumer(0))
    info = await api.queue_info(client, "early")
    assert (info.name, info.partitions, info.ready, info.running) == ("early", 1, 0, 0)
