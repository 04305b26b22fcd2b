"""Batches on a real server: joining, counting once, callbacks once, children, status, hostile ids."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import testing
from natskiq.flow import batches, records

from .conftest import Row, failed_count, read_ledger, running_node, stored, until
from .sample_workers import Adder, Doomed, OnComplete, OnDeath, OnSuccess, Record, SecondTime, StuckAdder
from .test_cli_more import natskiq_cli


def callbacks(ledger: Path, bid: str) -> list[str]:
    """The kinds of the callbacks that ran for ``bid``, in order."""
    rows: list[Row] = read_ledger(ledger, "cb")
    return [row.note["kind"] for row in rows if row.note["bid"] == bid]  # type: ignore[index]


async def settled(client: natskiq.Client, *bids: str) -> None:
    """Wait until every batch has completed and fired, and no job is left in the default queue."""

    async def done() -> bool:
        for bid in bids:
            status = await natskiq.api.batch(client, bid)
            if not status.complete or "complete" not in status.fired:
                return False
        info = await client.js.stream_info(client.names.queue_stream("default"))
        return info.state.messages == 0

    await until(done, timeout=20)


async def test_callbacks_fire_once_with_the_counts(client: natskiq.Client, ledger: Path) -> None:
    """Every way of enqueueing joins the batch, a retried job counts once, and each callback
    fires exactly once with the batch id and its counts: success and complete for a batch
    whose jobs all succeed, death and complete (no success) for one with a dead job."""
    callbacks_given = {"on_success": OnSuccess, "on_complete": OnComplete, "on_death": OnDeath}
    async with natskiq.batch("good", **callbacks_given) as good:
        await Record.perform_async(0, "async")
        await Record.perform_in(0.3, 0, "in")
        await Record.perform_bulk([[0, "bulk"]] * 3)
        await SecondTime.perform_async()
        async with natskiq.batch("nested", on_success=OnSuccess) as child:  # one job of "good"
            await Record.perform_async(0, "nested")
        await Record.perform_async(0, "outside")  # after the child's block: "good" again
    async with natskiq.batch("bad", **callbacks_given) as bad:
        dead = await Doomed.perform_async()
        await Record.perform_async(0, "beside the dead")
    unbatched = await Record.perform_async(0, "no batch")
    status = await natskiq.api.batch(client, good.bid)
    assert (status.total, status.pending, status.open, status.complete) == (8, 8, False, False)
    with testing.fast_retries():
        async with running_node(client.url, client.namespace, concurrency=5):
            await settled(client, good.bid, bad.bid, child.bid)
            await until(lambda: len(read_ledger(ledger, "cb")) >= 5)
    assert callbacks(ledger, good.bid) == ["complete", "success"]
    assert callbacks(ledger, child.bid) == ["success"]
    assert sorted(callbacks(ledger, bad.bid)) == ["complete", "death"]
    good_status = await natskiq.api.batch(client, good.bid)
    assert (good_status.total, good_status.succeeded, good_status.failed) == (8, 8, 0)
    assert good_status.progress == 1.0 and good_status.parent is None
    assert (await natskiq.api.batch(client, child.bid)).parent == good.bid
    bad_status = await natskiq.api.batch(client, bad.bid)
    assert (bad_status.succeeded, bad_status.failed, bad_status.failures) == (1, 1, [dead])
    given = {row.note["kind"]: row.note["status"] for row in read_ledger(ledger, "cb")}  # type: ignore[index]
    assert given["death"]["failures"] == [dead]
    assert [r.note for r in read_ledger(ledger) if r.jid == unbatched] == ["no batch"]
    listed = [s.bid for s in await natskiq.api.batches(client)]
    assert set(listed) == {good.bid, bad.bid, child.bid}


async def test_a_redelivered_job_counts_once_and_finishes_the_firing(client: natskiq.Client) -> None:
    """A job whose node counted it, entered "complete" and died before enqueueing the callback
    is counted no second time when redelivered, and its settle enqueues the callback once."""
    async with natskiq.batch("redelivered", on_complete=OnComplete) as batch:
        await Record.perform_async(0, "once")
    job, _ = await stored(client, 1)
    js, names = client.js, client.names
    # What the dead node did: the marker, then the counting write (which entered "complete").
    await records.write(js, names.batch_marker_subject(batch.bid, job.jid), records.COUNTING, 0, 60)

    def succeed(record: records.Record) -> None:
        record["succeeded"] += 1

    await records.change(js, names, batch.bid, succeed, msg_id=f"{batch.bid}:{job.jid}")
    assert (await batch.status()).fired == []
    for _ in range(2):  # the redelivery, and one more run for good measure
        await batches.settle(js, names, job, succeeded=True)
    status = await batch.status()
    assert (status.succeeded, status.complete, status.fired) == (1, True, ["complete", "success"])
    info = await js.stream_info(names.queue_stream("default"))
    assert info.state.messages == 2  # the job (never acked here) and one callback


async def test_jobs_add_jobs_and_child_batches_to_their_batch(client: natskiq.Client, ledger: Path) -> None:
    """A job adds jobs to its own batch (self.batch) and opens a child batch counted as one job,
    and the parent succeeds once, after all of them."""
    async with natskiq.batch("adds", on_success=OnSuccess, on_complete=OnComplete) as parent:
        await Adder.perform_async(3)
    async with running_node(client.url, client.namespace, concurrency=5):
        await settled(client, parent.bid)
        await until(lambda: len(callbacks(ledger, parent.bid)) >= 2)
    status = await natskiq.api.batch(client, parent.bid)
    assert (status.total, status.succeeded, status.failed) == (5, 5, 0)  # adder, 3 added, the child
    assert callbacks(ledger, parent.bid) == ["complete", "success"]
    adder = next(r for r in read_ledger(ledger) if isinstance(r.note, dict))
    assert adder.note == {"batch": parent.bid}
    children = [s for s in await natskiq.api.batches(client) if s.parent == parent.bid]
    assert len(children) == 1 and callbacks(ledger, children[0].bid) == ["success"]
    with pytest.raises(natskiq.BatchError, match="has completed"):
        async with parent.jobs():
            pass


async def test_a_block_cancelled_by_a_timeout_still_closes(client: natskiq.Client, ledger: Path) -> None:
    """A job cancelled by its timeout inside self.batch.jobs() still adds what it stored, so
    its batch completes (with the job failed and the added job succeeded)."""
    async with natskiq.batch("stuck", on_complete=OnComplete) as batch:
        stuck = await StuckAdder.perform_async()
    async with running_node(client.url, client.namespace):
        await settled(client, batch.bid)
    status = await natskiq.api.batch(client, batch.bid)
    assert (status.total, status.succeeded, status.failures, status.open) == (2, 1, [stuck], False)


async def test_an_empty_batch_completes_when_closed(client: natskiq.Client, ledger: Path) -> None:
    """A batch no job joined completes as its block exits, and one whose block raised closes
    with the jobs already stored."""
    async with natskiq.batch("empty", on_complete=OnComplete) as empty:
        pass
    with pytest.raises(RuntimeError, match="half way"):
        async with natskiq.batch("interrupted") as interrupted:
            await Record.perform_async(0, "kept")
            raise RuntimeError("half way")
    assert (await natskiq.api.batch(client, empty.bid)).complete
    status = await natskiq.api.batch(client, interrupted.bid)
    assert (status.total, status.open) == (1, False)
    async with running_node(client.url, client.namespace):
        await settled(client, interrupted.bid)
        await until(lambda: callbacks(ledger, empty.bid) == ["complete"])


async def test_hostile_batch_fields_go_to_the_failed_set(client: natskiq.Client, ledger: Path) -> None:
    """A batch id that is not a name or not a string sends the job to the failed set with the
    reason, while a well-formed id of no batch just runs the job."""
    await client.ensure_queue("default")
    base = {"class": "tests.Record", "args": [0, "x"], "queue": "default"}
    for index, value in enumerate(["a.b>", 12, "ok-but-unknown"]):
        body = {**base, "jid": f"hostile{index}", "batch": value}
        await client.js.publish(client.names.queue_subject("default"), json.dumps(body).encode())
    async with running_node(client.url, client.namespace):
        await until(lambda: any(r.jid == "hostile2" for r in read_ledger(ledger)))
        await until(lambda: _failed_is(client, 2))
    reasons = [e.reason for e in await natskiq.api.find(client, "failed")]
    assert any("'batch'" in (reason or "") for reason in reasons)
    with pytest.raises(natskiq.ConfigError):
        await natskiq.api.batch(client, "no.such")
    with pytest.raises(natskiq.NotFound):
        await natskiq.api.batch(client, "nosuchbatch")


async def _failed_is(client: natskiq.Client, count: int) -> bool:
    return await failed_count(client) == count


async def test_callback_must_be_a_worker(client: natskiq.Client) -> None:
    """A callback that is not a Worker subclass is refused before anything is stored, so no
    batch is listed."""
    with pytest.raises(TypeError, match="on_success"):
        natskiq.batch(on_success=print)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        assert await natskiq.api.batches(client) == []


STATUS_KEYS = {
    "bid", "description", "parent", "created_at", "total", "pending", "succeeded", "failed", "failures",
    "open", "complete", "success", "completed_at", "callbacks", "fired",
}  # fmt: skip


async def test_batch_commands_print_status(client: natskiq.Client, ledger: Path) -> None:
    """`natskiq batch BID [--json]` and `natskiq batches [--json]` print a batch's counts, bar and
    failed jids, and a malformed id exits 2 and an unknown one 1 with one line."""
    async with natskiq.batch("cli run", on_death=OnDeath) as batch:
        dead = await Doomed.perform_async()
        await Record.perform_async(0, "cli")
    async with running_node(client.url, client.namespace):
        await settled(client, batch.bid)
    assert client.url is not None
    shown = await natskiq_cli("batch", batch.bid, url=client.url, namespace=client.namespace)
    assert shown.returncode == 0, shown.stderr
    assert f"batch     {batch.bid}  cli run" in shown.stdout
    assert "total 2  pending 0  succeeded 1  failed 1" in shown.stdout
    assert f"failed    {dead}" in shown.stdout and "[" + "#" * 30 + "] 100%" in shown.stdout
    as_json = await natskiq_cli("batch", batch.bid, "--json", url=client.url, namespace=client.namespace)
    doc = json.loads(as_json.stdout)
    assert set(doc) == STATUS_KEYS
    assert (doc["total"], doc["failed"], doc["failures"], doc["success"]) == (2, 1, [dead], False)
    listed = await natskiq_cli("batches", "--json", url=client.url, namespace=client.namespace)
    assert [row["bid"] for row in json.loads(listed.stdout)["batches"]] == [batch.bid]
    table = await natskiq_cli("batches", url=client.url, namespace=client.namespace)
    assert batch.bid in table.stdout and "failed" in table.stdout
    for bid, code, message in (
        ("no.such", 2, "natskiq: error: invalid batch name"),
        ("nosuch", 1, "natskiq: no batch nosuch"),
    ):
        bad = await natskiq_cli("batch", bid, url=client.url, namespace=client.namespace)
        assert (bad.returncode, bad.stdout) == (code, "")
        assert bad.stderr.startswith(message) and len(bad.stderr.splitlines()) == 1


async def test_drain_counts_batch_outcomes(client: natskiq.Client, ledger: Path) -> None:
    """natskiq.testing.drain counts a batch's outcomes as a node does, so the batch completes
    and its callback runs in the same drain."""
    async with natskiq.batch("drained", on_complete=OnComplete) as batch:
        await Record.perform_bulk([[0, "drained"]] * 2)
    assert await testing.drain(client) == 3  # the two jobs, then the callback they made due
    assert (await batch.status()).succeeded == 2
    assert callbacks(ledger, batch.bid) == ["complete"]


async def test_cancelled_jobs_count_as_failed_so_the_batch_completes(
    client: natskiq.Client, ledger: Path
) -> None:
    """A job of a batch cancelled while queued (deleted from its stream) and one cancelled
    while it runs count as failed in the batch: it completes, and its death and complete
    callbacks fire once each, instead of the batch staying pending for good."""
    given = {"on_success": OnSuccess, "on_complete": OnComplete, "on_death": OnDeath}
    async with natskiq.batch("cancelled", **given) as batch:
        queued = await Record.perform_async(0, "cancelled while queued")
        running = await Record.perform_async(30, "cancelled while running")
        await Record.perform_async(0, "runs")
    assert (await natskiq.api.cancel(client, queued))["deleted"] == ["queued"]
    async with running_node(client.url, client.namespace, concurrency=5):
        await until(lambda: any(row.jid == running for row in read_ledger(ledger, "start")))
        await natskiq.api.cancel(client, running)
        await settled(client, batch.bid)
        await until(lambda: len(callbacks(ledger, batch.bid)) >= 2)
    assert sorted(callbacks(ledger, batch.bid)) == ["complete", "death"]
    status = await natskiq.api.batch(client, batch.bid)
    assert (status.succeeded, status.failed, sorted(status.failures)) == (1, 2, sorted([queued, running]))
