"""The wire format is language-neutral: a job published from Node.js runs on a Python node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

import natskiq

from . import sample_workers  # noqa: F401  (registers tests.Record in this process)
from .conftest import running_node, wait_for_ledger

NODE_DIR = Path(__file__).parent / "node"


def node_ready() -> str | None:
    """Why the Node.js publisher cannot run here, or None when it can."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed"
    if not (NODE_DIR / "node_modules" / "@nats-io" / "jetstream").is_dir():
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            return f"npm ci failed: {result.stderr[-500:]}"
    return None


async def test_job_published_from_nodejs_runs(client: natskiq.Client, ledger: Path) -> None:
    """A job that @nats-io/jetstream publishes per docs/wire-format.md runs on a Python node."""
    reason = await anyio.to_thread.run_sync(node_ready)
    if reason:
        pytest.skip(f"cannot run the Node.js publisher: {reason}")
    await client.ensure_queue("default")
    args = json.dumps([0.0, {"from": "node", "n": [1, 2.5, None, True]}])
    result = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            ["node", "enqueue.mjs", client.url or "", client.namespace, "default", "tests.Record", args],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    )
    assert result.returncode == 0, result.stderr
    published = json.loads(result.stdout)
    async with running_node(client.url, client.namespace):
        rows = await wait_for_ledger(ledger, 1)
    assert rows[0].jid == published["jid"]
    assert rows[0].note == {"from": "node", "n": [1, 2.5, None, True]}
