"""The retry, scheduled and failed sets: ``natskiq retry|scheduled|failed list|now|replay|delete``.

:func:`act` receives the parsed command line, turns its filters
(``--queue``, ``--class``, ``--jid``, ``--error``, ``--since``, ``--until``)
into an :class:`natskiq.api.Filter`, and lists the matching entries (50 unless
``--limit``) or acts on every one: delete it, replay a failed job, or run a
retry or scheduled job now. Acting without a filter needs ``--all``
(``UsageError`` otherwise), and nothing matching raises ``NotFound`` (exit 1).
A listing prints a table or the ``--json`` jobs; an action prints how many
jobs it did, or with ``--json`` their jids (``seq N`` for a record without one).
"""

from __future__ import annotations

import argparse
import json

from natskiq import api
from natskiq.cli import config, output
from natskiq.cli.config import UsageError
from natskiq.errors import NotFound


async def act(args: argparse.Namespace) -> int:
    """List the matching jobs of a set, or delete, replay or run them now (``NotFound`` if none matches)."""
    kind = args.command
    where = api.Filter(
        queue=args.queue,
        cls=args.cls,
        jid=args.jid,
        error_class=args.error,
        since=args.since,
        until=args.until,
    )
    acting = args.action != "list"
    if acting and where.empty and not args.all:
        raise UsageError(f"{kind} {args.action} needs a filter (--jid, --queue, --class, ...) or --all")
    limit = args.limit if args.limit is not None else (None if acting else 50)
    async with config.client(args) as client:
        entries = await api.find(client, kind, where, limit=limit)
        if not acting:
            output.print_entries(entries, args.json)
            return 0
        if not entries:
            raise NotFound(f"no {kind} job matches")
        done = []
        for entry in entries:
            if args.action == "delete":
                await api.delete(client, entry)
            elif args.action == "replay":
                await api.replay(client, entry)
            else:
                await api.run_now(client, entry)
            done.append(entry.jid or f"seq {entry.seq}")
    past = {"delete": "deleted", "replay": "replayed", "now": "queued now"}[args.action]
    print(json.dumps({past.replace(" ", "_"): done}) if args.json else f"{past}: {len(done)} job(s)")
    return 0
