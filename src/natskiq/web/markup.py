"""HTML building blocks for the dashboard: escaping, times, job arguments,
and the frame every page shares (:class:`View`, :func:`layout`, :func:`table`).

Every page is built from :func:`tag` templates (``string.Template`` with
``$name`` placeholders). :func:`tag` escapes every value it is given unless
the value is :class:`Safe` (HTML built by :func:`tag` itself), so a value
from a stream (a job argument, a class name, an error message) reaches the
page only as text: ``<script>`` in an argument shows as ``<script>``.
"""

from __future__ import annotations

import html
import json
import math
import string
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import attrs

from natskiq import __version__
from natskiq.api import timestamp
from natskiq.job import NAME_RE

ARGS_SHOWN = 120  # characters of a job's arguments shown before "show all"


class Safe(str):
    """A string of HTML that is already escaped (built by :func:`tag`)."""

    __slots__ = ()


def esc(value: object) -> Safe:
    """``value`` as HTML text (quotes escaped too, so it fits in an attribute)."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def tag(template: str, **values: object) -> Safe:
    """Fill ``$name`` placeholders with escaped values (Safe ones as they are)."""
    return Safe(string.Template(template).substitute({key: esc(value) for key, value in values.items()}))


def join(parts: Iterable[Safe], sep: str = "") -> Safe:
    """Concatenate already-safe fragments."""
    return Safe(esc(sep).join(parts))


def when(value: object, now: float | None = None) -> Safe:
    """A time shown relative ("3m ago"), in UTC on hover; the script keeps it current.

    Anything but plausible epoch seconds (None, inf, 1e308, a string: see
    :func:`natskiq.api.timestamp`) shows as a dash.
    """
    epoch = timestamp(value)
    if epoch is None:
        return Safe("&ndash;")
    moment = datetime.fromtimestamp(epoch, UTC)
    return tag(
        '<time datetime="$iso" title="$utc" data-epoch="$epoch">$rel</time>',
        iso=moment.isoformat().replace("+00:00", "Z"),
        utc=moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
        epoch=f"{epoch:.3f}",
        rel=relative(epoch, now),
    )


def relative(epoch: float, now: float | None = None) -> str:
    """``epoch`` relative to ``now``: "just now", "42s ago", "in 3h", "2d ago"."""
    delta = (time.time() if now is None else now) - epoch
    size = abs(delta)
    if size < 1:
        return "just now"
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if size >= seconds:
            amount = f"{int(size // seconds)}{unit}"
            break
    return f"{amount} ago" if delta > 0 else f"in {amount}"


def duration(seconds: float | None) -> str:
    """A span of time, short: "0.4s", "12s", "3m 5s", "2h 10m" (a dash when unknown or not finite)."""
    if seconds is None or not math.isfinite(seconds):
        return "\N{EN DASH}"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"


def number(value: int) -> str:
    """An integer with thousands separators."""
    return f"{value:,}"


def call(args: list[Any], kwargs: dict[str, Any]) -> str:
    """A job's arguments as one line: JSON values, then ``key=value`` pairs."""
    parts = [json.dumps(arg, ensure_ascii=False) for arg in args]
    parts += [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in kwargs.items()]
    return ", ".join(parts)


def arguments(args: list[Any], kwargs: dict[str, Any]) -> Safe:
    """A job's arguments, cut short when long, with a way to see them whole."""
    try:
        text = call(args, kwargs)
        whole = json.dumps({"args": args, "kwargs": kwargs}, indent=2, ensure_ascii=False)
    except (RecursionError, TypeError, ValueError):  # what no decode should let through, shown anyway
        return Safe('<span class="none">arguments that cannot be shown</span>')
    if not text:
        return Safe('<span class="none">no arguments</span>')
    if len(text) <= ARGS_SHOWN:
        return tag('<code class="args">$text</code>', text=text)
    return tag(
        '<details class="args"><summary><code>$short</code> <span class="more">show all</span></summary>'
        "<pre>$whole</pre></details>",
        short=text[:ARGS_SHOWN] + "…",
        whole=whole,
    )


def long_text(text: str, shown: int = 120) -> Safe:
    """Free text (an error message, a raw payload), cut short with a way to see it whole."""
    if len(text) <= shown:
        return esc(text)
    return tag(
        '<details class="args"><summary>$short <span class="more">show all</span></summary>'
        "<pre>$whole</pre></details>",
        short=text[:shown] + "…",
        whole=text,
    )


# -- the frame of every page ----------------------------------------------------

NAV = (
    ("dashboard", "/", "Dashboard"),
    ("busy", "/busy", "Busy"),
    ("queues", "/queues", "Queues"),
    ("scheduled", "/scheduled", "Scheduled"),
    ("retries", "/retries", "Retries"),
    ("failed", "/failed", "Failed"),
    ("periodic", "/periodic", "Periodic"),
    ("batches", "/batches", "Batches"),
)


@attrs.frozen(kw_only=True)
class View:
    """What every page needs besides its data."""

    base: str
    csrf: str
    read_only: bool
    namespace: str
    poll: float
    now: float
    flash: str | None = None
    error: str | None = None

    def url(self, path: str, **query: object) -> str:
        """A link inside the dashboard (wherever it is mounted), with a query."""
        pairs = [(key, str(value)) for key, value in query.items() if value not in (None, "")]
        return self.base + path + ("?" + urlencode(pairs) if pairs else "")

    def form(self, path: str, body: Safe, *, css: str = "") -> Safe:
        """A POST form with the CSRF token (nothing at all in read-only mode)."""
        if self.read_only:
            return Safe("")
        return tag(
            '<form method="post" action="$action" class="$css">'
            '<input type="hidden" name="csrf" value="$csrf">$body</form>',
            action=self.url(path),
            css=css,
            csrf=self.csrf,
            body=body,
        )


def layout(view: View, active: str, heading: str, body: Safe) -> str:
    """The page around ``body``: head, navigation, messages, footer."""
    nav = join(
        tag(
            '<a href="$href" class="$css">$label</a>',
            href=view.url(path),
            label=label,
            css="active" if key == active else "",
        )
        for key, path, label in NAV
    )
    notes = Safe("")
    if view.flash:
        notes = tag('<p class="flash" role="status">$text</p>', text=view.flash)
    if view.error:
        notes = join([notes, tag('<p class="flash error" role="alert">$text</p>', text=view.error)])
    mode = tag('<span class="badge ro">read-only</span>') if view.read_only else Safe("")
    return tag(
        """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$heading · natskiq</title>
<link rel="stylesheet" href="$css"><script src="$js" defer></script></head>
<body data-page="$active" data-poll="$poll" data-stats="$stats">
<header><a class="brand" href="$home">natskiq</a><nav>$nav</nav>
<form method="get" action="$find" class="find" role="search"><input name="jid" required
placeholder="Find a job by jid" aria-label="Find a job by jid" autocomplete="off" spellcheck="false"></form>
<span class="where">namespace <b>$namespace</b> $mode</span></header>
<main><h1>$heading</h1>$notes$body</main>
<footer>natskiq $version · times in your browser's clock, UTC on hover ·
<span data-clock>$now</span></footer>
</body></html>""",
        heading=heading,
        css=view.url("/static/natskiq.css", v=__version__),
        js=view.url("/static/natskiq.js", v=__version__),
        active=active,
        poll=view.poll,
        stats=view.url("/api/stats"),
        home=view.url("/"),
        nav=nav,
        find=view.url("/jobs"),
        namespace=view.namespace,
        mode=mode,
        notes=notes,
        body=body,
        version=__version__,
        now=when(view.now, view.now),
    )


def job_link(view: View, jid: object, body: Safe) -> Safe:
    """``body`` as a link to the job's page, when ``jid`` can be a jid (any other value stays text)."""
    if not isinstance(jid, str) or not NAME_RE.fullmatch(jid):
        return body
    return tag('<a href="$href">$body</a>', href=view.url(f"/jobs/{jid}"), body=body)


def table(head: Sequence[str], rows: Sequence[Safe], empty: str, css: str = "") -> Safe:
    if not rows:
        return tag('<p class="empty">$text</p>', text=empty)
    cells = join(tag("<th>$h</th>", h=h) for h in head)
    return tag(
        '<table class="$css"><thead><tr>$cells</tr></thead><tbody>$rows</tbody></table>',
        css=css,
        cells=cells,
        rows=join(rows),
    )


def card(label: str, value: int, key: str, href: str, css: str = "") -> Safe:
    return tag(
        '<a class="card $css" href="$href"><span class="value" data-stat="$key">$value</span>'
        '<span class="label">$label</span></a>',
        css=css,
        href=href,
        key=key,
        value=number(value),
        label=label,
    )
