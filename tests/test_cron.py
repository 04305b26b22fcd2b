"""Periodic jobs: JetStream schedules in the queue stream, registered by workers."""

from __future__ import annotations

from pathlib import Path

import pytest

import natskiq
from natskiq import api
from natskiq.enqueue import cron

from .conftest import running_node, wait_for_ledger
from .sample_workers import Tick


@pytest.fixture
def clean_registry() -> object:
    saved = dict(cron._registry)
    cron._registry.clear()
    yield
    cron._registry.clear()
    cron._registry.update(saved)


@pytest.mark.parametrize(
    ("spec", "header"),
    [
        ("*/5 * * * *", "0 */5 * * * *"),
        ("30 */5 * * * *", "30 */5 * * * *"),
        ("@daily", "@daily"),
        ("@every 30s", "@every 30s"),
        ("@every  2m", "@every 2m"),
    ],
)
def test_schedule_forms(spec: str, header: str) -> None:
    """Cron lines (5 or 6 fields), aliases and intervals become Nats-Schedule values."""
    assert cron.normalize(spec) == header


@pytest.mark.parametrize("spec", ["@every 500ms", "@every soon", "* * *", "0 0 * * * * *", "rm -rf /"])
def test_bad_schedules_are_refused(spec: str) -> None:
    """Nonsense and sub-second intervals raise ConfigError."""
    with pytest.raises(natskiq.ConfigError):
        cron.normalize(spec)


async def test_periodic_job_runs_on_its_schedule_once_per_tick(
    client: natskiq.Client, ledger: Path, clean_registry: object
) -> None:
    """A periodic job registered by two workers fires once per tick, each run with its own jid."""
    natskiq.periodic("@every 1s", Tick, "tick", name="ticker")
    async with running_node(client.url, client.namespace), running_node(client.url, client.namespace):
        rows = await wait_for_ledger(ledger, 3, timeout=15)
        [definition] = await api.periodic_jobs(client)
        assert (definition.name, definition.schedule, definition.cls) == ("ticker", "@every 1s", "tests.Tick")
        assert await api.find(client, "scheduled") == []  # a definition is not a scheduled job
        await api.remove_periodic(client, "ticker")
    assert len({r.jid for r in rows}) == len(rows)  # one run per tick, each its own jid
    gaps = [b.at - a.at for a, b in zip(rows, rows[1:], strict=False)]
    assert all(gap > 0.5 for gap in gaps), gaps  # two registrations did not double the ticks
    assert await api.periodic_jobs(client) == []
    with pytest.raises(natskiq.NotFound):
        await api.remove_periodic(client, "ticker")


async def test_registration_is_idempotent(client: natskiq.Client, clean_registry: object) -> None:
    """Registering an unchanged definition again writes nothing; a change replaces it."""
    definition = natskiq.periodic("0 3 * * *", Tick, "nightly", tz="Europe/Paris")
    await client.ensure_queue("default")
    assert await cron.register(client.js, client.names, [definition]) == 1
    assert await cron.register(client.js, client.names, [definition]) == 0
    changed = natskiq.periodic("0 4 * * *", Tick, "nightly", tz="Europe/Paris")
    assert await cron.register(client.js, client.names, [changed]) == 1
    [info] = await api.periodic_jobs(client)
    assert (info.schedule, info.tz, info.args) == ("0 0 4 * * *", "Europe/Paris", ["nightly"])


def test_periodic_arguments_must_be_json() -> None:
    """Periodic job arguments are checked like any enqueue."""
    with pytest.raises(TypeError, match="argument 0"):
        natskiq.periodic("@hourly", Tick, {1, 2})
