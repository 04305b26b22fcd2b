"""The commands about one job and the events stream: ``job``, ``result``, ``events``.

Each receives the parsed command line, opens the client its connection
flags ask for and reads through :mod:`natskiq.api` (``job``, ``result``,
``events``, ``follow``). A jid the events stream and the results bucket know
nothing about, a job that failed for good or was cancelled, and a wait that
ran out exit 1 with one line on stderr; a malformed jid exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from natskiq import api
from natskiq.cli import config
from natskiq.errors import JobCancelled, JobFailed
from natskiq.status.view import Event, JobStatus
from natskiq.topology import check_name


async def job(args: argparse.Namespace) -> int:
    """Print a job's status and timeline (``natskiq job JID``)."""
    check_name("jid", args.jid)
    async with config.client(args) as client:
        status = await api.job(client, args.jid)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    print_status(status)
    return 0


async def result(args: argparse.Namespace) -> int:
    """Print a job's kept result as JSON (``natskiq result JID [--wait S]``)."""
    check_name("jid", args.jid)
    async with config.client(args) as client:
        try:
            value = await api.result(client, args.jid, wait=args.wait)
        except (JobFailed, JobCancelled) as exc:
            print(f"natskiq: {exc}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"natskiq: job {args.jid} did not finish within {args.wait:g} s", file=sys.stderr)
            return 1
    print(json.dumps(value))
    return 0


async def events(args: argparse.Namespace) -> int:
    """Print stored lifecycle events, then with ``--follow`` the new ones as they come."""
    if args.jid is not None:
        check_name("jid", args.jid)
    filters: dict[str, Any] = {"queue": args.queue, "cls": args.cls, "jid": args.jid}
    async with config.client(args) as client:
        if not args.follow:
            found = await api.events(client, since=args.since, limit=args.limit, **filters)
            if args.json:
                print(json.dumps({"events": [e.to_dict() for e in found]}, indent=2))
            else:
                for event in found:
                    print(line(event))
            return 0
        async for event in api.follow(client, since=args.since, **filters):
            print(json.dumps(event.to_dict()) if args.json else line(event), flush=True)
    return 0


def line(event: Event) -> str:
    """One event as a line: time, state, queue, class, jid, then its own fields."""
    extra = " ".join(f"{k}={_short(v)}" for k, v in event.fields.items())
    return f"{_time(event.at)}  {event.state:<9} {event.queue:<12} {event.cls}  {event.jid}  {extra}".rstrip()


def print_status(status: JobStatus) -> None:
    """A job's status for people: the facts, then the timeline."""
    where = f" on {status.node}" if status.node and status.state in ("running", "succeeded") else ""
    progress = "" if status.progress is None else f", {status.progress:.0%} {status.message or ''}".rstrip()
    print(f"jid       {status.jid}")
    print(f"state     {status.state}{where} (attempt {status.attempt}){progress}")
    print(f"class     {status.cls}   queue {status.queue}")
    if status.next_at is not None:
        print(f"next run  {_time(status.next_at)}")
    if status.error_class is not None:
        print(f"error     {status.error_class}: {status.error_message}")
    print("timeline")
    for event in status.events:
        extra = " ".join(f"{k}={_short(v)}" for k, v in event.fields.items())
        print(f"  {_time(event.at)}  {event.state:<9} {extra}".rstrip())


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:59] + "…"
