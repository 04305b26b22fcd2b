"""Periodic jobs, held by JetStream itself as repeating message schedules.

``natskiq.periodic("*/5 * * * *", Cleanup, "tmp", tz="Europe/Paris")``
registers a definition in this process; every ``natskiq worker`` that
imports it stores it at start-up as a schedule message on
``<ns>.scheduled.<queue>.periodic-<name>`` (``Nats-Schedule: <cron>`` or
``@every 30s``, targeting the queue). The server fires it: no scheduler
process exists, and since one subject holds one schedule, no tick fires
twice however many workers register it. Registration is idempotent: an
unchanged definition is left alone, so its timer is never reset.

Each tick is an ordinary job whose envelope carries ``periodic: <name>``;
the node gives each run its own jid (``<template jid>-<stream sequence>``).
Needs nats-server 2.14+ for ``@every``, cron and time zones.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from natskiq import job as jobs
from natskiq.errors import ConfigError
from natskiq.topology import PERIODIC_PREFIX, Names, check_name
from natskiq.worker import Worker

PREFIX = PERIODIC_PREFIX
_EVERY = re.compile(r"@every (\d+(?:\.\d+)?)(ms|s|m|h)")
_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def normalize(spec: str) -> str:
    """The ``Nats-Schedule`` value for a cron line (5 or 6 fields), an alias
    such as ``@daily``, or ``@every 30s``.

    Raises:
        ConfigError: the schedule cannot be understood.
    """
    spec = " ".join(spec.split())
    if spec.startswith("@every"):
        match = _EVERY.fullmatch(spec)
        if not match:
            raise ConfigError(f"bad interval {spec!r}: use e.g. '@every 30s', '@every 5m'")
        if float(match.group(1)) * _UNITS[match.group(2)] < 1:
            raise ConfigError(f"{spec!r} is too short: JetStream schedules repeat at most once a second")
        return spec
    if spec in _ALIASES:
        return spec
    fields = spec.split(" ")
    if len(fields) == 5:
        fields.insert(0, "0")  # JetStream's cron has a seconds field first
    if len(fields) != 6 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z?]+", f) for f in fields):
        raise ConfigError(f"bad cron expression {spec!r}: use 5 fields (min hour dom month dow) or 6")
    return " ".join(fields)


@attrs.frozen(kw_only=True)
class Periodic:
    """One periodic job definition."""

    name: str
    schedule: str
    worker: str
    queue: str
    retry: int
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    tz: str | None = None

    def template(self) -> jobs.Job:
        """The envelope every tick carries (its jid is stable per definition)."""
        jid = hashlib.sha256(f"{self.queue}/{self.name}".encode()).hexdigest()[:24]
        return jobs.Job(
            jid=jid, cls=self.worker, args=self.args, kwargs=self.kwargs, queue=self.queue,
            retry=self.retry, created_at=0.0, enqueued_at=0.0, periodic=self.name,
        )  # fmt: skip

    def headers(self, names: Names) -> dict[str, str]:
        headers = {"Nats-Schedule": self.schedule, "Nats-Schedule-Target": names.queue_subject(self.queue)}
        if self.tz:
            headers["Nats-Schedule-Time-Zone"] = self.tz
        return headers


_registry: dict[str, Periodic] = {}


def periodic(
    schedule: str,
    worker: type[Worker],
    *args: Any,
    tz: str | None = None,
    name: str | None = None,
    queue: str | None = None,
    **kwargs: Any,
) -> Periodic:
    """Run ``worker`` with these arguments on a schedule, cluster-wide.

    Args:
        schedule: a cron line (``"*/5 * * * *"``, or 6 fields with seconds
            first), an alias (``"@hourly"``, ``"@daily"``...) or an interval
            (``"@every 30s"``).
        worker: the Worker subclass to run.
        *args: its positional arguments (JSON-native).
        tz: an IANA time zone for cron schedules (UTC by default).
        name: the definition's name (default: the worker's class name);
            one name, one schedule.
        queue: the queue (default: the worker's).
        **kwargs: its keyword arguments (JSON-native).

    Returns:
        The definition, which workers importing this module register.
    """
    jobs.check_arguments(args, kwargs)
    label = name or re.sub(r"[^A-Za-z0-9_-]", "-", worker.__name__)
    check_name("periodic job", label)
    if len(PREFIX + label) > 64:
        raise ConfigError(f"periodic job name {label!r} is too long (at most {64 - len(PREFIX)})")
    definition = Periodic(
        name=label, schedule=normalize(schedule), worker=worker.name,
        queue=check_name("queue", queue or worker.options.queue), retry=worker.options.retries,
        args=list(args), kwargs=dict(kwargs), tz=tz,
    )  # fmt: skip
    _registry[label] = definition
    return definition


def registered() -> list[Periodic]:
    """Every definition made in this process, by name."""
    return [_registry[name] for name in sorted(_registry)]


def subject(names: Names, definition: Periodic) -> str:
    return names.periodic_subject(definition.queue, definition.name)


async def register(js: JetStreamContext, names: Names, definitions: list[Periodic]) -> int:
    """Store each definition unless it is already stored unchanged; returns how many were written."""
    written = 0
    for definition in definitions:
        target = subject(names, definition)
        payload = jobs.encode(definition.template())
        headers = definition.headers(names)
        try:
            current = await js.get_msg(names.queue_stream(definition.queue), subject=target)
        except NotFoundError:
            current = None
        if current is not None and current.data == payload and _same(current.headers or {}, headers):
            continue
        await js.publish(target, payload, headers=headers)
        written += 1
    return written


def _same(stored: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(stored.get(key) == value for key, value in wanted.items()) and (
        stored.get("Nats-Schedule-Time-Zone") == wanted.get("Nats-Schedule-Time-Zone")
    )
