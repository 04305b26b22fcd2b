"""The embedded JetStream server and the `natskiq server` command."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from natskiq.errors import ConfigError
from natskiq.ops.server import Server, default_store_dir, free_ports, running


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_running_server_has_jetstream(tmp_path: Path) -> None:
    """running() starts a JetStream server on a free port with the given store."""
    with running(tmp_path / "store") as url:
        nc = await nats.connect(url)
        info = await nc.jetstream().account_info()
        await nc.close()
    assert info.limits is not None
    assert (tmp_path / "store" / "jetstream").is_dir()


def test_server_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    """A port already in use gives a ConfigError carrying the server's complaint."""
    with running(tmp_path / "a") as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match="nats-server exited"):
            Server(store_dir=tmp_path / "b", port=port).start()


def test_default_store_dir_is_under_user_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default store lives in the user's data directory."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_dir() == tmp_path / "natskiq" / "jetstream"


def test_server_command_serves_until_sigterm(tmp_path: Path) -> None:
    """`natskiq server` serves JetStream and takes nats-server down with it on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "natskiq", "server", "--port", str(port), "--store", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"nats://127.0.0.1:{port}" in line
        assert port_open(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_demo_runs_every_job_and_exits() -> None:
    """`natskiq demo` starts a server and a node, runs its sample jobs and exits 0 by itself."""
    result = subprocess.run(
        [sys.executable, "-m", "natskiq", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("  ran ") == 9
    assert "Flaky('x')" in result.stdout and "on attempt 3" in result.stdout
    assert result.stdout.rstrip().endswith("all jobs ran; stopping")
