"""Stage 3, election: the master's compare-and-set lease in a KV bucket.

One key (``aggregator``) in the ``<ns>_leases`` bucket. A node becomes
master by creating it (a publish with ``Nats-Expected-Last-Subject-Sequence``
of 0, or of the tombstone left by a delete or a TTL expiry) with a per-message
TTL; the revision of that create is its fencing token. It renews every TTL/3
with the same compare-and-set on its last revision. A refused renew means the
lease is lost; a renew that cannot reach the server before the local deadline
means the same. The deadline is measured on the monotonic clock from *before*
each successful write, so it always ends before the server lets the key
expire: a master that believes it holds the lease does.

Followers watch the key with an ordered consumer and race to create it as
soon as a delete or expiry marker shows up. A graceful stop deletes the key
(with the expected revision) so another node takes over at once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NotFoundError

from natskiq.errors import LeaseLost
from natskiq.topology import Names, delete_if, is_tombstone, put_if

log = logging.getLogger(__name__)


@attrs.define
class Lease:
    """The master lease as seen by one node.

    Args:
        nc: the node's connection.
        names: the namespace's names.
        node_id: who is asking.
        ttl: seconds the lease lives without a renew.
        shard: the dispatch shard it leads (key ``aggregator`` for 0,
            ``aggregator-<n>`` for the others).
    """

    nc: NATS
    names: Names
    node_id: str
    ttl: float = 5.0
    shard: int = 0
    token: int | None = attrs.field(init=False, default=None)
    since: float = attrs.field(init=False, default=0.0)
    """Wall time this node won the lease it holds."""
    _give_up: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _subject: str = attrs.field(init=False, default="")
    _revision: int = attrs.field(init=False, default=0)
    _deadline: float = attrs.field(init=False, default=0.0)
    _js: JetStreamContext = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._js = self.nc.jetstream()
        self._subject = self.names.lease_subject(self.names.shard_key(self.shard))

    def give_up(self) -> None:
        """Ask :meth:`keep` to step down (to let another node lead this shard)."""
        self._give_up.set()

    @property
    def held(self) -> bool:
        """Whether this node holds the lease right now (by its own clock)."""
        return self.token is not None and anyio.current_time() < self._deadline

    def check(self) -> int:
        """The fencing token, if the lease is still held.

        Raises:
            LeaseLost: the local deadline has passed.
        """
        if not self.held:
            raise LeaseLost("the lease deadline passed without a renew")
        assert self.token is not None
        return self.token

    def _value(self) -> bytes:
        value = {
            "node": self.node_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "shard": self.shard,
            "since": time.time(),
            "won": self.since,
        }
        if self.token is not None:
            # Renewals carry the fencing token, so anyone can read the current
            # one from the key (see current_token); a create does not know it yet.
            value["token"] = self.token
        return json.dumps(value).encode()

    async def _write(self, expected: int) -> int | None:
        """Write the key if it is still at revision ``expected``: its new revision, or None."""
        started = anyio.current_time()
        # To the nearest millisecond, where topology.ttl_header rounds up: the two differ
        # only for a TTL under a second or not a whole number of milliseconds.
        ttl = f"{max(1, round(self.ttl * 1000))}ms"
        ack = await put_if(self._js, self._subject, self._value(), expected=expected, ttl=ttl)
        if ack is None:
            return None
        self._revision = ack.seq
        self._deadline = started + self.ttl
        return ack.seq

    async def try_acquire(self) -> bool:
        """Create the key if it is free; returns whether this node is now master."""
        self.token = None
        expected = 0
        for _ in range(3):
            self.since = time.time()
            self.token = await self._write(expected)
            if self.token is not None:
                log.info(
                    "node %s is master of shard %d (lease revision %d)", self.node_id, self.shard, self.token
                )
                self._give_up = anyio.Event()
                return True
            last = await _last(self._js, self.names, self.shard)
            if last is None:
                expected = 0
            elif is_tombstone(last.headers):
                expected = last.seq or 0
            else:
                return False
        return False

    async def renew(self) -> None:
        """Extend the lease.

        Raises:
            LeaseLost: another node holds it, or it expired.
        """
        if await self._write(self._revision) is None:
            self.token = None
            raise LeaseLost(f"lease renew refused: the key is no longer at revision {self._revision}")

    async def release(self) -> None:
        """Give the lease up at once (graceful stop), if still held."""
        if self.token is None:
            return
        self.token = None
        try:
            if await delete_if(self._js, self._subject, expected=self._revision) is None:
                log.info("lease release not needed: the key is no longer at revision %d", self._revision)
                return
            log.info("node %s released the lease of shard %d", self.node_id, self.shard)
        except (APIError, NatsError, TimeoutError) as exc:
            log.info("lease release not needed or failed: %s", exc)

    async def keep(self) -> None:
        """Renew every TTL/3 until the lease is lost or given up; then raise LeaseLost."""
        while True:
            with anyio.move_on_after(self.ttl / 3):
                await self._give_up.wait()
            if self._give_up.is_set():
                raise LeaseLost(f"shard {self.shard} handed over to balance the shards")
            while True:
                try:
                    await self.renew()
                    break
                except (NatsError, TimeoutError, APIError) as exc:
                    if not self.held:
                        self.token = None
                        raise LeaseLost(f"could not renew the lease in time: {exc!r}") from exc
                    await anyio.sleep(min(0.2, self.ttl / 10))

    async def wait_vacant(self, timeout: float) -> None:
        """Return once the key is deleted or expired, or after ``timeout``."""
        sub = await self._js.subscribe(
            self._subject,
            ordered_consumer=True,
            deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            with anyio.move_on_after(timeout):
                async for msg in sub.messages:
                    if is_tombstone(msg.headers):
                        return
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await sub.unsubscribe()


async def _last(js: JetStreamContext, names: Names, shard: int = 0) -> jsapi.RawStreamMsg | None:
    """The lease key's newest message (a write, a delete or an expiry marker), if any."""
    try:
        return await js.get_msg(
            names.kv_stream(names.lease_bucket), subject=names.lease_subject(names.shard_key(shard))
        )
    except NotFoundError:
        return None


async def current_token(js: JetStreamContext, names: Names, shard: int = 0) -> int:
    """The fencing token of the lease as the server holds it now; 0 while no node holds it.

    A token read from a message (a dispatch, a master's announcement, a
    node's report) may be forged by anyone who can publish there; this one
    is read from the lease's key in its KV stream, which only nodes write.
    The key's first revision is the token; renewals carry it in their value.
    """
    last = await _last(js, names, shard)
    if last is None or is_tombstone(last.headers):
        return 0
    try:
        return int(json.loads(last.data or b"{}").get("token", last.seq))
    except (ValueError, TypeError, AttributeError):
        return last.seq or 0


async def elect(
    lease: Lease,
    lead: Callable[[int], Awaitable[None]],
    *,
    before_try: Callable[[], Awaitable[None]] | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Win the lease whenever it is free and run ``lead(token)`` while held.

    ``lead`` is cancelled the moment the lease is lost. On cancellation the
    lease is released so another node takes over without waiting for the TTL.
    ``before_try`` is awaited before each attempt to win it (a node already
    leading other shards waits a little, so that one leading fewer wins).
    """
    task_status.started()
    try:
        while True:
            if before_try is not None:
                await before_try()
            try:
                won = await lease.try_acquire()
            except (APIError, NatsError, TimeoutError) as exc:
                log.warning("lease acquire failed: %r", exc)
                won = False
            if not won:
                try:
                    await lease.wait_vacant(timeout=lease.ttl)
                except (APIError, NatsError, TimeoutError) as exc:
                    log.warning("lease watch failed: %r", exc)
                    await anyio.sleep(lease.ttl / 5)
                continue
            token = lease.token
            assert token is not None
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_run_lead, lead, token, tg.cancel_scope)
                    await lease.keep()
            except* LeaseLost as group:
                log.warning("node %s lost the lease: %s", lease.node_id, group.exceptions[0])
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await lease.release()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await lease.release()


async def _run_lead(lead: Callable[[int], Awaitable[None]], token: int, scope: anyio.CancelScope) -> None:
    try:
        try:
            await lead(token)
        except* LeaseLost as group:
            # The master noticed first (a dispatch or a node's report saw the lease gone).
            log.warning("lost the lease (revision %d): %s", token, group.exceptions[0])
    except Exception:
        # A crashing master must not take the node down: step down, let the
        # election run again (possibly on another node).
        log.exception("the master crashed; stepping down")
        await anyio.sleep(1)
    finally:
        scope.cancel()
