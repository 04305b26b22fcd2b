"""The commands that look at a running natskiq, and the one-off changes beside them.

``stats``, ``nodes``, ``queues`` (list, peek, clear, pause, resume), ``periodic`` (list,
remove), ``cancel`` and ``node`` (quiet, stop). Each receives the parsed
command line, opens the client its connection flags ask for, calls
:mod:`natskiq.api` (where the logic lives, for Python users too) and prints
a table for people (:mod:`natskiq.cli.output`) or, with ``--json``, one JSON
document. A command line that asks for what cannot be done raises
``UsageError`` and a malformed jid ``ConfigError``, before connecting where
they can (exit 2); nothing to act on (no such periodic job, a job found
nowhere: ``NotFound`` from the api, or a clear declined at the prompt)
exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from natskiq import api
from natskiq.cli import config, output
from natskiq.cli.config import UsageError
from natskiq.errors import NotFound
from natskiq.topology import check_name


async def stats(args: argparse.Namespace) -> None:
    """Print the totals, the queues, the master and the nodes (``natskiq stats``)."""
    async with config.client(args) as client:
        totals = await api.stats(client)
        queues = await api.queues(client)
        nodes = await api.nodes(client)
        master = await api.master(client)
        masters = await api.masters(client)
    if args.json:
        doc = {
            **totals.to_dict(),
            "queues": [q.to_dict() for q in queues],
            "nodes": nodes,
            "master": master,
            "masters": masters,
        }
        print(json.dumps(doc, indent=2))
        return
    print(
        f"processed {totals.processed}   failed {totals.failed}   enqueued {totals.enqueued}   "
        f"scheduled {totals.scheduled}   retries {totals.retries}   dead {totals.dead}"
        + (f" ({totals.trimmed} trimmed by limits)" if totals.trimmed else "")
    )
    print()
    output.print_queues(queues)
    print(f"\nmaster: {master['node'] if master else '(none)'}")
    output.print_nodes(nodes, masters)


async def nodes(args: argparse.Namespace) -> None:
    """Print the live nodes and which node masters each shard (``natskiq nodes``)."""
    async with config.client(args) as client:
        nodes = await api.nodes(client)
        masters = await api.masters(client)
    if args.json:
        print(json.dumps({"nodes": nodes, "masters": masters}, indent=2))
        return
    output.print_nodes(nodes, masters)
    print()
    for m in masters:
        print(
            f"shard {m['shard']}: {m.get('node', '?')} (pid {m.get('pid', '?')}, token {m.get('token', '?')})"
        )
    if not masters:
        print("no shard has a master: no node holds a lease")


async def queues(args: argparse.Namespace) -> int:
    """List the queues, peek into one, clear one after asking, pause or resume one (``natskiq queues``)."""
    if args.action != "list" and not args.queue:
        raise UsageError(f"queues {args.action} needs a queue name")
    if args.until is not None and args.action != "pause":
        raise UsageError("--until goes with pause")
    if args.action in ("pause", "resume"):
        check_name("queue", args.queue)  # before connecting
        return await _pause_or_resume(args)
    async with config.client(args) as client:
        if args.action == "list":
            queues = await api.queues(client)
            if args.json:
                print(json.dumps({"queues": [q.to_dict() for q in queues]}, indent=2))
            else:
                output.print_queues(queues)
            return 0
        if args.action == "peek":
            entries = await api.find(client, "queued", api.Filter(queue=args.queue), limit=args.limit)
            output.print_entries(entries, args.json)
            return 0
        info = await api.queue_info(client, args.queue)
        if not args.yes and not _confirm(f"delete {info.ready} ready job(s) from {args.queue}?"):
            print("nothing deleted")
            return 1
        removed = await api.clear(client, args.queue)
    print(json.dumps({"cleared": removed}) if args.json else f"cleared {removed} job(s) from {args.queue}")
    return 0


async def _pause_or_resume(args: argparse.Namespace) -> int:
    """Pause a queue (until ``--until``) or resume it (``natskiq queue pause|resume Q``).

    An unknown queue is bad input here (exit 2), not "nothing matched": a
    pause that a typo sent nowhere would look done.
    """
    until = None if args.until is None else datetime.fromtimestamp(args.until, UTC)
    async with config.client(args) as client:
        try:
            if args.action == "pause":
                end = await api.pause(client, args.queue, until)
            else:
                was_paused = await api.resume(client, args.queue)
        except NotFound as exc:
            raise UsageError(str(exc)) from None
    if args.action == "pause":
        if args.json:
            print(json.dumps({"queue": args.queue, "paused": True, "until": end}))
        elif end is None:
            print(f"paused queue {args.queue} until resumed (natskiq queue resume {args.queue})")
        else:
            stamp = datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            print(f"paused queue {args.queue} until {stamp} ({output.ago(end)})")
        return 0
    if args.json:
        print(json.dumps({"queue": args.queue, "paused": False, "was_paused": was_paused}))
    else:
        print(f"resumed queue {args.queue}" if was_paused else f"queue {args.queue} was not paused")
    return 0


def _confirm(question: str) -> bool:
    """Ask on the terminal whether to go on; refuse with ``UsageError`` when there is none."""
    if not sys.stdin.isatty():
        raise UsageError("refusing to clear without --yes (no terminal to ask)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


async def periodic(args: argparse.Namespace) -> int:
    """List the periodic jobs, or remove one by name (``natskiq periodic``)."""
    if args.action == "remove" and not args.name:
        raise UsageError("periodic remove needs the periodic job's name")
    if args.action == "list" and args.name:
        raise UsageError("periodic list takes no name")
    async with config.client(args) as client:
        if args.action == "remove":
            removed = await api.remove_periodic(client, args.name)
            doc = {"removed": args.name, "count": removed}
            print(json.dumps(doc) if args.json else f"removed periodic job {args.name}")
            return 0
        found = await api.periodic_jobs(client)
    if args.json:
        print(json.dumps({"periodic": [p.to_dict() for p in found]}, indent=2))
        return 0
    print(f"{'name':24} {'queue':12} {'schedule':20} {'tz':16} {'class':28} next")
    for p in found:
        print(
            f"{p.name:24} {p.queue:12} {p.schedule:20} {p.tz or 'UTC':16} {p.cls[-28:]:28} {p.next_at or '-'}"
        )
    print(f"({len(found)} periodic job{'s' if len(found) != 1 else ''})")
    return 0


async def cancel(args: argparse.Namespace) -> int:
    """Cancel a job: delete it where it waits, stop it where it runs (``natskiq cancel``)."""
    check_name("jid", args.jid)  # before connecting
    async with config.client(args) as client:
        result = await api.cancel(client, args.jid)
    if args.json:
        print(json.dumps({"jid": args.jid, **result}))
        return 0
    where = [f"deleted from {kind}" for kind in result["deleted"]]
    where += [f"stopped on {node}" for node in result["running_on"]]
    print(f"cancelled {args.jid}: {', '.join(where)}")
    return 0


async def node(args: argparse.Namespace) -> None:
    """Tell a worker node to go quiet or to stop (``natskiq node``)."""
    async with config.client(args) as client:
        await api.command(client, args.node_id, args.action)
    print(f"node {args.node_id}: {args.action} sent")
