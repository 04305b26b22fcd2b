"""Chains (natskiq.chain, natskiq.flow.chains): steps run in order against a real server and node."""

from __future__ import annotations

import contextlib
import json

import anyio
import pytest

import natskiq
from natskiq import api, testing
from natskiq import job as jobs
from natskiq.ops.launcher import Launcher

from .conftest import failed_count, nested, running_node, until
from .test_cli_more import natskiq_cli

RUNS: list[tuple[str, object]] = []  # (class, what it received), in the order steps ran
BROKEN: set[str] = set()  # keys for which Flaky fails


class Fetch(natskiq.Worker, name="tests.chains.Fetch"):
    async def perform(self, url: str, sleep: float = 0.0) -> str:
        RUNS.append(("fetch", url))
        await anyio.sleep(sleep)
        return f"<html>{url}</html>"


class Parse(natskiq.Worker, name="tests.chains.Parse"):
    async def perform(self, html: str, tag: str = "html") -> dict[str, object]:
        RUNS.append(("parse", html))
        return {"tag": tag, "length": len(html)}


class Store(natskiq.Worker, name="tests.chains.Store"):
    async def perform(self, doc: dict[str, object], *rest: object) -> str:
        RUNS.append(("store", [doc, *rest]))
        return f"stored {doc['length']}"


class Flaky(natskiq.Worker, retries=0, name="tests.chains.Flaky"):
    async def perform(self, previous: object, key: str) -> object:
        RUNS.append(("flaky", key))
        if key in BROKEN:
            raise RuntimeError(f"flaky {key}")
        return previous


class Unjsonable(natskiq.Worker, retries=0, name="tests.chains.Unjsonable"):
    async def perform(self) -> object:
        return {1, 2}


def node(client: natskiq.Client) -> contextlib.AbstractAsyncContextManager[Launcher]:
    """An in-process worker node for the block (a task group: entered in the test itself)."""
    assert client.url is not None
    return running_node(client.url, client.namespace, node_id="c1")


def ran(kind: str) -> list[object]:
    return [got for name, got in RUNS if name == kind]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RUNS.clear()
    BROKEN.clear()


async def test_a_chain_runs_in_order_and_passes_results_when_asked(client: natskiq.Client) -> None:
    """Each step runs after the one before; pass_result prepends the previous result; the
    handle is the last step's jid and its result() is the last step's return value."""
    async with node(client):
        handle = await natskiq.chain(
            Fetch.s("a.example"),
            Parse.s(tag="p").set(pass_result=True),
            Store.s("extra").set(pass_result=True, queue="default"),
        ).enqueue()
        assert await handle.result(timeout=20) == "stored 22"
        assert await handle.result(timeout=0) == "stored 22"  # 0: only if it has ended
        status = await handle.wait(timeout=10)
        assert (status.jid, status.state, status.cls) == (handle.jids[-1], "succeeded", Store.name)
        assert (await handle.status()).jid == handle.jids[-1]
        first = await handle.step(0).status()
        assert (first.state, first.cls) == ("succeeded", Fetch.name)
    assert [name for name, _ in RUNS] == ["fetch", "parse", "store"]
    assert ran("parse") == ["<html>a.example</html>"]
    assert ran("store") == [[{"tag": "p", "length": 22}, "extra"]]
    assert isinstance(handle, natskiq.JobHandle) and handle == handle.jids[-1] and len(handle.jids) == 3
    # A step that does not ask for the result gets its own arguments only.
    async with node(client):
        plain = await natskiq.chain(Fetch.s("b"), Fetch.s("c")).enqueue(client=client)
        assert await plain.result(timeout=20) == "<html>c</html>"
    assert ran("fetch")[-2:] == ["b", "c"]


async def test_a_failed_step_stops_the_chain_and_replay_resumes_it(client: natskiq.Client) -> None:
    """A step that fails for good is in the failed set with the chain's id and the rest (API and
    CLI), result() raises JobFailed for it, later steps do not run; replaying it runs the rest."""
    BROKEN.add("middle")
    async with node(client):
        handle = await natskiq.chain(
            Fetch.s("x"),
            Flaky.s("middle").set(pass_result=True),
            Parse.s().set(pass_result=True),
        ).enqueue()
        with pytest.raises(natskiq.JobFailed) as caught:
            await handle.result(timeout=20)
        assert (caught.value.jid, caught.value.error_class) == (handle.jids[1], "RuntimeError")
        assert (await handle.wait(timeout=10)).jid == handle.jids[1]
        with pytest.raises(natskiq.JobFailed):
            await handle.result(timeout=0)
        [entry] = await api.find(client, "failed")
        assert entry.jid == handle.jids[1] and entry.chain_id == handle.chain_id
        chain = entry.to_dict()["job"]["chain"]
        assert (chain["id"], chain["step"], chain["of"]) == (handle.chain_id, 2, 3)
        assert [step["jid"] for step in chain["rest"]] == [handle.jids[2]]
        assert ran("parse") == []

        assert client.url is not None
        shown = await natskiq_cli("failed", "list", url=client.url, namespace=client.namespace)
        assert f"(chain {handle.chain_id}, step 2 of 3)" in shown.stdout, shown.stderr
        as_json = await natskiq_cli("failed", "list", "--json", url=client.url, namespace=client.namespace)
        assert json.loads(as_json.stdout)["jobs"][0]["job"]["chain"]["id"] == handle.chain_id

        BROKEN.clear()
        assert await api.replay(client, entry) == handle.jids[1]
        assert await client.job(handle.jid).result(timeout=20) == {"tag": "html", "length": 14}
    assert ran("flaky") == ["middle", "middle"] and ran("parse") == ["<html>x</html>"]


async def test_a_step_delivered_twice_stores_its_successor_once(client: natskiq.Client) -> None:
    """The same step stored twice (as a redelivery after a lost ack would run it) runs twice,
    but its successor is stored and run once: its Nats-Msg-Id is the stream's duplicate key."""
    first = natskiq.chain(Fetch.s("twice"), Parse.s().set(pass_result=True)).first_job()
    assert first.chain is not None
    await client.ensure_queue("default")
    payload = jobs.encode(first)
    for attempt in ("a", "b"):  # two message ids: JetStream stores both copies
        await client.js.publish(
            client.names.enqueue_subject("default"), payload, headers={"Nats-Msg-Id": attempt}
        )
    async with node(client):
        await until(lambda: len(ran("fetch")) == 2, timeout=20)
        # Empty: both runs of the step were acked, each after storing (or finding) its successor.
        await until(lambda: _empty(client), timeout=20)
        info = await client.js.stream_info(client.names.queue_stream("default"))
    assert ran("fetch") == ["twice", "twice"] and ran("parse") == ["<html>twice</html>"]
    assert info.state.last_seq == 3  # the two copies of the step, and one successor


async def _empty(client: natskiq.Client) -> bool:
    info = await client.js.stream_info(client.names.queue_stream("default"))
    return info.state.messages == 0


HOSTILE = [
    "not an object",
    {"id": "c", "step": 1, "of": 2, "rest": []},
    {"id": "a.b", "step": 1, "of": 1, "rest": []},
    {"id": "c", "step": True, "of": 1, "rest": []},
    {"id": "c", "step": 2, "of": 1, "rest": []},
    {"id": "c", "step": 1, "of": 10**9, "rest": []},
    {"id": "c", "step": 1, "of": 2, "rest": ["x"]},
    {"id": "c", "step": 1, "of": 2, "rest": [{"jid": "j", "class": "C", "args": [], "kwargs": {}}]},
    {"id": "c", "step": 1, "of": 2, "rest": [
        {"jid": "j>", "class": "C", "args": [], "kwargs": {}, "queue": "default", "retry": 1}]},
    {"id": "c", "step": 1, "of": 2, "rest": [
        {"jid": "j", "class": "C", "args": {}, "kwargs": {}, "queue": "default", "retry": 1}]},
    {"id": "c", "step": 1, "of": 2, "rest": [
        {"jid": "j", "class": "C", "args": [], "kwargs": {}, "queue": "default", "retry": -1}]},
    {"id": "c", "step": 1, "of": 2, "rest": [
        {"jid": "j", "class": "C", "args": [nested(80)], "kwargs": {}, "queue": "default", "retry": 1}]},
    {"id": "c", "step": 1, "of": 2, "rest": [
        {"jid": "j", "class": "C", "args": [], "kwargs": {}, "queue": "q", "retry": 1, "pass_result": 1}]},
    {"id": "c", "step": 1, "of": 2, "rest": [
        {"jid": "j", "class": "", "args": [], "kwargs": {}, "queue": "q", "retry": 1, "keep_result": 0}]},
]  # fmt: skip


async def test_hostile_chain_fields_go_to_the_failed_set(client: natskiq.Client) -> None:
    """An envelope whose chain field has wrong types, values out of range or nested garbage is
    kept in the failed set with the reason; the node runs the next chain as usual."""
    await client.ensure_queue("default")
    subject = client.names.enqueue_subject("default")
    for index, chain in enumerate(HOSTILE):
        doc = {"jid": f"h{index}", "class": Fetch.name, "args": ["h"], "queue": "default", "chain": chain}
        await client.js.publish(subject, json.dumps(doc).encode())
    # Nested deeper than the JSON decoder recurses.
    deep = '{"id":"c","step":1,"of":2,"rest":' + '[{"rest":' * 5000 + "0" + "}]" * 5000 + "}"
    head = f'{{"jid":"deep","class":"{Fetch.name}","args":[],"queue":"default","chain":'
    await client.js.publish(subject, (head + deep + "}").encode())
    garbage = [*HOSTILE, deep]
    for chain in HOSTILE:
        with pytest.raises(natskiq.InvalidJob, match="chain"):
            jobs.decode(
                json.dumps({"jid": "j", "class": "C", "args": [], "queue": "q", "chain": chain}).encode()
            )
    async with node(client):
        await until(lambda: _failed_at_least(client, len(garbage)), timeout=30)
        entries = await api.find(client, "failed")
        assert all(e.job is None and e.reason for e in entries)
        assert sum("chain" in (e.reason or "") for e in entries) == len(HOSTILE)
        handle = await natskiq.chain(Fetch.s("after"), Fetch.s("after2")).enqueue()
        assert await handle.result(timeout=20) == "<html>after2</html>"
    assert ran("fetch") == ["after", "after2"]  # no hostile step ran


async def _failed_at_least(client: natskiq.Client, count: int) -> bool:
    return await failed_count(client) >= count


async def test_a_result_that_is_not_json_fails_the_step_that_passes_it(client: natskiq.Client) -> None:
    """A return value JSON cannot carry, asked for by the next step, fails the step that
    returned it, with an error that says so; the chain stops there."""
    async with node(client):
        handle = await natskiq.chain(Unjsonable.s(), Parse.s().set(pass_result=True)).enqueue()
        with pytest.raises(natskiq.JobFailed) as caught:
            await handle.result(timeout=20)
    assert caught.value.jid == handle.jids[0] and caught.value.error_class == "TypeError"
    assert "passed to the next step" in caught.value.error_message
    assert ran("parse") == []


async def test_a_cancelled_step_stops_the_chain(client: natskiq.Client) -> None:
    """api.cancel of a running step drops it, and the steps after it never run."""
    async with node(client):
        handle = await natskiq.chain(Fetch.s("slow", sleep=30), Fetch.s("never")).enqueue()
        await until(lambda: ran("fetch") == ["slow"], timeout=20)
        with pytest.raises(TimeoutError, match="step 1 has not finished"):
            await handle.result(timeout=0)
        await api.cancel(client, handle.jids[0])
        with pytest.raises(natskiq.JobCancelled):
            await handle.result(timeout=20)
    assert ran("fetch") == ["slow"]


async def test_bad_signatures_and_chains_raise_at_call_time(client: natskiq.Client) -> None:
    """Arguments that are not JSON-native, unknown options, an empty chain, a non-signature
    step and a chain too large for the server raise before anything is stored."""
    with pytest.raises(TypeError, match="argument 0"):
        Fetch.s(object())
    with pytest.raises(TypeError, match="keyword argument 'when'"):
        Fetch.set(queue="q").s("u", when={1, 2})
    with pytest.raises(natskiq.ConfigError, match="unknown signature option"):
        Fetch.s("u").set(timeout=3)
    with pytest.raises(natskiq.ConfigError, match="queue"):
        Fetch.s("u").set(queue="a.b")
    with pytest.raises(natskiq.ConfigError, match="pass_result"):
        Fetch.s("u").set(pass_result="yes")
    with pytest.raises(natskiq.ConfigError, match="1 to"):
        natskiq.chain()
    with pytest.raises(natskiq.ConfigError, match="no previous result"):
        natskiq.chain(Parse.s().set(pass_result=True))
    with pytest.raises(natskiq.ConfigError, match="not a signature"):
        natskiq.chain(Fetch.s("u"), Fetch)  # type: ignore[arg-type]
    with pytest.raises(natskiq.EnqueueError, match="bytes"):
        await natskiq.chain(Fetch.s("u"), *[Fetch.s("x" * 100_000)] * 12).enqueue(client=client)
    assert await api.find(client, "queued") == []


async def test_chains_run_in_the_testing_modes_and_drain(client: natskiq.Client) -> None:
    """inline() runs every step at once, fake() records the first and its drain() runs the rest,
    and testing.drain() runs a chain stored on a real server to its end."""
    steps = (Fetch.s("i"), Parse.s().set(pass_result=True), Store.s().set(pass_result=True))
    with testing.inline():
        await natskiq.chain(*steps).enqueue()
    assert RUNS == [("fetch", "i"), ("parse", "<html>i</html>"), ("store", [{"tag": "html", "length": 14}])]
    RUNS.clear()
    with testing.fake() as fake:
        await natskiq.chain(*steps).enqueue()
        assert [len(Fetch.jobs), len(Parse.jobs)] == [1, 0]
        assert await fake.drain() == 3
    assert [name for name, _ in RUNS] == ["fetch", "parse", "store"]
    RUNS.clear()
    handle = await natskiq.chain(*steps).enqueue(client=client)
    assert await testing.drain(client) == 3
    assert ran("store") == [[{"tag": "html", "length": 14}]] and handle == handle.jids[2]
