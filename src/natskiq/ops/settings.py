"""Configuring one ``natskiq worker`` process: its settings, and the app whose workers it runs.

``natskiq worker`` (flags, environment and config file merged) or a caller
in Python builds :class:`Settings`; the :class:`~natskiq.ops.launcher.Launcher`
runs a node with them, and :func:`import_app` imports the modules named in
``Settings.app`` so that their workers are registered before the node
starts. It guarantees that a bad setting fails when :class:`Settings` is
built, before any connection is tried, with a
:class:`~natskiq.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import sys
from typing import Any

import attrs

from natskiq.enqueue.auth import redact_url
from natskiq.errors import ConfigError
from natskiq.topology import MAX_PARTITIONS, Names, check_name

EVENT_LOOPS = ("asyncio", "uvloop")


def _default_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"{host or 'node'}-{os.getpid()}-{os.urandom(2).hex()}"


def parse_queue(spec: str) -> tuple[str, int | None]:
    """``name`` or ``name:weight`` (``name,weight`` as in Sidekiq works too)."""
    name, sep, weight = spec.replace(",", ":").partition(":")
    check_name("queue", name)
    if not sep:
        return name, None
    try:
        value = int(weight)
    except ValueError:
        raise ConfigError(f"queue weight in {spec!r} must be a whole number") from None
    if value < 1:
        raise ConfigError(f"queue weight in {spec!r} must be at least 1")
    return name, value


@attrs.frozen(kw_only=True)
class Settings:
    """Everything one worker process is configured with."""

    url: str | None = attrs.field(default=None, repr=lambda url: repr(url and redact_url(url)))
    namespace: str = "natskiq"
    app: tuple[str, ...] = ()
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    timeout: float = 25.0
    replicas: int | None = None
    lease_ttl: float = 5.0
    ack_wait: float = 4.0
    max_deliveries: int = 25
    partitions: int | None = None
    """Partitions per queue, hence dispatch shards (each with its own master);
    None keeps what the streams have (1 for a new queue). Never lowered."""
    metrics_port: int | None = None
    failed_max_jobs: int | None = None
    failed_max_days: float | None = None
    events: bool = True
    """Publish every job's lifecycle events (see :mod:`natskiq.status.events`)."""
    events_max_msgs: int | None = None
    events_max_bytes: int | None = None
    events_max_days: float | None = None
    """The events stream's limits (1,000,000 events and 7 days, no byte limit, when not given)."""
    node_id: str = attrs.field(factory=_default_node_id)
    event_loop: str = "asyncio"
    """``"asyncio"`` or ``"uvloop"``: the loop ``natskiq worker`` runs the launcher on."""
    # Credentials and TLS (see natskiq.enqueue.auth.auth_options): kept out of repr.
    nats_options: dict[str, Any] = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        check_name("node", self.node_id)
        Names(self.namespace)  # validates it
        if self.url is not None and not isinstance(self.url, str):
            raise ConfigError(f"url must be a string, not {self.url!r}")
        if self.partitions is not None and (
            type(self.partitions) is not int or not 1 <= self.partitions <= MAX_PARTITIONS
        ):
            raise ConfigError(
                f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, not {self.partitions!r}"
            )
        for key in ("concurrency", "max_deliveries"):
            if type(getattr(self, key)) is not int:
                raise ConfigError(f"{key} must be a whole number, not {getattr(self, key)!r}")
        if type(self.events) is not bool:
            raise ConfigError(f"events must be true or false, not {self.events!r}")
        for key in ("events_max_msgs", "events_max_bytes", "events_max_days"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigError(f"{key} must be a positive number, not {value!r}")
        for key in ("timeout", "lease_ttl", "ack_wait"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{key} must be a number of seconds >= 0, not {value!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError("event loop uvloop is not installed: pip install 'natskiq[uvloop]'")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.lease_ttl < 1:
            raise ConfigError(f"lease TTL must be at least 1 s, not {self.lease_ttl}")
        if self.max_deliveries < 1:
            raise ConfigError(f"max deliveries must be at least 1, not {self.max_deliveries}")
        if self.ack_wait < 1:
            raise ConfigError(f"ack wait must be at least 1 s, not {self.ack_wait}")
        if self.replicas not in (None, 1, 3, 5):
            raise ConfigError(f"replicas must be 1, 3 or 5, not {self.replicas!r}")
        if not self.queues:
            raise ConfigError("at least one queue is needed")
        parsed = [parse_queue(q) for q in self.queues]
        if len({q for q, _ in parsed}) != len(parsed):
            raise ConfigError(f"a queue is listed twice in {list(self.queues)}")

    @property
    def queue_order(self) -> tuple[list[tuple[str, int]], bool]:
        """``(queue, weight)`` pairs, and whether the order is strict (no weights)."""
        parsed = [parse_queue(q) for q in self.queues]
        strict = all(w is None for _, w in parsed)
        return [(q, w or 1) for q, w in parsed], strict


def import_app(modules: tuple[str, ...]) -> None:
    """Import the modules that define the workers (``path/to/file.py`` works too)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        name = module
        if module.endswith(".py"):
            directory, _, file = os.path.abspath(module).rpartition(os.sep)
            sys.path.insert(0, directory)
            name = file[:-3]
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import app module {module!r}: {exc}") from exc
