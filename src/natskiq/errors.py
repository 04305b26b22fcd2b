"""natskiq's exceptions.

Everything natskiq raises on purpose derives from :class:`NatskiqError`;
nats-py's own errors never escape the public API, they are re-raised as one
of these ``from`` the original::

    NatskiqError
    ├── ConfigError (ValueError)      bad settings, or a stream that exists
    │                                 with a conflicting configuration
    ├── EnqueueError                  a job could not be stored
    ├── UnknownWorker (LookupError)   no registered worker has that name
    ├── InvalidJob (ValueError)       a payload that is not a valid envelope
    ├── LeaseLost                     the master lease was taken or expired
    ├── NotConnected                  no client to enqueue with
    ├── NotFound (LookupError)        no job, queue or node matches (api, CLI)
    ├── JobFailed                     a job whose result was awaited failed for good
    ├── JobCancelled                  a job whose result was awaited was cancelled
    ├── DeliveryLimit                 a job was delivered too often, never settled
    ├── BatchError                    a batch could not be opened, closed or added to
    └── Retry                         raised by a job: retry it after ``defer``

Arguments that are not JSON-native raise the builtin :class:`TypeError` at
enqueue time, naming the offending argument.
"""

from __future__ import annotations

from datetime import timedelta


class NatskiqError(Exception):
    """Base class of every error natskiq raises on purpose."""


class ConfigError(NatskiqError, ValueError):
    """Invalid settings, or an existing stream whose configuration conflicts."""


class EnqueueError(NatskiqError):
    """A job could not be stored in JetStream; it was not enqueued.

    Attributes:
        stored: for a bulk enqueue, the jids that were stored before it failed.
    """

    stored: list[str]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.stored = []


class UnknownWorker(NatskiqError, LookupError):
    """A job names a worker class that this process has not registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no worker named {name!r} is registered in this process")
        self.name = name


class JobFailed(NatskiqError):
    """The job whose result was awaited failed for good (its retries ran out, or it was killed).

    Attributes:
        jid: the job's id.
        error_class: the class name of the exception the last run raised.
        error_message: its message.
        backtrace: the lines of traceback kept with the failure (``backtrace=``), else empty.
    """

    def __init__(
        self, jid: str, error_class: str, error_message: str, backtrace: list[str] | None = None
    ) -> None:
        super().__init__(f"job {jid} failed: {error_class}: {error_message}")
        self.jid = jid
        self.error_class = error_class
        self.error_message = error_message
        self.backtrace = list(backtrace or [])


class JobCancelled(NatskiqError):
    """The job whose result was awaited was cancelled (``natskiq cancel``)."""

    def __init__(self, jid: str) -> None:
        super().__init__(f"job {jid} was cancelled")
        self.jid = jid


class InvalidJob(NatskiqError, ValueError):
    """A payload is not a valid job envelope.

    Attributes:
        raw: the bytes as received.
        reason: why they were refused.
    """

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(f"invalid job: {reason}")
        self.reason = reason
        self.raw = raw


class LeaseLost(NatskiqError):
    """The master lease was taken by another node or expired before renewal."""


class NotConnected(NatskiqError):
    """No client is connected; use ``async with natskiq.connect(...)`` first."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "no natskiq client is connected: use `async with natskiq.connect(url):` "
            "or pass client=... explicitly"
        )


class BatchError(NatskiqError):
    """A batch could not be opened, closed or added to: it has finished, is gone, or NATS failed."""


class NotFound(NatskiqError, LookupError):
    """No job, queue or node matches what was asked for."""


class Retry(NatskiqError):
    """Raise inside ``perform`` to retry the job after a chosen delay.

    ``raise natskiq.Retry(defer=30)`` schedules the next attempt in 30 s
    instead of the backoff; it still counts against the worker's retries.

    Args:
        defer: seconds (or a timedelta) until the next attempt; None uses
            the worker's backoff.
    """

    def __init__(self, defer: float | timedelta | None = None) -> None:
        seconds = defer.total_seconds() if isinstance(defer, timedelta) else defer
        super().__init__(f"retry requested in {seconds} s" if seconds is not None else "retry requested")
        self.defer = None if seconds is None else max(0.0, float(seconds))


class DeliveryLimit(NatskiqError):
    """A job was delivered many times without ever being settled.

    That happens when running it kills the worker process (a crash, the OOM
    killer); natskiq then moves it to the failed set instead of running it
    forever.
    """

    def __init__(self, deliveries: int) -> None:
        super().__init__(f"delivered {deliveries} times without being settled; not run again")
        self.deliveries = deliveries
