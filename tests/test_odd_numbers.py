"""Odd numbers in stored envelopes (issue 16): anyone who may publish to a queue
can store ``"enqueued_at": -1e400`` (which Python's json reads as -inf),
``1e308``, an int of 400 digits, a string or null where a time belongs. The
dashboard, ``natskiq.api`` and ``natskiq stats --json`` / ``failed list --json``
must show such a time as unknown, answer 200 and emit strict JSON, whether
``job.decode`` accepts the envelope or refuses it as invalid."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import attrs
import httpx
import pytest

import natskiq
from natskiq import api, testing
from natskiq import job as jobs
from natskiq.ops.server import Server
from natskiq.topology import ensure_failed
from natskiq.web import create_app, pages
from natskiq.web.markup import View, duration, when

from .conftest import ROOT

# JSON number literals (and two non-numbers) where an epoch time belongs.
ODD = ["-1e400", "1e400", "1e308", "-1e308", "1" + "0" * 400, '"2025-01-01"', "null", "-1"]
PAGES = ["/", "/busy", "/queues", "/scheduled", "/retries", "/failed", "/periodic"]
NOW = 1_764_280_000.0


@pytest.fixture(scope="module")
def nats_server() -> Iterator[Server]:
    """A server of this module's own, so its namespaces' queues are the only ones listed."""
    with testing.server() as srv:
        yield srv


@pytest.fixture
async def web(client: natskiq.Client) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as any other JSON parser would."""
    return json.loads(text, parse_constant=_refuse)


def strict_dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


def envelope(jid: str, queue: str, odd: str, **extra: str) -> bytes:
    """A job's wire form, written by hand so that ``odd`` is stored exactly as given."""
    fields = {
        "jid": f'"{jid}"', "class": '"tests.Record"', "args": "[1]", "kwargs": "{}",
        "queue": f'"{queue}"', "retry": "0", "created_at": odd, "enqueued_at": odd, **extra,
    }  # fmt: skip
    return ("{" + ",".join(f'"{key}":{value}' for key, value in fields.items()) + "}").encode()


async def publish_odd(client: natskiq.Client, queue: str, odd: str) -> dict[str, str]:
    """Store a ready job, a scheduled one and a failed one whose times are ``odd``, as an attacker can."""
    await client.ensure_queue(queue)
    await ensure_failed(client.js, client.names)
    jids = {kind: jobs.new_jid() for kind in ("queued", "scheduled", "failed")}
    await client.js.publish(client.names.queue_subject(queue), envelope(jids["queued"], queue, odd))
    scheduled = envelope(jids["scheduled"], queue, odd, at=odd, expires_at=odd)
    await client.js.publish(client.names.scheduled_subject(queue, jids["scheduled"]), scheduled)
    failed = envelope(
        jids["failed"], queue, odd, failed_at=odd, retried_at=odd, retry_count="0",
        error_class='"ValueError"', error_message='"boom"',
    )  # fmt: skip
    await client.js.publish(client.names.failed_subject(queue), failed)
    return jids


def view() -> View:
    return View(base="", csrf="t", read_only=False, namespace="ns", poll=3.0, now=NOW)


# -- pure functions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (NOW, NOW),
        (int(NOW), NOW),
        (946_684_800, 946_684_800.0),
        (253_402_300_799, 253_402_300_799.0),
        (946_684_799.9, None),
        (253_402_300_800, None),
        (math.inf, None),
        (-math.inf, None),
        (math.nan, None),
        (1e308, None),
        (-1e308, None),
        (10**400, None),
        (0, None),
        (True, None),
        ("1764280000", None),
        (None, None),
        ([NOW], None),
    ],
)
def test_timestamp_accepts_only_plausible_epoch_seconds(value: object, seconds: float | None) -> None:
    """api.timestamp gives back epoch seconds of the years 2000 to 9999 as floats, None for anything else."""
    assert api.timestamp(value) == seconds


def odd_job(**fields: Any) -> jobs.Job:
    """A Job with odd times, as a decode that accepts them would build it."""
    defaults: dict[str, Any] = {
        "created_at": math.inf, "enqueued_at": -math.inf, "failed_at": 1e308, "retried_at": math.nan,
        "at": 10**400, "expires_at": -1e308, "error_class": "ValueError", "error_message": "boom",
        "retry_count": 3, "args": [math.inf, {"x": [math.nan]}],
    }  # fmt: skip
    return jobs.Job(jid=jobs.new_jid(), cls="tests.Record", **defaults | fields)


def odd_entry(kind: api.Kind, job: jobs.Job, seq: int = 1, stream: str = "S") -> api.Entry:
    return api.Entry(kind=kind, stream=stream, seq=seq, subject="s", queue="default", job=job, raw=b"")


def test_entry_and_periodic_dicts_carry_no_inf_or_nan() -> None:
    """Entry.to_dict and PeriodicInfo.to_dict show odd times as null and floats JSON cannot carry as null."""
    entry = odd_entry("failed", odd_job())
    shown = strict_loads(strict_dumps(entry.to_dict()))["job"]
    for key in api.TIMES:
        assert shown[key] is None, key
    assert shown["args"] == [None, {"x": [None]}]
    assert shown["retry_count"] == 3 and shown["error_class"] == "ValueError"
    fine = odd_entry("queued", odd_job(created_at=NOW, enqueued_at=NOW + 1, failed_at=None, at=None))
    assert strict_loads(strict_dumps(fine.to_dict()))["job"]["enqueued_at"] == NOW + 1
    periodic = api.PeriodicInfo(
        name="p", queue="q", schedule="@hourly", tz=None, cls="c", args=[math.inf], kwargs={"n": -math.inf},
        next_at=None,
    )  # fmt: skip
    assert strict_loads(strict_dumps(periodic.to_dict()))["args"] == [None]


def test_queue_info_latency_is_always_finite() -> None:
    """QueueInfo turns a latency that is not a finite, positive number into 0, so to_dict is strict JSON."""
    for odd in (math.inf, -math.inf, math.nan, -5.0):
        info = api.QueueInfo(name="q", ready=1, running=0, scheduled=0, retries=0, latency=odd)
        assert info.latency == 0.0
        strict_dumps(info.to_dict())
    assert api.QueueInfo(name="q", ready=1, running=0, scheduled=0, retries=0, latency=2.5).latency == 2.5


def test_pages_show_odd_times_of_accepted_jobs_as_a_dash() -> None:
    """Job pages show the times inf, 1e308 or 10**400 of jobs a lax decode accepted as dashes."""
    for kind in ("queued", "scheduled", "retry", "failed"):
        entry = odd_entry(kind, odd_job())
        html = pages.job_set(view(), kind, "/failed", [entry], {}, ["default"], 1, False)
        assert entry.job is not None and entry.job.jid in html
        assert "<td>&ndash;</td>" in html, kind
    info = api.QueueInfo(name="q", ready=1, running=0, scheduled=0, retries=0, latency=1.0)
    assert "tests.Record" in pages.queue(view(), info, [odd_entry("queued", odd_job())], 1, False)
    assert str(when(1e308)) == str(when(math.nan)) == str(when("soon")) == "&ndash;"
    assert duration(math.inf) == duration(None) == "\N{EN DASH}" and duration(12.0) == "12s"
    assert 'data-epoch="1764280000.000"' in when(NOW, NOW)


# -- through the server -----------------------------------------------------------------


@pytest.mark.parametrize("odd", ODD, ids=lambda odd: odd[:12])
async def test_every_page_and_the_api_survive_odd_numbers(
    client: natskiq.Client, web: httpx.AsyncClient, odd: str
) -> None:
    """With odd times stored raw (no worker running), every page answers 200 and the API strict JSON."""
    jids = await publish_odd(client, "odd", odd)
    for path in [*PAGES, "/queues/odd"]:
        page = await web.get(path)
        assert page.status_code == 200, (path, page.text)
    assert jids["queued"] in (await web.get("/queues/odd")).text
    assert jids["scheduled"] in (await web.get("/scheduled")).text
    assert jids["failed"] in (await web.get("/failed")).text
    answer = await web.get("/api/stats")
    assert answer.status_code == 200, answer.text
    [queue] = strict_loads(answer.text)["queues"]
    # Unknown from the envelope, the job's age comes from the server's clock.
    assert queue["name"] == "odd" and 0 <= queue["latency"] < 86400

    stats = await api.stats(client)
    assert stats.enqueued == 1 and stats.dead == 1
    strict_dumps(stats.to_dict())
    strict_dumps([q.to_dict() for q in await api.queues(client)])
    for kind, jid in (
        ("queued", jids["queued"]),
        ("scheduled", jids["scheduled"]),
        ("failed", jids["failed"]),
    ):
        [entry] = await api.find(client, kind)  # type: ignore[arg-type]
        assert jid.encode() in entry.raw
        strict_dumps(entry.to_dict())
    # A time filter skips what has no known time rather than failing on it
    # (a null failed_at reads as unknown; null created/enqueued times as now, like missing ones).
    since = await api.find(client, "failed", api.Filter(since=NOW))
    assert since == [] or (odd == "null" and [e.seq for e in since] == [1])


async def test_cli_json_is_strict_json_with_odd_numbers(nats_url: str, client: natskiq.Client) -> None:
    """``natskiq stats --json`` and ``natskiq failed list --json`` print strict JSON with odd times stored."""
    failed = [(await publish_odd(client, f"q{index}", odd))["failed"] for index, odd in enumerate(ODD)]
    connection = ["--url", nats_url, "--namespace", client.namespace]
    base = [sys.executable, "-m", "natskiq"]
    with anyio.fail_after(60):
        stats = await anyio.run_process([*base, "stats", "--json", *connection], cwd=ROOT, check=False)
        listing = await anyio.run_process(
            [*base, "failed", "list", "--json", *connection], cwd=ROOT, check=False
        )
    assert stats.returncode == 0, stats.stderr.decode()
    doc = strict_loads(stats.stdout.decode())
    assert sorted(q["name"] for q in doc["queues"]) == sorted(f"q{index}" for index in range(len(ODD)))
    assert all(0 <= q["latency"] < 86400 for q in doc["queues"])
    assert listing.returncode == 0, listing.stderr.decode()
    shown = strict_loads(listing.stdout.decode())
    assert shown["count"] == len(ODD)
    text = json.dumps(shown["jobs"])
    assert all(jid in text for jid in failed)


async def test_replay_and_run_now_store_no_odd_times(client: natskiq.Client) -> None:
    """Replay and run-now store a job with odd times again with plausible ones, and refuse inf arguments."""
    await client.ensure_queue("default")
    await ensure_failed(client.js, client.names)
    job = odd_job(args=[1], at=None, expires_at=math.inf)
    # Real messages stand for the stored copies; the entries carry what a lax decode made of them.
    failed = await client.js.publish(client.names.failed_subject("default"), b"{}")
    subject = client.names.scheduled_subject("default", job.jid)
    scheduled = await client.js.publish(subject, b"{}")
    before = time.time()
    await api.replay(client, odd_entry("failed", job, failed.seq, failed.stream))
    moved = attrs.evolve(job, jid=jobs.new_jid())
    await api.run_now(client, odd_entry("scheduled", moved, scheduled.seq, scheduled.stream))
    stored = [entry.job for entry in await api.find(client, "queued")]
    assert sorted(again.jid for again in stored if again) == sorted([job.jid, moved.jid])
    for again in stored:
        assert again is not None
        assert again.created_at >= before and again.enqueued_at >= before
        assert again.failed_at is None and again.retried_at is None and again.expires_at is None
    assert await api.find(client, "failed") == [] and await api.find(client, "scheduled") == []
    again = await client.js.publish(subject, b"{}")  # a stored copy still there (the first is gone)
    with pytest.raises(natskiq.NatskiqError, match="cannot be stored again"):
        await api.run_now(client, odd_entry("scheduled", odd_job(at=None), again.seq, again.stream))
    assert len(await api.find(client, "queued")) == 2
    # An entry gone meanwhile (the first run_now removed it) stores nothing when run again.
    await api.run_now(client, odd_entry("scheduled", moved, scheduled.seq, scheduled.stream))
    assert len(await api.find(client, "queued")) == 2
