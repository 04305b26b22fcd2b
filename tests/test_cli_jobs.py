"""`natskiq job`, `natskiq result` and `natskiq events` against a real server and node.

The node runs in-process (the jobs are this module's workers); each command
runs as `python -m natskiq` in a subprocess, as a person or a script would
run it, so its output, its JSON and its exit code are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.text import TextReceiveStream

import natskiq
from natskiq import cli
from natskiq.ops.launcher import Launcher

from .conftest import running_node, until
from .test_cli_more import ROOT, UNREACHABLE, _env, natskiq_cli


class Pages(natskiq.Worker, keep_result=60, name="tests.cli_jobs.Pages"):
    """Reports a page at a time, then returns how many it made."""

    async def perform(self, pages: int, pause: float = 0.0) -> dict[str, int]:
        for page in range(1, pages + 1):
            await anyio.sleep(pause)
            await self.progress(page / pages, f"page {page} of {pages}")
        return {"pages": pages}


class Broken(natskiq.Worker, keep_result=60, retries=0, name="tests.cli_jobs.Broken"):
    async def perform(self) -> None:
        raise ValueError("bad address")


class Nap(natskiq.Worker, keep_result=60, queue="naps", name="tests.cli_jobs.Nap"):
    async def perform(self, seconds: float) -> str:
        await anyio.sleep(seconds)
        return "rested"


class Unkept(natskiq.Worker, name="tests.cli_jobs.Unkept"):
    async def perform(self) -> str:
        return "forgotten"


STATUS_KEYS = {
    "jid", "state", "queue", "class", "updated_at", "enqueued_at", "started_at", "finished_at",
    "node", "attempt", "next_at", "progress", "message", "error_class", "error_message",
    "finished", "events",
}  # fmt: skip
EVENT_KEYS = {"jid", "queue", "class", "state", "at", "seq"}


def node(client: natskiq.Client) -> contextlib.AbstractAsyncContextManager[Launcher]:
    """An in-process node serving default and naps (a task group: entered in the test itself)."""
    assert client.url is not None
    return running_node(client.url, client.namespace, node_id="r1", queues=("default", "naps"))


async def cli_run(client: natskiq.Client, *argv: str) -> subprocess.CompletedProcess[str]:
    assert client.url is not None
    return await natskiq_cli(*argv, url=client.url, namespace=client.namespace)


async def finished(handle: natskiq.JobHandle) -> natskiq.JobStatus:
    """The job's status once its last event (after its result) is stored."""
    return await handle.wait(timeout=20)


# -- natskiq job --------------------------------------------------------------


async def test_job_prints_status_and_timeline(client: natskiq.Client) -> None:
    """`natskiq job JID` prints the state, node, attempt, last progress, class and queue, then
    one line per event; --json prints the status's keys and every event's."""
    async with node(client):
        handle = await Pages.perform_async(2)
        status = await finished(handle)
    shown = await cli_run(client, "job", handle)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:3] == [
        f"jid       {handle}",
        "state     succeeded on r1 (attempt 1), 100% page 2 of 2",
        "class     tests.cli_jobs.Pages   queue default",
    ]
    assert lines[3] == "timeline" and len(lines) == 4 + len(status.events)
    timeline = [line.split()[2:] for line in lines[4:]]
    assert [words[0] for words in timeline] == [e.state for e in status.events]
    assert ["succeeded", "node=r1", "attempt=1"] in timeline
    assert ["progress", "node=r1", "progress=1.0", "message=page", "2", "of", "2"] in timeline

    as_json = await cli_run(client, "job", handle, "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert set(doc) == STATUS_KEYS
    assert (doc["jid"], doc["state"], doc["class"], doc["queue"]) == (
        handle,
        "succeeded",
        Pages.name,
        "default",
    )
    assert (doc["node"], doc["attempt"], doc["finished"], doc["progress"]) == ("r1", 1, True, 1.0)
    assert doc["error_class"] is None and doc["next_at"] is None
    assert doc["started_at"] <= doc["finished_at"] == doc["updated_at"]
    assert all(EVENT_KEYS <= set(e) for e in doc["events"])
    assert [e["seq"] for e in doc["events"]] == sorted(e["seq"] for e in doc["events"])
    running = next(e for e in doc["events"] if e["state"] == "running")
    assert (running["node"], running["attempt"]) == ("r1", 1)


async def test_job_shows_the_error_of_a_failed_job(client: natskiq.Client) -> None:
    """A job that failed for good is still a status (exit 0), with its error on its own line."""
    async with node(client):
        handle = await Broken.perform_async()
        await finished(handle)
    shown = await cli_run(client, "job", handle)
    assert shown.returncode == 0, shown.stderr
    assert "state     failed (attempt 1)" in shown.stdout
    assert "error     ValueError: bad address" in shown.stdout
    doc = json.loads((await cli_run(client, "job", handle, "--json")).stdout)
    assert (doc["state"], doc["error_class"], doc["error_message"]) == ("failed", "ValueError", "bad address")


async def test_job_of_an_unknown_jid_exits_1(client: natskiq.Client) -> None:
    """A jid the events stream knows nothing about exits 1 with one line on stderr, nothing on stdout."""
    async with node(client):
        await (await Pages.perform_async(1)).result(timeout=20)
    for argv in (("job", "nosuchjob"), ("job", "nosuchjob", "--json")):
        shown = await cli_run(client, *argv)
        assert (shown.returncode, shown.stdout) == (1, "")
        assert shown.stderr.startswith("natskiq: no events of job nosuchjob")
        assert len(shown.stderr.splitlines()) == 1


# -- natskiq result -------------------------------------------------------------


async def test_result_prints_the_value_as_json(client: natskiq.Client) -> None:
    """`natskiq result JID` prints a succeeded job's kept value as JSON; --wait S waits for one
    still running, and prints it as soon as the job has run."""
    async with node(client):
        done = await Pages.perform_async(3)
        await done.result(timeout=20)
        printed = await cli_run(client, "result", done)
        assert (printed.returncode, printed.stdout, printed.stderr) == (0, '{"pages": 3}\n', "")

        slow = await Nap.perform_async(1.5)
        started = time.monotonic()
        waited = await cli_run(client, "result", slow, "--wait", "30")
        assert (waited.returncode, waited.stdout) == (0, '"rested"\n'), waited.stderr
        assert time.monotonic() - started < 25  # it returned with the result, not at the end of --wait


async def test_result_exits_1_for_a_failed_or_cancelled_job(client: natskiq.Client) -> None:
    """A job that failed for good, or was cancelled, exits 1 and says which on stderr."""
    async with node(client):
        broken = await Broken.perform_async()
        with pytest.raises(natskiq.JobFailed):
            await broken.result(timeout=20)
        napping = await Nap.perform_async(30)
        await until(lambda: _running(napping), timeout=20)
        await natskiq.api.cancel(client, napping)
        with pytest.raises(natskiq.JobCancelled):
            await napping.result(timeout=20)
    failed = await cli_run(client, "result", broken)
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr.startswith("natskiq: ") and "ValueError: bad address" in failed.stderr
    cancelled = await cli_run(client, "result", napping)
    assert (cancelled.returncode, cancelled.stdout) == (1, "")
    assert cancelled.stderr.startswith("natskiq: ") and "cancelled" in cancelled.stderr


async def test_result_exits_1_when_the_wait_runs_out_or_there_is_none(client: natskiq.Client) -> None:
    """A wait that runs out, an unknown jid and a job whose class keeps no result each exit 1."""
    async with node(client):
        unkept = await Unkept.perform_async()
        await finished(unkept)
        napping = await Nap.perform_async(30)
        await until(lambda: _running(napping), timeout=20)
        late = await cli_run(client, "result", napping, "--wait", "0.5")
        assert (late.returncode, late.stdout) == (1, "")
        assert late.stderr == f"natskiq: job {napping} did not finish within 0.5 s\n"
        await natskiq.api.cancel(client, napping)
    unknown = await cli_run(client, "result", "nosuchjob")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.startswith("natskiq: no job nosuchjob")
    none = await cli_run(client, "result", unkept)
    assert (none.returncode, none.stdout) == (1, "")
    assert "finished without a result" in none.stderr


async def _running(handle: natskiq.JobHandle) -> bool:
    try:
        return (await handle.status()).state == "running"
    except natskiq.NotFound:
        return False


# -- natskiq events ---------------------------------------------------------------


def event_line(line: str) -> list[str]:
    """A printed event's words after its date and time: state, queue, class, jid, fields."""
    return line.split()[2:]


async def test_events_lists_stored_events_with_filters(client: natskiq.Client) -> None:
    """`natskiq events` prints the stored events oldest first, one per line; --queue, --class,
    --jid, --since and --limit pick which; --json prints them under "events"."""
    async with node(client):
        pages = await Pages.perform_async(1)
        nap = await Nap.perform_async(0.0)
        for handle in (pages, nap):
            await finished(handle)
    everything = await cli_run(client, "events")
    assert everything.returncode == 0, everything.stderr
    rows = [event_line(line) for line in everything.stdout.splitlines()]
    assert {(r[0], r[1], r[2], r[3]) for r in rows} >= {
        ("succeeded", "default", Pages.name, pages),
        ("succeeded", "naps", Nap.name, nap),
    }
    assert ["running", "naps", Nap.name, nap, "node=r1", "attempt=1"] in rows

    as_json = await cli_run(client, "events", "--json")
    docs = json.loads(as_json.stdout)["events"]
    assert len(docs) == len(rows) and all(EVENT_KEYS <= set(d) for d in docs)
    assert [d["seq"] for d in docs] == sorted(d["seq"] for d in docs)

    async def jids(*flags: str) -> set[str]:
        found = await cli_run(client, "events", "--json", *flags)
        assert found.returncode == 0, found.stderr
        return {d["jid"] for d in json.loads(found.stdout)["events"]}

    assert await jids("--queue", "naps") == {nap}
    assert await jids("--class", Pages.name) == {pages}
    assert await jids("--jid", nap) == {nap}
    assert await jids("--since", "1h") == {pages, nap}
    tomorrow = datetime.fromtimestamp(time.time() + 86400, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert await jids("--since", tomorrow) == set()
    assert await jids("--queue", "nosuch") == set()
    latest = json.loads((await cli_run(client, "events", "--json", "--limit", "2")).stdout)["events"]
    assert latest == docs[-2:]


async def test_events_exit_1_without_an_events_stream(client: natskiq.Client) -> None:
    """In a namespace where no worker ever ran there is no events stream: exit 1, saying so."""
    found = await cli_run(client, "events")
    assert (found.returncode, found.stdout) == (1, "")
    assert found.stderr.startswith("natskiq: no events stream in namespace")


class Lines:
    """A subprocess's stdout, read line by line as it comes."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        assert proc.stdout is not None
        self._text = TextReceiveStream(proc.stdout)
        self._buffer = ""
        self.lines: list[str] = []

    async def until(self, done: Callable[[list[str]], bool], timeout: float = 20.0) -> list[str]:
        """Read until ``done(lines so far)`` holds; returns the lines."""
        with anyio.fail_after(timeout):
            while not done(self.lines):
                self._buffer += await self._text.receive()
                *complete, self._buffer = self._buffer.split("\n")
                self.lines += complete
        return self.lines


@contextlib.asynccontextmanager
async def following(
    client: natskiq.Client, tmp_path: Path, *flags: str
) -> AsyncIterator[tuple[anyio.abc.Process, Lines]]:
    """`natskiq events --follow FLAGS` as a subprocess for the block (its stderr in a file, which
    a failure shows); then Ctrl-C if still running."""
    argv = [sys.executable, "-m", "natskiq", "events", "--follow", *flags]
    argv += ["--url", client.url, "--namespace", client.namespace]
    err = tmp_path / "follow.err"
    with err.open("wb") as stderr:
        proc = await anyio.open_process(argv, cwd=ROOT, env=_env(), stderr=stderr)
    async with proc:
        try:
            yield proc, Lines(proc)
        except BaseException as exc:
            exc.add_note(f"natskiq events --follow wrote on stderr: {err.read_text()!r}")
            raise
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                with anyio.move_on_after(20, shield=True):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()


async def test_events_follow_prints_new_events_as_they_happen(client: natskiq.Client, tmp_path: Path) -> None:
    """`natskiq events --follow` prints none of the stored events, then each new one as it is
    stored, until it is stopped (Ctrl-C: exit 130)."""
    async with node(client):
        old = await Pages.perform_async(1)
        await finished(old)
        everything = client.names.events_filter()
        async with following(client, tmp_path) as (proc, out):

            async def subscribed() -> bool:  # its consumer of every event exists (a handle's take one jid's)
                consumers = await client.js.consumers_info(client.names.events_stream)
                return any(c.config.filter_subject == everything for c in consumers)

            await until(subscribed, timeout=20)
            new = await Nap.perform_async(0.3)
            await out.until(lambda lines: any(_is(event_line(line), new, "succeeded") for line in lines))
            rows = [event_line(line) for line in out.lines]
            assert {r[0] for r in rows if r[3] == new} >= {"queued", "running", "succeeded"}
            assert all(r[3] != old for r in rows)
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(20):  # at once, unless the machine is very busy
                assert await proc.wait() == 130


def _is(row: list[str], jid: str, state: str) -> bool:
    return len(row) >= 4 and row[3] == jid and row[0] == state


def _is_json(line: str, jid: str, state: str) -> bool:
    doc = json.loads(line)
    return bool(doc["jid"] == jid and doc["state"] == state)


async def test_events_follow_json_since_and_class(client: natskiq.Client, tmp_path: Path) -> None:
    """--follow --json --since T --class C prints the stored events from T, then the new ones,
    one JSON object a line, and only that class's."""
    async with node(client):
        old = await Pages.perform_async(1)
        await finished(old)
        async with following(client, tmp_path, "--json", "--since", "1h", "--class", Pages.name) as (_, out):
            await out.until(lambda lines: any(json.loads(line)["state"] == "succeeded" for line in lines))
            other = await Nap.perform_async(0.0)
            new = await Pages.perform_async(2)
            await finished(other)
            await out.until(lambda lines: any(_is_json(line, new, "succeeded") for line in lines))
    docs = [json.loads(line) for line in out.lines]
    assert all(EVENT_KEYS <= set(d) and d["class"] == Pages.name for d in docs)
    assert {d["jid"] for d in docs} == {old, new}
    progress = [d for d in docs if d["jid"] == new and d["state"] == "progress"]
    assert progress and progress[-1]["progress"] == 1.0 and progress[-1]["message"] == "page 2 of 2"


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [("job", "a.b"), ("job", "a b", "--json"), ("result", "a*b"), ("events", "--jid", "a>b")],
    ids=["job", "job-json", "result", "events"],
)
def test_a_malformed_jid_exits_2_before_connecting(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """A jid that could not be a job's exits 2 with one line on stderr, without reaching for NATS."""
    assert cli.main([*argv, "--url", UNREACHABLE]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("natskiq: error: invalid jid name") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ("job",),
        ("result",),
        ("result", "abc", "--wait", "soon"),
        ("result", "abc", "--json"),
        ("events", "--limit", "many"),
        ("events", "--limit", "-1"),
        ("events", "--since", "yesterday"),
        ("events", "--follow", "--wait", "1"),
    ],
    ids=[
        "job-no-jid",
        "result-no-jid",
        "wait",
        "result-json",
        "limit",
        "limit-negative",
        "since",
        "unknown-flag",
    ],
)
def test_bad_flags_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed command line exits 2 with the usage, before connecting."""
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--url", UNREACHABLE])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: natskiq ") and "error: " in err and "Traceback" not in err


async def test_bad_values_found_after_connecting_exit_2(client: natskiq.Client) -> None:
    """A negative --wait and a malformed --queue exit 2 with one line on stderr."""
    async with node(client):
        handle = await Pages.perform_async(1)
        await finished(handle)
    wait = await cli_run(client, "result", handle, "--wait", "-1")
    assert (wait.returncode, wait.stdout) == (2, "")
    assert wait.stderr == "natskiq: error: timeout must be a number of seconds, not -1.0\n"
    queue = await cli_run(client, "events", "--queue", "bad.queue")
    assert (queue.returncode, queue.stdout) == (2, "")
    assert queue.stderr.startswith("natskiq: error: invalid queue name 'bad.queue'")
