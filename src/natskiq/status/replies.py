"""Replies: the kept outcome of a job, told straight to the client that enqueued it.

A client that enqueues a job which keeps its result (``keep_result``) puts
its reply token in the envelope (``reply``) and subscribes, once and before
its first such job is stored, to ``<ns>.reply.<token>.*``. The node that
ran the job publishes the outcome there right after the result's PubAck
(:meth:`natskiq.status.events.Emitter.reply`), so ``handle.result()`` is
one core message away from the job's end: no consumer to create, no read.

A reply is a core message: it reaches the client only while it is
connected, so a waiter never relies on it alone (see
:meth:`natskiq.status.handle.JobHandle.result`, which follows the job's
events as well if no reply came soon). Because the subscription exists
before the job does, a reply cannot slip past it as a message on a
subscription made later could.

:class:`Replies` files the replies by jid as they arrive: one reader at a
time drains the subscription for every waiter (whoever waits and finds no
reader reads), and the outcomes nobody waited for yet are kept, the newest
:data:`KEPT` of them, with when they came (a result is kept for its
``keep_result`` seconds in the bucket, and no longer here).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

import anyio
import attrs
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from natskiq.status.results import is_outcome, unsubscribe
from natskiq.topology import Names

KEPT = 10_000
"""Outcomes kept that nobody has asked for yet (a result awaited later is read from the bucket)."""


@attrs.define(eq=False)
class Replies:
    """One client's reply token, its subscription, and the outcomes it received.

    Args:
        nc: the client's connection.
        names: the namespace's names.
    """

    nc: NATS
    names: Names
    token: str = attrs.field(init=False, factory=lambda: secrets.token_hex(8))
    _sub: Subscription | None = attrs.field(init=False, default=None)
    _arrived: OrderedDict[str, tuple[bytes, float]] = attrs.field(init=False, factory=OrderedDict)
    _waiting: dict[str, list[anyio.Event]] = attrs.field(init=False, factory=dict)
    _reading: bool = attrs.field(init=False, default=False)

    @property
    def listening(self) -> bool:
        """Whether replies reach this client (it subscribed)."""
        return self._sub is not None

    async def listen(self) -> None:
        """Subscribe, the first time; call it before storing a job that names this token.

        The subscription goes out on the connection before the job's
        publish does, so the server knows it before any node can reply.
        """
        if self._sub is None:
            self._sub = await self.nc.subscribe(self.names.reply_filter(self.token))

    async def close(self) -> None:
        """Stop listening (the client closes)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await unsubscribe(sub)

    def heard(self, jid: str) -> tuple[bytes, float] | None:
        """The outcome replied for ``jid`` and its age in seconds, if it came already."""
        found = self._arrived.get(jid)
        return None if found is None else (found[0], time.monotonic() - found[1])

    async def wait(self, jid: str) -> bytes:
        """The outcome of ``jid`` once its reply comes; cancel it to stop waiting."""
        event = anyio.Event()
        self._waiting.setdefault(jid, []).append(event)
        try:
            while (found := self._arrived.get(jid)) is None:
                if not self._reading and self._sub is not None:
                    await self._read(jid)
                else:
                    await event.wait()
                    event = self._rearm(jid, event)
            return found[0]
        finally:
            self._forget(jid, event)

    async def _read(self, jid: str) -> None:
        """Be the reader: file every reply until ``jid``'s, then hand the role to another waiter."""
        assert self._sub is not None
        self._reading = True
        try:
            while jid not in self._arrived:
                msg = await self._sub.next_msg(timeout=None)
                self._file(msg.subject.rpartition(".")[2], msg.data)
        finally:
            self._reading = False
            # Wake one other waiter: it reads next (the others stay asleep).
            for other, events in self._waiting.items():
                if other != jid and events:
                    events[0].set()
                    break

    def _file(self, jid: str, data: bytes) -> None:
        if not is_outcome(data):
            return  # not what a node replies: the waiter's other ways will find the outcome
        self._arrived[jid] = (data, time.monotonic())
        if len(self._arrived) > KEPT:
            self._arrived.popitem(last=False)
        for event in self._waiting.get(jid, ()):
            event.set()

    def _rearm(self, jid: str, event: anyio.Event) -> anyio.Event:
        """A fresh event in place of ``event``, once it was set (to wake, or to read next)."""
        if not event.is_set():
            return event
        fresh = anyio.Event()
        events = self._waiting[jid]
        events[events.index(event)] = fresh
        return fresh

    def _forget(self, jid: str, event: anyio.Event) -> None:
        events = self._waiting.get(jid, [])
        if event in events:
            events.remove(event)
        if not events:
            self._waiting.pop(jid, None)
        if event.is_set() and not self._reading:
            # It was told to read next, but is leaving: pass the turn on.
            for waiters in self._waiting.values():
                if waiters:
                    waiters[0].set()
                    break
