"""What a command is asked to do, read from its flags, the environment and a config file.

:func:`worker_settings` merges ``natskiq worker``'s flags, the ``NATSKIQ_*``
environment and ``[tool.natskiq]`` in ``./pyproject.toml`` (or
``./natskiq.toml``, or ``--config FILE``) into the launcher's ``Settings``,
in that order of precedence; :func:`connection_auth` does the same for the
authentication and TLS options every command that talks to NATS takes, and
:func:`client` builds that command's :class:`~natskiq.enqueue.client.Client`.
A config file never holds a password or token (those come from a flag or the
environment). A setting that is wrong raises ``ConfigError``; a command line
that asks for what cannot be done raises :class:`UsageError`. Both exit 2.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from natskiq.enqueue.auth import AUTH_ENV, auth_options
from natskiq.enqueue.client import Client
from natskiq.errors import ConfigError, NatskiqError
from natskiq.ops.launcher import Settings


class UsageError(NatskiqError):
    """The command line asks for something that cannot be done as asked."""


CONFIG_KEYS = {
    "app",
    "url",
    "namespace",
    "queues",
    "concurrency",
    "timeout",
    "replicas",
    "lease_ttl",
    "ack_wait",
    "node_id",
    "log_level",
    "event_loop",
    "failed_max_jobs",
    "max_deliveries",
    "failed_max_days",
    "metrics_port",
    "partitions",
    "events",
    "events_max_msgs",
    "events_max_bytes",
    "events_max_days",
}
# The settings a NATSKIQ_<KEY> environment variable stands in for (between flag and file).
ENV_KEYS = ("url", "namespace", "replicas", "event_loop")
# Authentication and TLS (the arguments of auth_options). A config file may
# name the files and the user, never a secret: that comes from a flag or the environment.
AUTH_KEYS = tuple(AUTH_ENV)
SECRET_KEYS = ("password", "token")
FILE_KEYS = CONFIG_KEYS | (set(AUTH_KEYS) - set(SECRET_KEYS))


def connection_auth(args: argparse.Namespace, file: dict[str, Any] | None = None) -> dict[str, Any]:
    """nats-py auth and TLS options: flags win, then the environment, then the config file."""
    given = {}
    for key in AUTH_KEYS:
        flag = getattr(args, key, None)
        if flag is not None:
            given[key] = flag
        elif file and key in file and not os.environ.get(AUTH_ENV[key]):
            if not isinstance(file[key], str):
                raise ConfigError(f"{key} must be a string, not {type(file[key]).__name__}")
            given[key] = file[key]
    return auth_options(**given)


def load_config(path: Path | None) -> dict[str, Any]:
    """Worker settings from a natskiq.toml or a pyproject.toml's [tool.natskiq]."""
    candidates = [path] if path else [Path("natskiq.toml"), Path("pyproject.toml")]
    for candidate in candidates:
        if not candidate.is_file():
            if path:
                raise ConfigError(f"config file {path} does not exist")
            continue
        try:
            data = tomllib.loads(candidate.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{candidate} is not valid TOML: {exc}") from exc
        if candidate.name == "pyproject.toml":
            data = data.get("tool", {}).get("natskiq", {})
        data = {key.replace("-", "_"): value for key, value in data.items()}
        secrets = [key for key in SECRET_KEYS if key in data]
        if secrets:
            raise ConfigError(
                f"{candidate} must not hold secrets ({', '.join(secrets)}): "
                + " or ".join(f"set ${AUTH_ENV[key]}" for key in secrets)
                + " instead"
            )
        unknown = set(data) - FILE_KEYS
        if unknown:
            raise ConfigError(f"unknown setting(s) in {candidate}: {', '.join(sorted(unknown))}")
        if data or path:
            return data
    return {}


def worker_settings(args: argparse.Namespace) -> tuple[Settings, str]:
    """Merge flags, environment and config file into Settings (flags win)."""
    file = load_config(args.config)
    merged: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        flag = getattr(args, key, None)
        env = _env_setting(key)
        value = flag if flag is not None else env if env is not None else file.get(key)
        if value is not None:
            merged[key] = value
    level = str(merged.pop("log_level", "info"))
    app = merged.pop("app", None)
    if not app:
        raise ConfigError("no app: pass --app MODULE or set app in natskiq.toml")
    merged["app"] = _strings("app", app)
    if "queues" in merged:
        merged["queues"] = _strings("queues", merged["queues"])
    port = merged.get("metrics_port")
    if port is not None and (type(port) is not int or not 0 <= port <= 65535):
        raise ConfigError(f"metrics port must be a whole number from 0 to 65535, not {port!r}")
    merged["nats_options"] = connection_auth(args, file)
    try:
        return Settings(**merged), level
    except TypeError as exc:
        raise ConfigError(f"bad setting: {exc}") from exc


def _env_setting(key: str) -> str | int | None:
    """The value of ``$NATSKIQ_<KEY>`` for a worker setting it stands in for, if set."""
    name = f"NATSKIQ_{key.upper()}"
    value = os.environ.get(name) if key in ENV_KEYS else None
    if value is None or key != "replicas":
        return value
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name} must be 1, 3 or 5, not {value!r}") from None


def _strings(key: str, value: object) -> tuple[str, ...]:
    """A setting that takes one string or a list of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{key} must be a string or a list of strings, not {value!r}")
    return tuple(items)


def client(args: argparse.Namespace) -> Client:
    """The client for the connection flags: ``--namespace``, else ``$NATSKIQ_NAMESPACE``, else ``natskiq``."""
    namespace = args.namespace or os.environ.get("NATSKIQ_NAMESPACE") or "natskiq"
    return Client(url=args.url, namespace=namespace, nats_options=connection_auth(args))
