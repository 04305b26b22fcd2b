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


_RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@attrs.frozen
class Rate:
    """A rate limit: at most ``count`` jobs started in any window of ``per`` seconds."""

    count: int
    per: int

    def __str__(self) -> str:
        return f"{self.count}/{self.per}s"


def to_rate(value: str | tuple[int, float | timedelta] | Rate | None) -> Rate | None:
    """``"100/s"``, ``"1000/m"``, ``"10/h"``, ``"5/d"`` or ``(count, seconds)`` as a :class:`Rate`.

    Raises:
        ConfigError: the value is none of those, the count is not a positive
            whole number, or the window is not a whole number of seconds from 1.
    """
    if value is None or isinstance(value, Rate):
        return value
    count: object
    per: object
    if isinstance(value, str):
        count_text, _, unit = value.strip().partition("/")
        if not count_text.strip().isdigit() or unit.strip() not in _RATE_UNITS:
            raise ConfigError(f"rate must look like '100/s', '1000/m', '10/h' or '5/d', not {value!r}")
        count, per = int(count_text), _RATE_UNITS[unit.strip()]
    elif isinstance(value, tuple) and len(value) == 2:
        count, per = (
            value[0],
            to_seconds(value[1]) if isinstance(value[1], int | float | timedelta) else value[1],
        )
    else:
        raise ConfigError(f"rate must be a string like '100/s' or a (count, seconds) pair, not {value!r}")
    if type(count) is not int or count < 1:
        raise ConfigError(f"a rate's count must be a whole number >= 1, not {count!r}")
    # Each start holds a KV key for the window, with a per-message TTL: NATS
    # takes those from 1 s, and natskiq counts windows in whole seconds.
    if isinstance(per, bool) or not isinstance(per, int | float) or per < 1 or per != int(per):
        raise ConfigError(f"a rate's window must be a whole number of seconds >= 1, not {per!r}")
    return Rate(count, int(per))


def _check_concurrency(_: object, __: object, value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(f"concurrency must be a whole number >= 1, not {value!r}")


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
    concurrency: int | None = attrs.field(default=None, validator=_check_concurrency)
    rate: Rate | None = attrs.field(default=None, converter=to_rate)

    @property
    def limited(self) -> bool:
        """Whether the class has a cluster-wide concurrency or rate limit."""
        return self.concurrency is not None or self.rate is not None


PER_CALL_OPTIONS = frozenset({"queue", "retries", "keep_result"})
