"""The dashboard's pages, rendered on the server from what :mod:`natskiq.api` returns.

Each function receives the data a page shows (already fetched) and a
:class:`View` (where the app is mounted, the CSRF token, read-only or not)
and returns the page's HTML. Nothing here does I/O, and every value from a
stream goes through :func:`~natskiq.web.markup.tag`, which escapes it.
In read-only mode no form or button is rendered at all. The listing of jobs
that the set pages and a queue's page share is :mod:`natskiq.web.listing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from natskiq import api
from natskiq.web.listing import filter_form, job_table
from natskiq.web.markup import (
    Safe,
    View,
    arguments,
    card,
    duration,
    esc,
    job_link,
    join,
    layout,
    number,
    table,
    tag,
    when,
)

TITLES: dict[api.Kind, str] = {
    "queued": "Queue",
    "scheduled": "Scheduled jobs",
    "retry": "Retries",
    "failed": "Failed jobs",
}


# -- dashboard -----------------------------------------------------------------


def dashboard(
    view: View,
    stats: api.Stats,
    queues: Sequence[api.QueueInfo],
    nodes: Sequence[dict[str, Any]],
    history: Sequence[tuple[str, int, int]],
) -> str:
    busy = sum(int(n.get("busy", 0)) for n in nodes)
    cards = join(
        [
            card("Processed", stats.processed, "processed", view.url("/")),
            card("Failed", stats.failed, "failed", view.url("/failed"), "bad"),
            card("Busy", busy, "busy", view.url("/busy")),
            card("Enqueued", stats.enqueued, "enqueued", view.url("/queues")),
            card("Scheduled", stats.scheduled, "scheduled", view.url("/scheduled")),
            card("Retries", stats.retries, "retries", view.url("/retries")),
            card("Dead", stats.dead, "dead", view.url("/failed"), "bad"),
            card("Nodes", len(nodes), "nodes", view.url("/busy")),
        ]
    )
    charts = tag(
        '<section class="charts">'
        '<figure><figcaption>Processed per second <b data-rate="processed">–</b></figcaption>'
        '<svg class="chart" data-chart="processed" viewBox="0 0 600 150" preserveAspectRatio="none"></svg>'
        "</figure>"
        '<figure><figcaption>Failed per second <b data-rate="failed">–</b></figcaption>'
        '<svg class="chart bad" data-chart="failed" viewBox="0 0 600 150" preserveAspectRatio="none"></svg>'
        "</figure></section>"
    )
    days = [
        tag(
            '<tr data-day="$d"><td>$d</td><td class="num" data-field="processed">$p</td>'
            '<td class="num" data-field="failed">$f</td></tr>',
            d=d,
            p=number(p),
            f=number(f),
        )
        for d, p, f in history
    ]
    return layout(
        view,
        "dashboard",
        "Dashboard",
        join(
            [
                tag('<section class="cards">$cards</section>', cards=cards),
                charts,
                tag(
                    '<section class="split"><div><h2>Queues</h2>$queues</div>'
                    "<div><h2>History (UTC days)</h2>$days</div></section>",
                    queues=queue_table(view, queues),
                    days=table(("Day", "Processed", "Failed"), days, "No history yet."),
                ),
            ]
        ),
    )


def queue_table(view: View, queues: Sequence[api.QueueInfo]) -> Safe:
    rows = [
        tag(
            '<tr data-queue="$name"><td><a href="$href">$name</a> $paused</td><td class="num">$ready</td>'
            '<td class="num">$running</td><td class="num">$scheduled</td><td class="num">$retries</td>'
            '<td class="num">$latency</td></tr>',
            name=q.name,
            href=view.url(f"/queues/{q.name}"),
            paused=paused_badge(view, q),
            ready=number(q.ready),
            running=number(q.running),
            scheduled=number(q.scheduled),
            retries=number(q.retries),
            latency=duration(q.latency),
        )
        for q in queues
    ]
    head = ("Queue", "Ready", "Running", "Scheduled", "Retries", "Latency")
    return table(head, rows, "No queues yet: enqueue a job to create one.", "queues")


def paused_badge(view: View, queue: api.QueueInfo) -> Safe:
    """ "paused" (with when the pause ends, if it does) for a paused queue; nothing otherwise."""
    if not queue.paused:
        return Safe("")
    if queue.paused_until is None:
        return tag('<span class="badge paused" title="until resumed">paused</span>')
    return tag(
        '<span class="badge paused">paused, resumes $end</span>', end=when(queue.paused_until, view.now)
    )


PAUSE_FOR = (("", "until resumed"), ("900", "for 15 minutes"), ("3600", "for 1 hour"), ("86400", "for 1 day"))
"""The pauses the queue page offers: seconds (blank: until resumed), and their labels."""


def _pause_form(view: View, info: api.QueueInfo) -> Safe:
    """Resume for a paused queue; for another, Pause with how long."""
    if info.paused:
        button = tag('<button class="btn" name="action" value="resume">Resume queue</button>')
    else:
        options = join(tag('<option value="$v">$label</option>', v=v, label=label) for v, label in PAUSE_FOR)
        button = tag(
            '<select name="for" aria-label="How long">$options</select> '
            '<button class="btn" name="action" value="pause">Pause queue</button>',
            options=options,
        )
    return view.form(f"/queues/{info.name}", button, css="inline right")


# -- busy ------------------------------------------------------------------------


def busy(view: View, nodes: Sequence[dict[str, Any]], masters: Sequence[dict[str, Any]]) -> str:
    """Every live node, and who masters each dispatch shard (``api.masters``)."""
    rows = [_node_row(view, node) for node in nodes]
    head = ("Node", "Host", "PID", "Queues", "Busy", "Started", "Processed", "Failed", "Seen", "")
    leads = []
    for master in masters:
        title = (
            "Master"
            if len(masters) == 1 and master.get("shard") == 0
            else f"Master of shard {master.get('shard')}"
        )
        leads.append(
            tag(
                '<p class="master">$title: <b>$node</b> ($host, pid $pid) · lease renewed $renewed · '
                "revision $rev</p>",
                title=title,
                node=master.get("node", "?"),
                host=master.get("host", "?"),
                pid=master.get("pid", "?"),
                renewed=when(master.get("since"), view.now),
                rev=master.get("revision", "?"),
            )
        )
    lead = join(leads) if leads else tag('<p class="master none">No master: no node holds the lease.</p>')
    cancel = view.form(
        "/busy/cancel",
        tag(
            '<label>Cancel a job by jid <input name="jid" required pattern="[A-Za-z0-9_-]{1,64}" '
            'placeholder="jid"></label> '
            '<button class="btn danger" data-confirm="Cancel this job?">Cancel job</button>'
        ),
        css="inline",
    )
    running = [
        _running_row(view, node, job)
        for node in nodes
        for job in (node.get("running") or [])
        if isinstance(job, dict)
    ]
    jobs_table = table(("Node", "jid", "Class", "Queue", "Started"), running, "No job is running.")
    note = tag('<p class="hint">Nodes refresh this every 2 s. A running job can be cancelled by its jid.</p>')
    return layout(
        view,
        "busy",
        "Busy",
        join(
            [
                lead,
                table(head, rows, "No node is running."),
                tag("<h2>Running jobs</h2>"),
                jobs_table,
                note,
                cancel,
            ]
        ),
    )


def _running_row(view: View, node: dict[str, Any], job: dict[str, Any]) -> Safe:
    jid = job.get("jid", "?")
    return tag(
        "<tr><td>$node</td><td>$jid</td><td>$cls</td><td>$queue</td><td>$since</td></tr>",
        node=node.get("node", "?"),
        jid=job_link(view, jid, tag("<code>$jid</code>", jid=jid)),
        cls=job.get("class", "?"),
        queue=job.get("queue", "?"),
        since=when(job.get("started"), view.now),
    )


def _node_actions(view: View, node: dict[str, Any]) -> Safe:
    """Quiet and stop buttons for one node (none in read-only mode)."""
    body = tag(
        '<input type="hidden" name="node" value="$node">'
        '<button class="btn" name="verb" value="quiet" data-confirm="Quiet $node?">Quiet</button> '
        '<button class="btn danger" name="verb" value="stop" data-confirm="Stop $node?">Stop</button>',
        node=node.get("node", ""),
    )
    return view.form("/busy/node", body, css="inline")


def _master_badge(node: dict[str, Any]) -> Safe:
    """``master`` (with the shards it leads, when the queues are partitioned), or nothing."""
    if not node.get("master"):
        return Safe("")
    shards = node.get("shards")
    if isinstance(shards, list) and shards and shards != [0]:
        label = "master of shard" + ("s " if len(shards) > 1 else " ") + ", ".join(str(s) for s in shards)
        return tag('<span class="badge master">$label</span>', label=label)
    return tag('<span class="badge master">master</span>')


def _node_row(view: View, node: dict[str, Any]) -> Safe:
    queues = node.get("queues") or []
    names = ", ".join(f"{q[0]}:{q[1]}" if isinstance(q, list | tuple) else str(q) for q in queues)
    badges = join(
        [
            _master_badge(node),
            tag('<span class="badge quiet">quiet</span>') if node.get("quiet") else Safe(""),
        ]
    )
    return tag(
        "<tr><td><b>$node</b> $badges</td><td>$host</td><td>$pid</td><td>$queues</td>"
        '<td class="num">$busy / $concurrency</td><td>$started</td><td class="num">$processed</td>'
        '<td class="num">$failed</td><td>$seen</td><td>$actions</td></tr>',
        node=node.get("node", "?"),
        badges=badges,
        host=node.get("host", ""),
        pid=node.get("pid", ""),
        queues=names,
        busy=node.get("busy", 0),
        concurrency=node.get("concurrency", 0),
        started=when(node.get("started"), view.now),
        processed=number(int(node.get("processed", 0))),
        failed=number(int(node.get("failed", 0))),
        seen=when(node.get("at"), view.now),
        actions=_node_actions(view, node),
    )


# -- queues ------------------------------------------------------------------------


def queues(view: View, infos: Sequence[api.QueueInfo]) -> str:
    return layout(view, "queues", "Queues", queue_table(view, infos))


def queue(view: View, info: api.QueueInfo, entries: Sequence[api.Entry], page: int, more: bool) -> str:
    facts = tag(
        '<p class="facts">$paused $ready ready · $running running · $scheduled scheduled · '
        "$retries retries · latency $latency</p>",
        paused=paused_badge(view, info),
        ready=number(info.ready),
        running=number(info.running),
        scheduled=number(info.scheduled),
        retries=number(info.retries),
        latency=duration(info.latency),
    )
    clear = view.form(
        f"/queues/{info.name}",
        tag(
            '<button class="btn danger" name="action" value="clear" '
            'data-confirm="Delete every ready job in $q?">Clear queue</button>',
            q=info.name,
        ),
        css="inline right",
    )
    path = f"/queues/{info.name}"
    listing = job_table(view, "queued", entries, path, {}, page, more)
    return layout(
        view, "queues", f"Queue {info.name}", join([clear, _pause_form(view, info), facts, listing])
    )


# -- scheduled, retries, failed -------------------------------------------------------


def job_set(
    view: View,
    kind: api.Kind,
    path: str,
    entries: Sequence[api.Entry],
    where: dict[str, str],
    queue_names: Sequence[str],
    page: int,
    more: bool,
) -> str:
    active = path.strip("/")
    body = join(
        [
            filter_form(view, kind, path, where, queue_names),
            job_table(view, kind, entries, path, where, page, more),
        ]
    )
    return layout(view, active, TITLES[kind], body)


# -- periodic ----------------------------------------------------------------------


def periodic(view: View, definitions: Sequence[api.PeriodicInfo]) -> str:
    # The server reports the next run only for some schedules: a column of dashes says nothing.
    has_next = any(d.next_at for d in definitions)
    rows = []
    for d in definitions:
        cells = [
            tag("<td><b>$name</b></td>", name=d.name),
            tag("<td><code>$schedule</code> $tz</td>", schedule=d.schedule, tz=d.tz or "UTC"),
            tag('<td><a href="$href">$q</a></td>', href=view.url(f"/queues/{d.queue}"), q=d.queue),
            tag("<td>$cls</td><td>$args</td>", cls=d.cls, args=arguments(d.args, d.kwargs)),
        ]
        if has_next:
            cells.append(tag("<td>$next</td>", next=_next(view, d.next_at)))
        if not view.read_only:
            remove = tag(
                '<button class="btn small danger" name="name" value="$n" '
                'data-confirm="Remove periodic job $n?">Remove</button>',
                n=d.name,
            )
            cells.append(tag('<td class="actions">$f</td>', f=view.form("/periodic", remove)))
        rows.append(tag("<tr>$cells</tr>", cells=join(cells)))
    head = ["Name", "Schedule", "Queue", "Job", "Arguments"]
    head += (["Next run"] if has_next else []) + ([] if view.read_only else [""])
    empty = "No periodic jobs: define them with natskiq.periodic() in the workers' app."
    return layout(view, "periodic", "Periodic jobs", table(head, rows, empty))


def _next(view: View, stamp: str | None) -> Safe:
    """The server's ``Nats-Schedule-Next`` (RFC 3339), relative when it parses."""
    if not stamp:
        return Safe("&ndash;")
    try:
        return when(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), view.now)
    except (ValueError, OverflowError, OSError):  # not RFC 3339, or a moment no epoch holds
        return esc(stamp)


def problem(view: View, status: int, message: str) -> str:
    """A page that says what went wrong."""
    return layout(view, "", f"Error {status}", tag('<p class="flash error">$m</p>', m=message))
