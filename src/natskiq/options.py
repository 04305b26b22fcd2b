"""A worker's job options: what the class keywords and ``set(...)`` say about its jobs.

:class:`Options` is a value, validated at construction: a bad queue name, a
negative timeout or an unknown ``unique_until`` is a
:class:`~natskiq.errors.ConfigError` where the class is defined, not when a
job runs. :data:`PER_CALL_OPTIONS` are those ``Worker.set()`` may change for
one call.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from natskiq.envelope import MAX_KEEP_RESULT
from natskiq.errors import ConfigError
from natskiq.topology import check_name

DEFAULT_QUEUE = "default"
DEFAULT_RETRIES = 25


def _check_retries(_: object, __: object, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ConfigError(f"retries must be a whole number >= 0, not {value!r}")


def _check_timeout(_: object, __: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, not {value!r}")


def to_seconds(value: float | timedelta | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return None if value is None else float(value)


def _backtrace_lines(value: bool | int | None) -> int:
    return 20 if value is True else int(value or 0)


def _check_unique_for(_: object, __: object, value: float | None) -> None:
    # A lock is a KV key with a per-message TTL, which NATS takes from 1 s.
    if value is not None and not value >= 1:
        raise ConfigError(f"unique_for must be at least 1 second, not {value!r}")


def _check_unique_until(_: object, __: object, value: str) -> None:
    if value not in ("start", "success"):
        raise ConfigError(f"unique_until must be 'start' or 'success', not {value!r}")


def _check_keep_result(_: object, __: object, value: float | None) -> None:
    # A result is a KV key with a per-message TTL, which NATS takes in whole seconds from 1 s.
    if value is not None and not 1 <= value <= MAX_KEEP_RESULT:
        raise ConfigError(f"keep_result must be 1 to {MAX_KEEP_RESULT:.0f} seconds, not {value!r}")


def _check_expires_in(_: object, __: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"expires_in must be a positive number of seconds, not {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """A worker's job options: class keywords, overridable per call with ``set()``."""

    queue: str = attrs.field(default=DEFAULT_QUEUE, validator=lambda _, __, v: check_name("queue", v))
    retries: int = attrs.field(default=DEFAULT_RETRIES, validator=_check_retries)
    timeout: float | None = attrs.field(default=None, converter=to_seconds, validator=_check_timeout)
    dead: bool = True
    backtrace: int = attrs.field(default=0, converter=_backtrace_lines)
    unique_for: float | None = attrs.field(default=None, converter=to_seconds, validator=_check_unique_for)
    unique_until: str = attrs.field(default="success", validator=_check_unique_until)
    expires_in: float | None = attrs.field(default=None, converter=to_seconds, validator=_check_expires_in)
    keep_result: float | None = attrs.field(default=None, converter=to_seconds, validator=_check_keep_result)


PER_CALL_OPTIONS = frozenset({"queue", "retries", "keep_result"})
