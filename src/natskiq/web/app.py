"""The dashboard as an ASGI application (:func:`create_app`).

:func:`create_app` builds a Starlette app over :mod:`natskiq.api`: it reads
what a page shows when the page is asked for, renders it on the server
(:mod:`natskiq.web.pages`), and turns each form a page posts into one
``api`` call per job (replay, run now, delete), which keeps the api's
guarantee that a job is stored again before its old copy goes. Every POST is
checked for its CSRF token first (:mod:`natskiq.web.security`) and refused in
read-only mode. ``GET /api/stats`` answers the totals as JSON, which the
dashboard's script polls for its live charts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from natskiq import api
from natskiq.enqueue.client import Client, connect
from natskiq.errors import ConfigError, NatskiqError, NotConnected, NotFound
from natskiq.web import listing, pages
from natskiq.web.actions import apply, entries_at, filter_of, valid_name, where_of
from natskiq.web.markup import View
from natskiq.web.security import CSRF_COOKIE, Auth, AuthMiddleware, Csrf, SecurityHeaders, set_cookie

log = logging.getLogger(__name__)

PER_PAGE = 25
MAX_PAGE = 400  # 10,000 jobs: the failed set's default size
MAX_FORM = 1024 * 1024
HISTORY_DAYS = 7
SETS: dict[str, api.Kind] = {"/scheduled": "scheduled", "/retries": "retry", "/failed": "failed"}
DONE = {
    "replay": "Replayed {n} job(s): they are back in their queues.",
    "run_now": "Moved {n} job(s) to their queues.",
    "delete": "Deleted {n} job(s).",
    "clear": "Cleared {n} ready job(s) from the queue.",
    "remove": "Removed the periodic job.",
    "quiet": "Told the node to go quiet: it takes no new jobs; running ones finish.",
    "stop": "Told the node to stop: it finishes or hands back its jobs and exits.",
    "cancel": "Cancelled the job ({n} place(s): deleted where it waited, stopped where it ran).",
}
PROBLEMS = {
    "notfound": "Nothing matched: the job may have run, moved or been deleted already.",
    "invalid": "Some entries could not be acted on (an invalid payload can only be deleted).",
}


@attrs.define
class Dashboard:
    """The app's state and handlers: where its client comes from, and its modes."""

    source: Client | str | None
    namespace: str | None
    nats_options: dict[str, Any]
    read_only: bool
    poll: float
    csrf: Csrf
    _client: Client | None = attrs.field(init=False, default=None)
    _owned: bool = attrs.field(init=False, default=False)
    _lock: anyio.Lock = attrs.field(init=False, factory=anyio.Lock)

    # -- the connection ----------------------------------------------------------

    async def client(self) -> Client:
        """The client: the one given, or one of our own opened on first use."""
        if isinstance(self.source, Client):
            return self.source
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await connect(self.source, namespace=self.namespace, **self.nats_options)
                except ConfigError as exc:  # cannot connect (yet): say so, try again next time
                    raise HTTPException(503, str(exc)) from exc
                self._owned = True
            return self._client

    async def close(self) -> None:
        """Close the client if it is ours (shielded: draining must finish)."""
        if self._owned and self._client is not None:
            client, self._client = self._client, None
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await client.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Run only when the app is served on its own (a host app that mounts
        # it runs no lifespan of ours): the client connects on first use
        # either way, and NATS being down at start-up is a 503, not a crash.
        try:
            yield
        finally:
            await self.close()

    # -- rendering -----------------------------------------------------------------

    def view(self, request: Request, csrf: str) -> View:
        done, n = request.query_params.get("done"), request.query_params.get("n", "0")
        flash = DONE[done].format(n=int(n) if n.isdigit() else 0) if done in DONE else None
        error = PROBLEMS.get(request.query_params.get("problem", ""))
        client = self.source if isinstance(self.source, Client) else self._client
        return View(
            base=str(request.scope.get("root_path", "")).rstrip("/"), csrf=csrf, read_only=self.read_only,
            namespace=client.namespace if client else (self.namespace or ""), poll=self.poll,
            now=time.time(), flash=flash, error=error,
        )  # fmt: skip

    def page(self, request: Request, render: Callable[[View], str], status: int = 200) -> Response:
        token, new = self.csrf.token_for(request)
        response = HTMLResponse(render(self.view(request, token)), status_code=status)
        response.headers["Cache-Control"] = "no-store"
        if new:
            set_cookie(response, request, CSRF_COOKIE, token)
        return response

    async def problem(self, request: Request, exc: Exception) -> Response:
        """Errors as a page (or JSON for the API): never a stack trace."""
        status, message = 500, "internal error"
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
        elif isinstance(exc, NotFound):
            status, message = 404, str(exc)
        elif isinstance(exc, NotConnected | NatsError | JSError | TimeoutError):
            status, message = 503, f"NATS is unreachable or not answering ({type(exc).__name__})"
        elif isinstance(exc, NatskiqError):
            status, message = 400, str(exc)
        if request.url.path.endswith("/api/stats"):
            return JSONResponse({"error": message}, status_code=status)
        return self.page(request, lambda view: pages.problem(view, status, message), status)

    # -- pages -------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        client = await self.client()
        stats, queues, nodes = await api.stats(client), await api.queues(client), await api.nodes(client)
        history = await _history(client)
        return self.page(request, lambda view: pages.dashboard(view, stats, queues, nodes, history))

    async def stats(self, request: Request) -> Response:
        client = await self.client()
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
        client = await self.client()
        nodes, masters = await api.nodes(client), await api.masters(client)
        return self.page(request, lambda view: pages.busy(view, nodes, masters))

    async def queues(self, request: Request) -> Response:
        infos = await api.queues(await self.client())
        return self.page(request, lambda view: pages.queues(view, infos))

    async def queue(self, request: Request) -> Response:
        client, name = await self.client(), request.path_params["name"]
        info = await api.queue_info(client, valid_name("queue", name))
        page = _page(request)
        found = await api.find(client, "queued", api.Filter(queue=name), limit=page * PER_PAGE + 1)
        shown, more = found[(page - 1) * PER_PAGE : page * PER_PAGE], len(found) > page * PER_PAGE
        return self.page(request, lambda view: pages.queue(view, info, shown, page, more))

    def job_set(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        """The page of one set (scheduled, retries, failed)."""

        async def endpoint(request: Request) -> Response:
            return await self._job_set(request, path)

        return endpoint

    async def _job_set(self, request: Request, path: str) -> Response:
        client, kind = await self.client(), SETS[path]
        where = where_of(request.query_params)
        page = _page(request)
        found = await api.find(client, kind, filter_of(where), limit=page * PER_PAGE + 1)
        shown, more = found[(page - 1) * PER_PAGE : page * PER_PAGE], len(found) > page * PER_PAGE
        names = await api.queue_names(client)
        return self.page(
            request, lambda view: pages.job_set(view, kind, path, shown, where, names, page, more)
        )

    async def periodic(self, request: Request) -> Response:
        definitions = await api.periodic_jobs(await self.client())
        return self.page(request, lambda view: pages.periodic(view, definitions))

    # -- actions ---------------------------------------------------------------------------

    async def form(self, request: Request) -> dict[str, list[str]]:
        """The POSTed form, once it has passed the read-only and CSRF checks."""
        if self.read_only:
            raise HTTPException(403, "the dashboard is read-only")
        if (
            request.headers.get("content-type", "").split(";")[0].strip()
            != "application/x-www-form-urlencoded"
        ):
            raise HTTPException(415, "send a form (application/x-www-form-urlencoded)")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                raise HTTPException(413, "form too large")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        refusal = self.csrf.check(request, form)
        if refusal:
            raise HTTPException(403, refusal)
        return form

    def act_on_set(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        """The actions of one set's page."""

        async def endpoint(request: Request) -> Response:
            form = await self.form(request)
            where = where_of({k: v[0] for k, v in form.items() if v})
            return await self._act(request, SETS[path], path, form, where)

        return endpoint

    async def act_on_queue(self, request: Request) -> Response:
        form = await self.form(request)
        client, name = await self.client(), valid_name("queue", request.path_params["name"])
        path = f"/queues/{name}"
        if _first(form, "action") in ("clear", "delete_all"):
            cleared = await api.clear(client, name)
            return _back(request, path, {}, done="clear", n=cleared)
        return await self._act(request, "queued", path, form, {})

    async def _act(
        self, request: Request, kind: api.Kind, path: str, form: dict[str, list[str]], where: dict[str, str]
    ) -> Response:
        """Carry out a row button, the selection, or everything matching the filter."""
        client = await self.client()
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
        form = await self.form(request)
        try:
            await api.remove_periodic(await self.client(), _first(form, "name"))
        except NotFound:
            return _back(request, "/periodic", {}, problem="notfound")
        return _back(request, "/periodic", {}, done="remove", n=1)

    async def command_node(self, request: Request) -> Response:
        form = await self.form(request)
        node = valid_name("node", _first(form, "node").strip())
        verb = _first(form, "verb")
        if verb not in ("quiet", "stop"):
            return _back(request, "/busy", {}, problem="notfound")
        try:
            await api.command(await self.client(), node, "quiet" if verb == "quiet" else "stop")
        except NotFound:
            return _back(request, "/busy", {}, problem="notfound")
        return _back(request, "/busy", {}, done=verb, n=1)

    async def cancel(self, request: Request) -> Response:
        form = await self.form(request)
        jid = valid_name("jid", _first(form, "jid").strip())
        try:
            result = await api.cancel(await self.client(), jid)
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
    return RedirectResponse(f"{base}{path}?{urlencode(query)}", status_code=303)


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
    routes = [
        Route("/", dash.dashboard, name="dashboard"),
        Route("/api/stats", dash.stats, name="stats"),
        Route("/busy", dash.busy, name="busy"),
        Route("/busy/cancel", dash.cancel, methods=["POST"]),
        Route("/busy/node", dash.command_node, methods=["POST"]),
        Route("/queues", dash.queues, name="queues"),
        Route("/queues/{name}", dash.queue, name="queue"),
        Route("/queues/{name}", dash.act_on_queue, methods=["POST"]),
        *(Route(path, dash.job_set(path)) for path in SETS),
        *(Route(path, dash.act_on_set(path), methods=["POST"]) for path in SETS),
        Route("/periodic", dash.periodic, name="periodic"),
        Route("/periodic", dash.act_on_periodic, methods=["POST"]),
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
