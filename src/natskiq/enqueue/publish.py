"""Stage 1, storing: one encoded envelope published into its stream, and its PubAck awaited.

:class:`~natskiq.enqueue.client.Client` hands :func:`store` the connection, the
subject, the encoded envelope and its headers (``Nats-Msg-Id``, and the
``Nats-Schedule`` ones of a delayed job); when it returns, JetStream has
stored the message. A publish that failed goes to :func:`store_retrying`,
which sends it again while the failure is :func:`retryable` (a server or
stream leader briefly away), for up to the client's ``publish_timeout``:
the same ``Nats-Msg-Id`` each time, so the stream's duplicate window keeps
one copy. What is not stored by then raises
:class:`~natskiq.errors.EnqueueError`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from nats.aio.client import Client as NATS
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NoStreamResponseError
from nats.js.errors import Error as JSError

from natskiq.errors import EnqueueError
from natskiq.topology import Names

if TYPE_CHECKING:
    from natskiq.enqueue.client import Client

# These are the client's messages: they log under its name, the one users configure.
log = logging.getLogger("natskiq.enqueue.client")

PUBLISH_TIMEOUT = 5.0  # seconds one publish waits for its PubAck (nats-py's JetStream default)


def rfc3339(epoch: float) -> str:
    """An epoch time as the RFC 3339 UTC form ``Nats-Schedule`` wants."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def addressed(
    names: Names, jid: str, queue: str, at: float | None, attempt: int | str
) -> tuple[str, dict[str, str]]:
    """The subject and headers of one job's publish: ``Nats-Msg-Id: <jid>:<attempt>``, and for a
    job due ``at`` a message schedule on ``<ns>.scheduled.<queue>.<jid>`` that targets the queue."""
    headers = {"Nats-Msg-Id": f"{jid}:{attempt}"}
    subject = names.enqueue_subject(queue)
    if at is not None:
        headers["Nats-Schedule"] = f"@at {rfc3339(at)}"
        headers["Nats-Schedule-Target"] = subject
        subject = names.scheduled_subject(queue, jid)
    return subject, headers


async def store(nc: NATS, subject: str, payload: bytes, headers: dict[str, str]) -> None:
    """``js.publish`` without building the PubAck, which natskiq never reads.

    Raises the errors ``js.publish`` raises: NoStreamResponseError when no
    stream listens, APIError when JetStream refuses the message.
    """
    try:
        msg = await nc.request(subject, payload, timeout=PUBLISH_TIMEOUT, headers=headers)
    except NoRespondersError:
        raise NoStreamResponseError from None
    if b'"error"' in msg.data:
        error = json.loads(msg.data).get("error")
        if error is not None:
            raise APIError.from_error(error)


async def store_retrying(
    client: Client, jid: str, subject: str, payload: bytes, headers: dict[str, str], failure: Exception
) -> None:
    """Publish again until JetStream acknowledges, riding out a failover.

    While a server restarts or a stream elects a new leader, publishes
    time out or find no responders; the same ``Nats-Msg-Id`` is sent
    again (the duplicate window makes that safe) for up to
    ``publish_timeout`` seconds after the first failure.
    """
    deadline = anyio.current_time() + client.publish_timeout
    pause = 0.05
    while True:
        if not retryable(failure) or anyio.current_time() + pause > deadline:
            raise EnqueueError(f"job {jid} was not stored: {failure!r}") from failure
        log.debug("publish of %s failed (%r); retrying", jid, failure)
        await anyio.sleep(pause)
        pause = min(1.0, pause * 2)
        try:
            # A copy each time: nats-py adds headers to the dict it is given.
            await store(client.nc, subject, payload, dict(headers))
            return
        except (NatsError, JSError, TimeoutError) as exc:
            failure = exc


def retryable(exc: BaseException) -> bool:
    """Errors of a server or stream leader that is briefly away, not of a bad request."""
    if isinstance(
        exc, TimeoutError | NoRespondersError | ConnectionReconnectingError | NoStreamResponseError
    ):
        return True
    return isinstance(exc, APIError) and exc.code in (503, 504)
