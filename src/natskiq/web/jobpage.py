"""The dashboard's page of one job: its state and facts, its kept result and its timeline.

:func:`job` receives the job's :class:`~natskiq.JobStatus` (from
:func:`natskiq.api.job`) and its kept outcome as the results bucket holds it
(raw bytes, or None), and returns the page's HTML. Nothing here does I/O;
every value, the outcome included, goes through
:func:`~natskiq.web.markup.tag`, which escapes it.
"""

from __future__ import annotations

import json
import math

from natskiq.errors import JobCancelled, JobFailed
from natskiq.job import NAME_RE
from natskiq.status.results import outcome
from natskiq.status.view import JobStatus
from natskiq.web.listing import timeline
from natskiq.web.markup import Safe, View, join, layout, long_text, number, tag, when

RESULT_SHOWN = 4000  # characters of a kept result, backtrace or unreadable outcome shown before the cut


def job(view: View, status: JobStatus, stored: bytes | None) -> str:
    """One job by jid (``api.job``): its state and facts, its kept result (raw, as the
    results bucket holds it, or None) and its timeline, oldest first."""
    body = tag(
        '<section class="job"><div>$facts</div><div><h2>Result</h2>$result</div></section>'
        "<h2>Timeline</h2>$events",
        facts=_job_facts(view, status),
        result=_kept(status.jid, stored),
        events=timeline(view, status.events),
    )
    return layout(view, "", f"Job {status.jid}", body)


def _job_facts(view: View, s: JobStatus) -> Safe:
    queue = s.queue
    if NAME_RE.fullmatch(queue):
        queue = tag('<a href="$href">$q</a>', href=view.url(f"/queues/{s.queue}"), q=s.queue)
    error = Safe("&ndash;")
    if s.error_class or s.error_message:
        error = tag("<b>$cls</b> $msg", cls=s.error_class or "", msg=long_text(s.error_message or ""))
    facts = [
        ("State", _state(s)),
        ("Class", s.cls),
        ("Queue", queue),
        ("Progress", _progress(s.progress, s.message)),
        ("Next run", when(s.next_at, view.now)),
        ("Last error", error),
        ("Enqueued", when(s.enqueued_at, view.now)),
        ("Started", when(s.started_at, view.now)),
        ("Finished", when(s.finished_at, view.now)),
        ("Updated", when(s.updated_at, view.now)),
    ]
    rows = join(tag("<tr><th>$k</th><td>$v</td></tr>", k=k, v=v) for k, v in facts)
    return tag('<table class="job">$rows</table>', rows=rows)


def _state(s: JobStatus) -> Safe:
    """The state as a badge, with the node that runs (or ran) the job and the attempt."""
    node = tag(" on <b>$node</b>", node=s.node) if s.node else Safe("")
    attempt = tag(" · attempt $n", n=s.attempt) if s.attempt else Safe("")
    return tag(
        '<span class="badge state $state">$state</span>$node$attempt',
        state=s.state,
        node=node,
        attempt=attempt,
    )


def _progress(progress: float | None, message: str | None) -> Safe:
    """A progress bar with its percentage and message (a dash before the first report)."""
    if progress is None or not math.isfinite(progress):
        return tag("&ndash; $m", m=message or "")
    percent = f"{min(1.0, max(0.0, progress)) * 100:.0f}"
    return tag(
        '<progress max="100" value="$p">$p%</progress> <b>$p%</b> $m', p=percent, m=long_text(message or "")
    )


def _kept(jid: str, stored: bytes | None) -> Safe:
    """The kept outcome: the value as JSON, the failure with its backtrace, or why there is none."""
    if stored is None:
        return tag(
            '<p class="empty">No kept result: the job has not finished, its class keeps none '
            "(keep_result), or the result expired.</p>"
        )
    try:
        text = json.dumps(outcome(jid, stored), indent=2, ensure_ascii=False)
    except JobFailed as exc:
        backtrace = _cut("\n".join(exc.backtrace)) if exc.backtrace else Safe("")
        return tag(
            '<p><span class="badge state failed">failed</span> <b>$cls</b> $msg</p>$bt',
            cls=exc.error_class, msg=long_text(exc.error_message), bt=backtrace,
        )  # fmt: skip
    except JobCancelled:
        return tag('<p><span class="badge state cancelled">cancelled</span> The job was cancelled.</p>')
    except (RecursionError, ValueError):  # not JSON (or nested past what it decodes), or no outcome
        raw = _cut(stored.decode("utf-8", "replace"))
        return tag('<p class="flash error">What is stored is not an outcome:</p>$raw', raw=raw)
    whole = tag("; <code>natskiq result $jid</code> prints it whole", jid=jid)
    return tag('<p><span class="badge state succeeded">succeeded</span> returned</p>$v', v=_cut(text, whole))


def _cut(text: str, whole: str = "") -> Safe:
    """Preformatted text, cut after :data:`RESULT_SHOWN` characters with a note (and ``whole``) saying so."""
    if len(text) <= RESULT_SHOWN:
        return tag('<pre class="result">$text</pre>', text=text)
    return tag(
        '<pre class="result">$text…</pre><p class="hint">Cut: $n characters in all$whole.</p>',
        text=text[:RESULT_SHOWN], n=number(len(text)), whole=whole,
    )  # fmt: skip
