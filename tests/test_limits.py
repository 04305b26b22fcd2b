"""Cluster-wide limits: ``concurrency=`` and ``rate=`` class keywords, held by
every node and shard through the limits bucket, through a master's kill -9."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

import natskiq
from natskiq import api
from natskiq.errors import ConfigError
from natskiq.options import Options, Rate
from natskiq.topology import ensure_queue

from .conftest import Row, Workers, failed_count, read_ledger, running_node, until, wait_for_ledger
from .sample_workers import Limited, Rated, Record
from .test_processes import wait_master, wait_nodes

ACK_WAIT = "2"  # a killed node's slots free 2 x ack wait after its last renewal


def test_limit_keywords_are_validated() -> None:
    """``concurrency`` takes a whole number from 1 and ``rate`` a count per window;
    anything else is a ConfigError where the class is defined."""

    class Both(natskiq.Worker, concurrency=2, rate="100/s"):
        async def perform(self) -> None: ...

    assert (Both.options.concurrency, Both.options.rate, Both.options.limited) == (2, Rate(100, 1), True)
    assert not Record.options.limited
    for text, rate in [("1000/m", Rate(1000, 60)), ("10/h", Rate(10, 3600)), (" 5 / d", Rate(5, 86400))]:
        assert Options(rate=text).rate == rate
    assert Options(rate=(7, timedelta(seconds=30))).rate == Rate(7, 30)
    bad: list[dict[str, object]] = [
        {"concurrency": 0},
        {"concurrency": 1.5},
        {"concurrency": True},
        {"rate": "100"},
        {"rate": "0/s"},
        {"rate": "10/week"},
        {"rate": "x/s"},
        {"rate": (10, 0.5)},
        {"rate": (10, 1.5)},
        {"rate": (0, 1)},
        {"rate": 100},
    ]
    for keywords in bad:
        with pytest.raises(ConfigError):

            class Bad(natskiq.Worker, **keywords):  # type: ignore[misc]
                async def perform(self) -> None: ...


async def test_jobs_over_the_limit_are_put_back_without_using_deliveries(
    client: natskiq.Client, nats_url: str, namespace: str, ledger: Path
) -> None:
    """With ``--max-deliveries 1``, jobs over a concurrency limit are put back as new
    messages, all run and none fails; every slot is freed once they ended."""
    await client.ensure_queue("default")
    jids = {await Limited.perform_async(0.3) for _ in range(9)}
    async with running_node(nats_url, namespace, concurrency=10, max_deliveries=1):

        async def some_held() -> bool:
            return bool(await api.find(client, "scheduled", limit=10))

        await until(some_held)  # a held job waits among the scheduled jobs
        held = (await api.find(client, "scheduled", limit=1))[0].jid
        assert held is not None

        async def reads_held() -> bool:  # its status says so, until it runs
            status = await client.job(held).status()
            return status.state != "queued" and any(e.fields.get("held") for e in status.events)

        await until(reads_held)
        rows = await wait_for_ledger(ledger, 9)
    assert {r.jid for r in rows} == jids
    assert await failed_count(client) == 0
    stream = await client.js.stream_info(client.names.queue_stream("default"))
    assert stream.state.last_seq > 9  # the put-back copies
    slots = client.names.limit_subject("c", Limited.name, 0).rsplit(".", 1)[0] + ".*"

    async def freed() -> bool:
        info = await client.js.stream_info(f"KV_{client.names.limits_bucket}", subjects_filter=slots)
        return not info.state.subjects  # delete markers gone too (their TTL is 1 s)

    await until(freed, timeout=10)


def most_at_once(starts: list[Row], ends: list[Row], killed_pid: int, killed_at: float) -> int:
    """The most runs that overlapped: each from its start to its end (to the kill, on the killed node)."""
    ends_of: dict[tuple[str, int], list[float]] = {}
    for row in sorted(ends, key=lambda r: r.at):
        ends_of.setdefault((row.jid, row.pid), []).append(row.at)
    edges: list[tuple[float, int]] = []
    for start in sorted(starts, key=lambda r: r.at):
        left = ends_of.get((start.jid, start.pid)) or ([killed_at] if start.pid == killed_pid else [])
        assert left, f"run of {start.jid} on {start.pid} never ended"
        edges += [(start.at, 1), (left.pop(0), -1)]
    running = most = 0
    for _, step in sorted(edges):  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
async def test_limits_hold_across_nodes_shards_and_a_master_kill(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """3 nodes over 2 shards: a ``concurrency=3`` class reaches 3 at once and never more,
    through a kill -9 of a master, and every job runs; a ``rate="20/s"`` class
    never starts more than 20 in any second; unlimited jobs in the same queue
    are not held up behind them."""
    await ensure_queue(client.js, client.names, "default", partitions=2)
    args = ("--concurrency", "5", "--partitions", "2", "--ack-wait", ACK_WAIT)
    procs = {f"w{i}": workers.start(*args, node_id=f"w{i}") for i in range(3)}
    await wait_nodes(client, 3)
    master = procs[await wait_master(client)]
    limited = {await Limited.perform_async(0.4) for _ in range(24)}
    rated = {await Rated.perform_async() for _ in range(50)}
    free = {await Record.perform_async(note="free") for _ in range(10)}

    def done(note: str) -> set[str]:
        return {r.jid for r in read_ledger(ledger) if r.note == note}

    # The unlimited jobs finish while the limited ones are still waiting their turn.
    await until(lambda: done("free") == free, timeout=10)
    assert len(done("limited")) < len(limited)

    def running_on_master() -> bool:
        ended = {r.jid for r in read_ledger(ledger) if r.pid == master.pid}
        starts = read_ledger(ledger, "start")
        return any(r.pid == master.pid and r.jid not in ended for r in starts) and len(starts) >= 4

    # Killed while it runs a limited job: that job's slot stays held until its TTL ends.
    await until(running_on_master, timeout=15)
    master.send_signal(signal.SIGKILL)
    master.wait()
    killed_at = time.time()
    await until(lambda: done("limited") == limited and done("rated") == rated, timeout=40)

    def all_ended() -> bool:
        # A job put back just as its node died was also redelivered: it may run twice (at least once).
        ended = {(r.jid, r.pid) for r in read_ledger(ledger)}
        return all((r.jid, r.pid) in ended for r in read_ledger(ledger, "start") if r.pid != master.pid)

    await until(all_ended, timeout=10)
    starts = [r for r in read_ledger(ledger, "start") if r.note == "limited"]
    ends = [r for r in read_ledger(ledger) if r.note == "limited"]
    most = most_at_once(starts, ends, master.pid, killed_at)
    assert most == 3, (most, master.pid, killed_at, starts, ends)
    assert any(r.pid == master.pid for r in starts) and len(starts) > len(limited)  # one ran again
    assert len({r.pid for r in ends}) >= 2
    rated_starts = sorted(r.at for r in read_ledger(ledger) if r.note == "rated")
    assert max(sum(1 for t in rated_starts if s <= t < s + 1.0) for s in rated_starts) <= 20
