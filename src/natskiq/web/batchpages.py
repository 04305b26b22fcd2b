"""The dashboard's batch pages: the batches kept, and one batch with its progress bar.

:func:`batches` receives the :class:`~natskiq.BatchStatus` list of
:func:`natskiq.api.batches`, :func:`batch` one status from
:func:`natskiq.api.batch`; each returns the page's HTML. Nothing here does
I/O; every value goes through :func:`~natskiq.web.markup.tag`, which
escapes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from natskiq.flow.batches import BatchStatus
from natskiq.web.markup import Safe, View, job_link, join, layout, number, table, tag, when


def batches(view: View, statuses: Sequence[BatchStatus]) -> str:
    """Every batch kept, newest first: its state, progress and counts."""
    rows = [
        tag(
            '<tr><td><a href="$href"><code>$bid</code></a></td><td>$description</td><td>$state</td>'
            "<td>$bar</td><td>$total</td><td>$pending</td><td>$failed</td><td>$created</td></tr>",
            href=view.url(f"/batches/{s.bid}"),
            bid=s.bid,
            description=s.description,
            state=_state(s),
            bar=_bar(s),
            total=number(s.total),
            pending=number(s.pending),
            failed=number(s.failed),
            created=when(s.created_at, view.now),
        )  # fmt: skip
        for s in statuses
    ]
    head = ["Batch", "Description", "State", "Progress", "Total", "Pending", "Failed", "Created"]
    empty = "No batches: open one with async with natskiq.batch(...)."
    return layout(view, "batches", "Batches", table(head, rows, empty))


def batch(view: View, s: BatchStatus) -> str:
    """One batch: its state, progress bar, counts, callbacks, parent and failed jobs."""
    parent = Safe("&ndash;")
    if s.parent:
        parent = tag(
            '<a href="$href"><code>$bid</code></a>', href=view.url(f"/batches/{s.parent}"), bid=s.parent
        )
    callbacks = join(
        tag("<div>on_$kind: <b>$cls</b> $fired</div>", kind=kind, cls=cls, fired=_fired(kind in s.fired))
        for kind, cls in sorted(s.callbacks.items())
    )
    facts = [
        ("State", _state(s)),
        ("Progress", _bar(s)),
        ("Total", number(s.total)),
        ("Pending", number(s.pending)),
        ("Succeeded", number(s.succeeded)),
        ("Failed", number(s.failed)),
        ("Description", s.description),
        ("Parent", parent),
        ("Callbacks", callbacks or Safe("&ndash;")),
        ("Created", when(s.created_at, view.now)),
        ("Completed", when(s.completed_at, view.now)),
    ]
    rows = join(tag("<tr><th>$k</th><td>$v</td></tr>", k=k, v=v) for k, v in facts)
    failures = [
        tag("<tr><td>$link</td></tr>", link=job_link(view, jid, tag("<code>$jid</code>", jid=jid)))
        for jid in s.failures
    ]
    more = s.failed - len(s.failures)
    note = tag('<p class="hint">And $n more.</p>', n=number(more)) if more > 0 else Safe("")
    body = tag(
        '<table class="job">$rows</table><h2>Failed jobs</h2>$failures$note',
        rows=rows, failures=table(["Job"], failures, "No job of this batch has failed for good."), note=note,
    )  # fmt: skip
    return layout(view, "batches", f"Batch {s.bid}", body)


def _state(s: BatchStatus) -> Safe:
    if s.complete:
        state = "succeeded" if s.failed == 0 else "failed"
    else:
        state = "queued" if s.open else "running"
    label = "open" if state == "queued" else state
    return tag('<span class="badge state $state">$label</span>', state=state, label=label)


def _bar(s: BatchStatus) -> Safe:
    percent = f"{s.progress * 100:.0f}"
    return tag('<progress max="100" value="$p">$p%</progress> <b>$p%</b>', p=percent)


def _fired(fired: bool) -> Safe:
    return tag('<span class="badge state succeeded">fired</span>') if fired else Safe("")
