"""The ``natskiq`` command: parse, build, run. The only module that prints.

::

    natskiq worker --app MODULE [--url URL] [--queue Q[:WEIGHT]]... [--concurrency N]
                   [--namespace NS] [--timeout S] [--replicas 1|3]
    natskiq server [--port 4222] [--host 127.0.0.1] [--store DIR]
    natskiq demo
    natskiq stats  [--json]

Worker settings also come from ``[tool.natskiq]`` in ``./pyproject.toml`` or
from ``./natskiq.toml`` (or ``--config FILE``); flags win, then the
``NATSKIQ_URL`` / ``NATSKIQ_NAMESPACE`` environment, then the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from . import __version__, api
from .client import Client
from .errors import ConfigError, NatskiqError
from .launcher import Launcher, Settings, import_app

CONFIG_KEYS = {
    "app",
    "url",
    "namespace",
    "queues",
    "concurrency",
    "timeout",
    "replicas",
    "lease_ttl",
    "ack_wait",
    "node_id",
    "log_level",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natskiq", description="Background jobs on NATS JetStream.")
    parser.add_argument("--version", action="version", version=f"natskiq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="run a worker node")
    worker.add_argument("--app", "-a", action="append", help="module (or .py file) defining the workers")
    _connection_args(worker)
    worker.add_argument("--queue", "-q", action="append", dest="queues", metavar="Q[:WEIGHT]")
    worker.add_argument("--concurrency", "-c", type=int)
    worker.add_argument("--timeout", "-t", type=float, help="seconds to wait for jobs on stop (25)")
    worker.add_argument(
        "--replicas",
        type=int,
        choices=(1, 3, 5),
        help="stream and bucket replicas, checked against existing ones (default: 1 when creating)",
    )
    worker.add_argument("--lease-ttl", type=float, help="master lease TTL in seconds (5)")
    worker.add_argument("--ack-wait", type=float, help="seconds before an unacked job is redelivered (30)")
    worker.add_argument("--node-id", help="this node's id (host-pid-random by default)")
    worker.add_argument("--config", type=Path, help="a natskiq.toml or pyproject.toml")
    worker.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    server = sub.add_parser("server", help="run an embedded JetStream server (development)")
    server.add_argument("--port", "-p", type=int, default=4222)
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--store", type=Path, help="JetStream store directory")

    sub.add_parser("demo", help="server + worker + sample jobs; exits when they have run")

    stats = sub.add_parser("stats", help="queues, nodes and the master")
    _connection_args(stats)
    stats.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", "-u", help="NATS URL(s), comma-separated ($NATSKIQ_URL)")
    parser.add_argument("--namespace", "-n", help="subject/stream prefix ($NATSKIQ_NAMESPACE)")


def load_config(path: Path | None) -> dict[str, Any]:
    """Worker settings from a natskiq.toml or a pyproject.toml's [tool.natskiq]."""
    candidates = [path] if path else [Path("natskiq.toml"), Path("pyproject.toml")]
    for candidate in candidates:
        if not candidate.is_file():
            if path:
                raise ConfigError(f"config file {path} does not exist")
            continue
        try:
            data = tomllib.loads(candidate.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{candidate} is not valid TOML: {exc}") from exc
        if candidate.name == "pyproject.toml":
            data = data.get("tool", {}).get("natskiq", {})
        data = {key.replace("-", "_"): value for key, value in data.items()}
        unknown = set(data) - CONFIG_KEYS
        if unknown:
            raise ConfigError(f"unknown setting(s) in {candidate}: {', '.join(sorted(unknown))}")
        if data or path:
            return data
    return {}


def worker_settings(args: argparse.Namespace) -> tuple[Settings, str]:
    """Merge flags, environment and config file into Settings (flags win)."""
    file = load_config(args.config)
    merged: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        flag = getattr(args, key, None)
        env = os.environ.get(f"NATSKIQ_{key.upper()}") if key in ("url", "namespace") else None
        value = flag if flag is not None else env if env is not None else file.get(key)
        if value is not None:
            merged[key] = value
    level = str(merged.pop("log_level", "info"))
    app = merged.pop("app", None)
    if not app:
        raise ConfigError("no app: pass --app MODULE or set app in natskiq.toml")
    merged["app"] = tuple([app] if isinstance(app, str) else app)
    if "queues" in merged:
        queues = merged["queues"]
        merged["queues"] = tuple([queues] if isinstance(queues, str) else queues)
    try:
        return Settings(**merged), level
    except TypeError as exc:
        raise ConfigError(f"bad setting: {exc}") from exc


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("nats").setLevel(logging.WARNING)


async def _stats(args: argparse.Namespace) -> None:
    async with Client(
        url=args.url, namespace=args.namespace or os.environ.get("NATSKIQ_NAMESPACE") or "natskiq"
    ) as client:
        queues = await api.queues(client)
        nodes = await api.nodes(client)
        master = await api.master(client)
    if args.json:
        doc = {
            "queues": [
                {"name": q.name, "ready": q.ready, "running": q.running, "scheduled": q.scheduled}
                for q in queues
            ],
            "nodes": nodes,
            "master": master,
        }
        print(json.dumps(doc, indent=2))
        return
    print(f"{'queue':24} {'ready':>8} {'running':>8} {'scheduled':>10}")
    for q in queues:
        print(f"{q.name:24} {q.ready:>8} {q.running:>8} {q.scheduled:>10}")
    print(f"\nmaster: {master['node'] if master else '(none)'}")
    print(f"{'node':40} {'busy':>5} {'of':>5}  queues")
    for n in nodes:
        print(f"{n['node']:40} {n['busy']:>5} {n['concurrency']:>5}  {','.join(n['queues'])}")


def _server(args: argparse.Namespace) -> None:
    from .server import Server, default_store_dir

    store = args.store or default_store_dir()
    server = Server(store_dir=store, port=args.port, host=args.host)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.start()
        print(f"natskiq server: JetStream at {server.url} (store {store}); Ctrl-C stops it", flush=True)
        code = server.wait()
        raise ConfigError(f"nats-server exited with code {code}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``natskiq`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "worker":
            settings, level = worker_settings(args)
            _logging(level)
            import_app(settings.app)
            anyio.run(Launcher(settings).serve)
        elif args.command == "server":
            _server(args)
        elif args.command == "demo":
            _logging("warning")
            from .demo import run_demo

            anyio.run(run_demo, lambda line: print(line, flush=True))
        elif args.command == "stats":
            anyio.run(_stats, args)
    except NatskiqError as exc:
        print(f"natskiq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
