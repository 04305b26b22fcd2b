"""The dashboard's pages, rendered on the server from what :mod:`natskiq.api` returns.

Each function receives the data a page shows (already fetched) and a
:class:`View` (where the app is mounted, the CSRF token, read-only or not)
and returns the page's HTML. Nothing here does I/O, and every value from a
stream goes through :func:`~natskiq.web.markup.tag`, which escapes it.
In read-only mode no form or button is rendered at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from natskiq import api
from natskiq.web.markup import (
    Safe,
    View,
    arguments,
    card,
    duration,
    esc,
    join,
    layout,
    long_text,
    number,
    table,
    tag,
    when,
)


@attrs.frozen
class Action:
    """A button: what it does to a job, its labels, and whether it asks first."""

    name: str
    label: str
    every: str
    asks: bool = False


# The buttons of each kind of job (the last one, delete, is all an invalid payload gets).
ACTIONS: dict[api.Kind, tuple[Action, ...]] = {
    "queued": (Action("delete", "Delete", "", asks=True),),  # all of them: "Clear queue"
    "scheduled": (
        Action("run_now", "Enqueue now", "Enqueue all"),
        Action("delete", "Delete", "Delete all", True),
    ),
    "retry": (Action("run_now", "Retry now", "Retry all"), Action("delete", "Delete", "Delete all", True)),
    "failed": (Action("replay", "Replay", "Replay all"), Action("delete", "Delete", "Delete all", True)),
}
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
            '<tr data-queue="$name"><td><a href="$href">$name</a></td><td class="num">$ready</td>'
            '<td class="num">$running</td><td class="num">$scheduled</td><td class="num">$retries</td>'
            '<td class="num">$latency</td></tr>',
            name=q.name,
            href=view.url(f"/queues/{q.name}"),
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
    return tag(
        "<tr><td>$node</td><td><code>$jid</code></td><td>$cls</td><td>$queue</td><td>$since</td></tr>",
        node=node.get("node", "?"),
        jid=job.get("jid", "?"),
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
        '<p class="facts">$ready ready · $running running · $scheduled scheduled · $retries retries · '
        "latency $latency</p>",
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
    return layout(view, "queues", f"Queue {info.name}", join([clear, facts, listing]))


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
            _filter_form(view, kind, path, where, queue_names),
            job_table(view, kind, entries, path, where, page, more),
        ]
    )
    return layout(view, active, TITLES[kind], body)


def _filter_form(
    view: View, kind: api.Kind, path: str, where: dict[str, str], queue_names: Sequence[str]
) -> Safe:
    options = join(
        tag(
            '<option value="$q" $sel>$q</option>',
            q=q,
            sel=Safe("selected") if where.get("queue") == q else "",
        )
        for q in queue_names
    )
    error = Safe("")
    if kind in ("retry", "failed"):
        error = tag('<input name="error" placeholder="error class" value="$v">', v=where.get("error", ""))
    return tag(
        '<form method="get" action="$action" class="filter">'
        '<select name="queue"><option value="">all queues</option>$options</select>'
        '<input name="class" placeholder="worker class" value="$cls">'
        '<input name="jid" placeholder="jid" value="$jid">$error<button class="btn">Filter</button>'
        '<a href="$action">reset</a></form>',
        action=view.url(path),
        options=options,
        cls=where.get("class", ""),
        jid=where.get("jid", ""),
        error=error,
    )


def job_table(
    view: View,
    kind: api.Kind,
    entries: Sequence[api.Entry],
    path: str,
    where: dict[str, str],
    page: int,
    more: bool,
) -> Safe:
    """The jobs of one kind, each with its buttons, and bulk buttons for the selection and the filter."""
    select_all = tag('<input type="checkbox" data-select-all aria-label="select all">')
    head: list[str] = [select_all, *_COLUMNS[kind], ""]
    if view.read_only:
        head = head[1:-1]
    rows = [_job_row(view, kind, entry) for entry in entries]
    listing = table(head, rows, "No jobs here.", "jobs")
    pager = _pager(view, path, where, page, more)
    if view.read_only or not entries:
        return join([listing, pager])
    hidden = join(tag('<input type="hidden" name="$k" value="$v">', k=k, v=v) for k, v in where.items() if v)
    bulk = join(
        tag(
            '<button class="btn $css" name="action" value="$action" data-confirm="$ask" data-needs-selection>'
            "$label selected</button>",
            action=a.name,
            label=a.label,
            ask=f"{a.label} the selected jobs?" if a.asks else "",
            css="danger" if a.asks else "",
        )
        for a in ACTIONS[kind]
    )
    every = join(
        tag(
            '<button class="btn $css" name="action" value="${action}_all" data-confirm="$ask">'
            "$label$scope</button>",
            action=a.name,
            label=a.every,
            css="danger" if a.asks else "",
            ask=f"{a.every}{' that match the filter' if where else ''}?",
            scope=" that match" if where else "",
        )
        for a in ACTIONS[kind]
        if a.every
    )
    bar = tag('<div class="bulk">$bulk<span class="gap"></span>$every</div>', bulk=bulk, every=every)
    return view.form(path, join([hidden, bar, listing, pager]))


_COLUMNS: dict[api.Kind, tuple[str, ...]] = {
    "queued": ("Enqueued", "Job", "Arguments"),
    "scheduled": ("Runs", "Queue", "Job", "Arguments"),
    "retry": ("Next retry", "Retries", "Queue", "Job", "Arguments", "Error"),
    "failed": ("Failed", "Queue", "Job", "Arguments", "Error"),
}


def _job_row(view: View, kind: api.Kind, entry: api.Entry) -> Safe:
    item = f"{entry.queue}:{entry.seq}"
    cells = _cells(view, kind, entry)
    if view.read_only:
        return tag("<tr>$cells</tr>", cells=join(cells))
    select = tag('<td><input type="checkbox" name="item" value="$item" aria-label="select"></td>', item=item)
    allowed = ACTIONS[kind] if entry.job is not None else ACTIONS[kind][-1:]  # invalid: delete only
    buttons = join(
        tag(
            '<button class="btn small $css" name="row" value="$action:$item" data-confirm="$ask">'
            "$label</button>",
            action=a.name,
            item=item,
            label=a.label,
            ask=f"{a.label} this job?" if a.asks else "",
            css="danger" if a.asks else "",
        )
        for a in allowed
    )
    return tag(
        '<tr>$select$cells<td class="actions">$buttons</td></tr>',
        select=select,
        cells=join(cells),
        buttons=buttons,
    )


def _cells(view: View, kind: api.Kind, entry: api.Entry) -> list[Safe]:
    job = entry.job
    if job is None:
        reason = tag(
            '<td colspan="$n"><span class="badge bad">invalid payload</span> $reason<br>$raw</td>',
            n=len(_COLUMNS[kind]),
            reason=entry.reason or "",
            raw=long_text(entry.raw.decode("utf-8", "replace")),
        )
        return [reason]
    ident = tag('<b class="cls">$cls</b><br><small class="jid">$jid</small>', cls=job.cls, jid=job.jid)
    args = tag("<td>$a</td>", a=arguments(job.args, job.kwargs))
    queue = tag('<td><a href="$href">$q</a></td>', href=view.url(f"/queues/{entry.queue}"), q=entry.queue)
    error = tag(
        "<td><b>$cls</b> $msg</td>", cls=job.error_class or "", msg=long_text(job.error_message or "")
    )
    if job.backtrace:
        error = tag(
            '<td><b>$cls</b> $msg<details><summary class="more">backtrace</summary>'
            "<pre>$bt</pre></details></td>",
            cls=job.error_class or "",
            msg=long_text(job.error_message or ""),
            bt="\n".join(job.backtrace),
        )
    if kind == "queued":
        return [tag("<td>$t</td>", t=when(job.enqueued_at, view.now)), tag("<td>$i</td>", i=ident), args]
    if kind == "scheduled":
        return [tag("<td>$t</td>", t=when(job.at, view.now)), queue, tag("<td>$i</td>", i=ident), args]
    if kind == "retry":
        count = tag('<td class="num">$n</td>', n=job.retry_count if job.retry_count is not None else 0)
        return [
            tag("<td>$t</td>", t=when(job.at, view.now)),
            count,
            queue,
            tag("<td>$i</td>", i=ident),
            args,
            error,
        ]
    return [
        tag("<td>$t</td>", t=when(job.failed_at, view.now)),
        queue,
        tag("<td>$i</td>", i=ident),
        args,
        error,
    ]


def _pager(view: View, path: str, where: dict[str, str], page: int, more: bool) -> Safe:
    if page <= 1 and not more:
        return Safe("")
    newer = (
        tag('<a href="$h">&larr; previous</a>', h=view.url(path, **where, page=page - 1))
        if page > 1
        else Safe("")
    )
    older = (
        tag('<a href="$h">next &rarr;</a>', h=view.url(path, **where, page=page + 1)) if more else Safe("")
    )
    return tag(
        '<nav class="pager">$newer <span>page $page</span> $older</nav>', newer=newer, older=older, page=page
    )


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
