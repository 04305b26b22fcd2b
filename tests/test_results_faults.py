"""Results and status through faults: a worker process killed mid-job, and a master killed on
the 3-node cluster (tests/chaos.py). The jobs keep their results (tests.Kept)."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

import natskiq

from .chaos import Harness
from .conftest import Workers, read_ledger, until, wait_for_ledger
from .sample_workers import Kept
from .test_processes import wait_master, wait_nodes

pytestmark = pytest.mark.slow


async def test_a_job_rerun_after_its_worker_was_killed_reports_both_runs_and_its_result(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """kill -9 of the worker running a job that keeps its result: the job runs again on another
    worker; result(), awaited across the kill, returns the second run's value, and the status
    shows both runs, each on its node."""
    await client.ensure_queue("default")
    workers.start("--queue", "other", node_id="m0")  # the master, running none of these jobs
    await wait_master(client)
    victim = workers.start(node_id="w1")
    await wait_nodes(client, 2)
    handle = await Kept.perform_async(sleep=2, note="survivor")
    got: list[object] = []

    async def await_result() -> None:
        got.append(await handle.result(timeout=60))

    async with anyio.create_task_group() as tg:
        tg.start_soon(await_result)
        await wait_for_ledger(ledger, 1, kind="start")

        async def running_on_w1() -> bool:
            # The node's running event is a core publish: stored a moment after the job began.
            try:
                first = await handle.status()
            except natskiq.NotFound:
                return False
            return (first.state, first.node) == ("running", "w1")

        await until(running_on_w1, 10)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        rescuer = workers.start(node_id="w2")
    assert got == [{"note": "survivor", "pid": rescuer.pid}]
    status = await handle.wait(timeout=20)
    assert (status.state, status.node, status.finished) == ("succeeded", "w2", True)
    runs = [e.fields["node"] for e in status.events if e.state == "running"]
    assert runs == ["w1", "w2"]
    assert [r.pid for r in read_ledger(ledger)] == [rescuer.pid]  # the first run never ended


async def test_status_and_results_across_a_master_failover(tmp_path: Path) -> None:
    """On the 3-node cluster, kill -9 of the master while it runs some of the jobs: every job,
    those enqueued before the kill and after it, reaches succeeded and result() returns its value."""
    async with Harness(tmp_path, lease_ttl=2.0) as harness:
        client = harness.client
        assert client is not None
        kept = Kept.set(client=client)
        master = await harness.master()
        before = [await kept.perform_async(sleep=2.0, note={"i": i}) for i in range(30)]
        pid = harness.procs[master].pid
        await until(lambda: any(r["pid"] == pid for r in harness.rows("start")), 20)
        held = {r["jid"] for r in harness.rows("start") if r["pid"] == pid}
        await harness.kill_master()
        after = [await kept.perform_async(sleep=0.1, note={"i": i}) for i in range(30, 40)]
        handles = before + after
        with anyio.fail_after(90):
            statuses = [await handle.wait() for handle in handles]
            results = [await handle.result(timeout=10) for handle in handles]
        assert [s.state for s in statuses] == ["succeeded"] * len(handles)
        assert [r["note"] for r in results] == [{"i": i} for i in range(40)]
        assert held and all(pid != r["pid"] for h, r in zip(handles, results, strict=True) if h in held)
        rerun = [s for s in statuses if s.jid in held]
        assert all([e.state for e in s.events].count("running") >= 2 for s in rerun)
