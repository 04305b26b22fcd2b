"""The master lease: KV compare-and-set between two nodes on separate connections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

import natskiq
from natskiq.dispatch.lease import Lease, elect
from natskiq.topology import Names, ensure_bucket

from .conftest import until


@pytest.fixture
async def names(nats_url: str, namespace: str) -> Names:
    names = Names(namespace)
    nc = await nats.connect(nats_url)
    try:
        await ensure_bucket(nc.jetstream(), names.lease_bucket)
    finally:
        await nc.close()
    return names


@pytest.fixture
async def conns(nats_url: str) -> AsyncIterator[tuple[NATS, NATS]]:
    """Two independent connections, as two nodes would have."""
    a = await nats.connect(nats_url)
    b = await nats.connect(nats_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def pair(conns: tuple[NATS, NATS], names: Names) -> Callable[..., tuple[Lease, Lease]]:
    def make(ttl: float = 5.0) -> tuple[Lease, Lease]:
        return Lease(conns[0], names, "node-a", ttl=ttl), Lease(conns[1], names, "node-b", ttl=ttl)

    return make


async def test_first_acquire_wins_second_loses(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """The first node to try_acquire becomes master; the second is refused."""
    a, b = pair()
    assert await a.try_acquire()
    assert a.held
    assert a.token is not None and a.token > 0
    assert not await b.try_acquire()
    assert not b.held
    assert b.token is None


async def test_renew_keeps_the_lease(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """After renewals the holder still holds the lease, with the same token, and others are still refused."""
    a, b = pair()
    assert await a.try_acquire()
    token = a.token
    await a.renew()
    await a.renew()
    assert a.held
    assert a.check() == token
    assert not await b.try_acquire()


async def test_release_lets_another_acquire_at_once(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """After a release, another node acquires immediately, with a higher token."""
    a, b = pair()
    assert await a.try_acquire()
    first = a.token
    await a.release()
    assert not a.held
    assert await b.try_acquire()
    assert b.token is not None and first is not None
    assert b.token > first


async def test_release_when_not_held_does_nothing(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """Releasing a lease this node never held leaves the holder's lease alone."""
    a, b = pair()
    assert await a.try_acquire()
    await b.release()
    await a.renew()
    assert a.held


async def test_acquire_again_after_own_release(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """A node that released can win the lease again (the tombstone is not an owner)."""
    a, _ = pair()
    assert await a.try_acquire()
    await a.release()
    assert await a.try_acquire()


async def test_expired_lease_is_taken_over(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """With ttl=1 and no renew, the other node sees the key expire and acquires it."""
    a, b = pair(ttl=1)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    await b.wait_vacant(timeout=10)
    assert await b.try_acquire()
    assert b.token is not None and a.token is not None
    assert b.token > a.token


async def test_renew_after_takeover_raises_lease_lost(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """A holder whose lease expired and was taken finds its renew refused with LeaseLost."""
    a, b = pair(ttl=1)
    assert await a.try_acquire()
    await b.wait_vacant(timeout=10)
    assert await b.try_acquire()
    with pytest.raises(natskiq.LeaseLost, match="refused"):
        await a.renew()
    assert a.token is None
    assert not a.held
    await b.renew()
    assert b.held


async def test_release_after_takeover_leaves_new_holder_alone(
    pair: Callable[..., tuple[Lease, Lease]],
) -> None:
    """A stale holder's release (a delete with its old revision) does not free the new holder's key."""
    a, b = pair(ttl=1)
    assert await a.try_acquire()
    await b.wait_vacant(timeout=10)
    assert await b.try_acquire()
    await a.release()
    await b.renew()
    assert not await a.try_acquire()


async def test_check_raises_after_local_deadline(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """check() returns the token while held and raises LeaseLost once the local deadline passes."""
    a, _ = pair(ttl=1)
    assert await a.try_acquire()
    assert a.check() == a.token
    await until(lambda: not a.held, timeout=5)
    with pytest.raises(natskiq.LeaseLost):
        a.check()


async def test_check_without_lease_raises(pair: Callable[..., tuple[Lease, Lease]]) -> None:
    """check() on a lease never acquired raises LeaseLost."""
    a, _ = pair()
    assert not a.held
    with pytest.raises(natskiq.LeaseLost):
        a.check()


async def _consumers(nc: NATS, names: Names) -> int:
    info = await nc.jetstream().stream_info(f"KV_{names.lease_bucket}")
    return info.state.consumer_count


async def test_elect_hands_over_with_increasing_tokens(
    pair: Callable[..., tuple[Lease, Lease]], conns: tuple[NATS, NATS], names: Names
) -> None:
    """elect() runs lead() on one node; when it stops, the waiting node leads with a higher token."""
    a, b = pair(ttl=3)
    tokens: list[tuple[str, int]] = []
    leading = {"a": anyio.Event(), "b": anyio.Event()}

    def lead_as(node: str) -> Callable[[int], Awaitable[None]]:
        async def lead(token: int) -> None:
            tokens.append((node, token))
            leading[node].set()
            await anyio.sleep_forever()

        return lead

    async def watching() -> bool:
        return await _consumers(conns[0], names) >= 1

    a_scope = anyio.CancelScope()

    async def run_a() -> None:
        with a_scope:
            await elect(a, lead_as("a"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_a)
        with anyio.fail_after(10):
            await leading["a"].wait()
        await tg.start(elect, b, lead_as("b"))
        # b has lost the race and is watching the key (its ordered consumer exists).
        await until(watching, timeout=10)
        assert not leading["b"].is_set()
        a_scope.cancel()
        with anyio.fail_after(10):
            await leading["b"].wait()
        tg.cancel_scope.cancel()

    assert [node for node, _ in tokens] == ["a", "b"]
    assert tokens[1][1] > tokens[0][1]
    assert not a.held
