"""The examples in examples/ run against a real server, so they never rot.

A ``natskiq worker --app examples.workers`` (or ``examples.cron``, ``examples.chain``, ``examples.limits``)
subprocess runs the jobs; each example job prints ``[<queue>] ...
(jid=<jid>)``, which the tests read back from the worker's output.
``examples/testing_example.py`` is run by pytest in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import natskiq

from .conftest import until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
MAX_LINES = 60
JOB_LINE = re.compile(r"^\[(?P<queue>[\w-]+)\] (?P<what>.*) \(jid=(?P<jid>[\w-]+)\)$")


class ExampleWorker:
    """`natskiq worker --app examples.workers` (or another app) as a subprocess, output to a file."""

    def __init__(
        self,
        url: str,
        namespace: str,
        log: Path,
        app: str = "examples.workers",
        queues: tuple[str, ...] = ("critical", "default"),
        **env: str,
    ) -> None:
        self.log = log
        self._out = log.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "natskiq",
            "worker",
            "--app",
            app,
            "--url",
            url,
            "--namespace",
            namespace,
        ]
        cmd += [arg for queue in queues for arg in ("--queue", queue)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text()

    def job_lines(self) -> dict[str, re.Match[str]]:
        """The example jobs' lines printed so far, by jid."""
        matches = (JOB_LINE.match(line) for line in self.output().splitlines())
        return {m["jid"]: m for m in matches if m}

    async def wait_for(self, jids: Iterable[str], timeout: float = 30.0) -> dict[str, re.Match[str]]:
        """Wait until every jid's job has printed its line; returns those lines."""
        wanted = set(jids)
        await self.wait_until(lambda lines: wanted <= set(lines), timeout)
        lines = self.job_lines()
        return {jid: lines[jid] for jid in wanted}

    async def wait_until(
        self, done: Callable[[dict[str, re.Match[str]]], bool], timeout: float = 30.0
    ) -> None:
        """Wait until ``done(job lines by jid)`` holds; fails if the worker exits or a job fails."""
        with anyio.move_on_after(timeout):
            while not done(self.job_lines()):
                if self.proc.poll() is not None:
                    pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.output()}")
                if " fail jid=" in (output := self.output()) or "Traceback" in output:
                    pytest.fail(f"a job failed:\n{output}")
                await anyio.sleep(0.05)
            return
        pytest.fail(f"the jobs did not all run within {timeout:.0f} s; the worker's output:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM (a graceful stop); returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            self._out.close()

    async def stop_cleanly(self) -> None:
        """Stop, and check that the node exited 0 and no job failed."""
        code = await anyio.to_thread.run_sync(self.stop)
        output = self.output()
        assert code == 0, output
        assert "Traceback" not in output and " fail jid=" not in output, output


@pytest.fixture
def example_worker(nats_url: str, namespace: str, tmp_path: Path) -> Iterator[ExampleWorker]:
    worker = ExampleWorker(nats_url, namespace, tmp_path / "worker.log")
    try:
        yield worker
    finally:
        worker.stop()


async def test_producer_jobs_run(example_worker: ExampleWorker, nats_url: str, namespace: str) -> None:
    """examples/producer.py enqueues six jobs (now, delayed, other queue) and the worker runs them all."""
    stdout = await run_example("producer", nats_url, namespace)
    queued = dict(re.findall(r"^queued (.+?) +jid=(\w+)$", stdout, re.MULTILINE))
    assert list(queued) == [
        "perform_async",
        "plain def",
        "perform_in 2s",
        "perform_at +3s",
        "set(queue=critical)",
        "client.enqueue",
    ]
    lines = await example_worker.wait_for(queued.values())
    ran = {how: (lines[jid]["queue"], lines[jid]["what"]) for how, jid in queued.items()}
    assert ran["perform_async"] == ("default", "sent email to ada@example.com: 'Welcome'")
    assert ran["plain def"] == ("default", "resized cat.png to 320px")
    assert ran["perform_in 2s"][0] == "default"
    assert ran["perform_at +3s"] == ("critical", "charged order 1001: 4200 cents")
    assert ran["set(queue=critical)"][0] == "critical"
    assert ran["client.enqueue"] == ("critical", "charged order 1002: 990 cents")
    await example_worker.stop_cleanly()


async def run_example(module: str, url: str, namespace: str) -> str:
    """Run ``python -m examples.<module>`` against the server and namespace; its stdout,
    once it exited 0 (its output and errors shown if not)."""
    env = {**os.environ, "NATSKIQ_URL": url, "NATSKIQ_NAMESPACE": namespace}
    result = await anyio.run_process(
        [sys.executable, "-m", f"examples.{module}"], cwd=ROOT, env=env, check=False
    )
    stdout = result.stdout.decode()
    assert result.returncode == 0, stdout + result.stderr.decode()
    return stdout


async def worker_started(url: str, namespace: str) -> None:
    """Wait until the example worker has registered (and so has made the events stream,
    which then keeps the example's first event)."""
    async with natskiq.connect(url, namespace=namespace) as client:

        async def started() -> bool:
            return bool(await natskiq.api.nodes(client))

        await until(started, timeout=30)


async def test_results_example_prints_the_result_and_timeline(
    example_worker: ExampleWorker, nats_url: str, namespace: str
) -> None:
    """examples/results.py enqueues a report, prints the result the worker kept for it, then the
    job's status and its timeline: queued, running, the progress reports, succeeded."""
    await worker_started(nats_url, namespace)
    stdout = await run_example("results", nats_url, namespace)
    found = re.search(r"^queued jid=(\w+)$", stdout, re.MULTILINE)
    assert found is not None, stdout
    jid = found[1]
    lines = await example_worker.wait_for([jid])
    assert lines[jid]["what"] == "built the 2025-11 report: 3 pages"
    assert 'result {"month": "2025-11", "pages": 3}' in stdout.splitlines()
    assert re.search(r"^status succeeded on \S+ \(attempt 1\)$", stdout, re.MULTILINE), stdout
    timeline = re.findall(r"^  \+\d+\.\d\ds (\w+)", stdout, re.MULTILINE)
    assert sorted(set(timeline)) == ["progress", "queued", "running", "succeeded"], stdout
    assert timeline[-1] == "succeeded" and "message=page 3 of 3" in stdout
    await example_worker.stop_cleanly()


async def test_chain_example_runs_its_steps_in_order(nats_url: str, namespace: str, tmp_path: Path) -> None:
    """examples/chain.py enqueues a 3-step chain: a worker with --app examples.chain runs the steps
    in order, each with the result before it, and the script prints the last step's result."""
    worker = ExampleWorker(
        nats_url, namespace, tmp_path / "chain.log", app="examples.chain", queues=("default",)
    )
    try:
        stdout = await run_example("chain", nats_url, namespace)
        found = re.search(r"^chain \w+: steps (\w+) (\w+) (\w+)$", stdout, re.MULTILINE)
        assert found is not None, stdout
        lines = await worker.wait_for(found.groups())
        assert [lines[jid]["what"] for jid in found.groups()] == [
            "fetched https://example.com",
            "counted 7 words",
            "stored 7 for https://example.com",
        ]
        assert "result https://example.com: 7 words" in stdout.splitlines()
        await worker.stop_cleanly()
    finally:
        worker.stop()


async def test_batch_example_follows_the_batch_to_its_callback(
    example_worker: ExampleWorker, nats_url: str, namespace: str
) -> None:
    """examples/batch.py enqueues six jobs in a batch and follows it until it completes, and the
    worker runs them, then the on_success callback once, with the batch's counts."""
    stdout = await run_example("batch", nats_url, namespace)
    assert re.search(r"^batch \w+$", stdout, re.MULTILINE), stdout
    assert stdout.splitlines()[-1] == "complete: 6 succeeded, 0 failed"
    done = "batch newsletter done: 6 of 6 succeeded"
    await example_worker.wait_until(lambda lines: any(m["what"] == done for m in lines.values()), 30)
    lines = example_worker.job_lines().values()
    assert sum(m["what"].startswith("sent email to ") for m in lines) == 6
    assert [m["what"] for m in lines if m["what"].startswith("batch ")] == [done]
    await example_worker.stop_cleanly()


async def test_pausing_example_holds_the_email_until_resumed(
    example_worker: ExampleWorker, nats_url: str, namespace: str
) -> None:
    """examples/pausing.py pauses the default queue: the critical charge runs, the email waits
    until resumed; an email sent under a pause with an end runs once it ended."""
    await worker_started(nats_url, namespace)
    stdout = await run_example("pausing", nats_url, namespace)
    assert stdout.splitlines() == [
        "charge done; email queued",
        "default paused=True ready=1",
        "email sent after resume",
        "email sent once the pause ended",
    ]
    order = [m["what"] for m in example_worker.job_lines().values()]
    assert order == [
        "charged order 1003: 1250 cents",
        "sent email to ada@example.com: 'Your invoice'",
        "sent email to ada@example.com: 'After the pause'",
    ]
    await example_worker.stop_cleanly()


async def test_limits_example_keeps_its_limits(nats_url: str, namespace: str, tmp_path: Path) -> None:
    """examples/limits.py: a worker with --app examples.limits runs every job, never more than 2
    reports at once and never more than 5 emails in a second."""
    worker = ExampleWorker(
        nats_url, namespace, tmp_path / "limits.log", app="examples.limits", queues=("default",)
    )
    try:
        stdout = await run_example("limits", nats_url, namespace)
        assert "all done" in stdout.splitlines()
        jids = {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if " " in line}
        lines = await worker.wait_for([*jids["reports"], *jids["emails"]])
        reports = sorted(float(lines[jid]["what"].rsplit(" ", 1)[1]) for jid in jids["reports"])
        emails = sorted(float(lines[jid]["what"].rsplit(" ", 1)[1]) for jid in jids["emails"])
        assert (len(reports), len(emails)) == (6, 12)
        # A third report starts only once one of two before it (0.5 s each) has ended.
        assert all(later - first >= 0.5 for first, later in zip(reports, reports[2:], strict=False))
        assert all(later - first >= 1.0 for first, later in zip(emails, emails[5:], strict=False))
        await worker.stop_cleanly()
    finally:
        worker.stop()


async def signups(app: Any, emails: list[str], refused: list[dict[str, str]]) -> tuple[list[str], list[int]]:
    """POST /signup to an example web app (its lifespan around the requests): the
    jids answered for ``emails`` (each a 202), and the status codes of ``refused``."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://example") as http,
    ):
        responses = [await http.post("/signup", json={"email": email}) for email in emails]
        codes = [(await http.post("/signup", json=body)).status_code for body in refused]
    assert [r.status_code for r in responses] == [202] * len(emails)
    return [r.json()["jid"] for r in responses], codes


async def assert_welcomed(example_worker: ExampleWorker, jids: list[str], emails: list[str]) -> None:
    """Each job ran on the example worker and sent its welcome email; the worker stops cleanly."""
    lines = await example_worker.wait_for(jids)
    for jid, email in zip(jids, emails, strict=True):
        assert lines[jid]["what"] == f"sent email to {email}: 'Welcome aboard'"
    await example_worker.stop_cleanly()


async def test_webapp_signup_enqueues(
    example_worker: ExampleWorker, nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /signup on examples/webapp.py returns a jid per request, and each job runs."""
    monkeypatch.setenv("NATSKIQ_URL", nats_url)
    monkeypatch.setenv("NATSKIQ_NAMESPACE", namespace)
    from examples import webapp

    emails = [f"user{i}@example.com" for i in range(3)]
    jids, codes = await signups(webapp.app, emails, [{"name": "no email"}])
    assert codes == [400]
    await assert_welcomed(example_worker, jids, emails)


async def test_cron_example_ticks(nats_url: str, namespace: str, tmp_path: Path) -> None:
    """A worker with --app examples.cron stores both periodic jobs, and the interval one fires."""
    worker = ExampleWorker(
        nats_url, namespace, tmp_path / "cron.log", app="examples.cron", queues=("default",),
        HEARTBEAT_EVERY="1s",
    )  # fmt: skip
    cli = [sys.executable, "-m", "natskiq", "periodic", "--url", nats_url, "--namespace", namespace]
    try:
        await worker.wait_until(lambda lines: any(m["what"] == "heartbeat" for m in lines.values()))
        listed = await anyio.run_process([*cli[:4], "list", *cli[4:], "--json"], cwd=ROOT)
        found = {p["name"]: p for p in json.loads(listed.stdout)["periodic"]}
        assert found["Heartbeat"]["schedule"] == "@every 1s"
        nightly = found["nightly-sales"]
        assert (nightly["schedule"], nightly["tz"], nightly["args"]) == (
            "0 0 3 * * *",
            "Europe/Paris",
            ["sales"],
        )
        for name in found:  # so the server stops firing them into this namespace
            await anyio.run_process([*cli[:4], "remove", name, *cli[4:]], cwd=ROOT)
    finally:
        await worker.stop_cleanly()


async def test_testing_example_passes_under_pytest() -> None:
    """examples/testing_example.py's tests pass under pytest, with the plugin from natskiq's entry point."""
    result = await anyio.run_process(
        [sys.executable, "-m", "pytest", "-q", "examples/testing_example.py"],
        cwd=ROOT,
        check=False,
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "3 passed" in output, output


async def test_fastapi_signup_enqueues(
    example_worker: ExampleWorker, nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /signup on examples/fastapi_app.py answers 202 with a jid, each job runs, and a
    bad email is refused (400) before anything is enqueued, as is a body without one (422);
    GET /signup/{jid} then answers each job's state, and 404 for a jid it does not know."""
    monkeypatch.setenv("NATSKIQ_URL", nats_url)
    monkeypatch.setenv("NATSKIQ_NAMESPACE", namespace)
    from examples import fastapi_app

    emails = [f"fan{i}@example.com" for i in range(3)]
    jids, codes = await signups(fastapi_app.app, emails, [{"email": "nobody"}, {"name": "x"}])
    assert codes == [400, 422]
    await assert_welcomed(example_worker, jids, emails)
    transport = httpx.ASGITransport(app=fastapi_app.app)
    async with (
        fastapi_app.app.router.lifespan_context(fastapi_app.app),
        httpx.AsyncClient(transport=transport, base_url="http://example") as http,
    ):
        answers = [await http.get(f"/signup/{jid}") for jid in jids]
        unknown = [(await http.get(f"/signup/{jid}")).status_code for jid in ("nosuchjob", "not.a.jid")]
    assert [(a.status_code, a.json()) for a in answers] == [
        (200, {"jid": jid, "state": "succeeded", "finished": True}) for jid in jids
    ]
    assert unknown == [404, 404]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_short(path: Path) -> None:
    """Every example stays small enough to read at a glance."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"


def test_every_example_is_exercised() -> None:
    """The examples are exactly the ones the tests above run (add a test with a new one)."""
    assert [p.name for p in EXAMPLES] == [
        "__init__.py",
        "batch.py",
        "chain.py",
        "cron.py",
        "fastapi_app.py",
        "limits.py",
        "pausing.py",
        "producer.py",
        "results.py",
        "testing_example.py",
        "webapp.py",
        "workers.py",
    ]
