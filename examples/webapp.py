"""A Starlette app that enqueues a welcome email for every signup::

    NATSKIQ_URL=nats://127.0.0.1:4222 uvicorn examples.webapp:app
    curl -X POST localhost:8000/signup -d '{"email": "ada@example.com"}'

The request returns as soon as the job is stored; a ``natskiq worker`` sends it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import natskiq
from examples.workers import SendEmail


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # One connection for the app's life ($NATSKIQ_URL, $NATSKIQ_NAMESPACE);
    # while open it is the default client that perform_async uses.
    async with natskiq.connect():
        yield


async def signup(request: Request) -> JSONResponse:
    try:
        email = (await request.json())["email"]
    except (ValueError, KeyError, TypeError):
        email = None
    if not isinstance(email, str) or "@" not in email:
        return JSONResponse({"error": "send {'email': '...'}"}, status_code=400)
    jid = await SendEmail.perform_async(email, "Welcome aboard")
    return JSONResponse({"jid": jid}, status_code=202)


app = Starlette(routes=[Route("/signup", signup, methods=["POST"])], lifespan=lifespan)
