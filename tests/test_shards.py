"""Partitions and dispatch shards: a queue split into partitions, one master
per shard with its own lease and fencing, and the shards balanced across nodes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

import natskiq
from natskiq import api, cli
from natskiq.dispatch.protocol import nak
from natskiq.errors import ConfigError
from natskiq.ops import launcher
from natskiq.ops.launcher import Settings
from natskiq.topology import ensure_queue

from .conftest import Workers, failed_count, read_ledger, running_node, until, wait_for_ledger
from .sample_workers import Record
from .test_processes import wait_master, wait_nodes


async def masters_by_node(client: natskiq.Client) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in await api.masters(client):
        out.setdefault(m["node"], []).append(m["shard"])
    return out


async def test_partitioned_queue_spreads_jobs_and_runs_each_once(
    client: natskiq.Client, nats_url: str, namespace: str, ledger: Path
) -> None:
    """Jobs enqueued to a 3-partition queue are spread evenly over its
    partitions; one node leads all 3 shards and runs every job once."""
    assert await ensure_queue(client.js, client.names, "default", partitions=3) == 3
    jids = [await Record.perform_async(note=i) for i in range(30)]
    stream = await client.js.stream_info(client.names.queue_stream("default"), subjects_filter=">")
    assert stream.state.subjects == {
        f"{namespace}.queue.default": 10,
        f"{namespace}.queue.default.1": 10,
        f"{namespace}.queue.default.2": 10,
    }
    info = await api.queue_info(client, "default")
    assert (info.partitions, info.ready) == (3, 30)
    queued = await api.find(client, "queued", limit=100)
    assert sorted(e.jid for e in queued) == sorted(jids)
    async with running_node(nats_url, namespace, concurrency=20, node_id="solo") as node:
        rows = await wait_for_ledger(ledger, 30)
        assert sorted(r.jid for r in rows) == sorted(jids)
        await until(lambda: node.shards.led() == [0, 1, 2])
        assert await masters_by_node(client) == {"solo": [0, 1, 2]}
    assert len(read_ledger(ledger)) == 30


async def test_clear_empties_every_partition(client: natskiq.Client) -> None:
    """`clear` removes the ready jobs of every partition, and says how many."""
    await ensure_queue(client.js, client.names, "default", partitions=4)
    for i in range(8):
        await Record.perform_async(note=i)
    assert await api.clear(client, "default") == 8
    assert (await api.queue_info(client, "default")).ready == 0


async def test_partitions_are_added_never_removed(client: natskiq.Client) -> None:
    """Asking for more partitions adds them; asking for fewer (or none) keeps
    them all, since jobs on a removed partition would never run."""
    js, names = client.js, client.names
    assert await ensure_queue(js, names, "default") == 1
    assert await ensure_queue(js, names, "default", partitions=2) == 2
    await Record.perform_async(note="kept")
    assert await ensure_queue(js, names, "default", partitions=1) == 2
    assert await ensure_queue(js, names, "default") == 2
    assert (await api.queue_info(client, "default")).partitions == 2
    assert await ensure_queue(js, names, "default", partitions=5) == 5
    assert (await api.queue_info(client, "default")).ready == 1


@pytest.mark.parametrize("bad", [0, -1, 65])
async def test_bad_partition_counts_are_config_errors(client: natskiq.Client, bad: int) -> None:
    with pytest.raises(ConfigError, match="partitions"):
        await ensure_queue(client.js, client.names, "default", partitions=bad)
    with pytest.raises(ConfigError, match="partitions"):
        Settings(partitions=bad)


async def test_foreign_subjects_on_a_queue_stream_are_refused(client: natskiq.Client) -> None:
    """A queue stream whose subjects do not follow the partition layout is a
    clear ConfigError, not a guess."""
    names = client.names
    await ensure_queue(client.js, names, "default")
    info = await client.js.stream_info(names.queue_stream("default"))
    subjects = [*(info.config.subjects or []), f"{names.namespace}.queue.default.7"]
    await client.js.update_stream(info.config.evolve(subjects=subjects))
    with pytest.raises(ConfigError, match="conflicting"):
        await ensure_queue(client.js, names, "default")


@pytest.mark.parametrize("value", ["0", "65"])
def test_cli_rejects_partitions_out_of_range(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """`--partitions 0` (or above 64) exits 2 with a one-line error, before connecting."""
    assert cli.main(["worker", "--app", "json", "--partitions", value, "--url", "nats://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("natskiq: error: ") and "partitions" in err
    assert "Traceback" not in err


def test_cli_rejects_partitions_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["worker", "--app", "json", "--partitions", "two"])
    assert info.value.code == 2
    assert "invalid" in capsys.readouterr().err


async def test_nodes_command_shows_who_masters_what(
    client: natskiq.Client,
    nats_url: str,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`natskiq nodes` lists the node and the shards it masters; `--json` too."""
    async with running_node(nats_url, namespace, partitions=2, node_id="lead") as node:
        await until(lambda: node.shards.led() == [0, 1])
        await until(lambda: _has_nodes(client))
        argv = ["--url", nats_url, "--namespace", namespace]
        assert await _main(["nodes", *argv]) == 0
        out = capsys.readouterr().out
        line = next(row for row in out.splitlines() if row.startswith("lead"))
        assert "0,1" in line
        assert await _main(["nodes", "--json", *argv]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [n["node"] for n in doc["nodes"]] == ["lead"]
        assert [(m["shard"], m["node"]) for m in doc["masters"]] == [(0, "lead"), (1, "lead")]
        assert all(m["token"] > 0 for m in doc["masters"])


async def _has_nodes(client: natskiq.Client) -> bool:
    return bool(await api.nodes(client))


async def _main(argv: list[str]) -> int:
    """cli.main in a worker thread (it runs its own event loop)."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(cli.main, argv)


# -- processes: balance, failover, fencing -------------------------------------


async def wait_balanced(client: natskiq.Client, nodes: set[str], shards: int, timeout: float = 30) -> None:
    """Until every shard is led by one of ``nodes``, and none of them leads
    more than one shard more than another."""

    async def check() -> bool:
        led = await masters_by_node(client)
        counts = [len(led.get(n, [])) for n in nodes]
        return sum(counts) == shards and max(counts) - min(counts) <= 1

    await until(check, timeout)


@pytest.mark.slow
async def test_three_nodes_each_lead_a_shard_and_survive_a_master_kill(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """3 processes with 3 partitions end up leading one shard each; jobs run
    on all of them; after kill -9 of one, its shard is taken over and every
    job still runs; a node that joins again gets a shard back."""
    flags = ("--partitions", "3", "--lease-ttl", "2", "--concurrency", "50")
    for node in ("a", "b", "c"):
        workers.start(*flags, node_id=node)
    await wait_nodes(client, 3)
    await wait_balanced(client, {"a", "b", "c"}, 3)
    jids = [await Record.perform_async(sleep=0.05, note=i) for i in range(300)]
    rows = await wait_for_ledger(ledger, 300)
    assert sorted(r.jid for r in rows) == sorted(jids)
    assert len({r.pid for r in rows}) == 3

    led = await masters_by_node(client)
    victim = workers.procs[["a", "b", "c"].index("a")]
    victim_shards = led["a"]
    more = [await Record.perform_async(sleep=1, note=f"m{i}") for i in range(60)]
    await wait_for_ledger(ledger, 10, kind="start")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    await wait_balanced(client, {"b", "c"}, 3)
    led = await masters_by_node(client)
    assert "a" not in led and set(victim_shards) <= {s for v in led.values() for s in v}
    rows = await wait_for_ledger(ledger, 360, timeout=60)
    assert set(more) <= {r.jid for r in rows}

    workers.start(*flags, node_id="a")
    await wait_balanced(client, {"a", "b", "c"}, 3)
    assert len((await masters_by_node(client)).get("a", [])) == 1


@pytest.mark.slow
async def test_a_paused_shard_master_is_fenced(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """SIGSTOP a node leading a shard past its lease: another node takes the
    shard with a higher token; when the paused node wakes it steps down, and
    every job runs, none twice at the same time on both."""
    flags = ("--partitions", "2", "--lease-ttl", "2", "--concurrency", "20")
    workers.start(*flags, node_id="a")
    workers.start(*flags, node_id="b")
    await wait_nodes(client, 2)
    await wait_balanced(client, {"a", "b"}, 2)
    led = await masters_by_node(client)
    before = {m["shard"]: m["token"] for m in await api.masters(client)}
    paused = workers.procs[0]
    paused.send_signal(signal.SIGSTOP)
    try:
        await until(lambda: _all_led_by(client, "b", 2), timeout=30)
        jids = [await Record.perform_async(note=i) for i in range(40)]
        rows = await wait_for_ledger(ledger, 40)
        assert {r.pid for r in rows} == {workers.procs[1].pid}

        async def taken_over() -> bool:
            after = {m["shard"]: m["token"] for m in await api.masters(client)}
            return all(after.get(shard, 0) > before[shard] for shard in led["a"])

        await until(taken_over)  # with a higher token: the fence that keeps "a" out
    finally:
        paused.send_signal(signal.SIGCONT)
    await wait_balanced(client, {"a", "b"}, 2)
    assert sorted(r.jid for r in read_ledger(ledger)) == sorted(jids)


async def _all_led_by(client: natskiq.Client, node: str, shards: int) -> bool:
    return (await masters_by_node(client)).get(node) == list(range(shards))


async def test_a_shard_handed_over_under_load_loses_no_job_to_the_delivery_limit(
    client: natskiq.Client, nats_url: str, namespace: str, ledger: Path
) -> None:
    """A node leading both shards hands one over to a node that joins while
    jobs flow: every job runs, and a handover costs a job hardly a
    delivery: with ``max_deliveries=3`` none ends in the failed set."""
    await ensure_queue(client.js, client.names, "default", partitions=2)
    settings = {"partitions": 2, "concurrency": 50, "max_deliveries": 3, "lease_ttl": 2.0}
    jids: list[str] = []
    stop, stopped = anyio.Event(), anyio.Event()

    async def produce() -> None:
        while not stop.is_set():
            jids.extend(await Record.perform_bulk([[0, len(jids) + i] for i in range(20)]))
            await anyio.sleep(0.02)
        stopped.set()

    async with running_node(nats_url, namespace, node_id="first", **settings) as first:
        await until(lambda: first.shards.led() == [0, 1])
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with running_node(nats_url, namespace, node_id="second", **settings) as second:
                await until(lambda: len(second.shards.led()) == 1, timeout=20)
                await anyio.sleep(1)
                stop.set()
                await stopped.wait()  # the last batch enqueued, its jids known
                await until(lambda: _all_ran(ledger, jids), timeout=30)
    assert await failed_count(client) == 0


def _all_ran(ledger: Path, jids: list[str]) -> bool:
    """Whether every one of ``jids`` has run (some may have run twice: at least once)."""
    return set(jids) <= {r.jid for r in read_ledger(ledger)}


async def test_jobs_arriving_after_the_lease_is_lost_come_back_once(
    client: natskiq.Client, nats_url: str, namespace: str, ledger: Path
) -> None:
    """A master whose lease deadline passes (its renewals stalled, as when the
    server leading the leases bucket dies) while its pull requests are open,
    and which cannot win the lease back at once: the jobs those requests
    still bring go back, and with ``max_deliveries=3`` every job runs once
    the lease is free again, none in the failed set. (Whether a plain NAK
    would loop here depends on the server's order of waiting requests; the
    test below shows the loop itself, and the cluster's lease-leader kill
    lost 3 jobs in 400 to it.)"""
    settings = {"concurrency": 50, "max_deliveries": 3, "lease_ttl": 30.0, "node_id": "lonely"}
    names = client.names
    async with running_node(nats_url, namespace, **settings) as node:
        await until(lambda: node.shards.led() == [0])
        await until(lambda: _open_pulls(client))
        kv = await client.js.key_value(names.lease_bucket)
        node.shards.leases[0]._deadline = 0.0  # as if its renewals had stalled
        await kv.put(names.shard_key(0), json.dumps({"node": "elsewhere"}).encode())
        jids = await Record.perform_bulk([[0, i] for i in range(200)])
        await anyio.sleep(3)  # the old master's pull requests end (2 s)
        await kv.delete(names.shard_key(0))
        rows = await wait_for_ledger(ledger, 200)
    assert {r.jid for r in rows} == set(jids)
    assert await failed_count(client) == 0


@pytest.mark.parametrize("delay", [0.0, 2.6])
async def test_a_delayed_nak_keeps_a_job_off_the_pull_request_that_brought_it(
    client: natskiq.Client, delay: float
) -> None:
    """What the hand-back of a master that lost its lease relies on: JetStream
    sends a job NAKed at once straight back to the open pull request that
    brought it, once per round trip up to the request's batch size (each a
    delivery), while a NAK delayed past the request's end costs one delivery."""
    names = client.names
    await ensure_queue(client.js, names, "default")
    inbox = client.nc.new_inbox()
    arrivals: list[int] = []

    async def hand_back(msg: Any) -> None:
        if msg.reply:  # not the request's end (a status without one)
            arrivals.append(1)
            await client.nc.publish(msg.reply, nak(delay))

    sub = await client.nc.subscribe(inbox, cb=hand_back)
    request = {"batch": 50, "expires": int(2e9)}
    await client.nc.publish(names.pull_subject("default"), json.dumps(request).encode(), reply=inbox)
    await Record.perform_async(note="bounced")
    await anyio.sleep(2.9)
    await sub.unsubscribe()
    assert len(arrivals) == (50 if delay == 0 else 1)


async def _open_pulls(client: natskiq.Client) -> bool:
    info = await client.js.consumer_info(client.names.queue_stream("default"), client.names.consumer(0))
    return (info.num_waiting or 0) > 0


@pytest.mark.slow
async def test_a_master_paused_briefly_hands_back_jobs_without_burning_deliveries(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """SIGSTOP of the master for 1.5 s: past its 1 s lease, not past its 2 s
    pull requests. The jobs that still arrive for those requests when it
    wakes go back with a NAK delayed until the requests have ended (a plain
    NAK makes the server send the job to them again, one delivery per round
    trip), so with ``--max-deliveries 3`` none ends in the failed set."""
    flags = ("--lease-ttl", "1", "--max-deliveries", "3", "--concurrency", "50")
    paused = workers.start(*flags, node_id="a")
    assert await wait_master(client) == "a"
    workers.start(*flags, node_id="b")
    await wait_nodes(client, 2)
    jids: list[str] = []

    async def produce(stop: anyio.Event) -> None:
        while not stop.is_set():
            jids.extend(await Record.perform_bulk([[0, len(jids) + i] for i in range(20)]))
            await anyio.sleep(0.02)

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce, stop)
        await anyio.sleep(1)
        paused.send_signal(signal.SIGSTOP)
        await anyio.sleep(1.5)
        paused.send_signal(signal.SIGCONT)
        await anyio.sleep(2)
        stop.set()
    await until(lambda: _all_ran(ledger, jids), timeout=30)
    assert await failed_count(client) == 0, workers.logs()[-3000:]


async def test_a_running_node_joins_the_shards_another_node_adds(
    client: natskiq.Client, nats_url: str, namespace: str, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node started with one partition learns that a newer node raised the
    queue to 4 (it looks at the streams every PARTITIONS_RECHECK seconds, 1
    here) and takes part in the new shards' elections without a restart:
    the two end up leading two shards each, and jobs of every partition run."""
    monkeypatch.setattr(launcher, "PARTITIONS_RECHECK", 1.0)
    async with running_node(nats_url, namespace, node_id="old") as old:
        await until(lambda: old.shards.led() == [0])
        async with running_node(nats_url, namespace, node_id="new", partitions=4) as new:
            await until(lambda: old.shards.count == 4 and old.node.shards == 4, timeout=20)
            await until(lambda: len(old.shards.led()) == 2 and len(new.shards.led()) == 2, timeout=30)
            assert await ensure_queue(client.js, client.names, "default") == 4
            jids = [await Record.perform_async(note=i) for i in range(40)]
            await until(lambda: _all_ran(ledger, jids), timeout=30)
