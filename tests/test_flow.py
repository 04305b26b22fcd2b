"""End to end in one process: enqueue -> stream -> master -> node -> ack."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from nats.js.api import ConsumerConfig

import natskiq
from natskiq import job as job_mod
from natskiq import testing
from natskiq.dispatch.protocol import Delivery
from natskiq.enqueue import client as client_mod
from natskiq.run import node as node_mod

from . import sample_workers
from .conftest import failed_count, read_ledger, running_node, until, wait_for_ledger
from .sample_workers import Boom, Hog, Record, Slow, SyncRecord, Urgent


async def _has_failed(client: natskiq.Client) -> bool:
    return await failed_count(client) >= 1


async def wait_acked(client: natskiq.Client, queue: str = "default", timeout: float = 10) -> None:
    """Wait until the queue's consumer has nothing pending or unacked."""
    with anyio.fail_after(timeout):
        while True:
            info = await client.js.consumer_info(client.names.queue_stream(queue), "aggregator")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await anyio.sleep(0.05)


async def test_jobs_run_and_are_acked(client: natskiq.Client, ledger: Path) -> None:
    """Every enqueued job runs once on the node, and its message is acked."""
    jids = [await Record.perform_async(note=i) for i in range(20)]
    async with running_node(client.url, client.namespace, concurrency=5):
        rows = await wait_for_ledger(ledger, 20)
        await wait_acked(client)
    assert sorted(r.jid for r in rows) == sorted(jids)
    assert sorted(r.note for r in rows) == list(range(20))


async def test_plain_def_perform_runs_in_a_thread(client: natskiq.Client, ledger: Path) -> None:
    """A plain `def perform` runs, in a worker thread, with its arguments."""
    jid = await SyncRecord.perform_async(note={"a": [1, 2]})
    async with running_node(client.url, client.namespace):
        rows = await wait_for_ledger(ledger, 1)
    assert (rows[0].jid, rows[0].note) == (jid, {"a": [1, 2]})


async def test_perform_in_runs_after_its_delay(client: natskiq.Client, ledger: Path) -> None:
    """perform_in(2) runs no earlier than 2 s and within 1 s after that."""
    async with running_node(client.url, client.namespace):
        due = time.time() + 2
        jid = await Record.perform_in(2, note="later")
        rows = await wait_for_ledger(ledger, 1, timeout=10)
    assert rows[0].jid == jid
    lateness = rows[0].at - due
    print(f"perform_in(2) lateness: {lateness * 1000:.0f} ms")
    assert 0 <= lateness < 1.0


async def test_perform_at_and_timedelta(client: natskiq.Client, ledger: Path) -> None:
    """perform_at takes an aware datetime, perform_in a timedelta; past times run now."""
    async with running_node(client.url, client.namespace):
        when = datetime.now(UTC) + timedelta(seconds=1)
        a = await Record.perform_at(when, note="at")
        b = await Record.perform_in(timedelta(milliseconds=500), note="delta")
        c = await Record.perform_at(datetime.now(UTC) - timedelta(hours=1), note="past")
        rows = await wait_for_ledger(ledger, 3, timeout=10)
    by_jid = {r.jid: r for r in rows}
    assert set(by_jid) == {a, b, c}
    assert by_jid[a].at >= when.timestamp()
    with pytest.raises(TypeError, match="timezone-aware"):
        await Record.perform_at(datetime.now(), note="naive")


async def test_set_overrides_queue_per_call(client: natskiq.Client, ledger: Path) -> None:
    """`set(queue=...)` sends one call elsewhere; class options route the rest."""
    a = await Record.set(queue="critical").perform_async(note="moved")
    b = await Urgent.perform_async(note="urgent")
    queues = {q.name: q.ready for q in await natskiq.api.queues(client)}
    assert queues == {"critical": 2}
    async with running_node(client.url, client.namespace, queues=("critical",)):
        rows = await wait_for_ledger(ledger, 2)
    assert {r.jid for r in rows} == {a, b}


async def test_strict_queue_order(client: natskiq.Client, ledger: Path) -> None:
    """Without weights, a node drains the first queue before the second."""
    for i in range(5):
        await Record.perform_async(note=f"d{i}")
        await Urgent.perform_async(note=f"c{i}")
    async with running_node(client.url, client.namespace, queues=("critical", "default"), concurrency=1):
        rows = await wait_for_ledger(ledger, 10)
    order = [str(r.note)[0] for r in rows]
    assert order == ["c"] * 5 + ["d"] * 5


async def test_weighted_queue_order(client: natskiq.Client, ledger: Path) -> None:
    """With weights 3:1 the heavier queue is served about three times as often."""
    for i in range(60):
        await Record.perform_async(note=f"d{i}")
        await Urgent.perform_async(note=f"c{i}")
    async with running_node(client.url, client.namespace, queues=("critical:3", "default:1"), concurrency=1):
        rows = await wait_for_ledger(ledger, 40)
    first = [str(r.note)[0] for r in rows[:40]]
    # Expected 30 critical of 40; below 22 has a probability under 1e-4.
    assert first.count("c") >= 22
    assert first.count("d") >= 1


async def test_failing_job_is_retried_then_failed(client: natskiq.Client, ledger: Path) -> None:
    """A job that always raises runs 1 + retries times, then lands on the failed stream."""
    with testing.fast_retries():
        jid = await Boom.perform_async()
        async with running_node(client.url, client.namespace):
            rows = await wait_for_ledger(ledger, 3)
            await until(lambda: _has_failed(client))
    assert [r.jid for r in rows] == [jid] * 3
    msg = await client.js.get_msg(client.names.failed_stream, seq=1)
    record = job_mod.decode(msg.data)
    assert (record.jid, record.error_class, record.retry_count) == (jid, "ValueError", 2)


async def test_timeout_fails_the_job(client: natskiq.Client, ledger: Path) -> None:
    """A job past its worker timeout is cancelled and counted as a failure."""
    with testing.fast_retries():
        await Slow.set(retries=0).perform_async()
        async with running_node(client.url, client.namespace):
            await until(lambda: _has_failed(client))
    msg = await client.js.get_msg(client.names.failed_stream, seq=1)
    assert job_mod.decode(msg.data).error_class == "TimeoutError"


async def test_job_longer_than_ack_wait_runs_once(client: natskiq.Client, ledger: Path) -> None:
    """In-progress acks keep a job that outlives ack_wait from being redelivered."""
    jid = await Record.perform_async(sleep=4.5)
    async with running_node(client.url, client.namespace, ack_wait=1.5):
        await wait_for_ledger(ledger, 1, timeout=20)
        await wait_acked(client)
        await anyio.sleep(2)  # a redelivery would have shown by now (ack_wait 1.5 s)
    assert [r.jid for r in read_ledger(ledger, "start")] == [jid]
    assert [r.jid for r in read_ledger(ledger)] == [jid]


async def test_node_refuses_a_stale_fencing_token(client: natskiq.Client, ledger: Path) -> None:
    """A dispatch from a master older than one the node has seen is NAKed, not run."""
    jid = await Record.perform_async(note="fenced")
    stream = client.names.queue_stream("default")
    await client.js.add_consumer(stream, ConsumerConfig(durable_name="probe", filter_subject="x.none"))
    async with running_node(client.url, client.namespace, concurrency=1) as launcher:
        node = launcher.node
        # The running master holds some token; pretend a newer one was seen.
        node.deliver_many([Delivery(b"{}", "_INBOX.nowhere", 10**9)])
        await until(lambda: node.busy == 0)
        # The real master's dispatch now carries a stale token: refused, NAKed.
        await anyio.sleep(1)
        assert read_ledger(ledger) == []
        info = await client.js.consumer_info(stream, "aggregator")
        assert info.num_redelivered >= 1 or info.num_ack_pending >= 1
    assert jid  # the job is still in the stream, for the next master
    assert (await client.js.stream_info(stream)).state.messages == 1


async def test_enqueue_rejects_non_json_arguments(client: natskiq.Client) -> None:
    """Arguments that are not JSON-native raise TypeError naming them, and nothing is stored."""
    with pytest.raises(TypeError, match="argument 0"):
        await Record.perform_async({1, 2})
    with pytest.raises(TypeError, match="keyword argument 'note'"):
        await Record.perform_async(note=datetime.now(UTC))
    with pytest.raises(TypeError, match=r"\['k'\]\[0\]"):
        await Record.perform_async(note={"k": [b"bytes"]})
    assert await natskiq.api.queues(client) == []


async def test_client_enqueue_and_default_client(client: natskiq.Client, ledger: Path) -> None:
    """client.enqueue works, and the last opened client is the default."""
    jid = await client.enqueue(Record, note="explicit")
    async with natskiq.connect(client.url, namespace=client.namespace) as other:
        assert client_mod.current_client() is other
    assert client_mod.current_client() is client
    async with running_node(client.url, client.namespace):
        rows = await wait_for_ledger(ledger, 1)
    assert rows[0].jid == jid


async def test_perform_bulk_enqueues_every_job(client: natskiq.Client, ledger: Path) -> None:
    """perform_bulk stores one job per argument list, in order, checking all arguments first."""
    with pytest.raises(TypeError, match="item 1 of perform_bulk: argument 1"):
        await Record.perform_bulk([[0.0, "ok"], [0.0, {1, 2}]])
    with pytest.raises(TypeError, match="not a list of arguments"):
        await Record.perform_bulk([[0.0, "ok"], "oops"])  # type: ignore[list-item]
    assert await natskiq.api.queue_names(client) == []
    jids = await Record.perform_bulk([[0.0, i] for i in range(2500)], batch_size=1000)
    assert len(set(jids)) == 2500
    assert (await natskiq.api.queue_info(client, "default")).ready == 2500
    more = await client.enqueue_many(Record, [[0.0, "x"]])
    async with running_node(client.url, client.namespace, concurrency=50):
        rows = await wait_for_ledger(ledger, 2501, timeout=60)
    assert {r.jid for r in rows} == set(jids) | set(more)


async def test_jobs_that_block_the_loop_each_leave_other_tasks_a_turn(client: natskiq.Client) -> None:
    """Jobs that block the event loop past a runner's time slice, run back to back, each let the
    rest of the process (pulls, acks, the lease's renewals) have a turn before the next starts."""
    jids = [await Hog.perform_async(2 * node_mod.RUN_SLICE) for _ in range(20)]  # a backlog
    sample_workers.hog_ticks.clear()

    async def tick() -> None:
        while True:
            sample_workers.loop_ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        async with running_node(client.url, client.namespace, concurrency=1):
            await until(lambda: len(sample_workers.hog_ticks) == len(jids), 30)
        tg.cancel_scope.cancel()
    ticks = sample_workers.hog_ticks
    assert all(later > earlier for earlier, later in zip(ticks, ticks[1:], strict=False)), ticks
