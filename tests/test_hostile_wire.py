"""One hostile message must never kill, stall or blind the cluster.

Each input is published raw with nats-py, as an attacker with publish rights
would send it, with legitimate jobs between them; `natskiq worker`
processes must all stay up, every legitimate job must run, and each hostile
job must end in the failed set with a reason."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import api
from natskiq.dispatch.lease import current_token
from natskiq.dispatch.protocol import ACK_HEADER, TOKEN_HEADER

from .conftest import Workers, nested, until, wait_for_ledger
from .sample_workers import Record
from .test_processes import lease_holder, wait_master, wait_nodes

pytestmark = pytest.mark.slow

HUGE_INT = b"1" + b"0" * 400


def envelope(jid: str, cls: str = "tests.Boom", **fields: object) -> dict[str, object]:
    return {"jid": jid, "class": cls, "args": [], "kwargs": {}, "queue": "default", "retry": 0, **fields}


def raw(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


POISON: dict[str, bytes] = {
    # json.loads reads 1e400 as inf: the failure record could never be encoded.
    "p1": raw(envelope("p1", created_at=1.0)).replace(b'"created_at": 1.0', b'"created_at": 1e400'),
    # An int no float can hold: float() raised OverflowError before the job started.
    "p2": raw(envelope("p2", created_at=1)).replace(b'"created_at": 1', b'"created_at": ' + HUGE_INT),
    # Nested just under the decoder's limit: encoding its failure ran out of recursion.
    "p3": raw(envelope("p3")).replace(b'"args": []', b'"args": ' + b"[" * 980 + b"]" * 980),
    "p4": raw(envelope("p4", args=[1.0])).replace(b'"args": [1.0]', b'"args": [-1e400]'),
    "p5": raw(envelope("p5", enqueued_at=-5.0)),
    "p6": raw(envelope("p6", failed_at=1.0)).replace(b'"failed_at": 1.0', b'"failed_at": NaN'),
    "p7": raw(envelope("p7", headers={"deep": nested(100)})),
    "p8": raw(envelope("p8", **{"class": "x" * 5000})),
    "p9": raw(envelope("p9", retry=10**30)),
}


async def test_poison_envelopes_end_in_failed_and_no_worker_dies(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """Envelopes whose numbers or nesting once crashed the failure path are each kept in the
    failed set with a reason, while both worker processes stay up and run every legitimate job."""
    await client.ensure_queue("default")
    procs = [workers.start(node_id="w0"), workers.start(node_id="w1")]
    subject = client.names.queue_subject("default")
    legit = []
    for payload in POISON.values():
        legit.append(await Record.perform_async(note="between"))
        await client.js.publish(subject, payload)
    legit.append(await Record.perform_async(note="after"))

    async def all_failed() -> bool:
        return len(await api.find(client, "failed")) == len(POISON)

    await until(all_failed, timeout=30)
    rows = await wait_for_ledger(ledger, len(legit))
    assert {r.jid for r in rows} == set(legit)
    entries = await api.find(client, "failed")
    assert all(e.job is None and e.reason for e in entries), [(e.jid, e.reason) for e in entries]
    assert {e.raw for e in entries} == set(POISON.values())  # kept byte for byte
    assert [p.poll() for p in procs] == [None, None], workers.logs()
    stats = await api.stats(client)
    json.dumps(stats.to_dict(), allow_nan=False)


async def test_jobs_at_the_size_limit_pass_through_another_node(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """A job stored just under the server's max payload, run on a node other than the
    master, runs (or fails into the failed set) without the master's connection being closed."""
    await client.ensure_queue("default")
    master = workers.start("--queue", "other", node_id="m0")
    await wait_master(client)
    runner = workers.start(node_id="w1")
    await wait_nodes(client, 2)
    limit = client.nc.max_payload
    subject = client.names.queue_subject("default")

    def padded(doc: dict[str, object], size: int) -> bytes:
        body = raw(doc)
        return body.replace(b'"pad"', b'"' + b"p" * (size - len(body) + 3) + b'"', 1)

    big = padded(envelope("big1", "tests.Record", kwargs={"note": "pad"}), limit - 40)
    doomed = padded(envelope("big2", "tests.Boom", retry=3, kwargs={"note": "pad"}), limit - 40)
    assert len(big) == len(doomed) == limit - 40
    await client.js.publish(subject, big)
    await client.js.publish(subject, doomed)
    after = await Record.perform_async(note="after")

    rows = await wait_for_ledger(ledger, 2, timeout=30)
    assert {r.jid for r in rows} == {"big1", after}

    async def doomed_kept() -> bool:
        return len(await api.find(client, "failed")) == 1

    await until(doomed_kept, timeout=30)
    [entry] = await api.find(client, "failed")
    # No room beside it for even the record's headers: kept cut to fit, its size and reason noted.
    assert entry.reason and "too large" in entry.reason, entry.reason
    assert entry.raw and doomed.startswith(entry.raw)
    assert [master.poll(), runner.poll()] == [None, None], workers.logs()
    assert "maximum payload" not in workers.logs()


async def test_forged_master_tokens_fence_out_nobody(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """A forged announcement, dispatch or demand report with a huge fencing token neither
    stops the nodes taking the real master's jobs nor makes the master step down."""
    await client.ensure_queue("default")
    workers.start(node_id="w0")
    master = await wait_master(client)
    workers.start(node_id="w1")
    await wait_nodes(client, 2)
    before = await current_token(client.js, client.names)
    forged = json.dumps({"token": 10**12}).encode()
    await client.nc.publish(client.names.master_subject, forged)
    headers = {TOKEN_HEADER: str(10**12), ACK_HEADER: "nowhere.at.all"}
    for node in ("w0", "w1"):
        await client.nc.publish(client.names.dispatch_subject(node), raw(envelope("f1")), headers=headers)
    report = {"node": "w9", "concurrency": 10, "busy": 0, "queues": [["default", 1]], "token": 10**12}
    await client.nc.publish(client.names.demand_subject, json.dumps(report).encode())
    await client.nc.flush()

    jids = [await Record.perform_async(sleep=0.1, note=i) for i in range(40)]
    rows = await wait_for_ledger(ledger, len(jids))
    assert {r.jid for r in rows} == set(jids)
    assert {r.pid for r in rows} == {p.pid for p in workers.procs}  # both nodes took jobs
    assert await lease_holder(client) == master
    assert await current_token(client.js, client.names) == before
    logs = workers.logs()
    assert "lost the lease" not in logs and "has seen a newer master" not in logs
    assert "ignoring master token" in logs


async def test_paused_master_hands_back_what_it_pulls_on_waking(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """A master SIGSTOPped past its lease and woken strands no job: every job, including
    those enqueued while it slept, runs long before the (minute-long) ack wait."""
    await client.ensure_queue("default")
    args = ("--lease-ttl", "1", "--ack-wait", "60")
    procs = {node: workers.start(*args, node_id=node) for node in ("w0", "w1")}
    master = await wait_master(client)
    await wait_nodes(client, 2)
    first = [await Record.perform_async(note="first") for _ in range(20)]
    await wait_for_ledger(ledger, 20)

    procs[master].send_signal(signal.SIGSTOP)
    try:
        await wait_master(client, not_node=master)
        during = [await Record.perform_async(sleep=0.05, note="during") for _ in range(100)]
    finally:
        procs[master].send_signal(signal.SIGCONT)
    after = [await Record.perform_async(sleep=0.05, note="after") for _ in range(100)]
    rows = await wait_for_ledger(ledger, 220, timeout=40)
    assert {r.jid for r in rows} == {*first, *during, *after}
    assert procs[master].poll() is None
    await anyio.lowlevel.checkpoint()


async def test_unscheduled_messages_on_schedule_subjects_reach_the_failed_set(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """Messages on scheduled/retry subjects without a usable Nats-Schedule header (stored by the
    server, never fired) are moved to the failed set by the master, while real delayed jobs run."""
    await client.ensure_queue("default")
    workers.start(node_id="w0")
    await wait_master(client)
    names = client.names
    bare = raw(envelope("s1", "tests.Record"))
    await client.js.publish(names.scheduled_subject("default", "s1"), bare)
    empty = raw(envelope("s2", "tests.Record"))
    await client.js.publish(names.retry_subject("default", "s2"), empty, headers={"Nats-Schedule": ""})
    delayed = await Record.perform_in(0.5, note="delayed")

    async def both_failed() -> bool:
        return len(await api.find(client, "failed")) == 2

    await until(both_failed, timeout=30)
    entries = await api.find(client, "failed")
    assert {e.raw for e in entries} == {bare, empty}
    assert all(e.reason and "Nats-Schedule" in e.reason for e in entries), [e.reason for e in entries]
    rows = await wait_for_ledger(ledger, 1)
    assert [r.jid for r in rows] == [delayed]
    assert await api.find(client, "scheduled") == [] and await api.find(client, "retry") == []
