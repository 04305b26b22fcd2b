"""The `natskiq` command: argument errors, config files, and stats."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import natskiq
from natskiq import cli

UNREACHABLE = "nats://127.0.0.1:1"
# Generous next to the 3 s connect timeout; the run is killed if it hangs.
EXIT_WITHIN = 10.0


class Report(natskiq.Worker, name="tests.test_cli.Report"):
    """Only enqueued here, never run."""

    async def perform(self, note: str) -> None:
        pass


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty directory, without NATSKIQ_* variables, and undo import/logging side effects."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NATSKIQ_URL", raising=False)
    monkeypatch.delenv("NATSKIQ_NAMESPACE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield tmp_path
    root.handlers[:] = handlers
    root.setLevel(level)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATSKIQ_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")])
    )
    return env


def _run(*argv: str, cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m natskiq ARGV`; fails the test (rather than hanging) if it does not exit in time."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "natskiq", *argv],
            cwd=cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-500:]
        pytest.fail(f"`natskiq {' '.join(argv)}` did not exit within {timeout:.0f} s; stderr ends {tail!r}")


def _settings(*argv: str) -> tuple[object, str]:
    return cli.worker_settings(cli._parser().parse_args(["worker", *argv]))


# -- argument errors ------------------------------------------------------


def test_missing_subcommand_exits_2(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`natskiq` without a command prints usage and exits 2."""
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: natskiq" in err
    assert "required" in err


def test_missing_subcommand_exits_2_as_a_process(isolated: Path) -> None:
    """`python -m natskiq` without a command exits 2 with usage on stderr."""
    result = _run(cwd=isolated)
    assert result.returncode == 2
    assert "usage: natskiq" in result.stderr
    assert result.stdout == ""


def test_worker_without_app_exits_2(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`natskiq worker` with no --app and no config file exits 2, saying how to name the app."""
    assert cli.main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "natskiq: error: no app" in err
    assert "--app" in err
    assert "Traceback" not in err


def test_worker_without_app_exits_2_as_a_process(isolated: Path) -> None:
    """`python -m natskiq worker` without --app exits 2 with a one-line error."""
    result = _run("worker", cwd=isolated)
    assert result.returncode == 2
    assert "natskiq: error: no app" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--queue", "a.b"], "invalid queue name 'a.b'"),
        (["--queue", "a*"], "invalid queue name"),
        (["--queue", "a>"], "invalid queue name"),
        (["--queue", "a:x"], "queue weight in 'a:x' must be a whole number"),
        (["--queue", "a:0"], "queue weight in 'a:0' must be at least 1"),
        (["--queue", "a:-2"], "must be at least 1"),
        (["--queue", "a", "--queue", "a"], "listed twice"),
        (["--queue", "a:1", "--queue", "a:3"], "listed twice"),
        (["--concurrency", "0"], "concurrency must be at least 1"),
        (["--concurrency", "-3"], "concurrency must be at least 1"),
        (["--lease-ttl", "0.5"], "lease TTL"),
        (["--node-id", "bad.id"], "invalid node name"),
        (["--namespace", "a.b"], "invalid namespace"),
        (["--app", "natskiq_no_such_module_xyz"], "cannot import app module 'natskiq_no_such_module_xyz'"),
        (["--app", "missing_file.py"], "--app: no such file: missing_file.py"),
    ],
)
def test_bad_worker_arguments_exit_2(
    isolated: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Bad queues, weights, duplicates, concurrency, ids or an unimportable app exit 2 with a message."""
    full = ["worker", *argv]
    if "--app" not in argv:
        full += ["--app", "json"]
    # The URL is unreachable: if validation wrongly passed, the run would try to connect.
    assert cli.main([*full, "--url", UNREACHABLE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("natskiq: error: ")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--concurrency", "many"], ["--replicas", "2"], ["--timeout", "soon"]])
def test_unparsable_flags_exit_2(isolated: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Flags argparse cannot convert exit 2 with argparse's message."""
    with pytest.raises(SystemExit) as info:
        cli.main(["worker", "--app", "json", *argv])
    assert info.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_bad_queue_exits_2_as_a_process(isolated: Path) -> None:
    """`python -m natskiq worker --queue a:x` exits 2 with a one-line error."""
    result = _run("worker", "--app", "json", "--queue", "a:x", "--url", UNREACHABLE, cwd=isolated)
    assert result.returncode == 2
    assert "must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_unimportable_app_exits_2_as_a_process(isolated: Path) -> None:
    """`python -m natskiq worker --app nonexistent` exits 2 naming the module."""
    result = _run("worker", "--app", "natskiq_no_such_module_xyz", "--url", UNREACHABLE, cwd=isolated)
    assert result.returncode == 2
    assert "cannot import app module 'natskiq_no_such_module_xyz'" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_against_unreachable_server_exits_with_a_clear_message(isolated: Path) -> None:
    """`natskiq worker --url nats://127.0.0.1:1` exits non-zero within seconds, saying it cannot connect."""
    result = _run("worker", "--app", "json", "--url", UNREACHABLE, cwd=isolated, timeout=EXIT_WITHIN)
    assert result.returncode != 0
    assert "cannot connect to NATS" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_stats_against_unreachable_server_exits_with_a_clear_message(isolated: Path) -> None:
    """`natskiq stats --url nats://127.0.0.1:1` exits non-zero within seconds, saying it cannot connect."""
    result = _run("stats", "--url", UNREACHABLE, cwd=isolated, timeout=EXIT_WITHIN)
    assert result.returncode != 0
    assert "cannot connect to NATS" in result.stderr
    assert "Traceback" not in result.stderr


# -- config files ---------------------------------------------------------

NATSKIQ_TOML = """\
app = "myapp.jobs"
url = "nats://file:4222"
namespace = "fromfile"
queues = ["critical:3", "default"]
concurrency = 4
timeout = 8.5
lease-ttl = 2
ack_wait = 45
log_level = "debug"
"""

PYPROJECT_TOML = """\
[project]
name = "someapp"

[tool.ruff]
line-length = 100

[tool.natskiq]
app = ["pkg.a", "pkg.b"]
queues = "mail"
concurrency = 3
"""


def test_settings_from_natskiq_toml(isolated: Path) -> None:
    """Every key of ./natskiq.toml (dashes or underscores) becomes a worker setting."""
    (isolated / "natskiq.toml").write_text(NATSKIQ_TOML)
    settings, level = cli.worker_settings(cli._parser().parse_args(["worker"]))
    assert settings.app == ("myapp.jobs",)
    assert settings.url == "nats://file:4222"
    assert settings.namespace == "fromfile"
    assert settings.queues == ("critical:3", "default")
    assert settings.concurrency == 4
    assert settings.timeout == 8.5
    assert settings.lease_ttl == 2
    assert settings.ack_wait == 45
    assert level == "debug"


def test_settings_from_pyproject_tool_natskiq(isolated: Path) -> None:
    """[tool.natskiq] in ./pyproject.toml is read; other tables are ignored; a single string is one item."""
    (isolated / "pyproject.toml").write_text(PYPROJECT_TOML)
    settings, level = cli.worker_settings(cli._parser().parse_args(["worker"]))
    assert settings.app == ("pkg.a", "pkg.b")
    assert settings.queues == ("mail",)
    assert settings.concurrency == 3
    assert settings.namespace == "natskiq"
    assert level == "info"


def test_pyproject_without_tool_natskiq_is_ignored(isolated: Path) -> None:
    """A pyproject.toml without [tool.natskiq] gives defaults (flags still needed for the app)."""
    (isolated / "pyproject.toml").write_text('[project]\nname = "x"\n')
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker", "--app", "m"]))
    assert settings.app == ("m",)
    assert settings.queues == ("default",)
    assert settings.concurrency == 10


def test_natskiq_toml_wins_over_pyproject(isolated: Path) -> None:
    """When both files exist, natskiq.toml is the one used."""
    (isolated / "natskiq.toml").write_text(NATSKIQ_TOML)
    (isolated / "pyproject.toml").write_text(PYPROJECT_TOML)
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker"]))
    assert settings.app == ("myapp.jobs",)
    assert settings.concurrency == 4


def test_flags_win_over_the_file(isolated: Path) -> None:
    """Command-line flags override every value from the config file."""
    (isolated / "natskiq.toml").write_text(NATSKIQ_TOML)
    argv = ["--app", "other", "--url", "nats://flag:4222", "--namespace", "fromflag", "--queue", "x"]
    argv += ["--concurrency", "9", "--timeout", "1", "--lease-ttl", "3", "--log-level", "warning"]
    settings, level = cli.worker_settings(cli._parser().parse_args(["worker", *argv]))
    assert settings.app == ("other",)
    assert settings.url == "nats://flag:4222"
    assert settings.namespace == "fromflag"
    assert settings.queues == ("x",)
    assert settings.concurrency == 9
    assert settings.timeout == 1
    assert settings.lease_ttl == 3
    assert settings.ack_wait == 45
    assert level == "warning"


def test_environment_sits_between_flags_and_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NATSKIQ_URL/NATSKIQ_NAMESPACE override the file but not the flags."""
    (isolated / "natskiq.toml").write_text(NATSKIQ_TOML)
    monkeypatch.setenv("NATSKIQ_URL", "nats://env:4222")
    monkeypatch.setenv("NATSKIQ_NAMESPACE", "fromenv")
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker", "--namespace", "fromflag"]))
    assert settings.url == "nats://env:4222"
    assert settings.namespace == "fromflag"


def test_event_loop_from_flag_environment_or_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio's loop by default; uvloop from --event-loop, $NATSKIQ_EVENT_LOOP or the file; else refused."""

    def chosen(*argv: str) -> str:
        settings, _ = _settings("--app", "m", *argv)
        return settings.event_loop  # type: ignore[attr-defined]

    assert chosen() == "asyncio"
    assert chosen("--event-loop", "uvloop") == "uvloop"
    (isolated / "natskiq.toml").write_text('event_loop = "uvloop"\n')
    assert chosen() == "uvloop"
    monkeypatch.setenv("NATSKIQ_EVENT_LOOP", "asyncio")
    assert chosen() == "asyncio"
    assert chosen("--event-loop", "uvloop") == "uvloop"
    monkeypatch.setenv("NATSKIQ_EVENT_LOOP", "trio")
    with pytest.raises(natskiq.ConfigError, match="event loop must be one of asyncio, uvloop, not 'trio'"):
        chosen()


def test_explicit_config_file(isolated: Path) -> None:
    """--config FILE reads that file, wherever it is and whatever its name."""
    path = isolated / "conf" / "prod.toml"
    path.parent.mkdir()
    path.write_text('app = "prod.jobs"\nconcurrency = 2\n')
    (isolated / "natskiq.toml").write_text(NATSKIQ_TOML)
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker", "--config", str(path)]))
    assert settings.app == ("prod.jobs",)
    assert settings.concurrency == 2


def test_missing_explicit_config_file_is_an_error(isolated: Path) -> None:
    """--config naming a file that does not exist raises ConfigError."""
    with pytest.raises(natskiq.ConfigError, match="does not exist"):
        cli.worker_settings(cli._parser().parse_args(["worker", "--config", "nope.toml"]))


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("natskiq.toml", 'app = "m"\nconcurency = 4\n'),
        ("pyproject.toml", '[tool.natskiq]\napp = "m"\nconcurency = 4\n'),
    ],
)
def test_unknown_keys_in_the_file_are_rejected(isolated: Path, filename: str, text: str) -> None:
    """A misspelt key in natskiq.toml or [tool.natskiq] raises ConfigError naming the key and the file."""
    (isolated / filename).write_text(text)
    with pytest.raises(natskiq.ConfigError, match=rf"unknown setting.*{filename}: concurency"):
        cli.worker_settings(cli._parser().parse_args(["worker", "--app", "m"]))


def test_unknown_key_exits_2(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`natskiq worker` with an unknown key in natskiq.toml exits 2 with a clear message."""
    (isolated / "natskiq.toml").write_text('app = "json"\nworkers = 3\n')
    assert cli.main(["worker"]) == 2
    assert "unknown setting(s) in natskiq.toml: workers" in capsys.readouterr().err


def test_invalid_toml_is_a_config_error(isolated: Path) -> None:
    """A config file that is not TOML raises ConfigError naming it."""
    (isolated / "natskiq.toml").write_text("app = \n")
    with pytest.raises(natskiq.ConfigError, match="natskiq.toml is not valid TOML"):
        cli.worker_settings(cli._parser().parse_args(["worker"]))


def test_invalid_values_in_the_file_are_validated(isolated: Path) -> None:
    """Values from the file are validated like flags (a bad queue weight raises ConfigError)."""
    (isolated / "natskiq.toml").write_text('app = "m"\nqueues = ["a:0"]\n')
    with pytest.raises(natskiq.ConfigError, match="at least 1"):
        cli.worker_settings(cli._parser().parse_args(["worker"]))


@pytest.mark.parametrize(
    "line",
    ['concurrency = "four"', 'timeout = "soon"', "timeout = -1", "queues = 5", "url = 5", 'ack_wait = "x"'],
)
def test_values_of_the_wrong_type_in_the_file_are_config_errors(isolated: Path, line: str) -> None:
    """A file value of the wrong type or range raises ConfigError up front, not TypeError or a crash later."""
    (isolated / "natskiq.toml").write_text(f'app = "m"\n{line}\n')
    with pytest.raises(natskiq.ConfigError):
        cli.worker_settings(cli._parser().parse_args(["worker"]))


# -- stats ----------------------------------------------------------------


def test_stats_json_in_process(isolated: Path, capsys: pytest.CaptureFixture[str], nats_url: str) -> None:
    """`natskiq stats --json` on an empty namespace prints JSON with no queues, nodes or master."""
    namespace = natskiq.testing.unique_namespace()
    assert cli.main(["stats", "--json", "--url", nats_url, "--namespace", namespace]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["queues"] == []
    assert doc["nodes"] == []
    assert doc["master"] is None


async def test_stats_json_as_a_process(client: natskiq.Client, tmp_path: Path) -> None:
    """`python -m natskiq stats --json` prints parseable JSON showing the queue and its ready jobs."""
    await Report.perform_async(note="a")
    await Report.set(queue="other").perform_async(note="b")
    await Report.set(queue="other").perform_async(note="c")
    env = _env()
    env["NATSKIQ_NAMESPACE"] = client.namespace
    result = await anyio.run_process(
        [sys.executable, "-m", "natskiq", "stats", "--json", "--url", str(client.url)],
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert doc["master"] is None
    assert doc["nodes"] == []
    by_name = {q["name"]: q for q in doc["queues"]}
    assert set(by_name) == {"default", "other"}
    assert by_name["default"]["ready"] == 1
    assert by_name["other"]["ready"] == 2
    assert by_name["other"]["running"] == 0
    assert by_name["other"]["scheduled"] == 0


def test_stats_plain_text(isolated: Path, capsys: pytest.CaptureFixture[str], nats_url: str) -> None:
    """`natskiq stats` without --json prints a table header and the master line."""
    namespace = natskiq.testing.unique_namespace()
    assert cli.main(["stats", "--url", nats_url, "--namespace", namespace]) == 0
    out = capsys.readouterr().out
    assert "queue" in out
    assert "master: (none)" in out
