"""Workflows, chains: jobs that run one after the other, each once the one before succeeded.

``await natskiq.chain(Fetch.s(url), Parse.s().set(pass_result=True),
Store.s().set(pass_result=True)).enqueue()`` gives every step its jid, then
stores the first step, whose envelope carries the rest of the chain in its
``chain`` field (``{"id", "step", "of", "rest"}``, see
:mod:`natskiq.envelope`). Nothing else keeps the chain: it travels with the
job that runs now.

On a node, once a step's ``perform`` returned, :func:`advance` stores the
next step (the first of ``rest``, carrying the rest after it) and awaits
its PubAck before the step is acked, with the ``Nats-Msg-Id`` any enqueue
of that jid has (``<jid>:0``): a step that runs twice (its node died before
the ack, and JetStream redelivered it) stores its successor once, within
the stream's duplicate window. A step asking for the previous result
(``pass_result``) receives it as its first argument, carried in its own
envelope, so no result store is read on the way.

A step that fails is retried as any job; once it fails for good it lands in
the failed set with its ``chain`` field, and the chain stops there.
Replaying it (``natskiq failed replay``) runs the step again, and the chain
goes on from it. A cancelled step stops the chain too.

:class:`ChainHandle` follows a chain from the producer: it is the last
step's :class:`~natskiq.JobHandle`, whose ``result()`` raises as soon as an
earlier step failed for good or was cancelled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any, Protocol, cast

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JSError

from natskiq import job as jobs
from natskiq import worker as workers
from natskiq.enqueue.client import Client, current_client
from natskiq.enqueue.publish import addressed
from natskiq.errors import ConfigError, EnqueueError, JobCancelled, JobFailed, NotFound
from natskiq.signature import Signature
from natskiq.status.events import Emitter
from natskiq.status.handle import JobHandle, timeout_seconds
from natskiq.status.view import JobStatus
from natskiq.topology import Names

CHAIN_KEEP_RESULT = 86400.0
"""Seconds the last step keeps its result when its signature sets no ``keep_result``: a day."""


def chain(*steps: Signature) -> Chain:
    """Steps that run one after the other: ``natskiq.chain(Fetch.s(url), Parse.s())``.

    Args:
        *steps: the steps' signatures (``Worker.s(...)``), in order.

    Returns:
        A :class:`Chain`; ``await chain.enqueue()`` stores its first step.

    Raises:
        ConfigError: no step, more than :data:`~natskiq.envelope.MAX_CHAIN_STEPS`,
            something that is not a signature, or a first step with ``pass_result``.
    """
    return Chain(steps=steps)


def _as_steps(steps: Iterable[Signature]) -> tuple[Signature, ...]:
    return tuple(steps)


def _check_steps(_: object, __: object, steps: tuple[Signature, ...]) -> None:
    if not 1 <= len(steps) <= jobs.MAX_CHAIN_STEPS:
        raise ConfigError(f"a chain takes 1 to {jobs.MAX_CHAIN_STEPS} steps, not {len(steps)}")
    for index, step in enumerate(steps):
        if not isinstance(step, Signature):
            raise ConfigError(
                f"step {index + 1} of the chain is {step!r:.60}, not a signature: write Worker.s(...)"
            )
    if steps[0].pass_result:
        raise ConfigError("the first step of a chain has no previous result to pass: drop its pass_result")


@attrs.frozen(kw_only=True)
class Chain:
    """Signatures to run one after the other; made by :func:`chain`.

    The last step keeps its result (for ``await handle.result()``) for its
    own ``keep_result``, or :data:`CHAIN_KEEP_RESULT` when it sets none.
    """

    steps: tuple[Signature, ...] = attrs.field(converter=_as_steps, validator=_check_steps)

    async def enqueue(self, *, client: Client | None = None) -> ChainHandle:
        """Store the first step; the rest follow it, each after the one before succeeded.

        Args:
            client: the client to enqueue through; the default one (opened
                last) when None. Inside ``natskiq.testing.inline()`` or
                ``fake()``, the chain goes to that mode.

        Returns:
            The chain's handle: the last step's jid, whose ``result()`` is
            the chain's.

        Raises:
            EnqueueError: the first step (which carries the whole chain) is
                larger than the server takes, or could not be stored.
            NotConnected: no client is open.
        """
        first = self.first_job()
        jids = (first.jid, *(str(step["jid"]) for step in _chain_of(first)["rest"]))
        if workers._modes and client is None:
            mode = cast(_TestMode, workers._modes[-1])  # natskiq.testing's Inline and Fake both have it
            await mode.push_job(first)
            return ChainHandle(jids[-1], None, chain_id=_chain_of(first)["id"], jids=jids)
        client = client if client is not None else current_client()
        for queue in dict.fromkeys(step.options.queue for step in self.steps):
            # Later steps are stored by nodes, which make no streams on the way: make them now.
            await client.ensure_queue(queue)
        await client.publish(first)
        return ChainHandle(jids[-1], client, chain_id=_chain_of(first)["id"], jids=jids)

    def first_job(self, now: float | None = None) -> jobs.Job:
        """The envelope of the first step, carrying the rest (every step's jid made here)."""
        now = time.time() if now is None else now
        ids = jobs.new_jids(len(self.steps) + 1)
        last = self.steps[-1]
        if last.options.keep_result is None:
            last = last.set(keep_result=CHAIN_KEEP_RESULT)
        steps = [*self.steps[:-1], last]
        rest = [_wire(step, jid) for step, jid in zip(steps[1:], ids[2:], strict=True)]
        head = steps[0]
        return jobs.Job(
            jid=ids[1], cls=head.name, args=list(head.args), kwargs=dict(head.kwargs),
            queue=head.options.queue, retry=head.options.retries, created_at=now, enqueued_at=now,
            keep_result=head.options.keep_result,
            chain={"id": ids[0], "step": 1, "of": len(steps), "rest": rest},
        )  # fmt: skip


class _TestMode(Protocol):
    async def push_job(self, job: jobs.Job) -> JobHandle: ...


def _wire(step: Signature, jid: str) -> dict[str, Any]:
    """A step of a chain's ``rest``, as the envelope carries it."""
    out: dict[str, Any] = {
        "jid": jid, "class": step.name, "args": list(step.args), "kwargs": dict(step.kwargs),
        "queue": step.options.queue, "retry": step.options.retries,
    }  # fmt: skip
    if step.options.keep_result is not None:
        out["keep_result"] = step.options.keep_result
    if step.pass_result:
        out["pass_result"] = True
    return out


def _chain_of(job: jobs.Job) -> dict[str, Any]:
    assert job.chain is not None
    return job.chain


def following(job: jobs.Job, value: Any, now: float | None = None) -> jobs.Job | None:
    """The envelope of the step after ``job`` (which returned ``value``), or None after the last.

    Raises:
        TypeError: the next step asks for the result (``pass_result``) and
            ``value`` is not JSON-native.
    """
    if job.chain is None or not job.chain["rest"]:
        return None
    step, *rest = job.chain["rest"]
    args = list(step["args"])
    if step.get("pass_result"):
        jobs.check_value(value, f"the return value of {job.cls} (passed to the next step of its chain)", 0)
        args.insert(0, value)
    now = time.time() if now is None else now
    return jobs.Job(
        jid=step["jid"], cls=step["class"], args=args, kwargs=step["kwargs"], queue=step["queue"],
        retry=step["retry"], created_at=now, enqueued_at=now, keep_result=step.get("keep_result"),
        chain={**job.chain, "step": job.chain["step"] + 1, "rest": rest},
    )  # fmt: skip


async def advance(
    js: JetStreamContext,
    names: Names,
    job: jobs.Job,
    value: Any,
    *,
    max_payload: int,
    emitter: Emitter | None,
) -> None:
    """Store the step after ``job``, which has just returned ``value``, and await its PubAck.

    A node calls it before it acks the step. It does nothing for a job that
    is not a step of a chain, or is the last. ``emitter``, when given,
    publishes the next step's ``queued`` event.

    Raises:
        TypeError: the next step asks for ``value``, which is not JSON-native.
        EnqueueError: the next step would be larger than the server takes,
            or could not be stored (no stream for its queue, NATS unreachable).
    """
    successor = following(job, value)
    if successor is None:
        return
    subject, headers = addressed(names, successor.jid, successor.queue, None, 0)  # as an enqueue of it
    payload = jobs.encode(successor)
    room = max_payload - jobs.headers_size(headers) - jobs.MAX_OVERHEAD
    step, chain_id = _chain_of(successor)["step"], _chain_of(job)["id"]
    if len(payload) > room:
        raise EnqueueError(
            f"step {step} of chain {chain_id} would be {len(payload)} bytes, over the {room} "
            "the server takes (its arguments, or the result passed on)"
        )
    try:
        await js.publish(subject, payload, headers=headers)
    except (NatsError, JSError, TimeoutError) as exc:
        # The step is retried, and stores its successor then (at least once).
        raise EnqueueError(
            f"step {step} of chain {chain_id} was not stored in queue {successor.queue!r}: {exc!r}"
        ) from exc
    if emitter is not None:
        await emitter.emit(
            "queued", successor.jid, successor.queue, successor.cls, chain=_chain_of(job)["id"]
        )


class ChainHandle(JobHandle):
    """A chain's handle: the last step's jid (a :class:`~natskiq.JobHandle`), knowing every step.

    Attributes:
        chain_id: the chain's id (``chain.id`` in each step's envelope).
        jids: every step's jid, in order.
    """

    __slots__ = ("chain_id", "jids")

    chain_id: str
    jids: tuple[str, ...]

    def __new__(cls, jid: str, client: Client | None, *, chain_id: str, jids: tuple[str, ...]) -> ChainHandle:
        handle = cast(ChainHandle, super().__new__(cls, jid, client, known=True))
        handle.chain_id, handle.jids = chain_id, jids
        return handle

    def __repr__(self) -> str:
        return f"ChainHandle({self.jid!r}, chain_id={self.chain_id!r})"

    def step(self, index: int) -> JobHandle:
        """The handle of one step (0 for the first; -1 for the last)."""
        return JobHandle(self.jids[index], self.client, known=True)

    async def status(self) -> JobStatus:
        """The status of the step the chain is at: the latest one that has any events.

        Raises:
            NotFound: no step has events (events are off, or expired).
        """
        for jid in reversed(self.jids[1:]):
            try:
                return await JobHandle(jid, self.client).status()
            except NotFound:
                continue  # not stored yet: the chain is at an earlier step
        return await JobHandle(self.jids[0], self.client).status()

    async def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait until the chain ended and return the status of the step it ended with:
        the last step's once it finished, or an earlier one that failed for good, was
        cancelled, expired or was discarded.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds (0: it has not ended).
        """
        return await self._ended(timeout_seconds(timeout))

    async def result(self, timeout: float | None = None) -> Any:
        """The last step's return value, once the chain ran to its end.

        Raises:
            JobFailed: a step failed for good (its jid, error class and
                message), or was discarded or expired.
            JobCancelled: a step was cancelled.
            TimeoutError: the chain did not end within ``timeout`` seconds (0: it has not ended).
            NotFound: the last step's result has expired.
        """
        _raise_unless_succeeded(await self._ended(timeout_seconds(timeout)))
        # The node stores a result before it reports the step succeeded: it is there.
        return await super().result(0)

    async def _ended(self, seconds: float) -> JobStatus:
        """The status of the step the chain ended with, waited for up to ``seconds``."""
        with anyio.fail_after(seconds) if seconds > 0 else contextlib.nullcontext():
            for index in range(len(self.jids)):
                status = await (self.step(index).wait() if seconds > 0 else self._finished_now(index))
                if status.state != "succeeded":
                    break
        return status

    async def _finished_now(self, index: int) -> JobStatus:
        """The status of step ``index`` if it has finished.

        Raises:
            TimeoutError: it has not (or has not been stored yet).
        """
        try:
            status = await self.step(index).status()
        except NotFound:
            status = None
        if status is None or not status.finished:
            raise TimeoutError(f"chain {self.chain_id} has not ended: step {index + 1} has not finished")
        return status


def _raise_unless_succeeded(status: JobStatus) -> None:
    if status.state == "cancelled":
        raise JobCancelled(status.jid)
    if status.state != "succeeded":
        raise JobFailed(status.jid, status.error_class or status.state, status.error_message or status.state)
