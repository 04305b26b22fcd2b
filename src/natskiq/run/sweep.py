"""The sweep, run by the master: stored messages on a queue's schedule
subjects that would never run go to the failed set.

A delayed job or a retry is a message schedule (ADR-51) on
``<ns>.scheduled.<q>.<jid>`` or ``<ns>.retry.<q>.<jid>``; the server moves
it to ``<ns>.queue.<q>`` (or a partition's ``<ns>.queue.<q>.<p>``) when it
is due, and only those subjects have consumers. The server refuses at
publish time every ``Nats-Schedule`` value it cannot parse and every
target outside the stream (or equal to the message's own subject), but it
stores as a plain message one whose ``Nats-Schedule`` header is missing or
empty: such a message never fires, never fails and is never logged. A
valid schedule aimed at another schedule subject of the stream does fire,
onto that subject, where its copy (schedule headers stripped) is stranded
the same way.

Run by the master of shard 0 (see :mod:`natskiq.dispatch.shards`) every few seconds for each
queue, beside the aggregator. :func:`sweep` receives the messages the
queue's stream holds on those subjects with a sequence above ``after``, at
most ``limit`` of them, oldest first; it hands each one that would never run,
its raw bytes and the reason, to the failed set
(:func:`natskiq.run.retry.fail_invalid`: ``<ns>.failed.<q>`` with the
``Natskiq-Invalid`` and ``Natskiq-Reason`` headers), then deletes it from the
queue's stream. It guarantees:

* a schedule the server will fire onto the queue subject is never touched,
  whatever it holds (a periodic job's cron or ``@every`` schedule included);
* the failed copy's PubAck comes before the delete, so a message is never in
  neither place;
* called again with the sequence it returned, it examines only newer
  messages: each message is examined once;
* nothing in a message (no headers, odd header bytes, non-UTF-8 data) makes
  it raise, and a message gone meanwhile (deleted, or fired) is no error.

Headers are read from the raw header block and looked up as the server
looks them up (case-sensitive, first occurrence): nats-py's parsed dict
keeps the last of two ``Nats-Schedule`` lines, while the server obeys the
first.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from nats.js.errors import Error as JSError

from natskiq.errors import NatskiqError
from natskiq.run import retry
from natskiq.topology import Names

log = logging.getLogger(__name__)

SCHEDULE = "Nats-Schedule"
TARGET = "Nats-Schedule-Target"
SCHEDULER = "Nats-Scheduler"  # set by the server on the copy a schedule fires
GONE = frozenset({10037, 10057})  # "no message found", from a get (404) and from a delete (500)
INTERVAL = 5.0  # seconds between the master's sweeps of a queue
LIMIT = 1000  # messages examined per call: about a third of a second, one request each


@attrs.frozen(kw_only=True)
class Examined:
    """A message stored on a schedule subject, and why it would never run (None: it will)."""

    seq: int
    subject: str
    raw: bytes
    reason: str | None


async def sweep(
    js: JetStreamContext,
    names: Names,
    queue: str,
    *,
    after: int = 0,
    limit: int = LIMIT,
    max_payload: int | None = None,
) -> tuple[int, int]:
    """Move stored messages on the queue's schedule subjects (scheduled and
    retry) that the server will never fire into the failed set.

    Args:
        js: the JetStream context.
        names: the namespace's names.
        queue: the queue whose stream is swept.
        after: examine only messages with a higher stream sequence (the
            sequence the previous call returned; 0 for all).
        limit: examine at most this many messages.
        max_payload: the connection's ``max_payload``: a stranded payload
            too big to carry the failed record's headers is cut to fit
            (``Natskiq-Truncated`` gives its size). Without it such a
            message (near the server's limit) cannot be moved, and every
            call raises on it.

    Returns:
        ``(moved, last_seq_examined)``; the sequence is ``after`` when there
        was nothing newer, and the next call passes it back as ``after``.

    Raises:
        nats.errors.Error, nats.js.errors.Error, TimeoutError: talking to the
            server failed (a connection problem, or the failed stream missing).
            Nothing is lost: the message stays where it was, and a call with
            the same ``after`` tries it again.
    """
    moved, last = 0, after
    async with contextlib.aclosing(examine(js, names, queue, after=after, limit=limit)) as found:
        async for seen in found:
            last = seen.seq
            if await move(js, names, queue, seen, max_payload=max_payload):
                moved += 1
    return moved, last


async def examine(
    js: JetStreamContext, names: Names, queue: str, *, after: int = 0, limit: int = LIMIT
) -> AsyncGenerator[Examined, None]:
    """The queue's messages on its schedule subjects after sequence ``after``,
    oldest first, at most ``limit``, each with the reason it would never run."""
    stream, wildcard, target = (
        names.queue_stream(queue),
        names.schedule_filter(queue),
        names.queue_subject(queue),
    )
    seq = after
    for _ in range(limit):
        try:
            # One request per message (measured: about 3,000 a second); nats-py
            # 2.16 has no batched get outside direct get, which queue streams
            # do not allow.
            msg = await js.get_msg(stream, seq=seq + 1, subject=wildcard, next=True)
        except NotFoundError:
            return  # nothing after seq (or no such stream: nothing to sweep)
        seq = msg.seq or seq + 1
        subject = msg.subject or ""
        if names.is_ready_subject(queue, subject):
            # A ready job of a partition (``<ns>.queue.<q>.<p>`` matches the
            # filter too): the master of its shard runs it.
            yield Examined(seq=seq, subject=subject, raw=b"", reason=None)
            continue
        # nats-py leaves the header block as the server sent it, base64.
        block = base64.b64decode(msg.hdrs) if msg.hdrs else b""
        yield Examined(seq=seq, subject=subject, raw=msg.data or b"", reason=unusable(subject, block, target))


async def move(
    js: JetStreamContext, names: Names, queue: str, seen: Examined, *, max_payload: int | None = None
) -> bool:
    """Keep a message that would never run on the failed set, then delete it
    from the queue's stream; returns False (and does nothing) for one that will run.

    The record's ``Nats-Msg-Id`` names the message's stream sequence, so a
    message moved twice (a sweep that died between the PubAck and the delete,
    or two masters overlapping for a moment) is recorded once.
    """
    if seen.reason is None:
        return False
    remove = _remover(js, names.queue_stream(queue), seen.seq)
    await retry.fail_invalid(
        js, names, seen.raw, seen.reason, queue=queue, ack=remove, seq=seen.seq, max_payload=max_payload
    )
    return True


def _remover(js: JetStreamContext, stream: str, seq: int) -> Callable[[], Awaitable[None]]:
    """Deletes the message at ``seq``; one already gone (deleted, or fired meanwhile) is fine."""

    async def remove() -> None:
        try:
            await js.delete_msg(stream, seq)
        except APIError as exc:
            if not isinstance(exc, NotFoundError) and exc.err_code not in GONE:
                raise
            log.debug("stream %s seq %d was already gone", stream, seq)

    return remove


def unusable(subject: str, headers: bytes, target: str) -> str | None:
    """Why a message stored on the schedule subject ``subject`` will never run
    as a job of the queue whose subject is ``target``; None when it will.

    ``headers`` is the raw header block (``NATS/1.0\\r\\n...``), empty if none.
    Any other ``Nats-Schedule`` value the server has stored is one it parsed
    and will fire, so only the target is checked.
    """
    schedule = header(headers, SCHEDULE)
    if schedule is None:
        return _unscheduled(subject, headers, target)
    if not schedule:
        return f"stored on {subject} with an empty {SCHEDULE} header: it would never run"
    aim = header(headers, TARGET)
    # A partition's subject is as good as the queue's (the server refuses a
    # target its stream does not hold, so the partition exists).
    partition = aim is not None and aim.startswith(target + ".") and aim[len(target) + 1 :].isdigit()
    if aim != target and not partition:
        return (
            f"scheduled on {subject} to fire onto {aim!r}, not the queue subject {target}: it would never run"
        )
    return None


def _unscheduled(subject: str, headers: bytes, target: str) -> str:
    scheduler = header(headers, SCHEDULER)
    if scheduler:
        return (
            f"fired onto {subject} by the schedule on {scheduler}, which targeted it "
            f"instead of {target}: it would never run"
        )
    hint = ""
    if f"\r\n{SCHEDULE.lower()}:".encode() in headers.lower():
        hint = " (header names are case-sensitive)"
    return f"stored on {subject} without a {SCHEDULE} header{hint}: it would never run"


def header(block: bytes, key: str) -> str | None:
    """The value of the first ``key`` header of a raw header block, found as the
    server finds it (exact case, spaces before the value skipped); None if absent."""
    needle = b"\r\n" + key.encode() + b":"
    start = block.find(needle)
    if start < 0:
        return None
    start += len(needle)
    end = block.find(b"\r\n", start)
    return block[start : end if end >= 0 else len(block)].lstrip(b" ").decode("utf-8", "replace")


async def keep_swept(
    js: JetStreamContext,
    names: Names,
    queues: Callable[[], Awaitable[list[str]]],
    *,
    max_payload: int,
    interval: float = INTERVAL,
) -> None:
    """The master's loop: sweep every queue every ``interval`` seconds, until cancelled.

    Each queue's cursor is kept here, so a message is examined once per
    master; a new master walks every stored schedule once (about 2,800 a
    second). A queue whose sweep found a full ``LIMIT`` is swept again at once.
    """
    after: dict[str, int] = {}
    while True:
        busy = False
        try:
            for queue in await queues():
                start = after.get(queue, 0)
                moved, after[queue] = await sweep(js, names, queue, after=start, max_payload=max_payload)
                busy = busy or after[queue] - start >= LIMIT
                if moved:
                    log.warning(
                        "moved %d message(s) that would never run from queue %s to failed", moved, queue
                    )
        except (NatsError, JSError, TimeoutError, NatskiqError) as exc:
            log.warning("schedule sweep failed (tried again in %.0f s): %r", interval, exc)
        await anyio.sleep(0 if busy else interval)
