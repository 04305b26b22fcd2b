"""The batch commands: ``natskiq batch BID`` (one batch's status) and ``natskiq batches``.

Each receives the parsed command line, opens the client its connection flags
ask for and reads through :mod:`natskiq.api` (``batch``, ``batches``). An
unknown batch id exits 1 with one line on stderr; a malformed one exits 2.
"""

from __future__ import annotations

import argparse
import json

from natskiq import api
from natskiq.cli import config
from natskiq.cli.output import ago
from natskiq.flow.batches import BatchStatus
from natskiq.topology import check_name


async def batch(args: argparse.Namespace) -> int:
    """Print one batch's status (``natskiq batch BID [--json]``)."""
    check_name("batch", args.bid)
    async with config.client(args) as client:
        status = await api.batch(client, args.bid)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    print(f"batch     {status.bid}  {status.description}")
    print(f"state     {_state(status)}, created {ago(status.created_at)}")
    print(f"progress  {_bar(status)} {status.progress:.0%}")
    print(
        f"jobs      total {status.total}  pending {status.pending}  "
        f"succeeded {status.succeeded}  failed {status.failed}"
    )
    if status.parent:
        print(f"parent    {status.parent}")
    for kind, cls in sorted(status.callbacks.items()):
        fired = "fired" if kind in status.fired else "not fired"
        print(f"on_{kind:8} {cls} ({fired})")
    if status.failures:
        more = status.failed - len(status.failures)
        print("failed    " + " ".join(status.failures) + (f" (and {more} more)" if more > 0 else ""))
    return 0


async def batches(args: argparse.Namespace) -> int:
    """Print the batches kept, newest first (``natskiq batches [--json]``)."""
    async with config.client(args) as client:
        found = await api.batches(client, limit=args.limit)
    if args.json:
        print(json.dumps({"batches": [status.to_dict() for status in found]}, indent=2))
        return 0
    print(f"{'batch':24} {'state':9} {'total':>7} {'pending':>7} {'failed':>7} {'created':>10}  description")
    for s in found:
        print(
            f"{s.bid:24} {_state(s):9} {s.total:>7} {s.pending:>7} {s.failed:>7} "
            f"{ago(s.created_at):>10}  {s.description}"
        )
    return 0


def _state(status: BatchStatus) -> str:
    if status.complete:
        return "succeeded" if status.failed == 0 else "failed"
    return "open" if status.open else "running"


def _bar(status: BatchStatus, width: int = 30) -> str:
    done = round(status.progress * width)
    return "[" + "#" * done + "." * (width - done) + "]"
