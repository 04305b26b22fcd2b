"""The `natskiq` command's errors: an unreachable server, a missing --app file, and connection logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq.ops.server import Server, free_ports

from .conftest import until

ROOT = Path(__file__).resolve().parent.parent
# A backstop well past the 3 s connect timeout; a run that hangs fails the test.
EXIT_WITHIN = 30.0


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m natskiq ARGV` without NATSKIQ_* variables; fails the test if it does not exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATSKIQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        return subprocess.run(
            [sys.executable, "-m", "natskiq", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXIT_WITHIN,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`natskiq {' '.join(argv)}` did not exit; stderr ends {(exc.stderr or b'')[-500:]!r}")


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    [port] = free_ports(1)
    return port


# -- an unreachable server --------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["stats"], ["stats", "--json"], ["failed", "list"], ["worker", "--app", "json"]],
    ids=["stats", "stats-json", "failed-list", "worker"],
)
def test_unreachable_server_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, closed_port: int, argv: list[str]
) -> None:
    """Against a closed port a command prints only `natskiq: error: cannot connect ...` and exits 2."""
    url = f"nats://127.0.0.1:{closed_port}"
    result = _run(*argv, "--url", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"natskiq: error: cannot connect to NATS at {url}: connection refused")


def test_unreachable_server_error_hides_the_password(tmp_path: Path, closed_port: int) -> None:
    """The one error line shows the URL with its user:password@ part redacted."""
    result = _run("stats", "--url", f"nats://alice:s3cret@127.0.0.1:{closed_port}", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"natskiq: error: cannot connect to NATS at nats://***@127.0.0.1:{closed_port}: ")
    assert "s3cret" not in result.stderr and "alice" not in result.stderr


# -- --app --------------------------------------------------------------------


def test_missing_app_file_is_named_as_missing(tmp_path: Path, closed_port: int) -> None:
    """`worker --app path/x.py` for a file that does not exist says so and exits 2, before connecting."""
    result = _run("worker", "--app", "path/x.py", "--url", f"nats://127.0.0.1:{closed_port}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "natskiq: error: --app: no such file: path/x.py\n"


def test_app_file_that_fails_to_import_is_not_called_missing(tmp_path: Path, closed_port: int) -> None:
    """An existing --app file whose own import fails is reported as an import error naming the cause."""
    (tmp_path / "broken_app.py").write_text("import natskiq_missing_dependency_xyz\n")
    result = _run(
        "worker", "--app", "broken_app.py", "--url", f"nats://127.0.0.1:{closed_port}", cwd=tmp_path
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("natskiq: error: cannot import app module 'broken_app.py': ")
    assert "natskiq_missing_dependency_xyz" in line
    assert "no such file" not in line


def test_unimportable_app_module_is_not_called_a_missing_file(tmp_path: Path, closed_port: int) -> None:
    """A module name that does not import is reported as an import error, not as a missing file."""
    result = _run(
        "worker",
        "--app",
        "natskiq_no_such_module_xyz",
        "--url",
        f"nats://127.0.0.1:{closed_port}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("natskiq: error: cannot import app module 'natskiq_no_such_module_xyz'")


# -- a connection that drops once it is up ----------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[list[Server]]:
    """A JetStream server on a fixed free port; tests stop it and start another there."""
    [port] = free_ports(1)
    servers = [Server(store_dir=tmp_path / "js", port=port)]
    servers[0].start()
    yield servers
    for server in servers:
        server.stop()


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def _failed_attempts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "natskiq.enqueue.client" and "connection error" in r.getMessage()
    ]


async def test_outage_is_logged_once_at_warning_not_per_reconnect_attempt(
    restartable: list[Server], caplog: pytest.LogCaptureFixture, namespace: str
) -> None:
    """A dropped connection logs one WARNING when lost and one when back; failed attempts only at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="natskiq.enqueue.client")
    url = restartable[0].url
    async with natskiq.connect(url, namespace=namespace):
        await anyio.to_thread.run_sync(restartable[0].stop)
        # Wait for the outcome: several reconnect attempts have failed.
        await until(lambda: len(_failed_attempts(caplog)) >= 3)
        restartable.append(Server(store_dir=restartable[0].store_dir, port=restartable[0].port))
        await anyio.to_thread.run_sync(restartable[-1].start)
        await until(lambda: _logged(caplog, "reconnected to NATS"))
    # Every logger's records reach caplog, nats-py's included.
    loud = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 2, loud
    assert loud[0] == ("natskiq.enqueue.client", f"lost the connection to NATS at {url}; reconnecting")
    assert loud[1][0] == "natskiq.enqueue.client"
    assert loud[1][1].startswith(f"reconnected to NATS at {url} after ")
    assert all(r.levelno == logging.DEBUG for r in _failed_attempts(caplog))


async def test_giving_up_reconnecting_is_one_error(
    restartable: list[Server], caplog: pytest.LogCaptureFixture, namespace: str
) -> None:
    """A client told to give up after one reconnect attempt logs that once, at ERROR, when it closes."""
    caplog.set_level(logging.DEBUG, logger="natskiq.enqueue.client")
    url = restartable[0].url
    async with natskiq.connect(url, namespace=namespace, max_reconnect_attempts=1) as client:
        await anyio.to_thread.run_sync(restartable[0].stop)
        await until(lambda: _logged(caplog, "gave up reconnecting"))
        assert client.nc.is_closed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"gave up reconnecting to NATS at {url}: the connection is closed"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"lost the connection to NATS at {url}; reconnecting"]
