"""The wire format is language-neutral: a job published from Node.js runs on a Python node,
and Node.js reads its kept result and follows its events as docs/wire-format.md says."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import natskiq
from natskiq import api

from . import sample_workers  # noqa: F401  (registers tests.Record in this process)
from .conftest import running_node, until, wait_for_ledger

NODE_DIR = Path(__file__).parent / "node"
PACKAGES = ("jetstream", "kv", "transport-node")


GATES: dict[str, anyio.Event] = {}
"""Per namespace: set when the Node.js script says it waits for the result."""


SCALE = "tests.wire.Scale+é>\U0001d11e"
"""A class name whose subject token (``tests:wire:Scale____``) both languages must agree on."""


class Scale(natskiq.Worker, name=SCALE):
    """Returns its numbers times a factor, once its gate opens (no keep_result of its own:
    the envelope asks)."""

    async def perform(self, numbers: list[float], factor: float, gate: str) -> dict[str, object]:
        await GATES[gate].wait()
        return {"scaled": [n * factor for n in numbers], "by": factor}


def node_ready() -> str | None:
    """Why the Node.js scripts cannot run here, or None when they can."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed"
    if not all((NODE_DIR / "node_modules" / "@nats-io" / name).is_dir() for name in PACKAGES):
        try:
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            return "npm ci did not finish in 300 s (no registry?)"
        if result.returncode != 0:
            return f"npm ci failed: {result.stderr[-500:]}"
    return None


async def need_node() -> None:
    """Skip the test, saying why, where the Node.js scripts cannot run."""
    reason = await anyio.to_thread.run_sync(node_ready)
    if reason:
        pytest.skip(f"cannot run the Node.js scripts: {reason}")


async def run_node(script: str, *args: str) -> dict[str, Any]:
    """Run a script of tests/node; what it printed, as JSON."""
    result = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            ["node", script, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
        )
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


# The Node.js tests share tests/node/node_modules, which need_node() may install (npm ci
# deletes it first): one test process runs them all, one after the other.
@pytest.mark.xdist_group("nodejs")
async def test_job_published_from_nodejs_runs(client: natskiq.Client, ledger: Path) -> None:
    """A job that @nats-io/jetstream publishes per docs/wire-format.md runs on a Python node."""
    await need_node()
    await client.ensure_queue("default")
    args = json.dumps([0.0, {"from": "node", "n": [1, 2.5, None, True]}])
    published = await run_node(
        "enqueue.mjs", client.url or "", client.namespace, "default", "tests.Record", args
    )
    async with running_node(client.url, client.namespace):
        rows = await wait_for_ledger(ledger, 1)
    assert rows[0].jid == published["jid"]
    assert rows[0].note == {"from": "node", "n": [1, 2.5, None, True]}


@pytest.mark.xdist_group("nodejs")
async def test_nodejs_reads_a_kept_result_and_follows_events(client: natskiq.Client) -> None:
    """A job Node.js enqueues with keep_result has its outcome, stored after Node.js found the
    key empty, reach Node.js on the key's subject and then in the results bucket, and its
    events followed, on the subjects and with the fields docs/wire-format.md gives."""
    await need_node()
    await client.ensure_queue("default")
    names, ns = client.names, client.namespace
    GATES[ns] = gate = anyio.Event()
    waiting = await client.nc.subscribe(f"{ns}.wire.waiting", max_msgs=1)

    async def open_gate() -> None:
        await waiting.next_msg(timeout=None)
        gate.set()

    async with running_node(client.url, ns) as node, anyio.create_task_group() as tg:
        tg.start_soon(open_gate)
        args = json.dumps([[1, 2.5, -4], 2, ns])
        out = await run_node("result.mjs", client.url or "", ns, "default", SCALE, args, "90")
        jid = out["jid"]
        outcome = {"state": "succeeded", "result": {"scaled": [2, 5.0, -8], "by": 2}}
        assert (out["result"], out["via"], out["stored"]) == (outcome, "subscription", outcome)
        events = out["events"]
        assert events[0]["subject"].split(".")[3] == "tests:wire:Scale____"
        states = [event["state"] for event in events]
        # The node's events come in order; the producer's queued one may come before or after them.
        assert [state for state in states if state != "queued"] == ["running", "succeeded"]
        for event in events:
            assert event["subject"] == names.event_subject("default", SCALE, event["state"], jid)
            assert (event["jid"], event["queue"], event["class"]) == (jid, "default", SCALE)
            assert isinstance(event["at"], float)
            if event["state"] != "queued":
                assert (event["node"], event["attempt"]) == (node.settings.node_id, 1)
        assert [event["seq"] for event in events] == sorted(event["seq"] for event in events)
        stored = await client.js.get_msg(
            names.kv_stream(names.results_bucket), subject=names.result_subject(jid)
        )
        assert stored.headers is not None and stored.headers["Nats-TTL"] == "90s"

        async def queued() -> bool:
            # The queued event Node.js published counts in the job's status.
            return (await api.job(client, jid)).enqueued_at is not None

        await until(queued)
        status = await api.job(client, jid)
        assert status.state == "succeeded" and status.node == node.settings.node_id
    GATES.pop(ns)
