"""The ``natskiq`` command line: the parser of every command and flag, and ``main()``.

:func:`main` receives the arguments, parses them (argparse exits 2 with the
usage on a malformed command line), hands them to the command's function in
:mod:`~natskiq.cli.processes`, :mod:`~natskiq.cli.inspection` or
:mod:`~natskiq.cli.sets`, and turns what comes back into the exit code: 0
done, 1 nothing matched (``NotFound``, or a command's own 1), 2 any other
``NatskiqError`` (bad input, NATS unreachable), printed as one line on
stderr, also when it was raised inside a task group; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio

from natskiq import __version__
from natskiq.cli import batches, inspection, jobs, processes, sets
from natskiq.errors import NatskiqError, NotFound
from natskiq.ops.launcher import EVENT_LOOPS


def _parser() -> argparse.ArgumentParser:
    """Every command, its flags and their help, as ``natskiq --help`` shows them."""
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
    worker.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="split each queue into N partitions, each with its own master (kept; never lowered)",
    )
    worker.add_argument(
        "--ack-wait",
        type=float,
        help="seconds before a job whose node or master went silent is redelivered (4)",
    )
    worker.add_argument("--node-id", help="this node's id (host-pid-random by default)")
    worker.add_argument(
        "--max-deliveries", type=int, help="deliveries without a settle before a job is failed (25)"
    )
    worker.add_argument("--failed-max-jobs", type=int, help="failed jobs kept at most (10000)")
    worker.add_argument("--failed-max-days", type=float, help="days failed jobs are kept (180)")
    worker.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT/metrics"
    )
    worker.add_argument(
        "--no-events", dest="events", action="store_const", const=False,
        help="publish no lifecycle events of the jobs this node runs",
    )  # fmt: skip
    worker.add_argument(
        "--events-max-msgs", type=int, help="events the events stream keeps at most (1000000)"
    )
    worker.add_argument("--events-max-bytes", type=int, help="bytes the events stream keeps at most (none)")
    worker.add_argument("--events-max-days", type=float, help="days events are kept (7)")
    worker.add_argument("--config", type=Path, help="a natskiq.toml or pyproject.toml")
    worker.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    worker.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        help="asyncio's own loop (default) or uvloop (pip install 'natskiq[uvloop]')",
    )

    server = sub.add_parser("server", help="run an embedded JetStream server (development)")
    server.add_argument("--port", "-p", type=int, default=4222)
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--store", type=Path, help="JetStream store directory")
    server.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="run an N-server cluster on 127.0.0.1, client ports PORT, PORT+1, ... (N >= 3)",
    )

    sub.add_parser("demo", help="server + worker + sample jobs; exits when they have run")

    stats = sub.add_parser("stats", help="totals, queues, nodes and the master")
    _connection_args(stats)
    _json_arg(stats)

    nodes = sub.add_parser("nodes", help="live nodes, and which node masters which shard")
    _connection_args(nodes)
    _json_arg(nodes)

    queues = sub.add_parser(
        "queues", aliases=["queue"], help="list queues, peek into one, clear, pause or resume it"
    )
    queues.add_argument(
        "action", nargs="?", choices=("list", "peek", "clear", "pause", "resume"), default="list"
    )
    queues.add_argument("queue", nargs="?", help="the queue (peek, clear, pause, resume)")
    queues.add_argument("--limit", type=int, default=20, help="jobs to show with peek (20)")
    queues.add_argument("--yes", action="store_true", help="clear without asking")
    queues.add_argument(
        "--until",
        type=_ahead,
        metavar="TIME",
        help="pause until an ISO time with its zone, or for a span like 15m 2h 3d (default: until resumed)",
    )
    _connection_args(queues)
    _json_arg(queues)

    for kind, verb, about in (
        ("retry", "now", "jobs waiting to be retried"),
        ("scheduled", "now", "jobs scheduled for later"),
        ("failed", "replay", "jobs whose retries ran out (the dead set)"),
    ):
        cmd = sub.add_parser(kind, help=f"list, {verb} or delete {about}")
        cmd.add_argument("action", choices=("list", verb, "delete"))
        cmd.add_argument("--queue", "-q", help="only this queue")
        cmd.add_argument("--class", dest="cls", metavar="CLASS", help="only this worker class")
        cmd.add_argument("--jid", help="only this job")
        cmd.add_argument("--error", help="only this error class")
        cmd.add_argument("--since", type=_when, help="not before: ISO time, or an age like 90s 15m 2h 3d")
        cmd.add_argument("--until", type=_when, help="not after: ISO time, or an age like 90s 15m 2h 3d")
        cmd.add_argument("--all", action="store_true", help=f"{verb}/delete every match without a filter")
        cmd.add_argument("--limit", type=int, help="at most this many (list: 50)")
        _connection_args(cmd)
        _json_arg(cmd)

    periodic = sub.add_parser("periodic", help="list periodic jobs or remove one")
    periodic.add_argument("action", nargs="?", choices=("list", "remove"), default="list")
    periodic.add_argument("name", nargs="?", help="the periodic job's name (remove)")
    _connection_args(periodic)
    _json_arg(periodic)

    cancel = sub.add_parser("cancel", help="cancel a job: delete it if waiting, stop it if running")
    cancel.add_argument("jid", help="the job's id")
    _connection_args(cancel)
    _json_arg(cancel)

    job = sub.add_parser("job", help="a job's status and timeline, by jid")
    job.add_argument("jid", help="the job's id")
    _connection_args(job)
    _json_arg(job)

    batch = sub.add_parser("batch", help="a batch's status: total, pending, succeeded, failed, failed jids")
    batch.add_argument("bid", help="the batch's id")
    _connection_args(batch)
    _json_arg(batch)

    listed = sub.add_parser("batches", help="the batches kept (running, and finished lately), newest first")
    listed.add_argument("--limit", type=_count, default=100, help="show at most this many (100)")
    _connection_args(listed)
    _json_arg(listed)

    result = sub.add_parser("result", help="a job's kept result (keep_result), as JSON")
    result.add_argument("jid", help="the job's id")
    result.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for it (0)"
    )
    _connection_args(result)

    events = sub.add_parser("events", help="the lifecycle events of jobs; --follow for new ones")
    events.add_argument("--queue", "-q", help="one queue's events")
    events.add_argument("--class", dest="cls", help="one worker class's events")
    events.add_argument("--jid", help="one job's events")
    events.add_argument("--since", type=_when, help="from: ISO time, or an age like 90s 15m 2h 3d")
    events.add_argument(
        "--limit", type=_count, default=100, help="the latest N found (100), without --follow"
    )
    events.add_argument("--follow", "-f", action="store_true", help="then print new events as they come")
    _connection_args(events)
    _json_arg(events)

    node = sub.add_parser("node", help="tell a worker node to go quiet or to stop")
    node.add_argument("action", choices=("quiet", "stop"))
    node.add_argument("node_id", help="the node's id (see natskiq stats)")
    _connection_args(node)

    web = sub.add_parser("web", help="the web dashboard (pip install 'natskiq[web]')")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    web.add_argument("--port", type=int, default=7878)
    web.add_argument(
        "--auth", help="user:password (basic auth) or token:SECRET; or $NATSKIQ_WEB_AUTH (keeps it out of ps)"
    )
    web.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    _connection_args(web)
    return parser


def _json_arg(parser: argparse.ArgumentParser) -> None:
    """``--json``, for a command that prints data."""
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _span(text: str) -> float | None:
    """A span such as ``90s``, ``15m``, ``2h``, ``3d`` or ``1w``, in seconds; None if ``text`` is none."""
    value = text.strip()
    if value and value[-1] in _UNITS and value[:-1].replace(".", "", 1).isdigit():
        return float(value[:-1]) * _UNITS[value[-1]]
    return None


def _when(text: str) -> float:
    """An ISO 8601 time (UTC if naive) or an age such as ``15m``, as epoch seconds."""
    span = _span(text)
    if span is not None:
        return time.time() - span
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an ISO time nor an age like 15m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _ahead(text: str) -> float:
    """An ISO 8601 time with its zone, or a span from now such as ``30m``, as epoch seconds.

    A time without a zone is refused: for an end, guessing UTC or local time is
    off by hours as often as not.
    """
    span = _span(text)
    if span is not None:
        return time.time() + span
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an ISO time nor a span like 30m") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add one, such as Z or +01:00")
    return moment.timestamp()


def _connection_args(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--namespace`` and the authentication and TLS flags, for a command that talks to NATS."""
    parser.add_argument("--url", "-u", help="NATS URL(s), comma-separated ($NATSKIQ_URL)")
    parser.add_argument("--namespace", "-n", help="subject/stream prefix ($NATSKIQ_NAMESPACE)")
    auth = parser.add_argument_group("authentication and TLS (each also from its $NATSKIQ_* variable)")
    auth.add_argument("--user", help="user name ($NATSKIQ_USER)")
    auth.add_argument("--password", help="password; prefer $NATSKIQ_PASSWORD, ps shows flags")
    auth.add_argument("--token", help="auth token; prefer $NATSKIQ_TOKEN, ps shows flags")
    auth.add_argument(
        "--nkey-seed", metavar="FILE", help="file holding a user NKey seed ($NATSKIQ_NKEY_SEED)"
    )
    auth.add_argument("--creds", metavar="FILE", help="a .creds file: user JWT + NKey seed ($NATSKIQ_CREDS)")
    auth.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) to trust, PEM ($NATSKIQ_TLS_CA)")
    auth.add_argument("--tls-cert", metavar="FILE", help="client certificate, PEM ($NATSKIQ_TLS_CERT)")
    auth.add_argument("--tls-key", metavar="FILE", help="client certificate's key, PEM ($NATSKIQ_TLS_KEY)")
    auth.add_argument(
        "--tls-hostname",
        metavar="NAME",
        help="server name to verify, if not the URL's ($NATSKIQ_TLS_HOSTNAME)",
    )


# The commands that talk to a running natskiq: each returns its exit code (None: 0).
_INSPECTIONS: dict[str, Callable[[argparse.Namespace], Awaitable[int | None]]] = {
    "stats": inspection.stats,
    "nodes": inspection.nodes,
    "queues": inspection.queues,
    "queue": inspection.queues,  # the alias of queues, for `natskiq queue pause Q`
    "periodic": inspection.periodic,
    "cancel": inspection.cancel,
    "node": inspection.node,
    "job": jobs.job,
    "result": jobs.result,
    "events": jobs.events,
    "batch": batches.batch,
    "batches": batches.batches,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``natskiq`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "worker":
            processes.worker(args)
        elif args.command == "server":
            processes.server(args)
        elif args.command == "demo":
            processes.demo()
        elif args.command == "web":
            processes.web(args)
        elif args.command in _INSPECTIONS:
            return anyio.run(_INSPECTIONS[args.command], args) or 0
        else:
            return anyio.run(sets.act, args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        error = _our_error(exc)
        if error is None:
            raise
        if isinstance(error, NotFound):
            print(f"natskiq: {error}", file=sys.stderr)
            return 1
        print(f"natskiq: error: {error}", file=sys.stderr)
        return 2
    return 0


def _our_error(exc: BaseException) -> NatskiqError | None:
    """The NatskiqError behind ``exc``, also from inside a task group's exception group."""
    if isinstance(exc, NatskiqError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _our_error(inner)
            if found is not None:
                return found
    return None
