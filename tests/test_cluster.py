"""On a 3-node JetStream cluster with R3 streams and 3 worker processes: no
enqueued job is lost whatever dies (see tests/chaos.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest

from natskiq import api

from .chaos import FAULT_KINDS, Harness, recovery_table, soak
from .conftest import until

pytestmark = pytest.mark.slow


def check(harness: Harness) -> dict[str, object]:
    report = harness.report()
    print(report)
    assert report["lost"] == 0, sorted(set(harness.enqueued) - {r["jid"] for r in harness.rows()})[:5]
    assert report["stale_lease_runs"] == 0
    assert report["duplicates_outside_faults"] == 0
    return report


async def test_streams_are_replicated_three_times(tmp_path: Path) -> None:
    """Workers started with --replicas 3 create R3 queue, failed, stats and events streams."""
    async with Harness(tmp_path) as harness:
        assert harness.client is not None
        await harness.produce(5)
        await harness.wait_done()
        js, names = harness.client.js, harness.client.names
        for stream in (
            names.queue_stream("default"),
            names.failed_stream,
            names.stats_stream,
            names.events_stream,
        ):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        check(harness)


async def test_worker_killed_mid_job_its_jobs_run_elsewhere(tmp_path: Path) -> None:
    """kill -9 of a worker running jobs: they are redelivered and run on the others."""
    async with Harness(tmp_path) as harness:
        await harness.produce(60, rate=100, sleep=1.0)
        master = await harness.master()
        victim = next(n for n in harness.procs if n != master)
        pid = harness.procs[victim].pid
        await until(lambda: any(r["pid"] == pid for r in harness.rows("start")), 20)
        held = {r["jid"] for r in harness.rows("start") if r["pid"] == harness.procs[victim].pid}
        harness.faults.append((time.time(), f"kill -9 worker {victim}"))
        harness.procs[victim].send_signal(signal.SIGKILL)
        harness.procs[victim].wait()
        await harness.wait_done(60)
        report = check(harness)
        redone = {r["jid"] for r in harness.rows() if r["jid"] in held}
        assert redone == held
        assert report["completed"] == 60


async def test_master_killed_new_master_within_ttl(tmp_path: Path) -> None:
    """kill -9 of the master: a new master within lease TTL + 2 s, and jobs keep flowing."""
    async with Harness(tmp_path, lease_ttl=2.0) as harness:
        await harness.produce(50, rate=200)
        failover = await harness.kill_master()
        print(f"master failover after kill -9: {failover:.2f} s")
        assert failover < harness.lease_ttl + 2
        await harness.produce(100, rate=200)
        await harness.wait_done(60)
        check(harness)


async def test_paused_master_steps_down_and_runs_nothing_stale(tmp_path: Path) -> None:
    """SIGSTOP of the master past its lease, then SIGCONT: it steps down, and no job
    is dispatched under its old lease once a newer one exists."""
    async with Harness(tmp_path, lease_ttl=2.0) as harness:
        async with anyio.create_task_group() as tg:
            tg.start_soon(harness.produce, 400, 100.0, 0.05)
            await anyio.sleep(1)
            paused = await harness.pause_master()
        await harness.wait_done(60)
        # Woken up, it finds its lease gone and steps down; it lives on as a follower.
        await until(lambda: "lost the lease" in harness.logs(), 15)
        assert harness.procs[paused].poll() is None
        assert await harness.master() != paused
        check(harness)
        tokens = {r["token"] for r in harness.rows()}
        assert len(tokens) >= 2  # jobs ran under both leases


async def test_nats_server_killed_jobs_keep_flowing(tmp_path: Path) -> None:
    """kill -9 of the nats-server leading the lease bucket while jobs flow:
    every job still runs. The master cannot renew until a new leader is
    elected and loses its lease with pulls open; what they still bring goes
    back once (a plain NAK sent each job back to those pulls, dozens of
    times, and 3 in 400 ended in the failed set, never run)."""
    async with Harness(tmp_path) as harness:
        async with anyio.create_task_group() as tg:
            tg.start_soon(harness.produce, 400, 100.0)
            await anyio.sleep(1)
            await harness.kill_server(down=2, lease_leader=True)
        await harness.wait_done(60)
        check(harness)


async def test_all_servers_restart_every_job_runs(tmp_path: Path) -> None:
    """Stop and restart all three servers with jobs queued: every enqueued job still runs."""
    async with Harness(tmp_path, concurrency=2) as harness:
        await harness.produce(150, rate=500, sleep=0.02)
        await harness.restart_servers()
        await harness.produce(50, rate=200)
        await harness.wait_done(90)
        check(harness)


async def test_short_soak(tmp_path: Path) -> None:
    """1,000 jobs under 5 faults of every kind: none lost, none run under a stale lease,
    and the jobs in flight at each fault start again within the recovery targets.
    Faults 7 s apart (see soak), 1,000 jobs over them at about 24/s, of
    0.5 s each, so that a killed or paused node holds some (about 4)."""
    report = await soak(1000, 5, tmp=tmp_path, rate=150, job_seconds=0.5)
    print("soak:", report)
    print(recovery_table(report["recovery"]))
    assert report["lost"] == 0
    assert report["stale_lease_runs"] == 0
    assert report["duplicates_outside_faults"] == 0
    assert report["faults"] == 5
    assert set(report["recovery"]) == {*FAULT_KINDS, "overall"}
    assert report["recovery"]["overall"]["held"] > 0  # the targets were tested on something
    assert report["recovery_failures"] == [], report["recovery"]


async def shard_masters(harness: Harness) -> dict[int, str]:
    assert harness.client is not None
    try:
        return {m["shard"]: m["node"] for m in await api.masters(harness.client)}
    except Exception:  # a server may be down mid-fault
        return {}


async def test_partitioned_shards_survive_kill_pause_and_a_server_kill(tmp_path: Path) -> None:
    """3 partitions on 3 workers: each leads one shard; kill -9 of the node
    leading shard 1, SIGSTOP of the node leading shard 2 past its lease, and
    kill -9 of a nats-server while jobs flow: every job runs, none under a
    stale lease of its shard, and every shard ends with a live master."""
    async with Harness(tmp_path, lease_ttl=2.0, extra=("--partitions", "3")) as harness:

        async def balanced() -> bool:
            led = await shard_masters(harness)
            return len(led) == 3 and len(set(led.values())) == 3 and set(led.values()) <= set(harness.procs)

        await until(balanced, 30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(harness.produce, 600, 100.0, 0.05)
            await anyio.sleep(1)
            led = await shard_masters(harness)
            killed, paused = led[1], led[2]
            harness.faults.append((time.time(), f"kill -9 shard 1 master {killed}"))
            harness.procs[killed].kill()
            harness.procs[killed].wait()
            await until(lambda: _led_by_other(harness, 1, killed), 20)
            harness.faults.append((time.time(), f"SIGSTOP shard 2 master {paused}"))
            harness.procs[paused].send_signal(signal.SIGSTOP)
            await until(lambda: _led_by_other(harness, 2, paused), 20)
            harness.procs[paused].send_signal(signal.SIGCONT)
            await harness.kill_server(down=2)
            harness.start_worker(killed)
        await harness.wait_done(90)
        report = check(harness)
        assert report["completed"] == 600
        shards = {r["shard"] for r in harness.rows()}
        assert shards == {0, 1, 2}
        await until(balanced, 30)


async def _led_by_other(harness: Harness, shard: int, node: str) -> bool:
    holder = (await shard_masters(harness)).get(shard)
    return holder is not None and holder != node
