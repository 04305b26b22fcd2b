"""The sweep: messages on schedule subjects that the server will never fire go
to the failed set with their reason; valid schedules are left to fire."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import anyio
import pytest
from nats.js.errors import NotFoundError

import natskiq
from natskiq import job as jobs
from natskiq import topology
from natskiq.enqueue.publish import rfc3339
from natskiq.run import sweep
from natskiq.run.retry import INVALID_HEADER, REASON_HEADER, TRUNCATED_HEADER
from natskiq.topology import CONSUMER, Names

from .conftest import until

Q = "sw"


async def setup(client: natskiq.Client, queue: str = Q) -> None:
    await topology.ensure_queue(client.js, client.names, queue)
    await topology.ensure_failed(client.js, client.names)


def schedule(at: float, target: str) -> dict[str, str]:
    return {"Nats-Schedule": f"@at {rfc3339(at)}", "Nats-Schedule-Target": target}


def subject(client: natskiq.Client, kind: str, jid: str, queue: str = Q) -> str:
    names = client.names
    return names.scheduled_subject(queue, jid) if kind == "scheduled" else names.retry_subject(queue, jid)


async def store(client: natskiq.Client, subj: str, data: bytes, headers: dict[str, str] | None = None) -> int:
    ack = await client.js.publish(subj, data, headers=headers)
    return ack.seq


async def raw_publish(url: str, subj: str, header_block: bytes, data: bytes) -> int:
    """Publish as a hostile producer can, with any header bytes; returns the stream sequence."""
    parts = urlsplit(url)
    async with await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 4222) as conn:
        await conn.receive()  # INFO
        size = len(header_block)
        await conn.send(
            b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB _INBOX.raw 1\r\n'
            + f"HPUB {subj} _INBOX.raw {size} {size + len(data)}\r\n".encode()
            + header_block
            + data
            + b"\r\n"
        )
        got = b""
        with anyio.fail_after(5):
            while b"}\r\n" not in got:
                got += await conn.receive()
    ack = json.loads(got[got.index(b"{") : got.index(b"}\r\n") + 1])
    assert "error" not in ack, ack
    return int(ack["seq"])


async def failed_records(client: natskiq.Client, queue: str = Q) -> list[tuple[bytes, dict[str, str]]]:
    out, seq = [], 1
    while True:
        try:
            msg = await client.js.get_msg(
                client.names.failed_stream, seq=seq, subject=client.names.failed_subject(queue), next=True
            )
        except NotFoundError:
            return out
        out.append((msg.data or b"", dict(msg.headers or {})))
        seq = (msg.seq or seq) + 1


async def is_stored(client: natskiq.Client, seq: int, queue: str = Q) -> bool:
    try:
        await client.js.get_msg(client.names.queue_stream(queue), seq)
    except NotFoundError:
        return False
    return True


# -- which messages would never run -----------------------------------------------------

TARGET = "ns.queue.q"


def block(*lines: bytes) -> bytes:
    return b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def test_schedule_filter_covers_only_the_schedule_subjects() -> None:
    """The sweep's filter is <ns>.*.<q>.*, which the queue subject (one token shorter) never matches."""
    names = Names("ns")
    assert names.schedule_filter("q") == "ns.*.q.*"
    with pytest.raises(natskiq.ConfigError, match="invalid queue name"):
        names.schedule_filter("a.b")


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (b"", "without a Nats-Schedule header: it would never run"),
        (block(b"X-Other: 1"), "without a Nats-Schedule header: it would never run"),
        (block(b"Nats-Schedule:"), "with an empty Nats-Schedule header"),
        (block(b"Nats-Schedule:    "), "with an empty Nats-Schedule header"),
        (
            block(b"nats-schedule: @at 2030-01-01T00:00:00Z", b"Nats-Schedule-Target: ns.queue.q"),
            "case-sensitive",
        ),
        (
            block(b"Nats-Schedule: ", b"Nats-Schedule: @at 2030-01-01T00:00:00Z"),
            "with an empty Nats-Schedule",
        ),
        (block(b"Nats-Schedule: @every 1s", b"Nats-Schedule-Target: ns.retry.q.x"), "onto 'ns.retry.q.x'"),
        (
            block(b"Nats-Scheduler: ns.scheduled.q.a", b"Nats-Schedule-Next: purge"),
            "by the schedule on ns.sch",
        ),
        (block(b"X-Bad: \xff\xfe", b"garbage line"), "without a Nats-Schedule header"),
    ],
)
def test_unusable_explains_what_would_never_run(headers: bytes, fragment: str) -> None:
    """A missing, empty, miscased or first-empty Nats-Schedule, or a target off the queue, is explained."""
    reason = sweep.unusable("ns.scheduled.q.j", headers, TARGET)
    assert reason is not None
    assert fragment in reason
    assert "ns.scheduled.q.j" in reason


@pytest.mark.parametrize(
    "schedule_line",
    [
        b"Nats-Schedule: @at 2030-01-01T00:00:00.5Z",
        b"Nats-Schedule:@at 2030-01-01T00:00:00Z",
        b"Nats-Schedule: @every 30s",
        b"Nats-Schedule: 0 */5 * * * *",
        b"Nats-Schedule: @hourly",
    ],
)
def test_unusable_accepts_schedules_the_server_fires(schedule_line: bytes) -> None:
    """A schedule the server stored and fires onto the queue subject (an @at, @every or cron) is usable."""
    headers = block(
        b"Nats-Msg-Id: j:0", schedule_line, b"Nats-Schedule-Target: ns.queue.q", b"Nats-Rollup: sub"
    )
    assert sweep.unusable("ns.scheduled.q.j", headers, TARGET) is None


def test_header_reads_the_first_value_as_the_server_does() -> None:
    """The first occurrence wins, the name's case must match, and a value may end the block without CRLF."""
    raw = b"NATS/1.0\r\nA-Key: x\r\nKey: first\r\nKey: second\r\nTail:  end"
    assert sweep.header(raw, "Key") == "first"
    assert sweep.header(raw, "key") is None
    assert sweep.header(raw, "Tail") == "end"
    assert sweep.header(b"", "Key") is None


# -- against a server -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scheduled", "retry"])
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("none", "without a Nats-Schedule header: it would never run"),
        ("empty", "with an empty Nats-Schedule header: it would never run"),
        ("lower", "(header names are case-sensitive)"),
        ("elsewhere", "not the queue subject"),
    ],
)
async def test_stranded_messages_are_moved_to_the_failed_set(
    client: natskiq.Client, kind: str, case: str, fragment: str
) -> None:
    """Each message the server stored but will never fire goes to the failed set with its reason."""
    await setup(client)
    names, subj = client.names, subject(client, kind, f"j-{case}")
    later = time.time() + 3600
    headers = {
        "none": None,
        "empty": {"Nats-Schedule": ""},
        "lower": {"nats-schedule": f"@at {rfc3339(later)}", "nats-schedule-target": names.queue_subject(Q)},
        "elsewhere": schedule(later, names.retry_subject(Q, "elsewhere")),
    }[case]
    data = f'{{"jid": "{case}"}}'.encode()
    seq = await store(client, subj, data, headers)
    assert await sweep.sweep(client.js, names, Q) == (1, seq)
    [(raw, meta)] = await failed_records(client)
    assert raw == data
    assert meta[INVALID_HEADER] == "1"
    assert subj in meta[REASON_HEADER] and fragment in meta[REASON_HEADER]
    assert not await is_stored(client, seq)


async def test_hostile_header_bytes_and_data_are_moved_intact(client: natskiq.Client, nats_url: str) -> None:
    """Raw header blocks nats-py cannot send (a first, empty Nats-Schedule; odd bytes) are moved intact."""
    await setup(client)
    target = client.names.queue_subject(Q).encode()
    later = rfc3339(time.time() + 3600).encode()
    cases = {
        "dup": block(b"Nats-Schedule: ", b"Nats-Schedule: @at " + later, b"Nats-Schedule-Target: " + target),
        "bytes": block(b"X-Bad: \xff\xfe", b"no colon here"),
        "status": b"NATS/1.0 503\r\n\r\n",
    }
    seqs = {}
    for name, header_block in cases.items():
        seqs[name] = await raw_publish(
            nats_url, subject(client, "retry", name), header_block, b"\xff\x00" + name.encode()
        )
    moved, last = await sweep.sweep(client.js, client.names, Q)
    assert (moved, last) == (3, max(seqs.values()))
    records = await failed_records(client)
    assert sorted(raw for raw, _ in records) == sorted(b"\xff\x00" + name.encode() for name in cases)
    assert all("would never run" in meta[REASON_HEADER] for _, meta in records)
    assert not [seq for seq in seqs.values() if await is_stored(client, seq)]


async def test_the_stranded_copy_of_a_misdirected_schedule_is_moved(client: natskiq.Client) -> None:
    """The copy a schedule fires onto another schedule subject is moved, naming that schedule."""
    await setup(client)
    names = client.names
    source, aim = names.scheduled_subject(Q, "misdirected"), names.retry_subject(Q, "landing")
    await store(client, source, b'{"jid": "misdirected"}', schedule(time.time() - 60, aim))
    stream = names.queue_stream(Q)

    async def fired() -> bool:
        info = await client.js.stream_info(stream, subjects_filter=">")
        return set(info.state.subjects or {}) == {aim}

    await until(fired)
    moved, _ = await sweep.sweep(client.js, names, Q)
    assert moved == 1
    [(raw, meta)] = await failed_records(client)
    assert raw == b'{"jid": "misdirected"}'
    assert f"fired onto {aim} by the schedule on {source}" in meta[REASON_HEADER]
    assert (await client.js.stream_info(stream)).state.messages == 0


async def test_valid_schedules_are_left_alone_and_fire(client: natskiq.Client) -> None:
    """Valid scheduled, retry and periodic schedules and ready jobs are untouched; the due ones fire."""
    await setup(client)
    js, names = client.js, client.names
    soon, later = time.time() + 2, time.time() + 3600
    delayed = jobs.new_job("tests.Record", [1], {}, queue=Q, retry=3, at=soon)
    await client.publish(delayed)
    retried = jobs.new_job("tests.Record", [2], {}, queue=Q, retry=3, at=soon)
    headers = {"Nats-Msg-Id": f"{retried.jid}:retry:1", **schedule(soon, names.queue_subject(Q))}
    await store(client, names.retry_subject(Q, retried.jid), jobs.encode(retried), headers)
    # A day away: an @hourly one fired during a run at the top of the hour, and its body is no job.
    periodic = {"Nats-Schedule": "@every 24h", "Nats-Schedule-Target": names.queue_subject(Q)}
    await store(client, names.scheduled_subject(Q, "periodic-daily"), b'{"periodic": "x"}', periodic)
    far = await store(client, names.retry_subject(Q, "far"), b"{}", schedule(later, names.queue_subject(Q)))
    ready = await store(client, names.queue_subject(Q), b"a ready job: no schedule header, and none needed")
    moved, last = await sweep.sweep(js, names, Q)
    assert (moved, last) == (0, far)
    assert await failed_records(client) == []
    assert await is_stored(client, far) and await is_stored(client, ready)
    sub = await js.pull_subscribe_bind(CONSUMER, stream=names.queue_stream(Q))
    got: set[str] = set()
    with anyio.fail_after(10):
        while len(got) < 3:
            try:
                msgs = await sub.fetch(3, timeout=0.5)
            except TimeoutError:
                continue
            for msg in msgs:
                got.add(jobs.decode(msg.data).jid if msg.data.startswith(b"{") else "ready")
                await msg.ack()
    await sub.unsubscribe()
    assert got == {delayed.jid, retried.jid, "ready"}


async def test_incremental_calls_examine_only_new_messages(client: natskiq.Client) -> None:
    """Given the sequence it returned, the sweep examines only newer messages, at most limit a call."""
    await setup(client)
    js, names = client.js, client.names
    good = schedule(time.time() + 3600, names.queue_subject(Q))
    old_bad = await store(client, subject(client, "retry", "old"), b"old")
    seqs = [await store(client, subject(client, "scheduled", f"v{i}"), b"{}", good) for i in range(3)]
    assert await sweep.sweep(js, names, Q, after=old_bad, limit=2) == (0, seqs[1])
    assert await sweep.sweep(js, names, Q, after=seqs[1], limit=2) == (0, seqs[2])
    assert await sweep.sweep(js, names, Q, after=seqs[2]) == (0, seqs[2])
    new_bad = await store(client, subject(client, "scheduled", "new"), b"new")
    newest = await store(client, subject(client, "retry", "v9"), b"{}", good)
    seen = [e.seq async for e in sweep.examine(js, names, Q, after=seqs[2])]
    assert seen == [new_bad, newest]
    assert await sweep.sweep(js, names, Q, after=seqs[2]) == (1, newest)
    assert [raw for raw, _ in await failed_records(client)] == [b"new"]
    assert await is_stored(client, old_bad)  # before `after`: not examined


async def test_a_message_deleted_mid_sweep_is_not_an_error(client: natskiq.Client) -> None:
    """A message deleted between being examined and being moved is still recorded, and is no error."""
    await setup(client)
    js, names = client.js, client.names
    seqs = [await store(client, subject(client, "retry", f"gone{i}"), f"gone{i}".encode()) for i in range(2)]
    found = [e async for e in sweep.examine(js, names, Q)]
    assert [e.seq for e in found] == seqs
    for seen in found:
        assert await js.delete_msg(names.queue_stream(Q), seen.seq)
        assert await sweep.move(js, names, Q, seen) is True
    assert [raw for raw, _ in await failed_records(client)] == [b"gone0", b"gone1"]
    assert await sweep.sweep(js, names, Q) == (0, 0)


async def test_a_message_moved_twice_is_recorded_once(client: natskiq.Client) -> None:
    """Moving the same message again (a sweep that died before its delete) adds no second failed record."""
    await setup(client)
    js, names = client.js, client.names
    await store(client, subject(client, "scheduled", "twice"), b"twice")
    [seen] = [e async for e in sweep.examine(js, names, Q)]
    assert await sweep.move(js, names, Q, seen) and await sweep.move(js, names, Q, seen)
    assert [raw for raw, _ in await failed_records(client)] == [b"twice"]


async def test_a_stranded_payload_at_the_size_limit_is_moved_cut_to_fit(client: natskiq.Client) -> None:
    """A headerless message as big as the server allows is moved, cut to fit beside the reason headers."""
    await setup(client)
    js, names, limit = client.js, client.names, client.nc.max_payload
    seq = await store(client, subject(client, "retry", "huge"), b"x" * limit)
    assert await sweep.sweep(js, names, Q, max_payload=limit) == (1, seq)
    [(raw, meta)] = await failed_records(client)
    assert meta[TRUNCATED_HEADER] == str(limit)
    assert 0 < len(raw) < limit and set(raw) == {ord("x")}
    assert not await is_stored(client, seq)


@pytest.mark.slow
async def test_sweep_over_many_valid_schedules(client: natskiq.Client) -> None:
    """A sweep over 2,000 valid scheduled jobs moves none and returns the last sequence (time printed;
    10,000 took 3.5-3.7 s here, about 2,800 a second)."""
    await setup(client)
    js, names = client.js, client.names
    later, target = time.time() + 3600, names.queue_subject(Q)
    pending = [
        await js.publish_async(
            names.scheduled_subject(Q, f"j{i}"), b'{"jid": "x"}' * 20, headers=schedule(later, target)
        )
        for i in range(2_000)
    ]
    last = max([(await ack).seq for ack in pending])
    started = time.perf_counter()
    result = await sweep.sweep(js, names, Q, limit=20_000)
    print(f"sweep over 2,000 valid scheduled messages: {time.perf_counter() - started:.2f} s")
    assert result == (0, last)
