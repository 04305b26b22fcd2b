"""Recovery in seconds: jobs held by a node or a master that dies run again after the
(4 s) ack wait, not the 30 s it used to be, and a node that was paused past a job's
ack wait never starts it (fencing per delivery)."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq.dispatch.protocol import Delivery
from natskiq.run.node import Node
from natskiq.topology import CONSUMER

from .conftest import Workers, read_ledger, until, wait_for_ledger
from .sample_workers import Record
from .test_processes import wait_master, wait_nodes

pytestmark = pytest.mark.slow

# Well under the 30 s ack wait of before, well over the 4 s one of now.
BACK_WITHIN = 20.0


async def test_jobs_of_a_killed_node_run_again_within_seconds(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """kill -9 of a node mid-job: with the default ack wait its jobs run to the end on another node."""
    await client.ensure_queue("default")
    workers.start("--queue", "other", node_id="m0")
    await wait_master(client)
    victim = workers.start("--concurrency", "5", node_id="w1")
    await wait_nodes(client, 2)
    jids = [await Record.perform_async(sleep=3, note=i) for i in range(5)]
    await wait_for_ledger(ledger, 5, kind="start")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    rescuer = workers.start(node_id="w2")
    rows = await wait_for_ledger(ledger, 5, timeout=BACK_WITHIN)
    assert {r.jid for r in rows} == set(jids)
    assert {r.pid for r in rows} == {rescuer.pid}


async def test_jobs_held_by_a_killed_master_run_again_within_seconds(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """kill -9 of a master running some jobs and holding more, pulled ahead: all of them run
    on the next master within seconds."""
    await client.ensure_queue("default")
    master = workers.start("--concurrency", "2", node_id="m0")
    await wait_master(client)
    jids = [await Record.perform_async(sleep=2, note=i) for i in range(8)]
    await wait_for_ledger(ledger, 2, kind="start")
    master.send_signal(signal.SIGKILL)
    master.wait()
    workers.start(node_id="w1")
    rows = await wait_for_ledger(ledger, 8, timeout=BACK_WITHIN)
    assert {r.jid for r in rows} == set(jids)


async def test_a_node_never_starts_a_job_held_past_its_ack_wait(client: natskiq.Client, ledger: Path) -> None:
    """A delivery whose ack wait lapsed (the node was paused) is neither run nor NAKed, since
    JetStream may have given it to another node; a fresh one beside it runs."""
    await client.ensure_queue("default")
    stale_jid = await Record.perform_async(note="stale")
    fresh_jid = await Record.perform_async(note="fresh")
    stream = client.names.queue_stream("default")
    sub = await client.js.pull_subscribe_bind(CONSUMER, stream=stream)
    stale_msg, fresh_msg = await sub.fetch(2, timeout=5)
    node = Node(client.nc, client.names, "n1", [("default", 1)])
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        now = anyio.current_time()
        node.deliver_many(
            [
                Delivery(stale_msg.data, stale_msg.reply, 0, expires=now - 1),
                Delivery(fresh_msg.data, fresh_msg.reply, 0, expires=now + 30),
            ]
        )
        await until(lambda: node.busy == 0)
        tg.cancel_scope.cancel()
    assert [r.jid for r in read_ledger(ledger)] == [fresh_jid]

    async def only_stale_pending() -> bool:
        info = await client.js.consumer_info(stream, CONSUMER)
        return (info.num_ack_pending, info.num_pending) == (1, 0)  # still held, not handed back

    await until(only_stale_pending)
    [again] = await sub.fetch(1, timeout=15)  # JetStream redelivers it once its ack wait ends
    assert again.data == stale_msg.data and stale_jid.encode() in again.data
    await again.ack()
    await sub.unsubscribe()
