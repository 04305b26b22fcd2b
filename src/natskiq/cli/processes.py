"""The commands that run a process: ``worker``, ``server``, ``demo`` and ``web``.

Each receives the parsed command line and runs in the foreground: a worker
node through the launcher, one nats-server or a cluster of them, the demo
(which returns once its sample jobs have run), or the dashboard. The worker,
the demo and the dashboard log to stderr through :func:`configure_logging`;
the server and the dashboard print one line on stdout saying where they
listen, flushed at once so that a parent reading the pipe sees it. The
server stops its nats-servers on SIGTERM or Ctrl-C, and raises a
``ConfigError`` naming the one that exits on its own.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio

from natskiq.cli.config import UsageError, connection_auth, worker_settings
from natskiq.errors import ConfigError
from natskiq.ops.launcher import Launcher, import_app

if TYPE_CHECKING:
    from natskiq.ops.server import Server


def worker(args: argparse.Namespace) -> None:
    """Run a worker node with the merged settings until it is stopped."""
    settings, level = worker_settings(args)
    configure_logging(level)
    _check_app_files(settings.app)
    import_app(settings.app)
    # Everything imported so far lives as long as the process: keep it
    # out of the collector's full passes, which would otherwise walk
    # every module's objects again and again while jobs run.
    gc.freeze()
    uvloop = settings.event_loop == "uvloop"
    anyio.run(Launcher(settings).serve, backend_options={"use_uvloop": uvloop})


def demo() -> None:
    """Run the demo (server, worker, sample jobs), printing its progress."""
    configure_logging("warning")
    from natskiq.ops.demo import run_demo

    anyio.run(run_demo, lambda line: print(line, flush=True))


def _check_app_files(apps: tuple[str, ...]) -> None:
    """Say that an app given as a ``.py`` file is missing, rather than that it does not import."""
    for app in apps:
        if app.endswith(".py") and not Path(app).is_file():
            raise ConfigError(f"--app: no such file: {app}")


def server(args: argparse.Namespace) -> None:
    """Run one nats-server, or a cluster of ``--cluster N``, until stopped."""
    from natskiq.ops.server import Cluster, Server, default_store_dir

    if args.cluster is not None:
        if args.cluster < 3:
            raise UsageError(
                f"--cluster needs at least 3 servers (replicated streams have 3), not {args.cluster}"
            )
        if args.host != "127.0.0.1":
            raise UsageError("--cluster runs on 127.0.0.1 only")
        store = args.store or default_store_dir() / "cluster"
        ports = [args.port + i for i in range(args.cluster)]
        cluster = Cluster(size=args.cluster, root=store, client_ports=ports)
        _serve_until_stopped(
            cluster.start, cluster.servers, cluster.stop, f"{args.cluster}-node cluster", store
        )
        return
    store = args.store or default_store_dir()
    server = Server(store_dir=store, port=args.port, host=args.host)
    _serve_until_stopped(server.start, [server], server.stop, "JetStream", store)


def _serve_until_stopped(
    start: Callable[[], str], servers: list[Server], stop: Callable[[], None], what: str, store: Path
) -> None:
    """Start nats-server(s), print the URL, and stop them all on SIGTERM or Ctrl-C, or when one exits."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        url = start()
        print(f"natskiq server: {what} at {url} (store {store}); Ctrl-C stops it", flush=True)
        # One thread waits on each process; the main thread blocks on the
        # first to report, and a signal interrupts that wait.
        exited: queue.Queue[tuple[int, int]] = queue.Queue()
        for index, server in enumerate(servers):
            threading.Thread(target=lambda i=index, s=server: exited.put((i, s.wait())), daemon=True).start()
        index, code = exited.get()
        name = f"nats-server {index + 1}" if len(servers) > 1 else "nats-server"
        raise ConfigError(f"{name} exited with code {code}")
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        signal.signal(signal.SIGTERM, previous)


def web(args: argparse.Namespace) -> None:
    """Serve the dashboard until stopped (needs the web extra)."""
    try:
        from natskiq import web
    except ImportError as exc:
        raise ConfigError(f"natskiq web needs the web extra: pip install 'natskiq[web]' ({exc})") from exc
    configure_logging("info")
    anyio.run(
        functools.partial(
            web.serve,
            args.url,
            args.namespace or os.environ.get("NATSKIQ_NAMESPACE"),
            host=args.host,
            port=args.port,
            auth=args.auth or os.environ.get("NATSKIQ_WEB_AUTH"),
            read_only=args.read_only,
            nats_options=connection_auth(args),
            on_ready=lambda url: print(f"natskiq web: {url} (Ctrl-C stops it)", flush=True),
        )
    )


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) as ``natskiq worker`` does, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    logging.getLogger("nats").setLevel(logging.WARNING)


class _Formatter(logging.Formatter):
    """The standard formatter, with the date and time formatted once a second
    rather than for every record (a worker logs two lines per job)."""

    _second: int = -1
    _stamp: str = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"
