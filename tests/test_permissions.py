"""A producer with only the permissions docs/guides/auth.md lists can enqueue and publish
its jobs' queued and scheduled events, and cannot reach what would let it forge a master,
touch the failed set or forge a node's events; one without the events' rights still enqueues."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

import natskiq
from natskiq import api
from natskiq.dispatch.protocol import ACK_HEADER, TOKEN_HEADER
from natskiq.ops.server import Server
from natskiq.topology import Names

from .conftest import Workers, running_node, until, wait_for_ledger
from .sample_workers import Record
from .test_processes import lease_holder, wait_master

pytestmark = pytest.mark.slow

NAMESPACE = "perm"


def producer_permissions(
    names: Names, queues: list[str], *, events: bool = True, follow: bool = True
) -> dict[str, object]:
    """The auth guide's producer permissions, for namespace ``names`` and these queues
    (without the events' pair when not ``events``, without the rights to follow jobs
    when not ``follow``)."""
    streams = [names.queue_stream(queue) for queue in queues]
    ns = names.namespace
    reads = [names.events_stream, names.kv_stream(names.results_bucket)]
    return {
        "publish": {
            "allow": [
                f"{ns}.queue.>",
                f"{ns}.scheduled.>",
                *([f"{ns}.evt.*.*.queued.*", f"{ns}.evt.*.*.scheduled.*"] if events else []),
                *(f"$JS.API.STREAM.INFO.{stream}" for stream in streams),
                *(f"$JS.API.CONSUMER.INFO.{stream}.*" for stream in streams),
                *(f"$JS.API.STREAM.MSG.GET.{stream}" for stream in (reads if follow else [])),
                *(
                    [
                        f"$JS.API.CONSUMER.CREATE.{names.events_stream}",
                        f"$JS.API.CONSUMER.CREATE.{names.events_stream}.>",
                        f"$JS.FC.{names.events_stream}.>",
                    ]
                    if follow
                    else []
                ),
            ]
        },
        "subscribe": {
            "allow": [
                "_INBOX.>",
                *([f"{ns}.evt.>", f"$KV.{ns}_results.>", f"{ns}.reply.>"] if follow else []),
            ]
        },
    }


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    """A JetStream server with a worker user (everything), a producer user (the listed
    permissions) and a bare producer (those to enqueue only: no events, no following)."""
    users = [
        {"user": "worker", "password": "worker-secret"},
        {
            "user": "producer",
            "password": "producer-secret",
            "permissions": producer_permissions(Names(NAMESPACE), ["default"]),
        },
        {
            "user": "bare",
            "password": "bare-secret",
            "permissions": producer_permissions(Names(NAMESPACE), ["default"], events=False, follow=False),
        },
    ]
    config = tmp_path / "server.conf"
    config.write_text(
        f'listen: "127.0.0.1:-1"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        f"authorization {{ users = {json.dumps(users)} }}\n"
    )
    server = Server(config=config)
    url = server.start()
    try:
        yield url.replace("nats://", "nats://{}@")
    finally:
        server.stop()


@pytest.mark.parametrize("partitions", [1, 3])
async def test_a_producer_with_enqueue_rights_only_enqueues(
    guarded: str, tmp_path: Path, ledger: Path, partitions: int
) -> None:
    """The producer's perform_async and perform_in run on a worker (a queue in
    3 partitions too: it learns them and fills them in turn) and their queued and
    scheduled events are stored, and it follows them (result, wait, status); its forged
    master announcement, dispatch and demand report, its write to the failed set and its
    forged succeeded event are refused."""
    workers = Workers(guarded.format("worker:worker-secret"), NAMESPACE, tmp_path)
    try:
        workers.start("--partitions", str(partitions), node_id="w0")
        async with natskiq.connect(guarded.format("worker:worker-secret"), namespace=NAMESPACE) as admin:
            master = await wait_master(admin)
            async with natskiq.connect(
                guarded.format("producer:producer-secret"), namespace=NAMESPACE
            ) as producer:
                names = producer.names
                now = await Record.set(client=producer).perform_async(note="now")
                assert names.partitions("default") == partitions
                later = await Record.set(client=producer).perform_in(0.2, note="later")
                forged = json.dumps({"token": 10**12}).encode()
                await producer.nc.publish(names.master_subject, forged)
                headers = {TOKEN_HEADER: str(10**12), ACK_HEADER: "x"}
                await producer.nc.publish(names.dispatch_subject("w0"), b"{}", headers=headers)
                await producer.nc.publish(
                    names.demand_subject, json.dumps({"node": "w9", "token": 10**12}).encode()
                )
                await producer.nc.publish(names.failed_subject("default"), b"forged failure")
                for state in ("succeeded", "queued"):  # in this order: the second shows the first arrived
                    event = {"jid": "forged", "queue": "default", "class": "tests.Record", "state": state}
                    subject = names.event_subject("default", "tests.Record", state, "forged")
                    await producer.nc.publish(subject, json.dumps({**event, "at": 1.0}).encode())
                await producer.nc.flush()
                # With the rights to follow its jobs: their result, wait and status.
                kept = await Record.set(client=producer, keep_result=60).perform_async(sleep=0.5, note="kept")
                assert await kept.result(timeout=20) is None
                assert (await later.wait(timeout=20)).state == "succeeded"
                assert (await now.wait(timeout=20)).state == (await now.status()).state == "succeeded"
            rows = await wait_for_ledger(ledger, 3)
            assert {r.jid for r in rows} == {now, later, kept}

            async def settled() -> bool:
                return not await api.find(admin, "queued") and not await api.find(admin, "scheduled")

            await until(settled)
            assert await api.find(admin, "failed") == []
            assert await lease_holder(admin) == master

            async def states(jid: str) -> list[str]:
                return [event.state for event in await api.events(admin, jid=jid)]

            await until(lambda: _has_all(states(now), {"queued", "succeeded"}))
            await until(lambda: _has_all(states(later), {"scheduled", "succeeded"}))
            await until(lambda: _has_all(states("forged"), {"queued"}))
            assert await states("forged") == ["queued"]
        logs = workers.logs()
        assert "ignoring master token" not in logs and "newer master" not in logs  # never got through
    finally:
        workers.stop_all()


async def _has_all(states: Awaitable[list[str]], wanted: set[str]) -> bool:
    return wanted <= set(await states)


async def test_a_producer_without_event_rights_still_enqueues(
    guarded: str, ledger: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer denied the events' subjects enqueues and its jobs run; the server refuses
    their queued and scheduled events (so the status starts at running), and the reply
    subscription of a job that keeps its result; the connection stays up, and the client logs
    each refusal once as a warning naming the subject."""
    async with running_node(guarded.format("worker:worker-secret"), NAMESPACE) as node:
        async with natskiq.connect(guarded.format("worker:worker-secret"), namespace=NAMESPACE) as admin:
            with caplog.at_level(logging.DEBUG, logger="natskiq"):
                async with natskiq.connect(guarded.format("bare:bare-secret"), namespace=NAMESPACE) as bare:
                    jids = [await Record.set(client=bare).perform_async(note=n) for n in range(3)]
                    jids.append(await Record.set(client=bare).perform_in(0.2, note="later"))
                    jids.append(await Record.set(client=bare, keep_result=60).perform_async(note="kept"))
                    rows = await wait_for_ledger(ledger, 5)
                    assert bare.nc.is_connected
            assert {r.jid for r in rows} == set(jids)
            for jid in jids:
                await until(lambda jid=jid: _succeeded(admin, jid))
                status = await api.job(admin, jid)
                assert [e.state for e in status.events] == ["running", "succeeded"]
                assert status.node == node.settings.node_id
    denials = [r for r in caplog.records if r.getMessage().startswith("NATS refused a publish")]
    warned = [r for r in denials if r.levelno >= logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in denials]
    assert len(denials) == 5  # each refused event: the first warned of, the others at debug
    replies = [r for r in caplog.records if r.getMessage().startswith("NATS refused a subscription")]
    assert [r.levelno for r in replies] == [logging.WARNING] and f"{NAMESPACE}.reply." in replies[
        0
    ].getMessage()
    assert f"{NAMESPACE}.evt.default.tests:record.queued." in warned[0].getMessage()  # (lowercased)
    assert "lifecycle events are not stored" in warned[0].getMessage()


async def _succeeded(client: natskiq.Client, jid: str) -> bool:
    try:
        return (await api.job(client, jid)).state == "succeeded"
    except natskiq.NotFound:
        return False
