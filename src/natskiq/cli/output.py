"""What the inspection commands print for people: the tables of queues, nodes and jobs.

Each function receives what :mod:`natskiq.api` returned and prints it to
stdout, one row per item under a header; :func:`print_entries` prints the
``--json`` document instead when asked. Times are shown as ages ("3m ago",
"2h from now"), a value that is not a plausible time as ``-``, and a job
whose bytes do not decode as ``(invalid)`` with the reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

from natskiq import api


def ago(value: object) -> str:
    """How long ago (or how far ahead) ``value`` is, such as ``15m ago``; ``-`` if it is no time."""
    epoch = api.timestamp(value)  # None for anything that is not a plausible time
    if epoch is None:
        return "-"
    delta = time.time() - epoch
    word = "ago" if delta >= 0 else "from now"
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} {word}"
    return f"{delta:.0f}s {word}"


def print_queues(queues: list[api.QueueInfo]) -> None:
    """One row per queue: ready, running, scheduled and retrying jobs, latency, and its pause."""
    print(f"{'queue':24} {'ready':>8} {'running':>8} {'scheduled':>10} {'retries':>8} {'latency':>9}  paused")
    for q in queues:
        print(
            f"{q.name:24} {q.ready:>8} {q.running:>8} {q.scheduled:>10} {q.retries:>8} {q.latency:>8.1f}s  "
            f"{paused(q)}"
        )


def paused(queue: api.QueueInfo) -> str:
    """``-``, ``until resumed``, or how long the queue's pause still lasts (``until 12m from now``)."""
    if not queue.paused:
        return "-"
    return "until resumed" if queue.paused_until is None else f"until {ago(queue.paused_until)}"


def print_nodes(nodes: list[dict[str, Any]], masters: list[dict[str, Any]]) -> None:
    """One row per live node: busy of concurrency, uptime, the shards it masters, its queues."""
    led: dict[str, list[str]] = {}
    for m in masters:
        led.setdefault(str(m.get("node")), []).append(str(m["shard"]))
    print(f"{'node':36} {'busy':>5} {'of':>5}  {'up':>10}  {'masters':>8}  queues")
    for n in nodes:
        flags = " (quiet)" if n.get("quiet") else ""
        up = ago(n.get("started")).replace(" ago", "")
        shards = ",".join(led.get(str(n.get("node")), [])) or "-"
        print(
            f"{n['node']:36} {n['busy']:>5} {n['concurrency']:>5}  {up:>10}  {shards:>8}  "
            f"{','.join(n['queues'])}{flags}"
        )


def print_entries(entries: list[api.Entry], as_json: bool) -> None:
    """Jobs from a queue or a set: a table with a count, or ``{"count", "jobs"}`` as JSON."""
    if as_json:
        print(json.dumps({"count": len(entries), "jobs": [e.to_dict() for e in entries]}, indent=2))
        return
    print(f"{'jid':24}  {'class':28} {'queue':12} {'tries':>5}  {'when':>14}  error")
    for e in entries:
        job = e.job
        if job is None:
            print(f"{'(invalid)':24}  {'-':28} {e.queue:12} {'-':>5}  {'-':>14}  {e.reason}")
            continue
        when = ago(job.failed_at if e.kind == "failed" else job.at or job.enqueued_at)
        tries = "-" if job.retry_count is None else str(job.retry_count + 1)
        error = f"{job.error_class}: {job.error_message}" if job.error_class else ""
        step = f"  (chain {e.chain_id}, step {job.chain['step']} of {job.chain['of']})" if job.chain else ""
        print(f"{job.jid:24}  {job.cls[-28:]:28} {e.queue:12} {tries:>5}  {when:>14}  {error[:60]}{step}")
    print(f"({len(entries)} job{'s' if len(entries) != 1 else ''})")
