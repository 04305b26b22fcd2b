"""perform_async / _in / _at are typed from the worker's own perform()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SNIPPET = """
from __future__ import annotations

from datetime import UTC, datetime

import natskiq


class SendEmail(natskiq.Worker, queue="emails"):
    async def perform(self, user_id: int, subject: str = "hi") -> None: ...


class Resize(natskiq.Worker):
    def perform(self, path: str) -> None: ...


async def ok() -> None:
    await SendEmail.perform_async(42)
    await SendEmail.perform_async(42, subject="x")
    await SendEmail.perform_in(60, 42)
    await SendEmail.perform_at(datetime.now(UTC), 42)
    await SendEmail.set(queue="urgent").perform_async(7)
    await Resize.perform_async("cat.png")
    chained: natskiq.ChainHandle = await natskiq.chain(
        Resize.s("cat.png"), SendEmail.set(queue="q").s(7), SendEmail.s().set(pass_result=True)
    ).enqueue()
    print(await chained.result(timeout=1), chained.chain_id, chained.jids[0])


async def wrong() -> None:
    await SendEmail.perform_async("42")  # error: str for int
    await SendEmail.perform_async(42, bogus=1)  # error: unknown keyword
    await Resize.perform_in(5)  # error: missing path
    await SendEmail.set(queue="q").perform_async()  # error: missing user_id
    natskiq.chain(SendEmail)  # error: a class, not a signature
"""


def test_mypy_rejects_calls_that_do_not_match_perform(tmp_path: Path) -> None:
    """mypy accepts calls matching perform()'s signature and flags each one that does not."""
    source = tmp_path / "snippet.py"
    source.write_text(SNIPPET)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    flagged = sorted(int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line)
    expected = [n for n, line in enumerate(SNIPPET.splitlines(), 1) if "# error:" in line]
    assert len(expected) == 5
    assert flagged == expected, result.stdout
