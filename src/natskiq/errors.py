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
    └── NotConnected                  no client to enqueue with

Arguments that are not JSON-native raise the builtin :class:`TypeError` at
enqueue time, naming the offending argument.
"""

from __future__ import annotations


class NatskiqError(Exception):
    """Base class of every error natskiq raises on purpose."""


class ConfigError(NatskiqError, ValueError):
    """Invalid settings, or an existing stream whose configuration conflicts."""


class EnqueueError(NatskiqError):
    """A job could not be stored in JetStream; it was not enqueued."""


class UnknownWorker(NatskiqError, LookupError):
    """A job names a worker class that this process has not registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no worker named {name!r} is registered in this process")
        self.name = name


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

    def __init__(self) -> None:
        super().__init__(
            "no natskiq client is connected: use `async with natskiq.connect(url):` "
            "or pass client=... explicitly"
        )
