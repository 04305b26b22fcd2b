"""Middleware: code around every enqueue (client side) and every run (server side).

Client middleware sees each job before it is stored (``perform_*``,
``Client.enqueue``, ``perform_bulk``, and natskiq.testing's inline and fake
modes) and may change it with :func:`attrs.evolve` (add ``headers``: an
object of JSON values carried in the envelope for server middleware and
``self.job.headers``, never passed to ``perform``; tag a tenant in
``kwargs``; change ``args`` or ``queue``) or veto it by returning without
calling ``call_next``::

    @natskiq.client_middleware
    async def tag_tenant(job: natskiq.Job, call_next):
        headers = {**(job.headers or {}), "tenant": current_tenant()}
        return await call_next(attrs.evolve(job, headers=headers))

    @natskiq.client_middleware
    async def no_spam(job: natskiq.Job, call_next):
        if job.cls == "app.SendEmail" and is_blocked(job.args[0]):
            return None  # vetoed: nothing is stored, perform_async returns ""
        return await call_next(job)

``call_next`` returns the job as stored (None if something further in
was vetoed, or was a duplicate of a pending unique job); a changed job's
arguments and headers are checked again before it is stored. For
``perform_bulk``, ``call_next`` returns once the job is accepted into the
batch, which is stored after every job has been through the chain.

Server middleware wraps each run on a node, with the worker instance::

    @natskiq.server_middleware
    async def timing(worker: natskiq.Worker, job: natskiq.Job, call_next):
        started = time.perf_counter()
        try:
            return await call_next()
        finally:
            statsd.timing(job.cls, time.perf_counter() - started)

Middleware registered with the decorators applies to every client and node
in the process (a worker registers it by importing the module that defines
it with ``--app``); ``Client(middleware=[...])`` (or ``connect(...,
middleware=[...])``) adds client middleware for one client, after the
process-wide chain, and ``Node.middleware`` is a node's server chain. The
first registered runs outermost. natskiq's own per-job log lines are server
middleware too (:func:`log_jobs`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from natskiq.job import Job
from natskiq.worker import Worker

log = logging.getLogger("natskiq.run.node")

ClientNext = Callable[[Job], Awaitable[Job | None]]
ClientMiddleware = Callable[[Job, ClientNext], Awaitable[Job | None]]
ServerNext = Callable[[], Awaitable[Any]]
ServerMiddleware = Callable[[Worker, Job, ServerNext], Awaitable[Any]]

_client: list[ClientMiddleware] = []
_server: list[ServerMiddleware] = []


def client_middleware(func: ClientMiddleware) -> ClientMiddleware:
    """Register client middleware for every client in this process (a decorator)."""
    _client.append(func)
    return func


def server_middleware(func: ServerMiddleware) -> ServerMiddleware:
    """Register server middleware for every node in this process (a decorator)."""
    _server.append(func)
    return func


def client_chain(extra: Sequence[ClientMiddleware] = ()) -> list[ClientMiddleware]:
    """The process-wide client middleware, then ``extra`` (a client's own), outermost first."""
    return [*_client, *extra]


def server_chain(extra: Sequence[ServerMiddleware] = ()) -> list[ServerMiddleware]:
    return [log_jobs, *_server, *extra]


async def run_client(chain: Sequence[ClientMiddleware], job: Job, store: ClientNext) -> Job | None:
    """Pass ``job`` through the client chain, then to ``store``; None if vetoed."""

    async def step(index: int, current: Job) -> Job | None:
        if index == len(chain):
            return await store(current)
        return await chain[index](current, lambda changed: step(index + 1, changed))

    return await step(0, job)


async def run_server(chain: Sequence[ServerMiddleware], worker: Worker, job: Job, perform: ServerNext) -> Any:
    """Run ``perform`` inside the server chain."""
    call_next = perform
    for middleware in reversed(chain):
        call_next = functools.partial(middleware, worker, job, call_next)
    return await call_next()


async def log_jobs(worker: Worker, job: Job, call_next: ServerNext) -> Any:
    """One INFO line when a job starts and one when it ends, with jid, class,
    queue and duration (``--log-level warning`` silences them)."""
    if not log.isEnabledFor(logging.INFO):
        return await call_next()
    started = time.perf_counter()  # a duration, not a deadline
    _info("start jid=%s class=%s queue=%s", job.jid, job.cls, job.queue)
    try:
        result = await call_next()
    except Exception as exc:
        duration = time.perf_counter() - started
        _info(
            "fail jid=%s class=%s queue=%s duration=%.3fs error=%r",
            job.jid,
            job.cls,
            job.queue,
            duration,
            exc,
        )
        raise
    duration = time.perf_counter() - started
    _info("done jid=%s class=%s queue=%s duration=%.3fs", job.jid, job.cls, job.queue, duration)
    return result


_ORIGIN = log_jobs.__code__


def _info(msg: str, *args: Any) -> None:
    """``log.info`` for the per-job lines, once :func:`log_jobs` has checked the level.

    ``Logger.info`` walks the stack to find its caller for every record; these
    records always come from :func:`log_jobs`, so they name it directly,
    which saves a noticeable share of a short job's cost. Handlers and
    filters see the records as usual.
    """
    record = log.makeRecord(
        log.name, logging.INFO, _ORIGIN.co_filename, _ORIGIN.co_firstlineno, msg, args, None
    )
    record.funcName = "log_jobs"
    log.handle(record)
