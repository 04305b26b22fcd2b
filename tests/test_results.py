"""Job results, status and lifecycle events (natskiq.status), against a real server and node."""

from __future__ import annotations

import contextlib
import json
import time

import anyio
import pytest

import natskiq
from natskiq import job as jobs
from natskiq import testing
from natskiq.ops.launcher import Launcher
from natskiq.ops.settings import Settings
from natskiq.status.view import Event, fold, job_status
from natskiq.topology import ensure_events, ensure_results

from .conftest import running_node, until

COUNTS: dict[str, int] = {}


class Add(natskiq.Worker, keep_result=60, name="tests.results.Add"):
    async def perform(self, a: int, b: int, sleep: float = 0.0) -> int:
        await anyio.sleep(sleep)
        return a + b


class Plain(natskiq.Worker, name="tests.results.Plain"):
    async def perform(self) -> str:
        return "not kept"


class FailsOnce(natskiq.Worker, keep_result=60, retries=3, name="tests.results.FailsOnce"):
    async def perform(self, key: str) -> dict[str, object]:
        COUNTS[key] = COUNTS.get(key, 0) + 1
        if COUNTS[key] == 1:
            raise RuntimeError("first run fails")
        return {"runs": COUNTS[key]}


class Doomed(natskiq.Worker, keep_result=60, retries=0, backtrace=5, name="tests.results.Doomed"):
    async def perform(self) -> None:
        raise ValueError("bad address")


class Unserialisable(natskiq.Worker, keep_result=60, retries=0, name="tests.results.Unserialisable"):
    async def perform(self) -> object:
        return {1, 2}


class Huge(natskiq.Worker, keep_result=60, retries=0, name="tests.results.Huge"):
    async def perform(self) -> str:
        return "x" * 2_000_000


class Reporter(natskiq.Worker, keep_result=60, name="tests.results.Reporter"):
    async def perform(self, steps: int) -> str:
        for i in range(1, steps + 1):
            await self.progress(i / steps, f"step {i} of {steps}")
            await anyio.sleep(0.6)
        return "done"


class Sleeper(natskiq.Worker, keep_result=60, name="tests.results.Sleeper"):
    async def perform(self, seconds: float) -> None:
        await anyio.sleep(seconds)


async def is_running(handle: natskiq.JobHandle) -> bool:
    try:
        return (await handle.status()).state == "running"
    except natskiq.NotFound:
        return False


def node(client: natskiq.Client) -> contextlib.AbstractAsyncContextManager[Launcher]:
    """An in-process worker node for the block (a task group: entered in the test itself)."""
    return running_node(client.url, client.namespace, node_id="r1")  # type: ignore[arg-type]


async def test_result_of_a_succeeded_job(client: natskiq.Client) -> None:
    """perform_async's handle is the jid (a str) and gives the return value once the job ran."""
    async with node(client):
        handle = await Add.perform_async(2, 3)
        assert isinstance(handle, str) and handle == handle.jid and json.dumps([handle]) == f'["{handle}"]'
        assert await handle.result(timeout=20) == 5
        status = await handle.status()
        assert (status.state, status.node, status.attempt, status.finished) == ("succeeded", "r1", 1, True)
        # The producer's event and the node's come from two connections; the node's are in order.
        states = [e.state for e in status.events]
        assert sorted(states) == ["queued", "running", "succeeded"] and states[-1] == "succeeded"


async def test_result_called_before_during_and_after_the_run(client: natskiq.Client) -> None:
    """result() waits whether called before the job starts, while it runs or after it ended;
    a jid received from elsewhere (client.job) gives the same handle."""
    async with node(client):
        handle = await Add.perform_async(1, 1, sleep=1.0)
        early = await handle.result(timeout=20)
        assert early == 2
        running = await Add.perform_async(2, 2, sleep=1.0)
        await until(lambda: is_running(running), timeout=20)
        assert await client.job(running.jid).result(timeout=20) == 4
        assert await client.job(handle.jid).result(timeout=5) == 2  # after: read at once


async def test_the_node_replies_the_outcome_to_the_client_that_enqueued_it(client: natskiq.Client) -> None:
    """A job that keeps its result carries its client's reply token; its outcome, success or
    failure, reaches that client as a reply, and many waiters at once each get their own."""
    async with node(client):
        handles = [await Add.perform_async(i, 1, sleep=0.05 * (i % 5)) for i in range(30)]
        got = {}

        async def wait(handle: natskiq.JobHandle) -> None:
            got[handle.jid] = await handle.result(timeout=20)

        async with anyio.create_task_group() as tg:
            for handle in reversed(handles):
                tg.start_soon(wait, handle)
        assert [got[h.jid] for h in handles] == [i + 1 for i in range(30)]
        assert [h for h in handles if h.client.replies.heard(h.jid) is None] == []
        doomed = await Doomed.perform_async()
        with pytest.raises(natskiq.JobFailed, match="bad address"):
            await doomed.result(timeout=20)
        assert doomed.client.replies.heard(doomed.jid) is not None


async def test_only_jobs_that_keep_their_result_ask_for_a_reply(client: natskiq.Client) -> None:
    """The envelope of a job that keeps its result names the client's reply token; others do not."""
    kept, plain = await client.enqueue(Add, 1, 2), await client.enqueue(Plain)
    stream = client.names.queue_stream("default")
    stored = [jobs.decode((await client.js.get_msg(stream, seq=seq)).data or b"") for seq in (1, 2)]
    assert [(job.jid, job.reply) for job in stored] == [(kept.jid, client.replies.token), (plain.jid, None)]


async def test_a_lost_reply_falls_back_to_the_stored_result(client: natskiq.Client) -> None:
    """With no reply reaching the client (its reply subscription gone), result() still returns
    the stored outcome, once the job's events say it finished; and junk on the reply subject
    is not taken for an outcome."""
    async with node(client):
        handle = await client.enqueue(Add, 3, 4, sleep=0.5)
        await client.replies.close()
        assert await handle.result(timeout=20) == 7
        assert client.replies.heard(handle.jid) is None
        await client.replies.listen()
        other = await client.enqueue(Add, 5, 5, sleep=0.5)
        for junk in (b"junk", b'{"state":"?"}'):
            await client.nc.publish(client.names.reply_subject(client.replies.token, other.jid), junk)
        assert await other.result(timeout=20) == 10
        assert client.replies.heard(other.jid) is not None


async def test_two_processes_wait_on_one_result(client: natskiq.Client) -> None:
    """Two clients (as two processes would) both get the one result."""
    async with node(client):
        handle = await Add.perform_async(20, 22, sleep=0.5)
        got: list[int] = []
        async with natskiq.connect(client.url, namespace=client.namespace) as other:

            async def wait(c: natskiq.Client) -> None:
                got.append(await c.job(handle.jid).result(timeout=20))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, client)
                tg.start_soon(wait, other)
        assert got == [42, 42]


async def test_a_job_that_retried_then_succeeded(client: natskiq.Client) -> None:
    """The handle reports the retry, then the final result."""
    async with node(client):
        with testing.zero_backoff():
            handle = await FailsOnce.perform_async("retried")
            assert await handle.result(timeout=30) == {"runs": 2}
        status = await handle.status()
        node_states = [e.state for e in status.events if e.state != "queued"]
        assert node_states == ["running", "retrying", "running", "succeeded"]
        assert (status.attempt, status.error_class) == (2, "RuntimeError")


async def test_a_job_that_failed_for_good_raises_job_failed(client: natskiq.Client) -> None:
    """JobFailed carries the remote error class, message and backtrace."""
    async with node(client):
        handle = await Doomed.perform_async()
        with pytest.raises(natskiq.JobFailed) as caught:
            await handle.result(timeout=20)
        assert (caught.value.jid, caught.value.error_class, caught.value.error_message) == (
            handle.jid, "ValueError", "bad address",
        )  # fmt: skip
        assert any("bad address" in line for line in caught.value.backtrace)
        # The failure is kept before the failed event is published: wait for the event.
        status = await handle.wait(timeout=10)
        assert (status.state, status.error_class) == ("failed", "ValueError")


async def test_a_return_value_that_is_not_json_fails_the_job(client: natskiq.Client) -> None:
    """A set is not JSON: the job fails with a TypeError that says so; the node carries on."""
    async with node(client):
        handle = await Unserialisable.perform_async()
        with pytest.raises(natskiq.JobFailed) as caught:
            await handle.result(timeout=20)
        assert (
            caught.value.error_class == "TypeError" and "not JSON-serialisable" in caught.value.error_message
        )
        assert await (await Add.perform_async(3, 4)).result(20) == 7  # the node carries on


async def test_a_result_larger_than_the_max_payload_fails_clearly(client: natskiq.Client) -> None:
    """A 2 MB result cannot be stored: the job fails with an error that gives the sizes."""
    async with node(client):
        handle = await Huge.perform_async()
        with pytest.raises(natskiq.JobFailed) as caught:
            await handle.result(timeout=20)
        assert (
            caught.value.error_class == "EnqueueError" and "over the server's" in caught.value.error_message
        )


async def test_a_class_without_keep_result_keeps_none(client: natskiq.Client) -> None:
    """result() of a job that keeps none raises NotFound once the job finished, not a timeout."""
    async with node(client):
        handle = await Plain.perform_async()
        with pytest.raises(natskiq.NotFound, match="without a result"):
            await handle.result(timeout=20)
        assert (await handle.wait(timeout=5)).state == "succeeded"


async def test_keep_result_per_call_and_its_expiry(client: natskiq.Client) -> None:
    """set(keep_result=1) keeps this call's result for a second; then it has expired."""
    async with node(client):
        handle = await Plain.set(keep_result=1).perform_async()
        assert await handle.result(timeout=20) == "not kept"
        await anyio.sleep(2.5)
        with pytest.raises(natskiq.NotFound):
            await handle.result(timeout=5)


async def test_a_cancelled_job_raises_job_cancelled(client: natskiq.Client) -> None:
    async with node(client):
        handle = await Sleeper.perform_async(30)
        await until(lambda: is_running(handle), timeout=20)
        await natskiq.api.cancel(client, handle.jid)
        with pytest.raises(natskiq.JobCancelled):
            await handle.result(timeout=20)
        assert (await handle.status()).state == "cancelled"


async def test_progress_shows_in_the_status(client: natskiq.Client) -> None:
    """Progress reports reach the status, rate-limited, the last one (1.0) always."""
    async with node(client):
        handle = await Reporter.perform_async(3)
        assert await handle.result(timeout=20) == "done"
        status = await handle.status()
        progress = [e.fields["progress"] for e in status.events if e.state == "progress"]
        assert progress[-1] == 1.0 and status.progress == 1.0 and status.message == "step 3 of 3"


async def test_unknown_jids_and_timeouts(client: natskiq.Client) -> None:
    """An unknown jid is NotFound at once; a job that is still running times out."""
    async with node(client):
        with pytest.raises(natskiq.NotFound):
            await client.job("nosuchjob").result(timeout=5)
        with pytest.raises(natskiq.NotFound):
            await client.job("nosuchjob").status()
        with pytest.raises(natskiq.ConfigError):
            client.job("not a jid")
        slow = await Sleeper.perform_async(5)
        with pytest.raises(TimeoutError):
            await slow.result(timeout=0.3)


async def test_events_can_be_turned_off(nats_url: str, namespace: str) -> None:
    """With events off at the producer and the node, nothing is published, results still work."""
    async with natskiq.connect(nats_url, namespace=namespace, events=False) as quiet:
        async with running_node(nats_url, namespace, node_id="q1", events=False):
            handle = await Add.perform_async(5, 5)
            assert await handle.result(timeout=20) == 10
        info = await quiet.js.stream_info(quiet.names.events_stream)
        assert info.state.messages == 0


async def test_a_nodes_running_and_succeeded_events_are_the_documents_of_the_guide(
    client: natskiq.Client,
) -> None:
    """Their subjects, and compact JSON with the fields in the guide's order and their types."""
    async with node(client):
        handle = await Add.perform_async(2, 3)
        assert (await handle.wait(timeout=20)).state == "succeeded"
    for state in ("running", "succeeded"):
        subject = f"{client.namespace}.evt.default.tests:results:Add.{state}.{handle.jid}"
        msg = await client.js.get_msg(client.names.events_stream, subject=subject)
        doc = json.loads(msg.data)
        assert list(doc) == ["jid", "queue", "class", "state", "at", "node", "attempt"]
        assert doc == {
            "jid": handle.jid, "queue": "default", "class": Add.name, "state": state,
            "at": doc["at"], "node": "r1", "attempt": 1,
        }  # fmt: skip
        assert type(doc["at"]) is float and abs(doc["at"] - time.time()) < 60
        assert msg.data == json.dumps(doc, separators=(",", ":")).encode()


async def test_hostile_events_do_not_break_a_status(client: natskiq.Client) -> None:
    """Bytes, other JSON and wrong types on a job's event subject are skipped or ignored."""
    async with node(client):
        handle = await Add.perform_async(1, 2)
        assert await handle.result(timeout=20) == 3
        subject = client.names.event_subject("default", Add.name, "progress", handle.jid)
        for junk in (b"\xff", b"[]", b'{"jid": 1}', json.dumps({
            "jid": handle.jid, "queue": "default", "class": Add.name, "state": "progress", "at": 1.0,
            "progress": "lots", "node": 7, "attempt": "x",
        }).encode()):  # fmt: skip
            await client.js.publish(subject, junk)
        status = await handle.status()
        assert status.state == "succeeded" and status.progress is None and status.node == "r1"


async def test_a_queued_event_stored_after_the_end_does_not_hold_up_a_wait(client: natskiq.Client) -> None:
    """A fast job can run and finish before its producer, back from the PubAck, publishes
    its queued event (stamped before the publish): wait() and result(timeout=0) see it finished."""
    async with node(client):
        handle = await client.enqueue(Add, 2, 2)
        assert await handle.result(timeout=20) == 4
    await ensure_events(client.js, client.names)
    late = {"jid": handle.jid, "queue": "default", "class": Add.name, "state": "queued", "at": 1.0}
    subject = client.names.event_subject("default", Add.name, "queued", handle.jid)
    await client.js.publish(subject, json.dumps(late).encode())
    other = client.job(handle.jid)
    assert (await other.wait(timeout=5)).state == "succeeded"
    assert await other.result(timeout=0) == 4


def test_a_progress_event_first_means_running() -> None:
    """A job whose running event has left the bounded stream, progress first, reads as running."""
    progress = Event(jid="j1", queue="default", cls="C", state="progress", at=1.0, fields={"progress": 0.5})
    status = fold([progress])
    assert status is not None and (status.state, status.progress) == ("running", 0.5)


async def test_a_job_with_more_events_than_read_shows_its_latest_state(client: natskiq.Client) -> None:
    """Past the events read from the start, the latest event still decides the state."""
    await ensure_events(client.js, client.names)
    states = ["queued", "running", "progress", "progress", "progress", "succeeded"]
    for state in states:
        subject = client.names.event_subject("default", "C", state, "longjob")
        doc = {"jid": "longjob", "queue": "default", "class": "C", "state": state, "at": 1.0}
        await client.js.publish(subject, json.dumps(doc).encode())
    status = await job_status(client.js, client.names, "longjob", limit=3)
    assert status is not None and status.state == "succeeded" and len(status.events) == 4


async def test_a_delete_marker_on_the_result_subject_is_not_a_result(client: natskiq.Client) -> None:
    """A waiter skips a delete on the result's subject and returns the outcome that follows."""
    await ensure_results(client.js, client.names)
    subject = client.names.result_subject("marked")
    got: list[object] = []

    async def wait() -> None:
        handle = natskiq.JobHandle("marked", client, known=True)  # as perform_async returns it
        got.append(await handle.result(timeout=20))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.5)  # the waiter has subscribed and found nothing
        await client.js.publish(subject, b"", headers={"KV-Operation": "DEL"})
        await client.js.publish(subject, json.dumps({"state": "succeeded", "result": 7}).encode())
    assert got == [7]


async def test_wait_begun_as_the_job_ends_sees_it_end(client: natskiq.Client) -> None:
    """wait() called just as its job finishes still returns: the server hands an event to
    subscribers before the stream stores it, and a core subscription made in between missed
    the end (about 2 waits in 100 hung)."""
    async with node(client):
        for i in range(200):
            handle = await Add.perform_async(i, 0)
            if i % 2:
                await Plain.perform_async()  # shifts the next wait's start against the job's end
            with anyio.fail_after(10):
                assert (await handle.wait()).state == "succeeded"


async def test_result_with_a_timeout_of_0_answers_at_once(client: natskiq.Client) -> None:
    """result(timeout=0) and wait(timeout=0) give what is there: a kept result, a finished
    status; a job still running times out, an unknown jid and a job that keeps none are NotFound."""
    async with node(client):
        done = await Add.perform_async(4, 5)
        assert (await done.wait(timeout=20)).state == "succeeded"
        assert await done.result(timeout=0) == 9
        assert (await done.wait(timeout=0)).state == "succeeded"
        unkept = await Plain.perform_async()
        await unkept.wait(timeout=20)
        with pytest.raises(natskiq.NotFound, match="without a result"):
            await unkept.result(timeout=0)
        with pytest.raises(natskiq.NotFound, match="no job"):
            await client.job("nosuchjob").result(timeout=0)
        slow = await Sleeper.perform_async(30)
        await until(lambda: is_running(slow), timeout=20)
        with pytest.raises(TimeoutError):
            await slow.result(timeout=0)
        with pytest.raises(TimeoutError, match="has not finished"):
            await slow.wait(timeout=0)
        with pytest.raises(natskiq.NotFound):
            await client.job("nosuchjob").wait(timeout=0)
        await natskiq.api.cancel(client, slow.jid)  # so that the node stops at once


async def test_the_events_stream_limits_come_from_the_worker(client: natskiq.Client) -> None:
    """--events-max-msgs/-bytes/-days set the stream's limits; by default it has no byte limit
    (JetStream reserves a byte limit from the server's storage up front)."""
    async with running_node(client.url, client.namespace, node_id="l1"):  # type: ignore[arg-type]
        config = (await client.js.stream_info(client.names.events_stream)).config
        assert (config.max_msgs, config.max_bytes, config.max_age) == (1_000_000, -1, 7 * 24 * 3600)
    settings = {"events_max_msgs": 50, "events_max_bytes": 1 << 20, "events_max_days": 1}
    async with running_node(client.url, client.namespace, node_id="l2", **settings):  # type: ignore[arg-type]
        config = (await client.js.stream_info(client.names.events_stream)).config
        assert (config.max_msgs, config.max_bytes, config.max_age) == (50, 1 << 20, 24 * 3600)
    for bad in ({"events_max_msgs": 0}, {"events_max_days": -1}, {"events": "yes"}):
        with pytest.raises(natskiq.ConfigError):
            Settings(**bad)  # type: ignore[arg-type]


def test_a_late_queued_event_does_not_take_a_finished_job_back() -> None:
    """The producer's queued event stored after the node's (two connections) leaves the job
    succeeded; a replay's queued event, published after the failure, makes it queued again."""

    def event(state: str, at: float) -> Event:
        return Event(jid="j1", queue="default", cls="C", state=state, at=at)

    late = fold([event("running", 2.0), event("succeeded", 3.0), event("queued", 1.0)])
    assert late is not None and late.state == "succeeded" and late.enqueued_at == 1.0
    replayed = fold([event("queued", 1.0), event("running", 2.0), event("failed", 3.0), event("queued", 5.0)])
    assert replayed is not None and replayed.state == "queued"
