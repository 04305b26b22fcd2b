"""The web dashboard: the cluster at a glance, and the operator's buttons.

Like Sidekiq::Web, it is an ASGI application (Starlette, pages rendered on
the server, its small script and stylesheet shipped in this package: no CDN,
no build step) that runs on its own, ``natskiq web``, or inside another
app::

    from natskiq.web import create_app

    app.mount("/natskiq", create_app(client, auth="admin:s3cret"))

Pages: dashboard (totals, live throughput and failure charts, queues),
busy (nodes and the master), queues, scheduled, retries, failed (filter,
replay, delete; one job, a selection or all that match), periodic jobs, and
one job's page (its status, progress, kept result and timeline), which every
jid shown links to and the header's box finds by jid.
It binds to 127.0.0.1 by default; ``auth`` adds basic auth or a token,
every action carries a CSRF token, and ``read_only`` removes the actions.
Needs the ``web`` extra: ``pip install 'natskiq[web]'``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("natskiq.web needs Starlette and uvicorn: pip install 'natskiq[web]'") from exc

from natskiq.web.app import create_app
from natskiq.web.security import Auth
from natskiq.web.server import DEFAULT_HOST, DEFAULT_PORT, serve, serve_app

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Auth", "create_app", "serve", "serve_app"]
