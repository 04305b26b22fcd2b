"""Pausing queues: a paused queue dispatches nothing, its pause outlives the workers, resume restarts it."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import api, cli
from natskiq.topology import Pause, ensure_consumer, ensure_queue, pause_of, read_partitions

from .conftest import Workers, read_ledger, running_node, until, wait_for_ledger
from .sample_workers import Record, Urgent


async def _consumer_pauses(client: natskiq.Client, queue: str, partitions: int) -> list[Pause]:
    names = client.names
    return [
        pause_of(await client.js.consumer_info(names.queue_stream(queue), names.consumer(shard)))
        for shard in range(partitions)
    ]


async def test_paused_queue_dispatches_nothing_even_what_its_master_holds(
    client: natskiq.Client, nats_url: str, namespace: str, ledger: Path
) -> None:
    """A pause stops dispatch of the jobs the master already holds and of new ones, while
    another queue runs; resume runs them, and a pause with an end resumes by itself."""
    async with running_node(nats_url, namespace, queues=("default", "critical"), concurrency=2):
        # Two long jobs fill both slots; the master then holds the next ones, ready for a free slot.
        long = [(await Record.perform_async(sleep=1.5)).jid for _ in range(2)]
        await wait_for_ledger(ledger, 2, kind="start")
        waiting = [(await Record.perform_async(note=n)).jid for n in range(6)]
        stream, consumer = client.names.queue_stream("default"), client.names.consumer(0)
        await until(lambda: _held(client, stream, consumer, 3))
        assert await api.pause(client, "default") is None
        # Hostile announcements change nothing: the consumer's own state decides.
        await client.nc.publish(client.names.pause_subject, b"\xff not json")
        await client.nc.publish(client.names.pause_subject, json.dumps({"queue": "a.b"}).encode())
        await wait_for_ledger(ledger, 2)  # the long jobs finish: both slots free
        barrier = await Urgent.perform_async(note="barrier")
        done = {row.jid for row in await wait_for_ledger(ledger, 3)}
        assert barrier.jid in done
        assert done.isdisjoint(waiting), "a job of the paused queue ran"
        info = await api.queue_info(client, "default")
        assert (info.paused, info.paused_until, info.ready + info.running) == (True, None, 6)

        assert await api.resume(client, "default") is True
        rows = await wait_for_ledger(ledger, 3 + len(waiting))
        assert set(waiting) <= {row.jid for row in rows}
        assert not (await api.queue_info(client, "default")).paused

        end = await api.pause(client, "default", timedelta(seconds=1.5))
        assert end is not None
        late = await Record.perform_async(note="late")
        barrier = await Urgent.perform_async(note="barrier 2")
        done = {row.jid for row in await wait_for_ledger(ledger, 10)}
        assert barrier.jid in done and late.jid not in done
        assert (await api.queue_info(client, "default")).paused_until == pytest.approx(end, abs=0.01)
        rows = await wait_for_ledger(ledger, 11)
        ran = next(row for row in rows if row.jid == late.jid)
        assert ran.at >= end - 0.05, "the job ran before the pause ended"
    assert set(long) <= {row.jid for row in read_ledger(ledger)}


async def _held(client: natskiq.Client, stream: str, consumer: str, count: int) -> bool:
    """Whether ``count`` or more of the queue's jobs are delivered (running, or held by the master)."""
    return (await client.js.consumer_info(stream, consumer)).num_ack_pending >= count


async def test_every_partition_pauses_and_a_partition_added_later_starts_paused(
    client: natskiq.Client,
) -> None:
    """Pausing a 2-partition queue pauses both consumers; a third partition, a consumer update
    and a resume keep to the queue's pause."""
    js, names = client.js, client.names
    await ensure_queue(js, names, "parts", partitions=2)
    end = await api.pause(client, "parts", datetime.now(UTC) + timedelta(hours=1))
    assert [p.paused for p in await _consumer_pauses(client, "parts", 2)] == [True, True]
    await ensure_queue(js, names, "parts", partitions=3)
    pauses = await _consumer_pauses(client, "parts", 3)
    assert [p.until == pytest.approx(end, abs=1e-3) for p in pauses] == [True, True, True]
    # A worker with another ack wait updates the consumers: they stay paused.
    await ensure_consumer(js, names, "parts", ack_wait=7.0, shard=0)
    assert (await _consumer_pauses(client, "parts", 1))[0].paused
    info = await api.queue_info(client, "parts")
    assert (info.paused, info.partitions) == (True, 3)
    assert info.paused_until == pytest.approx(end, abs=1e-3)
    assert await api.resume(client, "parts") is True
    assert [p.paused for p in await _consumer_pauses(client, "parts", 3)] == [False, False, False]
    assert await api.resume(client, "parts") is False
    # A consumer made after the resume is not paused (a past pause_until is not copied).
    await ensure_queue(js, names, "parts", partitions=4)
    assert not (await _consumer_pauses(client, "parts", 4))[3].paused


async def test_pause_bad_input_is_refused(client: natskiq.Client) -> None:
    """An unknown or malformed queue, a naive, past or odd end each raise our errors and change nothing."""
    await ensure_queue(client.js, client.names, "real")
    with pytest.raises(natskiq.NotFound):
        await api.pause(client, "nope")
    with pytest.raises(natskiq.NotFound):
        await api.resume(client, "nope")
    with pytest.raises(natskiq.ConfigError):
        await api.pause(client, "a.b")
    for bad in (datetime(2030, 1, 1), datetime.now(UTC) - timedelta(seconds=1), timedelta(0), 30.0):
        with pytest.raises(natskiq.ConfigError):
            await api.pause(client, "real", bad)  # type: ignore[arg-type]
    assert not (await api.queue_info(client, "real")).paused


@pytest.mark.slow
async def test_pause_outlives_killed_workers_and_covers_a_partition_added_later(
    workers: Workers, client: natskiq.Client, ledger: Path
) -> None:
    """A queue paused under a worker stays paused when it is killed -9 and another starts with
    a second partition and another ack wait (a new consumer, an updated one), until resumed."""
    first = workers.start("--queue", "default", "--queue", "critical")
    await Urgent.perform_async(note="up")
    await wait_for_ledger(ledger, 1)
    await api.pause(client, "default")
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.start("--queue", "default", "--queue", "critical", "--ack-wait", "6", "--partitions", "2")

    async def split() -> bool:
        counts = [await read_partitions(client.js, client.names, q) for q in ("default", "critical")]
        return counts == [2, 2]

    await until(split)
    # Enqueued in turn: one of each pair on each partition, so on each shard's master.
    waiting = [(await Record.perform_async(note=n)).jid for n in range(2)]
    barriers = [(await Urgent.perform_async(note=n)).jid for n in range(2)]
    done = {row.jid for row in await wait_for_ledger(ledger, 3)}
    assert set(barriers) <= done and done.isdisjoint(waiting)
    info = await api.queue_info(client, "default")
    assert (info.paused, info.partitions, info.ready) == (True, 2, 2)
    await api.resume(client, "default")
    assert set(waiting) <= {row.jid for row in await wait_for_ledger(ledger, 5)}


async def test_cli_pauses_lists_and_resumes_a_queue(
    client: natskiq.Client, nats_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`natskiq queue pause Q [--until]` and `resume Q` change the pause `queues` shows, as text and JSON."""
    await ensure_queue(client.js, client.names, "emails")

    async def natskiq_cli(*argv: str) -> tuple[int, str, str]:
        code = await anyio.to_thread.run_sync(cli.main, [*argv, "--url", nats_url, "--namespace", namespace])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await natskiq_cli("queue", "pause", "emails", "--until", "30m", "--json")
    doc = json.loads(out)
    assert (code, doc["queue"], doc["paused"]) == (0, "emails", True)
    assert doc["until"] == pytest.approx(time.time() + 1800, abs=60)
    code, out, _ = await natskiq_cli("queues", "--json")
    (listed,) = json.loads(out)["queues"]
    assert (listed["paused"], listed["paused_until"]) == (True, pytest.approx(doc["until"], abs=1e-3))
    _, out, _ = await natskiq_cli("queues")
    assert "until 30m from now" in out
    _, out, _ = await natskiq_cli("queue", "pause", "emails")
    assert out.startswith("paused queue emails until resumed")
    _, out, _ = await natskiq_cli("stats")
    assert "until resumed" in out
    _, out, _ = await natskiq_cli("queue", "resume", "emails")
    assert out.strip() == "resumed queue emails"
    code, out, _ = await natskiq_cli("queue", "resume", "emails", "--json")
    assert (code, json.loads(out)) == (0, {"queue": "emails", "paused": False, "was_paused": False})
    assert not (await api.queue_info(client, "emails")).paused


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pause", "nope"], "no queue named 'nope'"),
        (["resume", "nope"], "no queue named 'nope'"),
        (["pause", "a.b"], "invalid queue name"),
        (["pause", "emails", "--until", "2001-01-01T00:00:00Z"], "not in the future"),
        (["resume", "emails", "--until", "1h"], "--until goes with pause"),
        (["pause"], "needs a queue name"),
        (["pause", "emails", "--until", "2030-01-01T10:00"], "has no time zone"),
        (["pause", "emails", "--until", "soon"], "neither an ISO time nor a span"),
    ],
)
async def test_cli_pause_bad_input_exits_2(
    client: natskiq.Client,
    nats_url: str,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    """An unknown or malformed queue, a past or zoneless end or a stray --until exits 2 with one line."""
    await ensure_queue(client.js, client.names, "emails")
    try:
        code = await anyio.to_thread.run_sync(
            cli.main, ["queue", *argv, "--url", nats_url, "--namespace", namespace]
        )
    except SystemExit as exc:  # argparse refuses a malformed flag itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert not (await api.queue_info(client, "emails")).paused
