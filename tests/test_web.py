"""The web dashboard through its ASGI interface (httpx): pages, escaping, actions,
CSRF, auth, read-only mode, mounting and the server. Browser tests are in
test_web_browser.py."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import natskiq
from natskiq import api, testing
from natskiq import job as jobs
from natskiq.enqueue import cron
from natskiq.ops.server import Server
from natskiq.run import retry
from natskiq.status.results import encode_failure, store_result
from natskiq.topology import ensure_events, ensure_failed, ensure_queue, ensure_results
from natskiq.web import create_app, serve
from natskiq.web.markup import Safe, View, job_link

from .conftest import running_node, until
from .sample_workers import Record, Tick

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(1)>"
PAGES = ["/", "/busy", "/queues", "/scheduled", "/retries", "/failed", "/periodic", "/batches"]
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"


class Resize(natskiq.Worker, keep_result=60, name="tests.web.Resize"):
    async def perform(self, width: int) -> dict[str, int]:
        return {"width": width, "height": width * 3 // 4}


class Dump(natskiq.Worker, keep_result=60, name="tests.web.Dump"):
    async def perform(self, size: int) -> str:
        return "x" * size + "END"


class Geocode(natskiq.Worker, keep_result=60, retries=0, backtrace=5, name="tests.web.Geocode"):
    async def perform(self, address: str) -> None:
        raise ValueError(f"no such address: {address}")


class Render(natskiq.Worker, keep_result=60, name="tests.web.Render"):
    async def perform(self, pages: int) -> None:
        await self.progress(0.4, f"page 4 of {pages}")
        await anyio.sleep(30)  # until the test cancels it


@pytest.fixture(scope="module")
def nats_server() -> Iterator[Server]:
    """A server of this module's own: late in a run the session's holds more than
    256 streams, and api.queue_names reads only the first page of the stream list."""
    with testing.server() as srv:
        yield srv


def asgi(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def web(client: natskiq.Client) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi(create_app(client)) as http:
        yield http


async def csrf_token(http: httpx.AsyncClient, path: str = "/busy") -> str:
    """The token a page's forms carry (the page also sets the matching cookie)."""
    page = await http.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def noop() -> None:
    """An ack for jobs that were never delivered (seeding the sets directly)."""


async def fail(
    client: natskiq.Client, queue: str = "default", *, cls: str = Record.name, **fields: Any
) -> str:
    """Put a job straight into the failed set, as a node does when its retries run out."""
    await client.ensure_queue(queue)
    await ensure_failed(client.js, client.names)
    job = jobs.Job(jid=jobs.new_jid(), cls=cls, queue=queue, retry=0, **fields)
    await retry.route(
        client.js, client.names, job, ValueError("boom"), worker=None, ack=noop, **origin(client, job)
    )
    return job.jid


def origin(client: natskiq.Client, job: jobs.Job) -> dict[str, Any]:
    """route()'s facts about a job's original message, for a job that never had one."""
    return {"seq": 1, "raw": jobs.encode(job), "max_payload": client.nc.max_payload}


async def to_retry(client: natskiq.Client, exc: Exception, **fields: Any) -> str:
    """Put a job in the retry set (Sidekiq's backoff: its first retry is 15 s or more away)."""
    await client.ensure_queue("default")
    job = jobs.Job(jid=jobs.new_jid(), cls=Record.name, retry=5, **fields)
    await retry.route(client.js, client.names, job, exc, worker=None, ack=noop, **origin(client, job))
    return job.jid


async def post(http: httpx.AsyncClient, path: str, token: str, **form: Any) -> httpx.Response:
    data = {"csrf": token, **form}
    return await http.post(path, data=data)


def kinds(entries: list[api.Entry]) -> list[str | None]:
    return sorted(e.jid for e in entries)


# -- pages ------------------------------------------------------------------------------


async def test_pages_render_on_an_empty_namespace(web: httpx.AsyncClient) -> None:
    """Every page answers 200 in a namespace with no streams yet, and the stats are zero."""
    for path in PAGES:
        page = await web.get(path)
        assert page.status_code == 200, (path, page.text)
        assert "text/html" in page.headers["content-type"]
    stats = (await web.get("/api/stats")).json()
    assert stats["processed"] == stats["failed"] == stats["dead"] == stats["nodes"] == 0
    assert stats["queues"] == [] and stats["master"] is None


async def test_pages_show_jobs_nodes_and_stats(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """Queues, scheduled jobs, retries, failed jobs and periodic jobs show on their pages."""
    queued = await Record.set(queue="mail").perform_async(note="hello")
    scheduled = await Record.perform_in(3600, note="later")
    retrying = await to_retry(client, RuntimeError("flaky network"))
    failed = await fail(client, "mail", args=[1, 2])
    nightly = cron.Periodic(
        name="nightly", schedule=cron.normalize("0 3 * * *"), worker=Tick.name, queue="default",
        retry=3, args=["report"], tz="Europe/Paris",
    )  # fmt: skip
    await cron.register(client.js, client.names, [nightly])

    assert queued in (await web.get("/queues/mail")).text
    queues = (await web.get("/queues")).text
    assert 'href="/queues/mail"' in queues and 'href="/queues/default"' in queues
    assert scheduled in (await web.get("/scheduled")).text
    retries = (await web.get("/retries")).text
    assert retrying in retries and "flaky network" in retries and "RuntimeError" in retries
    assert failed in (await web.get("/failed")).text
    periodic = (await web.get("/periodic")).text
    assert "nightly" in periodic and "0 0 3 * * *" in periodic and "Europe/Paris" in periodic
    assert "nightly" not in (await web.get("/scheduled")).text  # a definition is not a scheduled job

    stats = (await web.get("/api/stats")).json()
    assert (stats["enqueued"], stats["retries"], stats["dead"]) == (1, 1, 1)
    assert stats["scheduled"] >= 1
    assert {q["name"] for q in stats["queues"]} == {"default", "mail"}
    dashboard = (await web.get("/")).text
    assert 'data-stat="dead">1<' in dashboard and 'data-queue="mail"' in dashboard


async def test_times_are_relative_with_utc_on_hover(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """A job's time shows relative ("in 59m") with the UTC time in its title."""
    await Record.perform_in(3600)
    page = (await web.get("/scheduled")).text
    found = re.search(
        r'<time datetime="[^"]+Z" title="(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)"[^>]*>in (\d+)m</time>', page
    )
    assert found, page
    assert 58 <= int(found.group(2)) <= 60


async def test_pages_paginate(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """A queue of 30 jobs shows 25 on the first page and 5 on the second."""
    await Record.set(queue="bulk").perform_bulk([[0.0, i] for i in range(30)])
    first = (await web.get("/queues/bulk")).text
    assert first.count('name="item"') == 25 and 'href="/queues/bulk?page=2"' in first
    second = (await web.get("/queues/bulk?page=2")).text
    assert second.count('name="item"') == 5 and 'href="/queues/bulk?page=1"' in second


async def test_unknown_queue_is_404(web: httpx.AsyncClient) -> None:
    """A queue that does not exist, or could not exist, is a 404 page."""
    assert (await web.get("/queues/nothing")).status_code == 404
    assert (await web.get("/queues/a.b")).status_code == 404
    bad_filter = await web.get("/failed", params={"queue": "a>b"})
    assert bad_filter.status_code == 404


# -- escaping ------------------------------------------------------------------------------


async def test_job_data_renders_as_text(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """HTML or script in arguments, class names, errors and raw payloads is escaped on every page."""
    await Record.set(queue="mail").perform_async(note=HOSTILE)
    await Record.perform_in(3600, note=HOSTILE)
    await to_retry(client, RuntimeError(HOSTILE), args=[HOSTILE])
    await fail(client, cls=HOSTILE, args=[HOSTILE], kwargs={HOSTILE: HOSTILE})
    await retry.fail_invalid(client.js, client.names, HOSTILE.encode(), "not JSON", queue="default", ack=noop)
    evil = cron.Periodic(
        name="evil", schedule="@daily", worker=HOSTILE, queue="default", retry=0, args=[HOSTILE]
    )
    await cron.register(client.js, client.names, [evil])

    for path in [*PAGES, "/queues/mail", "/queues/default"]:
        page = (await web.get(path)).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    for path in ["/queues/mail", "/retries", "/failed", "/periodic"]:
        assert escaped in (await web.get(path)).text, path
    assert "invalid payload" in (await web.get("/failed")).text
    # Every script on a page is the package's own file: nothing inline can run (the CSP forbids it too).
    page = await web.get("/failed")
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/natskiq.js?v=0.1.0" defer>']
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


async def test_long_arguments_are_cut_with_a_way_to_see_them(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """Arguments longer than a line are shortened, with all of them one click away."""
    await Record.set(queue="mail").perform_async(note="x" * 500 + "END")
    page = (await web.get("/queues/mail")).text
    assert "show all" in page and "…" in page
    details = re.search(r"<details class=\"args\">.*?<pre>(.*?)</pre>", page, re.S)
    assert details and "END" in details.group(1)


# -- a job's page ------------------------------------------------------------------------


async def finished(client: natskiq.Client, jid: str) -> bool:
    """Whether the job's events say it finished (and it kept its outcome first)."""
    try:
        return (await api.job(client, jid)).finished
    except natskiq.NotFound:
        return False


async def test_job_page_of_a_succeeded_job_shows_its_result(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """A succeeded job's page shows its state, node, attempt, times, timeline and kept result as JSON;
    a long result is cut, saying how long it was."""
    async with running_node(client.url, client.namespace, node_id="page-node"):
        jid = await Resize.perform_async(640)
        big = await Dump.perform_async(5000)
        await until(lambda: finished(client, jid))
        await until(lambda: finished(client, big))
    page = await web.get(f"/jobs/{jid}")
    assert page.status_code == 200 and f"<title>Job {jid} · natskiq</title>" in page.text
    assert re.search(
        r'class="badge state succeeded">succeeded</span> on <b>page-node</b> · attempt 1', page.text
    )
    assert "tests.web.Resize" in page.text and 'href="/queues/default"' in page.text
    for row in ("Enqueued", "Started", "Finished"):
        assert re.search(rf"<th>{row}</th><td><time ", page.text), row
    result = re.search(r'<pre class="result">(.*?)</pre>', page.text, re.S)
    assert result and json.loads(result.group(1).replace("&quot;", '"')) == {"width": 640, "height": 480}
    timeline = page.text[page.text.index("<h2>Timeline</h2>") :]
    states = re.findall(r'class="badge state (\w+)"', timeline)
    assert sorted(states) == ["queued", "running", "succeeded"] and states[-1] == "succeeded"
    assert "<b>node</b> page-node" in timeline and "<b>attempt</b> <code>1</code>" in timeline

    cut = (await web.get(f"/jobs/{big}")).text
    assert "END" not in cut and "Cut: 5,005 characters in all" in cut and f"natskiq result {big}" in cut


async def test_job_page_of_a_failed_job_shows_its_error_and_backtrace(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """A job that failed for good shows its last error, and its kept outcome with the backtrace."""
    async with running_node(client.url, client.namespace):
        jid = await Geocode.perform_async("221B Baker Street")
        await until(lambda: finished(client, jid))
    page = (await web.get(f"/jobs/{jid}")).text
    assert 'class="badge state failed">failed</span>' in page
    assert "<th>Last error</th><td><b>ValueError</b> no such address: 221B Baker Street</td>" in page
    kept = page[page.index("<h2>Result</h2>") : page.index("<h2>Timeline</h2>")]
    assert "<b>ValueError</b> no such address: 221B Baker Street" in kept
    backtrace = re.search(r'<pre class="result">(.*?)</pre>', kept, re.S)
    assert backtrace and "raise ValueError" in backtrace.group(1)


async def test_job_page_of_a_running_job_shows_its_progress(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """A running job's page shows its node and a progress bar with the message; the Busy page links
    to it; once cancelled, its page says so."""
    async with running_node(client.url, client.namespace, node_id="render-node"):
        jid = await Render.perform_async(10)

        async def reported() -> bool:
            try:
                return (await api.job(client, jid)).progress is not None
            except natskiq.NotFound:
                return False

        await until(reported)
        page = (await web.get(f"/jobs/{jid}")).text
        assert 'class="badge state running">running</span> on <b>render-node</b> · attempt 1' in page
        assert '<progress max="100" value="40">40%</progress> <b>40%</b> page 4 of 10' in page
        assert re.search(r"<th>Finished</th><td>&ndash;</td>", page)
        assert "No kept result" in page

        async def linked() -> bool:
            return f'<a href="/jobs/{jid}"><code>{jid}</code></a>' in (await web.get("/busy")).text

        await until(linked)
        await api.cancel(client, jid)
        await until(lambda: finished(client, jid))
    page = (await web.get(f"/jobs/{jid}")).text
    assert 'class="badge state cancelled">cancelled</span>' in page and "The job was cancelled." in page


async def test_job_page_of_an_unknown_jid_is_404(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """A jid with no events is a 404 page that says why, with or without an events stream."""
    message = "unknown, expired from the events stream, or events are off"
    unknown = jobs.new_jid()
    page = await web.get(f"/jobs/{unknown}")
    assert page.status_code == 404 and f"no events of job {unknown}: {message}" in page.text
    await ensure_events(client.js, client.names)
    await Record.perform_in(3600)  # the stream now holds another job's event
    page = await web.get(f"/jobs/{unknown}")
    assert page.status_code == 404 and message in page.text


async def test_job_page_of_a_malformed_jid_is_404(web: httpx.AsyncClient) -> None:
    """A path that cannot be a jid is a 404 page, its text escaped."""
    for jid in ["a.b", "a*", "x" * 65, "%3Cscript%3Ealert(1)"]:
        page = await web.get(f"/jobs/{jid}")
        assert page.status_code == 404, jid
        assert "<script>alert" not in page.text
    assert "no jid named &#x27;&lt;script&gt;alert(1)&#x27;" in page.text


async def test_batch_pages_list_batches_and_show_progress(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """/batches lists each batch with a progress bar and links to its page, which shows the
    counts, the callbacks and the failed jobs (escaped); an unknown or malformed id is a 404."""
    async with natskiq.batch(HOSTILE, on_death=Record) as parent:
        async with natskiq.batch("child") as child:
            await Record.perform_async(0, "child")
        await Record.perform_async(0, "parent")
    before = await web.get("/batches")
    assert before.text.count('<progress max="100" value="0">') == 2
    await testing.drain(client)
    listed = await web.get("/batches")
    assert listed.status_code == 200
    assert f'href="/batches/{parent.bid}"' in listed.text and ESCAPED in listed.text
    assert listed.text.count('<progress max="100" value="100">') == 2
    shown = await web.get(f"/batches/{child.bid}")
    assert shown.status_code == 200 and '<progress max="100" value="100">' in shown.text
    assert f'href="/batches/{parent.bid}"' in shown.text  # its parent
    page = await web.get(f"/batches/{parent.bid}")
    assert "on_death: <b>tests.Record</b>" in page.text and "<script>" not in page.text
    for bid, text in ((jobs.new_jid(), "no batch"), ("a.b", "no batch named")):
        missing = await web.get(f"/batches/{bid}")
        assert missing.status_code == 404 and text in missing.text


async def test_job_page_escapes_hostile_events_and_results(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """HTML in an event's class, queue, node, error, progress message and fields, and in a kept
    result or failure, shows as text."""
    await ensure_events(client.js, client.names)
    await ensure_results(client.js, client.names)
    now = time.time()
    found = {}
    outcomes = {
        "result": json.dumps({"state": "succeeded", "result": {HOSTILE: [HOSTILE]}}).encode(),
        "failure": encode_failure(HOSTILE, HOSTILE, [HOSTILE, HOSTILE]),
        "garbage": HOSTILE.encode(),
    }
    for name, doc in outcomes.items():
        jid = found[name] = jobs.new_jid()
        head = {"jid": jid, "queue": HOSTILE, "class": HOSTILE}
        events = [
            {**head, "state": "running", "at": now, "node": HOSTILE, "attempt": 1, HOSTILE: HOSTILE},
            {**head, "state": "progress", "at": now + 1, "progress": 0.5, "message": HOSTILE},
            {**head, "state": "retrying", "at": now + 2, "error_class": HOSTILE, "error_message": HOSTILE},
        ]
        for event in events:
            subject = client.names.event_subject("default", "Evil", event["state"], jid)
            await client.js.publish(subject, json.dumps(event).encode())
        await store_result(client.js, client.names, jid, doc, 60, client.nc.max_payload)
    for name, jid in found.items():
        page = await web.get(f"/jobs/{jid}")
        assert page.status_code == 200, name
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, name
        assert page.text.count(ESCAPED) >= 8, name  # class, queue, node, message, error, fields, outcome
        assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/natskiq.js?v=0.1.0" defer>']
        assert f'href="/queues/{HOSTILE}' not in page.text  # a queue that is no queue name is not a link
    assert "What is stored is not an outcome" in (await web.get(f"/jobs/{found['garbage']}")).text


async def test_every_listed_jid_links_to_its_job_page(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """The jids on a queue's page, the scheduled, retries and failed pages link to their job's page."""
    await ensure_events(client.js, client.names)  # as a worker would: the producer's events are kept
    queued = await Record.set(queue="mail").perform_async(note="hello")
    scheduled = await Record.perform_in(3600, note="later")
    retrying = await to_retry(client, RuntimeError("flaky network"))
    failed = await fail(client, "mail")
    for path, jid in [
        ("/queues/mail", queued),
        ("/scheduled", scheduled),
        ("/retries", retrying),
        ("/failed", failed),
    ]:
        page = (await web.get(path)).text
        assert f'<a href="/jobs/{jid}"><small class="jid">{jid}</small></a>' in page, path

    async def shown() -> bool:  # its producer's event (a core publish) is stored
        return (await web.get(f"/jobs/{scheduled}")).status_code == 200

    await until(shown)
    page = (await web.get(f"/jobs/{scheduled}")).text
    assert 'class="badge state scheduled">scheduled</span>' in page
    assert re.search(r"<th>Next run</th><td><time [^>]*>in (59|60)m</time>", page)


def test_a_value_that_is_no_jid_is_not_linked() -> None:
    """job_link leaves a value that cannot be a jid (from a node's hostile heartbeat) as text."""
    view = View(base="/admin", csrf="", read_only=True, namespace="ns", poll=1.0, now=0.0)
    assert (
        job_link(view, "abc_1-2", Safe("<code>x</code>"))
        == '<a href="/admin/jobs/abc_1-2"><code>x</code></a>'
    )
    for value in ['a"><script>', "a/../b", "", None, 42]:
        assert job_link(view, value, Safe("<code>x</code>")) == "<code>x</code>"


async def test_find_a_job_by_jid(web: httpx.AsyncClient) -> None:
    """Every page's "Find a job by jid" box goes to the job's page; empty or malformed input is a 400."""
    for path in PAGES:
        page = (await web.get(path)).text
        assert '<form method="get" action="/jobs" class="find" role="search"><input name="jid"' in page, path
    jid = jobs.new_jid()
    found = await web.get("/jobs", params={"jid": f"  {jid}\n"})
    assert found.status_code == 303 and found.headers["location"] == f"/jobs/{jid}"
    empty = await web.get("/jobs", params={"jid": " "})
    assert empty.status_code == 400 and "enter a jid" in empty.text
    assert (await web.get("/jobs")).status_code == 400
    bad = await web.get("/jobs", params={"jid": HOSTILE})
    assert bad.status_code == 400 and "is not a jid" in bad.text and "<script>alert" not in bad.text


# -- actions and CSRF --------------------------------------------------------------------------


async def test_actions_need_the_csrf_token(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """A POST without the token, with a forged one, or marked cross-site is refused; nothing changes."""
    jid = await fail(client)
    [entry] = await api.find(client, "failed")
    row = f"replay:default:{entry.seq}"
    assert (await web.post("/failed", data={"row": row})).status_code == 403
    assert (await web.post("/failed", data={"row": row, "csrf": "abc.def"})).status_code == 403
    token = await csrf_token(web)
    forged = token.split(".")[0] + "." + "0" * 64
    web.cookies.set("natskiq_csrf", forged)
    assert (await web.post("/failed", data={"row": row, "csrf": forged})).status_code == 403
    web.cookies.clear()
    token = await csrf_token(web)
    cross = await web.post(
        "/failed", data={"row": row, "csrf": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403
    assert [e.jid for e in await api.find(client, "failed")] == [jid]

    done = await post(web, "/failed", token, row=row)
    assert done.status_code == 303 and done.headers["location"] == "/failed?done=replay&n=1"
    assert await api.find(client, "failed") == []
    assert [e.jid for e in await api.find(client, "queued")] == [jid]
    assert "Replayed 1 job(s)" in (await web.get(done.headers["location"])).text


async def test_failed_replay_and_delete_single_selected_and_matching(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """Failed jobs are replayed or deleted one at a time, by selection, or all that match a filter."""
    one, two, three = [await fail(client, "mail", args=[i]) for i in range(3)]
    four = await fail(client, "default", cls="tests.Other")
    five = await fail(client, "default", cls="tests.Other")
    seq = {e.jid: e.seq for e in await api.find(client, "failed")}
    token = await csrf_token(web)

    await post(web, "/failed", token, row=f"delete:mail:{seq[one]}")
    await post(web, "/failed", token, action="replay", item=[f"mail:{seq[two]}", f"mail:{seq[three]}"])
    assert kinds(await api.find(client, "queued")) == sorted([two, three])
    filtered = await web.get("/failed", params={"class": "tests.Other"})
    assert four in filtered.text and one not in filtered.text
    everything = await post(web, "/failed", token, action="delete_all", **{"class": "tests.Other"})
    assert everything.headers["location"] == "/failed?class=tests.Other&done=delete&n=2"
    assert await api.find(client, "failed") == []
    assert five not in (await web.get("/failed")).text
    again = await post(web, "/failed", token, row=f"replay:mail:{seq[one]}")
    assert again.headers["location"] == "/failed?problem=notfound"


async def test_retries_and_scheduled_run_now_or_delete(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """A retry or a scheduled job moves to its queue at once, or is deleted; all at once too."""
    retrying = await to_retry(client, RuntimeError("later"))
    soon = await Record.perform_in(3600, note="soon")
    await Record.perform_in(3600, note="never")
    await Record.perform_in(3600, note="nor this")
    [entry] = await api.find(client, "retry")
    token = await csrf_token(web)
    await post(web, "/retries", token, row=f"run_now:default:{entry.seq}")
    scheduled = {e.jid: e.seq for e in await api.find(client, "scheduled")}
    await post(web, "/scheduled", token, row=f"run_now:default:{scheduled[soon]}")
    assert kinds(await api.find(client, "queued")) == sorted([retrying, soon])
    assert await api.find(client, "retry") == []
    cleared = await post(web, "/scheduled", token, action="delete_all")
    assert cleared.headers["location"] == "/scheduled?done=delete&n=2"
    assert await api.find(client, "scheduled") == []
    wrong = await post(web, "/scheduled", token, action="replay", item=["default:1"])
    assert wrong.status_code == 400


async def test_queue_delete_and_clear(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """One ready job is deleted from a queue page; clearing empties the queue."""
    jids = [await Record.set(queue="mail").perform_async(note=i) for i in range(3)]
    entries = await api.find(client, "queued")
    token = await csrf_token(web)
    await post(web, "/queues/mail", token, row=f"delete:mail:{entries[0].seq}")
    assert kinds(await api.find(client, "queued")) == sorted(jids[1:])
    cleared = await post(web, "/queues/mail", token, action="clear")
    assert cleared.headers["location"] == "/queues/mail?done=clear&n=2"
    assert await api.find(client, "queued") == []


async def test_queue_pause_and_resume_buttons(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """The queue page pauses its queue (until resumed, or for a while) and resumes it; a badge shows it."""
    await Record.set(queue="mail").perform_async(note=1)
    token = await csrf_token(web)
    page = (await web.get("/queues/mail")).text
    assert 'value="pause"' in page and "badge paused" not in page
    paused = await post(web, "/queues/mail", token, action="pause", **{"for": ""})
    assert paused.headers["location"] == "/queues/mail?done=pause&n=1"
    info = await api.queue_info(client, "mail")
    assert (info.paused, info.paused_until) == (True, None)
    page = (await web.get("/queues/mail?done=pause&n=1")).text
    assert 'value="resume"' in page and 'class="badge paused"' in page and "Paused the queue" in page
    assert 'class="badge paused"' in (await web.get("/queues")).text
    [listed] = (await web.get("/api/stats")).json()["queues"]
    assert (listed["paused"], listed["paused_until"]) == (True, None)
    await post(web, "/queues/mail", token, action="resume")
    assert not (await api.queue_info(client, "mail")).paused
    await post(web, "/queues/mail", token, action="pause", **{"for": "3600"})
    info = await api.queue_info(client, "mail")
    assert info.paused_until == pytest.approx(time.time() + 3600, abs=60)
    assert "paused, resumes" in (await web.get("/queues/mail")).text
    for bad in ("-5", "soon", "99999999999"):
        refused = await post(web, "/queues/mail", token, action="pause", **{"for": bad})
        assert refused.status_code == 400
    gone = await post(web, "/queues/nope", token, action="pause")
    assert gone.headers["location"] == "/queues/nope?problem=notfound"
    assert (await api.queue_info(client, "mail")).paused_until == info.paused_until


async def test_a_job_on_another_partition_is_deleted_from_the_queue_page(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """The queue page's delete reaches jobs on every partition, not only partition 0."""
    await ensure_queue(client.js, client.names, "mail", partitions=3)
    for i in range(3):
        await Record.set(queue="mail").perform_async(note=i)
    stream = client.names.queue_stream("mail")
    for p in range(3):  # one job on each partition (get_last_msg raises on an empty subject)
        await client.js.get_last_msg(stream, client.names.partition_subject("mail", p))
    entries = await api.find(client, "queued")
    token = await csrf_token(web)
    for entry in entries:
        await post(web, "/queues/mail", token, row=f"delete:mail:{entry.seq}")
    assert await api.find(client, "queued") == []


async def test_a_stale_item_is_not_acted_on(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """A sequence that holds no job of that kind (gone, or another kind) is skipped."""
    queued = await Record.perform_async()
    [entry] = await api.find(client, "queued")
    token = await csrf_token(web)
    response = await post(web, "/scheduled", token, row=f"delete:default:{entry.seq}")
    assert response.headers["location"] == "/scheduled?problem=notfound"
    assert [e.jid for e in await api.find(client, "queued")] == [queued]


async def test_periodic_remove(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """A periodic job definition is removed from its page."""
    await client.ensure_queue("default")
    definition = cron.Periodic(name="hourly", schedule="@hourly", worker=Tick.name, queue="default", retry=0)
    await cron.register(client.js, client.names, [definition])
    token = await csrf_token(web)
    removed = await post(web, "/periodic", token, name="hourly")
    assert removed.headers["location"] == "/periodic?done=remove&n=1"
    assert await api.periodic_jobs(client) == []
    missing = await post(web, "/periodic", token, name="hourly")
    assert missing.headers["location"] == "/periodic?problem=notfound"


async def test_cancel_a_job_by_jid(client: natskiq.Client, web: httpx.AsyncClient) -> None:
    """The busy page's cancel form deletes a waiting job; an unknown jid says nothing matched."""
    jid = await Record.perform_in(3600)
    token = await csrf_token(web)
    done = await post(web, "/busy/cancel", token, jid=jid)
    assert done.headers["location"] == "/busy?done=cancel&n=1"
    assert await api.find(client, "scheduled") == []
    again = await post(web, "/busy/cancel", token, jid=jid)
    assert again.headers["location"] == "/busy?problem=notfound"
    assert (await post(web, "/busy/cancel", token, jid="a.b")).status_code == 404


# -- read-only, auth -------------------------------------------------------------------------------


async def test_read_only_shows_no_actions_and_refuses_them(client: natskiq.Client) -> None:
    """In read-only mode no page has a form that changes anything, and every POST is 403."""
    jid = await fail(client)
    await Record.perform_in(3600)
    async with asgi(create_app(client, read_only=True)) as web:
        for path in [*PAGES, "/queues/default"]:
            page = (await web.get(path)).text
            assert 'method="post"' not in page and "<button" not in page.replace(
                '<button class="btn">Filter', ""
            )
            assert "read-only" in page
        assert jid in (await web.get("/failed")).text
        [entry] = await api.find(client, "failed")
        token = (await web.get("/")).cookies.get("natskiq_csrf")
        refused = await web.post("/failed", data={"csrf": token or "", "row": f"replay:default:{entry.seq}"})
        assert refused.status_code == 403
        assert (await web.post("/queues/default", data={"action": "clear"})).status_code == 403
    assert [e.jid for e in await api.find(client, "failed")] == [jid]


async def test_basic_auth(client: natskiq.Client) -> None:
    """With user:password, every request without those credentials is 401, static files included."""
    async with asgi(create_app(client, auth="admin:s3cret")) as web:
        refused = await web.get("/")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert (await web.get("/static/natskiq.js")).status_code == 401
        assert (await web.get("/", auth=("admin", "wrong"))).status_code == 401
        assert (await web.get("/", auth=("root", "s3cret"))).status_code == 401
        assert (await web.get("/", auth=("admin", "s3cret"))).status_code == 200
        assert (await web.get("/api/stats", auth=("admin", "s3cret"))).status_code == 200


async def test_token_auth(client: natskiq.Client) -> None:
    """With token:SECRET, a bearer header works, and ?token= is traded for a cookie and leaves the URL."""
    async with asgi(create_app(client, auth="token:t0ken")) as web:
        assert (await web.get("/")).status_code == 401
        assert (await web.get("/", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await web.get("/", headers={"Authorization": "Bearer t0ken"})).status_code == 200
        assert (await web.get("/failed?token=nope")).status_code == 401
        welcome = await web.get("/failed?queue=mail&token=t0ken")
        assert (
            welcome.status_code == 303
            and welcome.headers["location"] == "http://testserver/failed?queue=mail"
        )
        cookie = welcome.cookies.get("natskiq_auth")
        assert cookie and "t0ken" not in cookie
        assert (await web.get("/failed")).status_code == 200  # the cookie alone
    async with asgi(create_app(client, auth="token:t0ken")) as other:
        other.cookies.set("natskiq_auth", cookie)
        assert (await other.get("/")).status_code == 401  # another app's key: not valid here


def test_bad_auth_specs_are_refused() -> None:
    """--auth must be user:password or token:SECRET, with no empty part."""
    for spec in ["admin", "admin:", ":pw", "token:"]:
        with pytest.raises(natskiq.ConfigError, match="user:password"):
            create_app(None, auth=spec)


# -- mounting, connecting, serving ------------------------------------------------------------------


async def test_mounted_inside_another_app(client: natskiq.Client) -> None:
    """Mounted under a prefix, links, static files, redirects and cookies all live under it."""
    jid = await fail(client)
    host = Starlette(routes=[Mount("/admin/jobs", create_app(client))])
    async with asgi(host) as web:
        page = await web.get("/admin/jobs/failed")
        assert page.status_code == 200 and jid in page.text
        assert 'href="/admin/jobs/queues"' in page.text and 'src="/admin/jobs/static/natskiq.js' in page.text
        assert f'href="/admin/jobs/jobs/{jid}"' in page.text and 'action="/admin/jobs/jobs"' in page.text
        found = await web.get("/admin/jobs/jobs", params={"jid": jid})
        assert found.headers["location"] == f"/admin/jobs/jobs/{jid}"
        assert "Path=/admin/jobs" in page.headers["set-cookie"]
        assert (await web.get("/admin/jobs/static/natskiq.css")).status_code == 200
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        [entry] = await api.find(client, "failed")
        done = await web.post(
            "/admin/jobs/failed", data={"csrf": token, "row": f"replay:default:{entry.seq}"}
        )
        assert done.headers["location"] == "/admin/jobs/failed?done=replay&n=1"
        assert 'action="/admin/jobs/queues/default"' in (await web.get("/admin/jobs/queues/default")).text


async def test_a_url_connects_on_first_use(nats_url: str, namespace: str) -> None:
    """Given a URL, the app connects on its first request (a host app runs no lifespan of ours)."""
    app = create_app(nats_url, namespace=namespace)
    try:
        async with asgi(app) as web:
            page = await web.get("/")
            assert page.status_code == 200 and namespace in page.text
    finally:
        await app.state.natskiq.close()
    async with asgi(create_app("nats://127.0.0.1:1")) as web:
        down = await web.get("/")
        assert down.status_code == 503 and "cannot connect to NATS" in down.text


async def test_serve_listens_on_localhost(nats_url: str, namespace: str, client: natskiq.Client) -> None:
    """serve() connects, binds 127.0.0.1 by default and answers over real HTTP until cancelled."""
    jid = await Record.perform_in(3600, note="served")
    ready: list[str] = []
    async with anyio.create_task_group() as tg:
        start = functools.partial(serve, nats_url, namespace, port=0, on_ready=ready.append, auth="u:p")
        url = await tg.start(start)
        assert url.startswith("http://127.0.0.1:") and ready == [url]
        async with httpx.AsyncClient(base_url=url, auth=("u", "p")) as http:
            page = await http.get("/scheduled")
            assert page.status_code == 200 and jid in page.text
            assert (await http.get("/api/stats")).json()["scheduled"] == 1
        tg.cancel_scope.cancel()


async def test_serve_refuses_an_unreachable_nats() -> None:
    """serve() says NATS cannot be reached before it listens."""
    with pytest.raises(natskiq.ConfigError, match="cannot connect to NATS"):
        await serve("nats://127.0.0.1:1", port=0)


async def test_stats_track_processed_jobs(
    client: natskiq.Client, web: httpx.AsyncClient, ledger: Any
) -> None:
    """/api/stats counts jobs a node has run (its counters flush every second)."""
    from .conftest import running_node, until, wait_for_ledger

    await client.ensure_queue("default")
    async with running_node(client.url, client.namespace):
        await Record.perform_bulk([[0.0, i] for i in range(3)])
        await wait_for_ledger(ledger, 3)

        async def counted() -> bool:
            return (await web.get("/api/stats")).json()["processed"] >= 3

        await until(counted)
        nodes = (await web.get("/api/stats")).json()
        assert nodes["nodes"] == 1 and nodes["master"] is not None
        busy = (await web.get("/busy")).text
        assert "master" in busy and time.strftime("%Y-%m-%d", time.gmtime()) in (await web.get("/")).text


async def test_busy_page_lists_running_jobs_and_quiets_a_node(
    client: natskiq.Client, web: httpx.AsyncClient, ledger: Any
) -> None:
    """Busy shows each node's running jobs (jid, class) and its Quiet button tells the node to go quiet."""
    from .conftest import running_node, until, wait_for_ledger
    from .sample_workers import Record

    jid = await Record.perform_async(sleep=30, note="long")
    async with running_node(client.url, client.namespace, node_id="busy-node"):
        await wait_for_ledger(ledger, 1, kind="start")

        async def listed() -> bool:
            return jid in (await web.get("/busy")).text

        await until(listed)
        page = (await web.get("/busy")).text
        assert "tests.Record" in page and 'value="quiet"' in page
        token = await csrf_token(web)
        answer = await post(web, "/busy/node", token, node="busy-node", verb="quiet")
        assert answer.status_code in (200, 303)

        async def quiet() -> bool:
            return any(n["node"] == "busy-node" and n["quiet"] for n in await api.nodes(client))

        await until(quiet)
        with pytest.raises(natskiq.NotFound):
            await api.command(client, "nobody", "stop")
        await api.cancel(client, jid)


async def test_busy_page_names_the_shards_a_node_masters(
    client: natskiq.Client, web: httpx.AsyncClient
) -> None:
    """With 2 partitions, the node leading both shards is shown as "master of shards 0, 1"."""
    from .conftest import running_node, until

    async with running_node(client.url, client.namespace, partitions=2, node_id="both") as node:
        await until(lambda: node.shards.led() == [0, 1])

        async def badge() -> bool:
            page = (await web.get("/busy")).text
            return "master of shards 0, 1" in page and "Master of shard 1: <b>both</b>" in page

        await until(badge)
