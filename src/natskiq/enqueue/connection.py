"""Stage 1, connecting: a client's NATS connection, opened or refused with a reason, then watched.

:class:`~natskiq.enqueue.client.Client` receives the URLs from
:func:`split_urls` and starts its nats-py options from :func:`nats_defaults`;
a :class:`Connector` made for that opening adds its callbacks to them and
hands back the connection from :meth:`Connector.connect`.

It guarantees that a first connect is tried a few rounds only
(:data:`CONNECT_ATTEMPTS`), and not again after a TLS failure, then raises a
:class:`~natskiq.errors.ConfigError` saying what the server or TLS said,
with URLs redacted; that once connected, the connection reconnects as
configured (forever by default); that an outage is logged once at
WARNING when the connection drops and once when it is back (at ERROR when
nats-py gives up on it), each failed attempt at DEBUG only; and that a
publish or subscription the server refuses (the user's permissions; the
connection stays up) is warned of once per family of subjects, repeats at
DEBUG.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from natskiq.enqueue.auth import redact_url
from natskiq.errors import ConfigError

# These are the client's messages: they log under its name, the one users configure.
log = logging.getLogger("natskiq.enqueue.client")

DEFAULT_URL = "nats://127.0.0.1:4222"
CONNECT_ATTEMPTS = 3

# Errors that say a connect failed but not why (the server closed on us, or ran out of tries).
_VAGUE = (nats.errors.NoServersError, nats.errors.UnexpectedEOF, nats.errors.ConnectionClosedError)

# The server's -ERR for one refused publish or subscription (nats-py lowercases it).
_DENIED = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')
MAX_DENIALS = 1000  # refused subject families remembered (each warned of once)


def split_urls(url: str | None) -> list[str]:
    """One URL or a comma-separated list, defaulting to ``$NATSKIQ_URL``."""
    raw = url or os.environ.get("NATSKIQ_URL") or DEFAULT_URL
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        raise ConfigError(f"no NATS URL in {redact_url(raw)!r}")
    return urls


def nats_defaults() -> dict[str, Any]:
    """Connection options for processes that must outlive a server restart."""
    return {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "ping_interval": 5,
        "max_outstanding_pings": 3,
        "connect_timeout": 3,
    }


@attrs.define
class Connector:
    """One opening of a client's connection: the first connect, and the callbacks that log its life.

    ``current`` gives the connection as the client holds it: None while it
    is being opened and once the client has closed it (a drop then is no
    outage).
    """

    urls: list[str]
    current: Callable[[], NATS | None] = attrs.field(repr=False)
    where: str = attrs.field(init=False)
    """The URLs as logs and errors show them (redacted)."""
    _opening: anyio.CancelScope | None = attrs.field(init=False, default=None, repr=False)
    _errors: list[Exception] = attrs.field(init=False, factory=list, repr=False)
    _down_since: float | None = attrs.field(init=False, default=None)
    """When the connection dropped, while it is down."""
    _denied: set[tuple[str, str]] = attrs.field(init=False, factory=set, repr=False)
    """The families of refused subjects already warned of (see :meth:`_refused`)."""

    def __attrs_post_init__(self) -> None:
        self.where = redact_url(",".join(self.urls))

    async def connect(self, options: dict[str, Any]) -> NATS:
        """The first connection, or a ConfigError that says why not (without secrets)."""
        # nats-py retries a first connect as often as it reconnects later: with
        # "forever" a wrong URL would hang. Try a few rounds, then say so;
        # once connected, reconnect as configured (forever by default).
        reconnects = options.pop("max_reconnect_attempts")
        self._opening, self._errors = anyio.CancelScope(), []
        nc: NATS | None = None
        try:
            with self._opening:
                nc = await nats.connect(servers=self.urls, max_reconnect_attempts=CONNECT_ATTEMPTS, **options)
        except (OSError, NatsError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to NATS at {self.where}: {self._failure(exc)}") from exc
        finally:
            self._opening = None
        if nc is None:  # given up after a TLS failure: see _error
            raise ConfigError(f"cannot connect to NATS at {self.where}: {self._failure(None)}")
        nc.options["max_reconnect_attempts"] = reconnects
        return nc

    def _failure(self, exc: BaseException | None) -> str:
        """Why a first connect failed: what the server or TLS said, rather than "no servers"."""
        errors: list[BaseException] = list(self._errors)
        telling = [e for e in errors if isinstance(e, ssl.SSLError | NatsError) and not isinstance(e, _VAGUE)]
        if exc is not None and not isinstance(exc, _VAGUE):
            errors.append(exc)
        cause = (telling or errors or [exc])[-1]
        text = str(cause) or type(cause).__name__
        if isinstance(cause, TimeoutError):
            text = "timed out"
        elif isinstance(cause, ConnectionRefusedError):
            text = "connection refused (is a nats-server listening there?)"
        if "authorization violation" in text.lower():
            text += " (the server refused these credentials, or needs some)"
        elif isinstance(cause, ssl.SSLCertVerificationError):
            text += " (trust the CA that signed the server's certificate: tls_ca, $NATSKIQ_TLS_CA)"
        elif "CERTIFICATE_REQUIRED" in text:
            text += " (the server wants a client certificate: tls_cert and tls_key)"
        return text

    def callbacks(self) -> dict[str, Any]:
        """nats-py's connection callbacks, logging through ``natskiq.enqueue.client``.

        Without them nats-py logs every failed attempt itself ("nats:
        encountered error", with a traceback). While the first connect is
        tried, and while a lost connection is being re-established (every
        ``reconnect_time_wait``, forever by default), each failed attempt is
        logged at DEBUG only: a first connect that fails raises a ConfigError
        saying why, and an outage is logged once at WARNING when the
        connection drops and once when it is back (or, at ERROR, when nats-py
        gives up on it).
        """
        return {
            "error_cb": self._error,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "closed_cb": self._closed,
        }

    async def _error(self, exc: Exception) -> None:
        nc = self.current()
        if self._opening is not None:
            log.debug("connecting to NATS at %s: %s", self.where, exc)
            self._errors.append(exc)
            if isinstance(exc, ssl.SSLError):
                # nats-py hangs closing a connection whose TLS handshake failed
                # (nats.py issue 718), and no retry fixes a certificate: give up.
                self._opening.cancel()
        elif denied := _DENIED.search(str(exc)):
            self._refused(denied[1], denied[2])
        elif (
            self._down_since is not None
            or isinstance(exc, nats.errors.UnexpectedEOF)
            or (nc is not None and nc.is_reconnecting)
        ):
            # A failed reconnect attempt, or the drop _disconnected reports.
            log.debug("NATS connection error: %s", exc)
        else:
            log.warning("NATS connection error: %s", str(exc) or type(exc).__name__)

    def _refused(self, operation: str, subject: str) -> None:
        """A publish or subscription the server refused (it keeps the connection).

        Warned of once per family of subjects: every lifecycle event of the
        namespace is one (the jobs go on all the same, only their events are
        lost), any other subject's family is its subject less the last token
        (a jid, a stream). So a producer without the events' rights logs one
        warning, not one per job.
        """
        tokens = subject.split(".")
        events = tokens[1:2] == ["evt"]
        family = (operation, ".".join(tokens[:2]) if events else subject.rpartition(".")[0] or subject)
        if family in self._denied:
            log.debug("NATS refused a %s to %r (this user's permissions)", operation, subject)
            return
        if len(self._denied) >= MAX_DENIALS:
            self._denied.clear()
        self._denied.add(family)
        hint = (
            "; jobs go on, but this user's lifecycle events are not stored (see the auth"
            " guide's permissions, or turn events off: connect(events=False), --no-events)"
            if events
            else ""
        )
        log.warning(
            "NATS refused a %s to %r (this user's permissions)%s; like refusals are logged at debug",
            operation, subject, hint,
        )  # fmt: skip

    async def _disconnected(self) -> None:
        nc = self.current()
        if nc is not None and not (nc.is_closed or nc.is_draining) and self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("lost the connection to NATS at %s; reconnecting", self.where)

    async def _reconnected(self) -> None:
        nc = self.current()
        url = nc.connected_url if nc is not None else None
        since, self._down_since = self._down_since, None
        log.warning(
            "reconnected to NATS at %s after %.1f s",
            redact_url(url.geturl()) if url else self.where,
            time.monotonic() - (since or time.monotonic()),
        )

    async def _closed(self) -> None:
        if self.current() is not None and self._down_since is not None:
            log.error("gave up reconnecting to NATS at %s: the connection is closed", self.where)
