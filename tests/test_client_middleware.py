"""Client middleware around every enqueue: change a job, veto it, in a known order."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

import natskiq
from natskiq import api, middleware, testing

seen: list[dict[str, Any]] = []


class Tagged(natskiq.Worker, name="tests.mw.Tagged"):
    """Records what it ran with, headers included."""

    async def perform(self, n: int, tenant: str | None = None) -> None:
        seen.append({"n": n, "tenant": tenant, "headers": self.job.headers, "queue": self.job.queue})


class Record3(natskiq.Worker, name="tests.mw.Record3"):
    """Takes any string arguments."""

    async def perform(self, *args: str) -> None:
        seen.append({"args": list(args)})


@pytest.fixture(autouse=True)
def _fresh() -> None:
    seen.clear()


async def tag_tenant(job: natskiq.Job, call_next: middleware.ClientNext) -> natskiq.Job | None:
    headers = {**(job.headers or {}), "trace": "t-1"}
    return await call_next(attrs.evolve(job, kwargs={**job.kwargs, "tenant": "acme"}, headers=headers))


async def no_spam(job: natskiq.Job, call_next: middleware.ClientNext) -> natskiq.Job | None:
    if job.args and job.args[0] == 13:
        return None
    return await call_next(job)


@pytest.fixture
async def tagging_client(nats_url: str, namespace: str) -> AsyncIterator[natskiq.Client]:
    async with natskiq.connect(nats_url, namespace=namespace, middleware=[no_spam, tag_tenant]) as client:
        yield client


async def test_middleware_changes_reach_the_worker(tagging_client: natskiq.Client) -> None:
    """A kwarg and a header added by client middleware are what the worker runs with."""
    jid = await Tagged.perform_async(1)
    assert jid
    assert await testing.drain(tagging_client) == 1
    assert seen == [{"n": 1, "tenant": "acme", "headers": {"trace": "t-1"}, "queue": "default"}]


async def test_vetoed_job_is_not_stored(
    tagging_client: natskiq.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A job middleware vetoes is never stored, perform_async returns "" and a log line says so."""
    with caplog.at_level(logging.INFO, logger="natskiq.enqueue.client"):
        assert await Tagged.perform_async(13) == ""
    assert "vetoed by client middleware" in caplog.text
    assert await api.queue_names(tagging_client) == []  # not even its queue was created
    assert await Tagged.perform_async(2)
    assert (await api.queue_info(tagging_client, "default")).ready == 1
    assert await testing.drain(tagging_client) == 1
    assert [s["n"] for s in seen] == [2]


async def test_middlewares_run_in_order(client: natskiq.Client) -> None:
    """Process-wide middleware runs outermost, then the client's in the order given; each
    sees what the outer ones changed and gets back the job as stored."""
    calls: list[str] = []

    def tracer(name: str) -> middleware.ClientMiddleware:
        async def trace(job: natskiq.Job, call_next: middleware.ClientNext) -> natskiq.Job | None:
            calls.append(f"enter {name} {job.args}")
            stored = await call_next(attrs.evolve(job, args=[*job.args, name]))
            calls.append(f"exit {name} {stored.args if stored else None}")
            return stored

        return trace

    outer = natskiq.client_middleware(tracer("global"))
    try:
        own = natskiq.Client(
            url=client.url, namespace=client.namespace, middleware=[tracer("a"), tracer("b")]
        )
        async with own:
            jid = await own.enqueue(Record3, "x")
    finally:
        middleware._client.remove(outer)
    assert calls == [
        "enter global ['x']",
        "enter a ['x', 'global']",
        "enter b ['x', 'global', 'a']",
        "exit b ['x', 'global', 'a', 'b']",
        "exit a ['x', 'global', 'a', 'b']",
        "exit global ['x', 'global', 'a', 'b']",
    ]
    entry = await api.find(client, "queued", api.Filter(jid=jid))
    assert [e.job.args for e in entry if e.job] == [["x", "global", "a", "b"]]


async def test_changed_arguments_are_checked_again(client: natskiq.Client) -> None:
    """Middleware that adds an argument JSON cannot carry gets the usual TypeError; nothing is stored."""

    async def bad(job: natskiq.Job, call_next: middleware.ClientNext) -> natskiq.Job | None:
        return await call_next(attrs.evolve(job, kwargs={"tenant": {"a", "b"}}))

    async def bad_header(job: natskiq.Job, call_next: middleware.ClientNext) -> natskiq.Job | None:
        return await call_next(attrs.evolve(job, headers={"at": object()}))

    for hook, where in ((bad, "keyword argument 'tenant'"), (bad_header, "header 'at'")):
        async with natskiq.Client(url=client.url, namespace=client.namespace, middleware=[hook]):
            with pytest.raises(TypeError, match=where):
                await Tagged.perform_async(1)
    assert await api.queue_names(client) == []


async def test_perform_bulk_goes_through_the_chain(tagging_client: natskiq.Client) -> None:
    """Each job of a bulk enqueue is tagged or vetoed; a vetoed one's jid is "" in its place."""
    jids = await Tagged.perform_bulk([[1], [13], [3]])
    assert jids[0] and jids[1] == "" and jids[2]
    assert (await api.queue_info(tagging_client, "default")).ready == 2
    assert await testing.drain(tagging_client) == 2
    assert sorted((s["n"], s["tenant"]) for s in seen) == [(1, "acme"), (3, "acme")]


async def test_testing_modes_apply_process_wide_middleware() -> None:
    """Fake mode records the job as middleware changed it, and nothing that it vetoed."""
    natskiq.client_middleware(no_spam)
    natskiq.client_middleware(tag_tenant)
    try:
        with testing.fake():
            assert await Tagged.perform_async(13) == ""
            assert await Tagged.perform_async(4)
            assert [(j.args, j.kwargs, j.headers) for j in Tagged.jobs] == [
                ([4], {"tenant": "acme"}, {"trace": "t-1"})
            ]
    finally:
        middleware._client.remove(no_spam)
        middleware._client.remove(tag_tenant)
