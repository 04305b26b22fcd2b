"""Hostile and malformed payloads, sent raw to the queue subject: each ends in the
failed set with its reason, and the worker process keeps running jobs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import natskiq
from natskiq import api, testing

from .conftest import ROOT, Workers, running_node, until, wait_for_ledger
from .sample_workers import Crash, FixedByFile, Record

pytestmark = pytest.mark.slow


def envelope(**fields: object) -> bytes:
    base: dict[str, object] = {
        "jid": "j" * 24,
        "class": "tests.Record",
        "args": [],
        "kwargs": {},
        "queue": "default",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


INVALID = {
    "not json": b"not json at all",
    "not utf-8": b"\xff\xfe\x00\x81garbage",
    "empty": b"",
    "an array": b"[1, 2, 3]",
    "a string": b'"hello"',
    "missing jid": envelope(jid=None),
    "missing class": json.dumps({"jid": "abc", "args": [], "queue": "default"}).encode(),
    "args not a list": envelope(jid="a1", args="oops"),
    "retry a bool": envelope(jid="a2", retry=True),
    "jid a number": envelope(jid=12345),
    "jid with a dot": envelope(jid="a.b"),
    "queue with wildcards": envelope(jid="a3", queue="x.*.>"),
    "queue with a space": envelope(jid="a4", queue="a b"),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "pickle": pickle.dumps({"class": "os.system", "args": ["echo pwned"]}),
}
# Valid envelopes that cannot run: they fail like a job that raised.
UNRUNNABLE = {
    "unknown class": envelope(jid="b1", **{"class": "tests.NoSuchWorker"}, retry=1),
    "importable callable": envelope(jid="b2", **{"class": "os.system"}, args=["echo pwned"], retry=0),
    "class with subject tokens": envelope(jid="b3", **{"class": "x.*> y"}, retry=0),
    "wrong argument count": envelope(jid="b4", args=[1, 2, 3, 4, 5], retry=0),
    "unknown keyword": envelope(jid="b5", kwargs={"nope": 1}, retry=0),
    "huge": envelope(jid="b6", **{"class": "tests.Nope"}, args=["x" * 900_000], retry=0),
}


async def test_hostile_payloads_end_in_failed_and_the_worker_survives(
    client: natskiq.Client, workers: Workers, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every malformed or hostile payload lands in the failed set with a reason; the node lives on."""
    monkeypatch.setenv("NATSKIQ_TEST_BACKOFF_SCALE", "0")
    await client.ensure_queue("default")
    proc = workers.start()
    subject = client.names.queue_subject("default")
    for payload in [*INVALID.values(), *UNRUNNABLE.values()]:
        await client.js.publish(subject, payload)
    total = len(INVALID) + len(UNRUNNABLE)

    async def all_failed() -> bool:
        return len(await api.find(client, "failed")) == total

    await until(all_failed, timeout=30)
    entries = await api.find(client, "failed")
    invalid = [e for e in entries if e.job is None]
    assert len(invalid) == len(INVALID)
    assert all(e.reason for e in invalid)
    assert {e.raw for e in invalid} == set(INVALID.values())  # kept byte for byte
    by_jid = {e.jid: e.job for e in entries if e.job is not None}
    assert by_jid["b1"] is not None and by_jid["b1"].retry_count == 1  # retried once first
    assert by_jid["b1"].error_class == "UnknownWorker"
    assert by_jid["b2"] is not None and by_jid["b2"].error_class == "UnknownWorker"
    assert by_jid["b4"] is not None and by_jid["b4"].error_class == "TypeError"
    assert by_jid["b5"] is not None and by_jid["b5"].error_class == "TypeError"

    jid = await Record.perform_async(note="still alive")
    rows = await wait_for_ledger(ledger, 1)
    assert [r.jid for r in rows] == [jid]
    assert proc.poll() is None
    stats = await api.stats(client)
    assert stats.dead == total


async def test_a_job_that_kills_its_process_ends_in_failed(
    client: natskiq.Client, workers: Workers, ledger: Path
) -> None:
    """A job that crashes every process running it is failed after --max-deliveries, not run forever."""
    jid = await Crash.perform_async()
    procs = []

    async def failed_or_restart() -> bool:
        if await api.find(client, "failed"):
            return True
        if not procs or procs[-1].poll() is not None:
            assert len(procs) < 6, workers.logs()
            procs.append(workers.start("--max-deliveries", "2", "--ack-wait", "1", "--lease-ttl", "1"))
        return False

    await until(failed_or_restart, timeout=60)
    [entry] = await api.find(client, "failed")
    assert entry.job is not None and entry.jid == jid
    assert entry.job.error_class == "DeliveryLimit"
    assert [p.returncode for p in procs[:2]] == [17, 17]
    await anyio.lowlevel.checkpoint()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natskiq", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


async def test_failed_cli_list_replay_delete(client: natskiq.Client, ledger: Path, tmp_path: Path) -> None:
    """`natskiq failed list --json` parses and names the jid; replay runs it again;
    bad input exits non-zero."""
    fix = tmp_path / "fixed"
    conn = ["--url", client.url or "", "--namespace", client.namespace]
    jid = await FixedByFile.perform_async(str(fix))
    with testing.fast_retries():
        async with running_node(client.url, client.namespace):

            async def failed() -> bool:
                return len(await api.find(client, "failed")) == 1

            await until(failed)
            listed = await anyio.to_thread.run_sync(lambda: cli("failed", "list", "--json", *conn))
            assert listed.returncode == 0, listed.stderr
            doc = json.loads(listed.stdout)
            assert [j["job"]["jid"] for j in doc["jobs"]] == [jid]
            assert doc["jobs"][0]["job"]["error_class"] == "LookupError"
            table = await anyio.to_thread.run_sync(lambda: cli("failed", "list", *conn))
            assert jid in table.stdout and "LookupError" in table.stdout

            no_filter = await anyio.to_thread.run_sync(lambda: cli("failed", "replay", *conn))
            assert no_filter.returncode == 2 and "--all" in no_filter.stderr
            no_match = await anyio.to_thread.run_sync(lambda: cli("failed", "replay", "--jid", "nope", *conn))
            assert no_match.returncode == 1 and "no failed job matches" in no_match.stderr

            await anyio.Path(fix).touch()
            replayed = await anyio.to_thread.run_sync(lambda: cli("failed", "replay", "--jid", jid, *conn))
            assert replayed.returncode == 0, replayed.stderr
            rows = await wait_for_ledger(ledger, 3)
    assert [r.jid for r in rows] == [jid] * 3
    assert await api.find(client, "failed") == []
    stats = await anyio.to_thread.run_sync(lambda: cli("stats", "--json", *conn))
    totals = json.loads(stats.stdout)
    assert (totals["processed"], totals["failed"], totals["dead"]) == (3, 2, 0)


def test_cli_reports_unknown_queue_and_unreachable_server(nats_url: str, namespace: str) -> None:
    """Unknown queues and an unreachable server give a clear message and a non-zero exit."""
    conn = ["--url", nats_url, "--namespace", namespace]
    unknown = cli("retry", "list", "--queue", "nope", *conn)
    assert unknown.returncode == 1 and "no queue named 'nope'" in unknown.stderr
    bad = cli("failed", "list", "--queue", "a.b", *conn)
    assert bad.returncode == 2 and "invalid queue name" in bad.stderr
    bad_time = cli("failed", "list", "--since", "yesterday-ish", *conn)
    assert bad_time.returncode == 2 and "neither an ISO time nor an age" in bad_time.stderr
    down = cli("stats", "--url", "nats://127.0.0.1:1")
    assert down.returncode == 2 and "cannot connect" in down.stderr
