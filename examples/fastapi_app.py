"""A FastAPI app that enqueues a welcome email for every signup::

    pip install 'natskiq[fastapi]'
    NATSKIQ_URL=nats://127.0.0.1:4222 uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com"}'

The route answers 202 with the jid as soon as JetStream has stored the job;
a ``natskiq worker --app examples.workers`` sends the email. ``GET
/signup/{jid}`` answers how far that job has got (``curl localhost:8000/signup/JID``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

import natskiq
from examples.workers import SendEmail


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One connection for the app's life ($NATSKIQ_URL, $NATSKIQ_NAMESPACE);
    # while open it is the default client that perform_async uses.
    async with natskiq.connect() as client:
        app.state.natskiq = client
        yield


app = FastAPI(lifespan=lifespan)


class Signup(BaseModel):
    email: str


@app.post("/signup", status_code=202)
async def signup(body: Signup) -> dict[str, str]:
    if "@" not in body.email:
        raise HTTPException(400, "not an email address")
    jid = await SendEmail.perform_async(body.email, "Welcome aboard")
    return {"jid": jid}


@app.get("/signup/{jid}")
async def signup_status(jid: str, request: Request) -> dict[str, object]:
    try:
        status = await request.app.state.natskiq.job(jid).status()  # from the job's events
    except (natskiq.ConfigError, natskiq.NotFound):
        raise HTTPException(404, "no such signup") from None
    return {"jid": jid, "state": status.state, "finished": status.finished}
