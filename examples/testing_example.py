"""Testing code that enqueues jobs, with natskiq.testing and plain pytest::

    pytest -o asyncio_mode=auto examples/testing_example.py

fake() records jobs and inline() runs them at once, both without a server;
drain() runs what a real server holds (natskiq_client, a fixture of the
pytest plugin natskiq installs).
"""

from __future__ import annotations

import natskiq
from natskiq import testing

sent: list[str] = []


class Welcome(natskiq.Worker):
    async def perform(self, email: str) -> None:
        sent.append(email)


async def signup(email: str) -> str:
    """The code under test: it enqueues a welcome email."""
    return await Welcome.perform_async(email)


async def test_signup_enqueues_a_welcome() -> None:
    with testing.fake() as fake:
        await signup("ada@example.com")
        assert [job.args for job in Welcome.jobs] == [["ada@example.com"]]
        assert "ada@example.com" not in sent  # recorded, not run
        assert await fake.drain() == 1  # run what was recorded
        await signup("bob@example.com")
        Welcome.clear()  # forget it instead
    assert "ada@example.com" in sent and "bob@example.com" not in sent


async def test_inline_runs_at_once() -> None:
    with testing.inline():
        await signup("grace@example.com")  # returns once perform has run
    assert "grace@example.com" in sent


async def test_drain_runs_what_the_server_holds(natskiq_client: natskiq.Client) -> None:
    await signup("linus@example.com")  # natskiq_client is the default client
    with testing.zero_backoff():  # so a failing job's retry would be due at once
        assert await testing.drain(natskiq_client) == 1  # raises if a job failed
    assert "linus@example.com" in sent
