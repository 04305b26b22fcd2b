"""The job tables: the listing every set's page and a queue's page share, and one job's timeline.

It receives the entries a page shows (already fetched by
:func:`natskiq.api.find`), the page's path, filter and page number, and a
:class:`~natskiq.web.markup.View`, and hands :mod:`natskiq.web.pages` the
HTML of the filter form (:func:`filter_form`) and of the table of jobs with
their buttons, the bulk buttons for the selection and the filter, and the
pager (:func:`job_table`); each jid links to its job's page, whose table of
events is :func:`timeline`. :data:`ACTIONS` names the buttons of each kind
of job, which :mod:`natskiq.web.app` checks a POST against. Every value
from a job goes through :func:`~natskiq.web.markup.tag`, which escapes it;
in read-only mode no form or button is rendered. No I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from natskiq import api
from natskiq.status.view import Event
from natskiq.web.markup import Safe, View, arguments, duration, job_link, join, long_text, table, tag, when


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


def filter_form(
    view: View, kind: api.Kind, path: str, where: dict[str, str], queue_names: Sequence[str]
) -> Safe:
    """The GET form that filters a set by queue, class and jid (and error class, for retries and failed)."""
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
    jid = job_link(view, job.jid, tag('<small class="jid">$jid</small>', jid=job.jid))
    ident = tag('<b class="cls">$cls</b><br>$jid', cls=job.cls, jid=jid)
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


# -- one job's timeline ------------------------------------------------------------------


def timeline(view: View, events: Sequence[Event]) -> Safe:
    """A job's events, oldest first: when, how long after the first, the state, and its own fields."""
    first = events[0].at if events else 0.0
    rows = [
        tag(
            '<tr><td>$at</td><td class="num">$after</td>'
            '<td><span class="badge state $state">$state</span></td><td>$fields</td></tr>',
            at=when(event.at, view.now),
            after=_after(event.at - first),
            state=event.state,
            fields=_fields(view, event.fields),
        )
        for event in events
    ]
    return table(("When", "After", "State", "Fields"), rows, "No events.", "timeline")


def _after(delta: float) -> str:
    """``+1.2s`` (``-0.1s`` for an event stamped before the first: two processes' clocks)."""
    if not math.isfinite(delta):
        return duration(None)
    return ("+" if delta >= 0 else "-") + duration(abs(delta))


def _fields(view: View, fields: Mapping[str, Any]) -> Safe:
    """An event's own fields as ``name value`` pairs: times relative, long text cut."""
    if not fields:
        return Safe('<span class="none">none</span>')
    pairs = (
        tag('<span class="field"><b>$key</b> $value</span>', key=key, value=_value(view, key, value))
        for key, value in fields.items()
    )
    return join(pairs, " ")


def _value(view: View, key: str, value: Any) -> Safe:
    if key.endswith("_at") and api.timestamp(value) is not None:
        return when(value, view.now)
    if isinstance(value, str):
        return long_text(value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (RecursionError, TypeError, ValueError):  # nesting past what the encoder recurses through
        return Safe('<span class="none">a value that cannot be shown</span>')
    return tag("<code>$text</code>", text=long_text(text))
