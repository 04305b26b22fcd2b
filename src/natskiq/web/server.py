"""``natskiq web``: connect, build the dashboard and serve it with uvicorn.

:func:`serve` is what the command runs; :func:`serve_app` serves any ASGI
app on a socket bound before it reports its URL (so the URL answers as soon
as it is handed out), and stops gracefully when cancelled. Both listen on
127.0.0.1 unless told otherwise, and warn when exposed without ``--auth``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from natskiq.enqueue.client import connect
from natskiq.errors import ConfigError
from natskiq.web.app import create_app
from natskiq.web.security import Auth

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878


async def serve(
    url: str | None = None,
    namespace: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    auth: str | None = None,
    read_only: bool = False,
    nats_options: Mapping[str, Any] | None = None,
    *,
    poll_interval: float = 3.0,
    on_ready: Callable[[str], object] | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Connect to NATS and serve the dashboard until cancelled or interrupted (``natskiq web``).

    Args:
        url: NATS URL(s), comma-separated (default ``$NATSKIQ_URL``).
        namespace: default ``$NATSKIQ_NAMESPACE`` or ``natskiq``.
        host: the address to listen on; 127.0.0.1 unless you mean to expose it.
        port: the port to listen on (0: any free one).
        auth: ``"user:password"`` or ``"token:SECRET"`` (see :func:`create_app`).
        read_only: no actions.
        nats_options: passed to :func:`natskiq.connect` (credentials, TLS).
        poll_interval: seconds between the dashboard's live updates.
        on_ready: called with the dashboard's URL once it listens.
        task_status: started with that URL (for ``await tg.start(serve, ...)``).

    Raises:
        ConfigError: NATS cannot be reached, or a bad ``auth``.
    """
    parsed = Auth.parse(auth) if auth is not None else None
    client = await connect(url, namespace=namespace, **dict(nats_options or {}))
    try:
        app = create_app(client, auth=parsed, read_only=read_only, poll_interval=poll_interval)
        if parsed is None and not _is_loopback(host):
            log.warning(
                "the dashboard listens on %s without --auth: anyone who reaches it can act on jobs", host
            )
        await serve_app(app, host=host, port=port, on_ready=on_ready, task_status=task_status)
    finally:
        # Closing drains the connection: let it finish even when we were cancelled.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await client.close()


async def serve_app(
    app: ASGIApp,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], object] | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app with uvicorn until cancelled (or, in the main thread, SIGINT/SIGTERM).

    The socket is bound before ``task_status.started(url)``, so the URL
    answers as soon as it is handed out. Cancelling asks uvicorn to finish
    the requests in flight and close, as a signal would.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound}/"
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    with sock:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with anyio.CancelScope(shield=True):
                    await server.serve(sockets=[sock])
                tg.cancel_scope.cancel()  # uvicorn stopped by itself (a signal)

            tg.start_soon(run)
            log.info("natskiq dashboard at %s", url)
            if on_ready is not None:
                on_ready(url)
            task_status.started(url)
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True  # uvicorn's own graceful stop; run() then returns


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
