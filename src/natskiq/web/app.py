"""The dashboard as an ASGI application (:func:`create_app`): its routes.

:func:`create_app` builds a Starlette app over :mod:`natskiq.api`: its
:class:`Endpoints` read what a page shows when the page is asked for (one
job's page: its status through :func:`natskiq.api.job`, its kept result
from the results bucket), render it on the server
(:mod:`natskiq.web.pages`), and turn each form a page posts into one
``api`` call per job (replay, run now, delete), which keeps the api's
guarantee that a job is stored again before its old copy goes. Every POST
is checked for its CSRF token first and refused in read-only mode
(:meth:`~natskiq.web.dashboard.Dashboard.form`). ``GET /api/stats`` answers
the totals as JSON, which the dashboard's script polls for its live charts.
The state every route shares (the client, the modes, the frame of a
response) is :mod:`natskiq.web.dashboard`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from natskiq import api
from natskiq.enqueue.client import Client
from natskiq.errors import ConfigError, NatskiqError, NotFound
from natskiq.job import NAME_RE
from natskiq.status.results import read_result
from natskiq.web import batchpages, jobpage, listing, pages
from natskiq.web.actions import apply, entries_at, filter_of, valid_name, where_of
from natskiq.web.dashboard import Dashboard
from natskiq.web.security import Auth, AuthMiddleware, Csrf, SecurityHeaders

PER_PAGE = 25
MAX_PAGE = 400  # 10,000 jobs: the failed set's default size
HISTORY_DAYS = 7
MAX_PAUSE = 366 * 86400  # seconds a pause from the dashboard may last at most (until resumed: no end)
SETS: dict[str, api.Kind] = {"/scheduled": "scheduled", "/retries": "retry", "/failed": "failed"}


@attrs.define
class Endpoints:
    """The endpoint of every route: read through the api and render a page, or carry out a form."""

    dash: Dashboard

    # -- pages -------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        client = await self.dash.client()
        stats, queues, nodes = await api.stats(client), await api.queues(client), await api.nodes(client)
        history = await _history(client)
        return self.dash.page(request, lambda view: pages.dashboard(view, stats, queues, nodes, history))

    async def stats(self, request: Request) -> Response:
        client = await self.dash.client()
        stats, queues, nodes = await api.stats(client), await api.queues(client), await api.nodes(client)
        master = await api.master(client)
        body = {
            **stats.to_dict(),
            "at": time.time(),
            "nodes": len(nodes),
            "master": master.get("node") if master else None,
            "busy": sum(int(n.get("busy", 0)) for n in nodes),
            "concurrency": sum(int(n.get("concurrency", 0)) for n in nodes),
            "queues": [q.to_dict() for q in queues],
            "today": dict(
                zip(("day", "processed", "failed"), (await _history(client, days=1))[0], strict=True)
            ),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def busy(self, request: Request) -> Response:
        client = await self.dash.client()
        nodes, masters = await api.nodes(client), await api.masters(client)
        return self.dash.page(request, lambda view: pages.busy(view, nodes, masters))

    async def queues(self, request: Request) -> Response:
        infos = await api.queues(await self.dash.client())
        return self.dash.page(request, lambda view: pages.queues(view, infos))

    async def queue(self, request: Request) -> Response:
        client, name = await self.dash.client(), request.path_params["name"]
        info = await api.queue_info(client, valid_name("queue", name))
        page = _page(request)
        found = await api.find(client, "queued", api.Filter(queue=name), limit=page * PER_PAGE + 1)
        shown, more = found[(page - 1) * PER_PAGE : page * PER_PAGE], len(found) > page * PER_PAGE
        return self.dash.page(request, lambda view: pages.queue(view, info, shown, page, more))

    def job_set(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        """The page of one set (scheduled, retries, failed)."""

        async def endpoint(request: Request) -> Response:
            return await self._job_set(request, path)

        return endpoint

    async def _job_set(self, request: Request, path: str) -> Response:
        client, kind = await self.dash.client(), SETS[path]
        where = where_of(request.query_params)
        page = _page(request)
        found = await api.find(client, kind, filter_of(where), limit=page * PER_PAGE + 1)
        shown, more = found[(page - 1) * PER_PAGE : page * PER_PAGE], len(found) > page * PER_PAGE
        names = await api.queue_names(client)
        return self.dash.page(
            request, lambda view: pages.job_set(view, kind, path, shown, where, names, page, more)
        )

    async def job(self, request: Request) -> Response:
        """One job by jid: its status and timeline (404 without events) and its kept result."""
        client, jid = await self.dash.client(), valid_name("jid", request.path_params["jid"])
        status = await api.job(client, jid)
        stored = await read_result(client.js, client.names, jid)
        return self.dash.page(request, lambda view: jobpage.job(view, status, stored))

    async def find_job(self, request: Request) -> Response:
        """The "Find a job by jid" box (a GET form): on to that job's page."""
        jid = request.query_params.get("jid", "").strip()
        if not jid:
            raise HTTPException(400, "enter a jid to find its job")
        if not NAME_RE.fullmatch(jid):
            raise HTTPException(400, f"{jid[:100]!r} is not a jid: a jid is 1-64 letters, digits, '_' or '-'")
        return _back(request, f"/jobs/{jid}", {})

    async def periodic(self, request: Request) -> Response:
        definitions = await api.periodic_jobs(await self.dash.client())
        return self.dash.page(request, lambda view: pages.periodic(view, definitions))

    async def batches(self, request: Request) -> Response:
        statuses = await api.batches(await self.dash.client())
        return self.dash.page(request, lambda view: batchpages.batches(view, statuses))

    async def batch(self, request: Request) -> Response:
        """One batch by id: its progress bar, counts, callbacks and failed jobs (404 if unknown)."""
        client, bid = await self.dash.client(), valid_name("batch", request.path_params["bid"])
        status = await api.batch(client, bid)
        return self.dash.page(request, lambda view: batchpages.batch(view, status))

    # -- actions ---------------------------------------------------------------------------

    def act_on_set(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        """The actions of one set's page."""

        async def endpoint(request: Request) -> Response:
            form = await self.dash.form(request)
            where = where_of({k: v[0] for k, v in form.items() if v})
            return await self._act(request, SETS[path], path, form, where)

        return endpoint

    async def act_on_queue(self, request: Request) -> Response:
        form = await self.dash.form(request)
        client, name = await self.dash.client(), valid_name("queue", request.path_params["name"])
        path = f"/queues/{name}"
        if _first(form, "action") in ("clear", "delete_all"):
            cleared = await api.clear(client, name)
            return _back(request, path, {}, done="clear", n=cleared)
        if _first(form, "action") in ("pause", "resume"):
            return await self._pause_or_resume(request, client, name, form)
        return await self._act(request, "queued", path, form, {})

    async def _pause_or_resume(
        self, request: Request, client: Client, name: str, form: dict[str, list[str]]
    ) -> Response:
        """Pause the queue (for the seconds the form says, or until resumed), or resume it."""
        path, action, seconds = f"/queues/{name}", _first(form, "action"), _first(form, "for").strip()
        if seconds and not (seconds.isdigit() and 0 < int(seconds) <= MAX_PAUSE):
            raise HTTPException(400, f"cannot pause for {seconds[:20]!r} seconds")
        try:
            if action == "pause":
                await api.pause(client, name, timedelta(seconds=int(seconds)) if seconds else None)
            else:
                await api.resume(client, name)
        except NotFound:
            return _back(request, path, {}, problem="notfound")
        return _back(request, path, {}, done=action, n=1)

    async def _act(
        self, request: Request, kind: api.Kind, path: str, form: dict[str, list[str]], where: dict[str, str]
    ) -> Response:
        """Carry out a row button, the selection, or everything matching the filter."""
        client = await self.dash.client()
        row, action = _first(form, "row"), _first(form, "action")
        row_action, _, item = row.partition(":")
        everything = not row and action.endswith("_all")
        action = row_action if row else action.removesuffix("_all")
        if action not in {a.name for a in listing.ACTIONS[kind]}:
            raise HTTPException(400, f"{kind} jobs cannot be {action or 'acted on'!r}")
        if row:
            entries = await entries_at(client, kind, [item])
        elif everything:
            entries = await api.find(client, kind, filter_of(where))
        else:
            entries = await entries_at(client, kind, form.get("item", []))
        if not entries:
            return _back(request, path, where, problem="notfound")
        done = await apply(client, action, entries)
        problem = "invalid" if done < len(entries) else None
        return _back(request, path, where, done=action, n=done, problem=problem)

    async def act_on_periodic(self, request: Request) -> Response:
        form = await self.dash.form(request)
        try:
            await api.remove_periodic(await self.dash.client(), _first(form, "name"))
        except NotFound:
            return _back(request, "/periodic", {}, problem="notfound")
        return _back(request, "/periodic", {}, done="remove", n=1)

    async def command_node(self, request: Request) -> Response:
        form = await self.dash.form(request)
        node = valid_name("node", _first(form, "node").strip())
        verb = _first(form, "verb")
        if verb not in ("quiet", "stop"):
            return _back(request, "/busy", {}, problem="notfound")
        try:
            await api.command(await self.dash.client(), node, "quiet" if verb == "quiet" else "stop")
        except NotFound:
            return _back(request, "/busy", {}, problem="notfound")
        return _back(request, "/busy", {}, done=verb, n=1)

    async def cancel(self, request: Request) -> Response:
        form = await self.dash.form(request)
        jid = valid_name("jid", _first(form, "jid").strip())
        try:
            result = await api.cancel(await self.dash.client(), jid)
        except NotFound:
            return _back(request, "/busy", {}, problem="notfound")
        return _back(
            request, "/busy", {}, done="cancel", n=len(result["deleted"]) + len(result["running_on"])
        )


# -- helpers ----------------------------------------------------------------------------


def _first(form: Mapping[str, list[str]], key: str) -> str:
    return (form.get(key) or [""])[0]


def _page(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return min(MAX_PAGE, max(1, int(raw))) if raw.isdigit() else 1


def _back(request: Request, path: str, where: Mapping[str, str], **outcome: object) -> Response:
    """Back to the page (and filter) the form came from, saying what happened."""
    query = [(k, v) for k, v in where.items() if v]
    query += [(k, str(v)) for k, v in outcome.items() if v is not None]
    base = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{base}{path}" + (f"?{urlencode(query)}" if query else ""), status_code=303)


async def _history(client: Client, days: int = HISTORY_DAYS) -> list[tuple[str, int, int]]:
    """Processed and failed counts of the last few UTC days, newest first."""
    now, out = time.time(), []
    for back in range(days):
        day = time.strftime("%Y-%m-%d", time.gmtime(now - back * 86400))
        out.append(
            (day, await api.counter(client, "processed", day), await api.counter(client, "failed", day))
        )
    return out


# -- the app ------------------------------------------------------------------------------------


def create_app(
    client_or_url: Client | str | None = None,
    *,
    namespace: str | None = None,
    auth: str | Auth | None = None,
    read_only: bool = False,
    poll_interval: float = 3.0,
    secret_key: bytes | None = None,
    nats_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """The dashboard as an ASGI app, to serve on its own or mount in another app.

    ::

        app.mount("/natskiq", natskiq.web.create_app(client, auth="admin:s3cret"))

    Args:
        client_or_url: an open :class:`~natskiq.enqueue.client.Client` (the caller
            keeps it open while the app serves), or a NATS URL (or None for
            ``$NATSKIQ_URL``): then the app connects when it starts, or on
            its first request when mounted in another app.
        namespace: with a URL, the namespace to show (default
            ``$NATSKIQ_NAMESPACE`` or ``natskiq``).
        auth: ``"user:password"`` for HTTP basic auth, ``"token:SECRET"``
            for a bearer token (or ``?token=SECRET`` once); None: no login.
        read_only: show everything, change nothing (no buttons; POST is 403).
        poll_interval: seconds between the dashboard's live updates.
        secret_key: signs CSRF tokens and the token-auth cookie; a random
            key per app by default (set one when several processes serve it).
        nats_options: with a URL, passed to :func:`natskiq.connect`.

    Raises:
        ConfigError: a malformed ``auth``, or a namespace that differs from the client's.
    """
    if isinstance(client_or_url, Client) and namespace not in (None, client_or_url.namespace):
        raise ConfigError(f"the client's namespace is {client_or_url.namespace!r}, not {namespace!r}")
    if not poll_interval > 0:
        raise ConfigError(f"poll_interval must be positive, not {poll_interval!r}")
    key = secret_key or secrets.token_bytes(32)
    dash = Dashboard(
        source=client_or_url, namespace=namespace, nats_options=dict(nats_options or {}),
        read_only=read_only, poll=poll_interval, csrf=Csrf(key),
    )  # fmt: skip
    endpoints = Endpoints(dash)
    routes = [
        Route("/", endpoints.dashboard, name="dashboard"),
        Route("/api/stats", endpoints.stats, name="stats"),
        Route("/busy", endpoints.busy, name="busy"),
        Route("/busy/cancel", endpoints.cancel, methods=["POST"]),
        Route("/busy/node", endpoints.command_node, methods=["POST"]),
        Route("/queues", endpoints.queues, name="queues"),
        Route("/queues/{name}", endpoints.queue, name="queue"),
        Route("/queues/{name}", endpoints.act_on_queue, methods=["POST"]),
        *(Route(path, endpoints.job_set(path)) for path in SETS),
        *(Route(path, endpoints.act_on_set(path), methods=["POST"]) for path in SETS),
        Route("/jobs", endpoints.find_job, name="find_job"),
        Route("/jobs/{jid}", endpoints.job, name="job"),
        Route("/periodic", endpoints.periodic, name="periodic"),
        Route("/batches", endpoints.batches, name="batches"),
        Route("/batches/{bid}", endpoints.batch, name="batch"),
        Route("/periodic", endpoints.act_on_periodic, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("natskiq.web", "static")]), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if auth is not None:
        parsed = auth if isinstance(auth, Auth) else Auth.parse(auth)
        middleware.append(Middleware(AuthMiddleware, auth=parsed, key=key))
    handlers: dict[Any, Any] = dict.fromkeys(
        (HTTPException, NatskiqError, NatsError, JSError, TimeoutError), dash.problem
    )
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=dash.lifespan)
    app.state.natskiq = dash
    return app
