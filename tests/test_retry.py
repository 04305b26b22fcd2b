"""Backoff, its test-mode scale, and routing a failed job to retry or failed."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

import natskiq
from natskiq import job as jobs
from natskiq import testing
from natskiq.run import retry
from natskiq.topology import ensure_failed, ensure_queue


@pytest.fixture(autouse=True)
def _restore_scale() -> Any:
    old = retry.set_backoff_scale(1.0)
    yield
    retry.set_backoff_scale(old)


# -- backoff ------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 10, 24])
def test_backoff_follows_sidekiqs_formula(count: int) -> None:
    """backoff(count) is count**4 + 15 + k * (count + 1) with k a whole number in 0..9."""
    base = count**4 + 15
    for _ in range(300):
        delay = retry.backoff(count)
        assert base <= delay <= base + 9 * (count + 1)
        extra = delay - base
        assert extra == int(extra)
        assert int(extra) % (count + 1) == 0


@pytest.mark.parametrize("count", [0, 4])
def test_backoff_uses_every_random_step(count: int) -> None:
    """Over many draws, every k in 0..9 shows up (the jitter is the whole range)."""
    steps = {int(retry.backoff(count) - count**4 - 15) // (count + 1) for _ in range(2000)}
    assert steps == set(range(10))


def test_backoff_first_retry_is_15_to_24_seconds() -> None:
    """The first retry waits 15-24 s, as Sidekiq's does."""
    delays = {retry.backoff(0) for _ in range(500)}
    assert min(delays) >= 15
    assert max(delays) <= 24


def test_set_backoff_scale_scales_every_delay() -> None:
    """set_backoff_scale(s) multiplies the delay by s and returns the previous scale."""
    assert retry.set_backoff_scale(0.5) == 1.0
    base = 2**4 + 15
    for _ in range(200):
        assert base * 0.5 <= retry.backoff(2) <= (base + 9 * 3) * 0.5
    assert retry.set_backoff_scale(0.0) == 0.5
    assert retry.backoff(7) == 0.0


def test_fast_retries_zeroes_and_restores_the_scale() -> None:
    """fast_retries() makes retries immediate inside the block and restores the old scale after."""
    retry.set_backoff_scale(2.0)
    with testing.fast_retries():
        assert retry.backoff(3) == 0.0
    assert retry.set_backoff_scale(2.0) == 2.0


def test_fast_retries_with_a_scale() -> None:
    """fast_retries(scale) applies that scale inside the block."""
    with testing.fast_retries(0.01):
        assert 0.15 <= retry.backoff(0) <= 0.24 + 1e-9
    assert retry.set_backoff_scale(1.0) == 1.0


def test_fast_retries_restores_on_error() -> None:
    """The scale is restored even when the block raises."""
    with pytest.raises(RuntimeError), testing.fast_retries():
        raise RuntimeError("boom")
    assert retry.set_backoff_scale(1.0) == 1.0


class WithHook(natskiq.Worker, name="tests.test_retry.WithHook"):
    """Chooses its own retry delays."""

    @staticmethod
    def retry_in(count: int, exc: BaseException) -> float | None:
        return None if isinstance(exc, KeyError) else 100.0 * (count + 1)


class BrokenHook(natskiq.Worker, name="tests.test_retry.BrokenHook"):
    """A retry_in hook that raises."""

    @staticmethod
    def retry_in(count: int, exc: BaseException) -> float:
        raise RuntimeError("hook bug")


def test_retry_in_hook_chooses_the_delay() -> None:
    """A worker's retry_in(count, exc) sets the delay, scaled like the default."""
    assert retry.decide(WithHook, 2, ValueError()) == 300.0
    retry.set_backoff_scale(0.5)
    assert retry.decide(WithHook, 2, ValueError()) == 150.0


def test_retry_in_returning_none_or_raising_falls_back_to_backoff() -> None:
    """retry_in returning None, or raising, falls back to the default backoff."""
    assert 15 <= float(retry.decide(WithHook, 0, KeyError())) <= 24
    assert 15 <= float(retry.decide(BrokenHook, 0, ValueError())) <= 24
    assert 15 <= float(retry.decide(None, 0, ValueError())) <= 24


def test_failed_job_records_the_failure() -> None:
    """failed_job() fills retry_count, error class and message, times, and a backtrace only if asked."""
    job = jobs.Job(jid="j1", cls="tests.Record", queue="default")
    error = ValueError("bad input")
    try:
        raise error
    except ValueError:
        first = retry.failed_job(job, error, count=0)
    assert first.retry_count == 0
    assert first.error_class == "ValueError"
    assert first.error_message == "bad input"
    assert first.failed_at is not None
    assert first.retried_at is None
    assert first.backtrace is None
    with_trace = retry.failed_job(job, error, count=0, backtrace=20)
    assert with_trace.backtrace and "ValueError: bad input" in with_trace.backtrace[-1]
    again = retry.failed_job(first, KeyError("k"), count=1)
    assert again.failed_at == first.failed_at
    assert again.retried_at is not None
    assert jobs.decode(jobs.encode(again)) == again


# -- route (against the server) ------------------------------------------


def _acker(client: natskiq.Client, stream: str, seen: list[int]) -> Callable[[], Awaitable[None]]:
    """An ack that records how many messages the successor's stream held when it ran."""

    async def ack() -> None:
        seen.append((await client.js.stream_info(stream)).state.messages)

    return ack


def _origin(client: natskiq.Client, job: jobs.Job, seq: int = 1) -> dict[str, Any]:
    """route()'s facts about the original message: its stream sequence, bytes and the size limit."""
    return {"seq": seq, "raw": jobs.encode(job), "max_payload": client.nc.max_payload}


async def test_route_schedules_a_retry_before_acking(client: natskiq.Client) -> None:
    """With retries left, route stores a scheduled retry on <ns>.retry.<q>.<jid>, then acks."""
    js, names = client.js, client.names
    await ensure_queue(js, names, "default")
    job = jobs.Job(jid=jobs.new_jid(), cls=WithHook.name, args=[1], queue="default", retry=3)
    seen: list[int] = []
    before = time.time()
    outcome = await retry.route(
        js,
        names,
        job,
        ValueError("nope"),
        worker=WithHook,
        ack=_acker(client, names.queue_stream("default"), seen),
        **_origin(client, job, seq=7),
    )
    assert outcome == "retry"
    assert seen == [1]
    msg = await js.get_msg(names.queue_stream("default"), subject=names.retry_subject("default", job.jid))
    assert msg.headers is not None
    assert msg.headers["Nats-Schedule"].startswith("@at ")
    assert msg.headers["Nats-Schedule-Target"] == names.queue_subject("default")
    assert msg.headers["Nats-Msg-Id"] == f"{job.jid}:retry:7"
    successor = jobs.decode(msg.data or b"")
    assert successor.retry_count == 0
    assert successor.error_class == "ValueError"
    assert successor.at is not None
    assert before + 100 <= successor.at <= time.time() + 100


async def test_route_sends_exhausted_job_to_failed(client: natskiq.Client) -> None:
    """Without retries left, route stores the job on failed, then acks and calls retries_exhausted."""
    js, names = client.js, client.names
    await ensure_failed(js, names)
    exhausted: list[tuple[jobs.Job, BaseException]] = []

    class Doomed(natskiq.Worker, name="tests.test_retry.Doomed"):
        @staticmethod
        async def retries_exhausted(dead: jobs.Job, exc: BaseException) -> None:
            exhausted.append((dead, exc))

    job = jobs.Job(jid=jobs.new_jid(), cls=Doomed.name, queue="mail", retry=2, retry_count=1)
    seen: list[int] = []
    error = RuntimeError("still broken")
    outcome = await retry.route(
        js,
        names,
        job,
        error,
        worker=Doomed,
        ack=_acker(client, names.failed_stream, seen),
        **_origin(client, job),
    )
    assert outcome == "failed"
    assert seen == [1]
    msg = await js.get_msg(names.failed_stream, subject=names.failed_subject("mail"))
    dead = jobs.decode(msg.data or b"")
    assert dead.jid == job.jid
    assert dead.retry_count == 2
    assert dead.error_message == "still broken"
    assert dead.at is None
    assert len(exhausted) == 1
    assert exhausted[0][0] == dead
    assert exhausted[0][1] is error


async def test_route_with_zero_retries_goes_straight_to_failed(client: natskiq.Client) -> None:
    """A job with retry=0 goes to failed on its first failure."""
    js, names = client.js, client.names
    await ensure_failed(js, names)
    job = jobs.Job(jid=jobs.new_jid(), cls="tests.Gone", queue="default", retry=0)
    seen: list[int] = []
    outcome = await retry.route(
        js,
        names,
        job,
        KeyError("x"),
        worker=None,
        ack=_acker(client, names.failed_stream, seen),
        **_origin(client, job),
    )
    assert outcome == "failed"
    assert seen == [1]


async def test_route_survives_an_absurd_retry_count(client: natskiq.Client) -> None:
    """A producer-supplied huge retry/retry_count still gets a stored successor and an ack, not a crash."""
    js, names = client.js, client.names
    await ensure_queue(js, names, "default")
    await ensure_failed(js, names)
    raw = json.dumps(
        {"jid": "abc", "class": "nope", "args": [], "queue": "default", "retry": 100000, "retry_count": 5000}
    ).encode()
    job = jobs.decode(raw)
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    outcome = await retry.route(
        js, names, job, natskiq.UnknownWorker("nope"), worker=None, ack=ack, **_origin(client, job)
    )
    assert outcome in ("retry", "failed")
    assert acked == [True]


async def test_fail_invalid_keeps_raw_bytes_and_reason(client: natskiq.Client) -> None:
    """An invalid payload is stored as received on failed.<queue>, with the reason in a header, then acked."""
    js, names = client.js, client.names
    await ensure_failed(js, names)
    raw = b"\x80\x04not a job"
    seen: list[int] = []
    await retry.fail_invalid(
        js,
        names,
        raw,
        "payload is not UTF-8\nsecond line",
        queue="mail",
        ack=_acker(client, names.failed_stream, seen),
    )
    assert seen == [1]
    msg = await js.get_msg(names.failed_stream, subject=names.failed_subject("mail"))
    assert msg.data == raw
    assert msg.headers is not None
    assert msg.headers[retry.INVALID_HEADER] == "1"
    assert msg.headers[retry.REASON_HEADER] == "payload is not UTF-8 second line"


async def test_fail_invalid_with_unusable_queue_name_uses_invalid(client: natskiq.Client) -> None:
    """An invalid payload from a queue whose name cannot be a subject token is filed under 'invalid'."""
    js, names = client.js, client.names
    await ensure_failed(js, names)
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    await retry.fail_invalid(js, names, b"x", "payload is not JSON", queue="a.b", ack=ack)
    assert acked == [True]
    msg = await js.get_msg(names.failed_stream, subject=names.failed_subject("invalid"))
    assert msg.data == b"x"


def test_failed_job_is_evolvable() -> None:
    """failed_job() returns a new frozen Job and leaves the original untouched."""
    job = jobs.Job(jid="j2", cls="c")
    dead = retry.failed_job(job, ValueError("v"), count=0)
    assert job.error_class is None
    assert attrs.evolve(dead, at=None) == dead
