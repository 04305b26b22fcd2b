"""The dashboard's state, shared by every route: its client, its modes, and the frame of a response.

A :class:`Dashboard` receives what :func:`~natskiq.web.app.create_app` was
given (a client or where to connect, the namespace, read-only or not, the
poll interval, the CSRF signer) and hands the routes of
:mod:`natskiq.web.app` the client (the one given, or one of its own opened
on first use and closed when the app stops), the :class:`~natskiq.web.markup.View`
a page is rendered with, the HTML response of a page or of an error
(:mod:`natskiq.web.pages`; never a stack trace), and a POSTed form. It
guarantees that a form reaches a route only once it has passed the
read-only and CSRF checks (:mod:`natskiq.web.security`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
import attrs
from nats.errors import Error as NatsError
from nats.js.errors import Error as JSError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from natskiq.enqueue.client import Client, connect
from natskiq.errors import ConfigError, NatskiqError, NotConnected, NotFound
from natskiq.web import pages
from natskiq.web.markup import View
from natskiq.web.security import CSRF_COOKIE, Csrf, set_cookie

MAX_FORM = 1024 * 1024
# What a redirect back from a form says (its ?done= and ?problem=), shown by the page it lands on.
DONE = {
    "replay": "Replayed {n} job(s): they are back in their queues.",
    "run_now": "Moved {n} job(s) to their queues.",
    "delete": "Deleted {n} job(s).",
    "clear": "Cleared {n} ready job(s) from the queue.",
    "pause": "Paused the queue: none of its jobs is dispatched until it resumes (running ones finish).",
    "resume": "Resumed the queue: its jobs are dispatched again.",
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
    """The app's state: where its client comes from, its modes, and the frame of every response."""

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

    # -- forms -----------------------------------------------------------------------------

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
