"""A producer with only the permissions docs/guides/auth.md lists can enqueue, and cannot
reach what would let it forge a master or touch the failed set."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import natskiq
from natskiq import api
from natskiq.dispatch.protocol import ACK_HEADER, TOKEN_HEADER
from natskiq.ops.server import Server
from natskiq.topology import Names

from .conftest import Workers, until, wait_for_ledger
from .sample_workers import Record
from .test_processes import lease_holder, wait_master

pytestmark = pytest.mark.slow

NAMESPACE = "perm"


def producer_permissions(names: Names, queues: list[str]) -> dict[str, object]:
    """The auth guide's producer permissions, for namespace ``names`` and these queues."""
    streams = [names.queue_stream(queue) for queue in queues]
    return {
        "publish": {
            "allow": [
                f"{names.namespace}.queue.>",
                f"{names.namespace}.scheduled.>",
                *(f"$JS.API.STREAM.INFO.{stream}" for stream in streams),
                *(f"$JS.API.CONSUMER.INFO.{stream}.*" for stream in streams),
            ]
        },
        "subscribe": {"allow": ["_INBOX.>"]},
    }


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    """A JetStream server with a worker user (everything) and a producer user (the listed permissions)."""
    users = [
        {"user": "worker", "password": "worker-secret"},
        {
            "user": "producer",
            "password": "producer-secret",
            "permissions": producer_permissions(Names(NAMESPACE), ["default"]),
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
    3 partitions too: it learns them and fills them in turn); its forged master
    announcement, dispatch and demand report and its write to the failed set are refused."""
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
                await producer.nc.flush()
            rows = await wait_for_ledger(ledger, 2)
            assert {r.jid for r in rows} == {now, later}

            async def settled() -> bool:
                return not await api.find(admin, "queued") and not await api.find(admin, "scheduled")

            await until(settled)
            assert await api.find(admin, "failed") == []
            assert await lease_holder(admin) == master
        logs = workers.logs()
        assert "ignoring master token" not in logs and "newer master" not in logs  # never got through
    finally:
        workers.stop_all()
