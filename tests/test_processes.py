"""`natskiq worker` processes: exactly-once spread, master failover, graceful stop."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import api

from .conftest import Workers, read_ledger, until, wait_for_ledger
from .sample_workers import Record

pytestmark = pytest.mark.slow


async def lease_holder(client: natskiq.Client) -> str | None:
    holder = await api.master(client)
    return None if holder is None else str(holder["node"])


async def wait_master(client: natskiq.Client, not_node: str | None = None, timeout: float = 20) -> str:
    found: list[str] = []

    async def check() -> bool:
        node = await lease_holder(client)
        if node is not None and node != not_node:
            found.append(node)
            return True
        return False

    await until(check, timeout)
    return found[0]


async def wait_nodes(client: natskiq.Client, count: int) -> None:
    """Wait until ``count`` nodes have registered (each starts by creating its queues)."""

    async def check() -> bool:
        return len(await api.nodes(client)) >= count

    await until(check, 30)


async def test_thousand_jobs_three_workers_each_run_once(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """1,000 jobs from one producer run exactly once across 3 worker processes (one on uvloop)."""
    for i in range(3):
        workers.start("--concurrency", "20", *(["--event-loop", "uvloop"] if i == 0 else []))
    await wait_nodes(client, 3)
    holders: set[str | None] = set()
    jids = [await Record.perform_async(note=i) for i in range(1000)]
    holders.add(await lease_holder(client))
    rows = await wait_for_ledger(ledger, 1000, timeout=90)
    holders.add(await lease_holder(client))
    await anyio.sleep(1)  # any duplicate would be in flight now
    rows = read_ledger(ledger)
    counts = collections.Counter(r.jid for r in rows)
    assert set(counts) == set(jids)
    assert max(counts.values()) == 1, [j for j, c in counts.items() if c > 1][:5]
    per_process = collections.Counter(r.pid for r in rows)
    print(f"jobs per worker process: {sorted(per_process.values())}")
    assert len(per_process) > 1
    # One master throughout, and only one node ever said it became master.
    assert len(holders) == 1 and None not in holders
    assert workers.logs().count(" is master ") == 1


async def test_master_killed_another_takes_over(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """kill -9 of the master: another node wins the lease and later jobs all run."""
    procs = {f"w{i}": workers.start("--lease-ttl", "2", node_id=f"w{i}") for i in range(3)}
    await wait_nodes(client, 3)
    master = await wait_master(client)
    before = [await Record.perform_async(note="before") for _ in range(30)]
    await wait_for_ledger(ledger, 30)

    killed_at = time.monotonic()
    procs[master].send_signal(signal.SIGKILL)
    procs[master].wait()
    successor = await wait_master(client, not_node=master, timeout=20)
    failover = time.monotonic() - killed_at
    print(f"master failover after kill -9: {failover:.2f} s ({master} -> {successor})")
    assert successor in procs and successor != master

    after = [await Record.perform_async(note="after") for _ in range(100)]
    rows = await wait_for_ledger(ledger, 130, timeout=60)
    assert {r.jid for r in rows} >= set(before) | set(after)
    assert procs[master].pid not in {r.pid for r in rows if r.jid in set(after)}


async def test_sigterm_lets_running_jobs_finish(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """SIGTERM: a worker finishes its running jobs within --timeout and exits 0."""
    proc = workers.start("--timeout", "20", "--concurrency", "5")
    await wait_nodes(client, 1)
    jids = {await Record.perform_async(sleep=1.5, note="long") for _ in range(3)}
    await wait_for_ledger(ledger, 3, kind="start")
    proc.send_signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(proc.wait, 30) == 0
    rows = read_ledger(ledger)
    assert {r.jid for r in rows} == jids
    assert {r.pid for r in rows} == {proc.pid}
    logs = workers.logs()
    for jid in jids:
        assert f"start jid={jid} class=tests.Record queue=default" in logs
        assert f"done jid={jid} class=tests.Record queue=default duration=" in logs


async def test_sigterm_past_timeout_hands_jobs_back(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """SIGTERM with a short --timeout: unfinished jobs are NAKed and run on another node."""
    first = workers.start("--timeout", "1", "--concurrency", "5", node_id="first")
    await wait_nodes(client, 1)
    jids = {await Record.perform_async(sleep=3, note="long") for _ in range(3)}
    await wait_for_ledger(ledger, 3, kind="start")
    second = workers.start("--concurrency", "5", node_id="second")
    await wait_nodes(client, 2)
    first.send_signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(first.wait, 30) == 0
    rows = await wait_for_ledger(ledger, 3, timeout=30)
    assert {r.jid for r in rows} == jids
    assert {r.pid for r in rows} == {second.pid}


async def test_sigtstp_quiets_a_node(client: natskiq.Client, workers: Workers, ledger: Path) -> None:
    """SIGTSTP makes a node quiet: it takes no new jobs, another node runs them."""
    quiet = workers.start(node_id="quiet")
    await wait_nodes(client, 1)
    await wait_master(client)
    quiet.send_signal(signal.SIGTSTP)

    async def quiet_seen() -> bool:
        nodes = await api.nodes(client)
        return any(n["node"] == "quiet" and n["quiet"] for n in nodes) or (await lease_holder(client) is None)

    await until(quiet_seen)
    busy = workers.start(node_id="busy")
    jids = {await Record.perform_async(note="q") for _ in range(10)}
    rows = await wait_for_ledger(ledger, 10, timeout=30)
    assert {r.jid for r in rows} == jids
    assert {r.pid for r in rows} == {busy.pid}


def test_worker_command_reports_bad_input(nats_url: str) -> None:
    """A worker started with bad settings exits 2 with a clear message and runs nothing."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "natskiq",
            "worker",
            "--app",
            "tests.sample_workers",
            "--url",
            nats_url,
            "--queue",
            "bad.queue",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 2
    assert "invalid queue name 'bad.queue'" in result.stderr


def test_stats_json_names_the_master(nats_url: str, namespace: str, workers: Workers) -> None:
    """`natskiq stats --json` shows the nodes and which one is master."""
    workers.start(node_id="solo")
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "natskiq", "stats", "--json", "--url", nats_url, "--namespace", namespace],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        doc = json.loads(out)
        if doc["master"] and doc["nodes"]:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    assert doc["master"]["node"] == "solo"
    assert [n["node"] for n in doc["nodes"]] == ["solo"]
    assert {q["name"] for q in doc["queues"]} == {"default"}
