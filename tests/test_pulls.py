"""The master's pull side (natskiq.dispatch.pulls) against a real server."""

from __future__ import annotations

import anyio
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

import natskiq
from natskiq.dispatch.credit import Peer, Peers
from natskiq.dispatch.pulls import Puller


async def test_a_wake_up_reaches_every_queue_s_request_loop(client: natskiq.Client) -> None:
    """When credit frees, every served queue pulls at once, not only the queue whose
    request loop last went to sleep (the others used to wait for their next recheck)."""
    for queue in ("a", "b", "c"):
        await client.ensure_queue(queue)
    peers = Peers(client.nc, client.names, token=1, shard=0, local=None, on_report=lambda _: None)
    puller = Puller(
        client.nc, client.names, 0, 4.0, lambda: 1, peers, lambda: None, recheck=3600.0
    )  # no recheck: only a wake-up makes a loop look again
    asked: set[str] = set()
    all_asked = anyio.Event()
    pulls = {client.names.pull_subject(q, 0): q for q in ("a", "b", "c")}

    async def seen(msg: Msg) -> None:
        asked.add(pulls[msg.subject])
        if len(asked) == 3:
            all_asked.set()

    subs = [await client.nc.subscribe(subject, cb=seen) for subject in pulls]
    try:
        async with anyio.create_task_group() as tg:
            puller.serve(tg, ["a", "b", "c"])
            for queue in ("a", "b", "c"):  # each loop has made its consumer, found no credit and sleeps
                while True:
                    try:
                        await client.js.consumer_info(client.names.queue_stream(queue), "aggregator")
                        break
                    except NotFoundError:
                        await anyio.sleep(0.05)
            await anyio.sleep(0.5)
            assert asked == set()
            node = Peer("n1", queues=["a", "b", "c"], weights=[1, 1, 1], concurrency=10)
            node.seen_at = anyio.current_time()
            peers.by_id["n1"] = node
            puller.wake()
            with anyio.fail_after(20):
                await all_asked.wait()
            tg.cancel_scope.cancel()
    finally:
        for sub in subs:
            await sub.unsubscribe()
