from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import settings

import natskiq
from natskiq import job as jobs
from natskiq import testing
from natskiq.ops.launcher import Launcher, Settings
from natskiq.ops.server import Server

ROOT = Path(__file__).resolve().parent.parent

# CI runs the same generated cases every time (a red CI must be reproducible);
# a developer's runs draw new ones, and Hypothesis keeps any failure it finds.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
pytest_plugins = ["pytester"]


def nested(depth: int) -> Any:
    """A list nested ``depth`` deep around a 0: ``[[[0]]]`` for 3."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(scope="session")
def nats_server() -> Iterator[Server]:
    """One JetStream server for the session; tests use their own namespaces."""
    with testing.server() as srv:
        yield srv


@pytest.fixture
def private_server() -> Iterator[Server]:
    """A server of the test's own, for tests that kill or restart it."""
    with testing.server() as srv:
        yield srv


@pytest.fixture
def nats_url(nats_server: Server) -> str:
    return nats_server.url


@pytest.fixture
def namespace() -> str:
    return testing.unique_namespace()


@pytest.fixture
async def client(nats_url: str, namespace: str) -> AsyncIterator[natskiq.Client]:
    async with natskiq.connect(nats_url, namespace=namespace) as c:
        yield c


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file sample workers append to (for this process and subprocesses)."""
    path = tmp_path / "ledger.txt"
    path.touch()
    monkeypatch.setenv("NATSKIQ_TEST_LEDGER", str(path))
    return path


@dataclasses.dataclass
class Row:
    jid: str
    pid: int
    kind: str
    at: float
    note: object


def read_ledger(path: Path, kind: str = "done") -> list[Row]:
    """The ledger's complete lines: a worker may be halfway through writing the last one
    (a job near the max payload writes a line of about 1 MiB)."""
    rows = []
    text = path.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():
        jid, pid, k, at, note = line.split(" ", 4)
        if k == kind:
            rows.append(Row(jid, int(pid), k, float(at), json.loads(note)))
    return rows


async def wait_for_ledger(path: Path, count: int, timeout: float = 30.0, kind: str = "done") -> list[Row]:
    """Wait until the ledger has at least ``count`` rows of ``kind``."""
    with anyio.fail_after(timeout):
        while True:
            rows = read_ledger(path, kind)
            if len(rows) >= count:
                return rows
            await anyio.sleep(0.05)


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Poll server-side state until ``check`` holds (outcomes, not time)."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.05)


async def failed_count(client: natskiq.Client) -> int:
    return (await client.js.stream_info(client.names.failed_stream)).state.messages


@contextlib.asynccontextmanager
async def running_node(url: str, namespace: str, **settings: Any) -> AsyncIterator[Launcher]:
    """An in-process worker node for the block."""
    launcher = Launcher(Settings(url=url, namespace=namespace, **settings))
    async with anyio.create_task_group() as tg:
        await tg.start(launcher.run)
        yield launcher
        launcher.stop()


class Workers:
    """`natskiq worker` subprocesses for one test; all stopped at the end."""

    def __init__(self, url: str, namespace: str, tmp: Path) -> None:
        self.url, self.namespace, self.tmp = url, namespace, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Any] = []

    def start(self, *args: str, node_id: str | None = None) -> subprocess.Popen[bytes]:
        index = len(self.procs)
        cmd = [
            sys.executable,
            "-m",
            "natskiq",
            "worker",
            "--app",
            "tests.sample_workers",
            "--url",
            self.url,
            "--namespace",
            self.namespace,
            "--log-level",
            "info",
            "--node-id",
            node_id or f"w{index}",
            *args,
        ]
        log = open(self.tmp / f"worker{index}.log", "wb")
        self.files.append(log)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("worker*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for file in self.files:
            file.close()


@pytest.fixture
def workers(nats_url: str, namespace: str, tmp_path: Path, ledger: Path) -> Iterator[Workers]:
    w = Workers(nats_url, namespace, tmp_path)
    yield w
    w.stop_all()


async def stored(client: natskiq.Client, seq: int, queue: str = "default") -> tuple[jobs.Job, dict[str, str]]:
    """The job at stream sequence ``seq`` of a queue, and its headers."""
    msg = await client.js.get_msg(client.names.queue_stream(queue), seq=seq)
    return jobs.decode(msg.data), dict(msg.headers or {})
