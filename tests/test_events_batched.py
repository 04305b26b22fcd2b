"""A node's lifecycle events go out in batches with its acks (status.events.Emitter.batched):
every event stored, whole and in order per job, and a batch never costs the connection."""

from __future__ import annotations

import json
from collections import defaultdict

import anyio
import nats
import pytest

import natskiq
from natskiq import api
from natskiq.status import events as events_module
from natskiq.status.events import Emitter
from natskiq.topology import ensure_events

from .conftest import running_node, until

JOBS = 300


class Quick(natskiq.Worker, name="tests.batched.Quick"):
    async def perform(self, n: int) -> int:
        return n


def test_nats_py_has_the_internals_a_batch_is_written_through() -> None:
    """Else every event is published on its own, correct but several times dearer:
    a nats-py upgrade that removes them shows here, not only in the benchmark."""
    assert events_module._RAW


async def test_every_event_of_a_burst_is_stored_whole_and_in_order(client: natskiq.Client) -> None:
    """300 jobs run at once: 600 node events, each valid JSON on its own subject, each
    job's running stored before its succeeded, and the node's own connection untouched."""
    handles = await Quick.perform_bulk([[i] for i in range(JOBS)])
    async with running_node(client.url, client.namespace, node_id="b1", concurrency=50) as launcher:

        async def all_stored() -> bool:
            found = await api.events(client, cls=Quick.name, limit=None)
            return sum(e.state == "succeeded" for e in found) == JOBS

        await until(all_stored, timeout=30)
        assert launcher.client.nc.is_connected
    found = await api.events(client, cls=Quick.name, limit=None)
    per_job: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event in found:
        per_job[event.jid].append((event.seq, event.state))
    assert set(per_job) == {str(h) for h in handles}
    for jid, seen in per_job.items():
        node_states = [state for _, state in sorted(seen) if state != "queued"]
        assert node_states == ["running", "succeeded"], (jid, seen)
    succeeded = [e for e in found if e.state == "succeeded"]
    assert {(e.fields["node"], e.fields["attempt"]) for e in succeeded} == {("b1", 1)}


@pytest.mark.parametrize("raw", [True, False], ids=["one-write", "publish-each"])
async def test_a_batch_with_an_event_over_the_max_payload_keeps_the_rest(
    client: natskiq.Client, monkeypatch: pytest.MonkeyPatch, raw: bool
) -> None:
    """An oversized event (which the server would close the connection for) is left out,
    one with non-ASCII text is sized in bytes; the others are stored and the connection
    lives, whether the batch is written at once or (nats-py without the internals) each
    event is published."""
    monkeypatch.setattr(events_module, "_RAW", raw)
    await ensure_events(client.js, client.names)
    nc = await nats.connect(client.url)
    try:
        flushes: list[int] = []
        emitter = Emitter(nc, client.names, batched=lambda: flushes.append(1))
        await emitter.emit("progress", "j1", "default", "C", message="before")
        await emitter.emit("progress", "j2", "default", "C", message="x" * (nc.max_payload + 10))
        await emitter.emit("progress", "j3", "default", "C", message="after: naïve ✓")
        assert flushes == [1]  # one flush asked for the three
        await emitter.flush()
        await nc.flush()
        assert nc.is_connected

        async def two_stored() -> bool:
            return len(await api.events(client, cls="C", limit=None)) == 2

        await until(two_stored, timeout=10)
        found = await api.events(client, cls="C", limit=None)
        assert [(e.jid, e.fields["message"]) for e in found] == [("j1", "before"), ("j3", "after: naïve ✓")]
        await anyio.sleep(0.2)
        assert nc.is_connected and not nc.is_closed
    finally:
        await nc.close()


async def test_events_queued_before_a_reply_go_out_before_it(client: natskiq.Client) -> None:
    """A reply (a kept result's outcome) first flushes the node's queued events, so a
    client that heard the outcome finds the job's earlier events stored too."""
    await ensure_events(client.js, client.names)
    listener = await nats.connect(client.url)
    sub = await listener.subscribe(f"{client.namespace}.>")
    await listener.flush()  # the subscription is the server's before anything is published
    # Connected after the subscription: nats-server 2.15 can drop the first message of a
    # connection made before another's new subscription (CONTRIBUTING.md, "NATS behaviours
    # a test can trip on").
    nc = await nats.connect(client.url)
    try:
        seen: list[str] = []
        emitter = Emitter(nc, client.names, batched=lambda: None)
        await emitter.emit_run("running", "r1", "default", "C", "n1", 1)
        await emitter.reply("tok", "r1", b'{"ok":true}')
        for _ in range(2):
            msg = await sub.next_msg(timeout=5)
            seen.append(msg.subject)
        assert seen == [
            f"{client.namespace}.evt.default.C.running.r1",
            client.names.reply_subject("tok", "r1"),
        ]
        doc = json.loads((await client.js.get_msg(client.names.events_stream, subject=seen[0])).data)
        assert (doc["state"], doc["node"], doc["attempt"]) == ("running", "n1", 1)
    finally:
        await listener.close()
        await nc.close()
