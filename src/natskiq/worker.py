"""Stage 1, the worker: what users subclass, and the registry of job classes.

``class SendEmail(natskiq.Worker, queue="emails", retries=5)`` registers the
class under ``module.QualName`` (or ``name="..."``); a node runs only classes
registered this way, so a payload can never name an arbitrary callable.
``perform_async``, ``perform_in`` and ``perform_at`` hand the call to the
default :class:`~natskiq.enqueue.client.Client` (the one opened last with
``async with natskiq.connect(...)``) or to ``set(client=...)``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, Protocol, cast

import attrs

from natskiq.errors import ConfigError, NotConnected, UnknownWorker
from natskiq.options import PER_CALL_OPTIONS, Options, to_seconds
from natskiq.signature import Signature

if TYPE_CHECKING:
    from natskiq.enqueue.client import Client
    from natskiq.flow.batches import Batch
    from natskiq.status.handle import JobHandle

log = logging.getLogger(__name__)

_registry: dict[str, type[Worker]] = {}


P = ParamSpec("P")


class _Performs(Protocol[P]):
    """Anything with a ``perform``: lets mypy take ``perform_*``'s parameters
    from the subclass's own ``perform`` signature."""

    options: ClassVar[Options]

    def perform(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...


class _FakeJobs:
    """``SendEmail.jobs``: the jobs a fake-mode test enqueued for that worker."""

    def __get__(self, obj: object, owner: type[Worker]) -> list[Any]:
        for mode in reversed(_modes):
            jobs_of = getattr(mode, "jobs_of", None)
            if jobs_of is not None:
                found: list[Any] = jobs_of(owner)
                return found
        raise RuntimeError(f"{owner.__name__}.jobs exists only inside natskiq.testing.fake()")


class Worker:
    """Base class of every job.

    Subclass it with options as class keywords and define ``perform``::

        class SendEmail(natskiq.Worker, queue="emails", retries=5, timeout=30):
            async def perform(self, user_id: int) -> None: ...

    A plain ``def perform`` runs in a worker thread. While it runs, ``self.jid``
    and ``self.job`` describe the job; ``self.lease_token`` is the master lease
    revision it was dispatched under, ``self.lease_shard`` the dispatch shard
    whose master sent it (tokens compare within one shard), and
    ``self.delivered_at`` when this node received it (epoch seconds), for
    tracing.

    Class keywords:
        queue: the queue jobs go to (default ``"default"``).
        retries: how many times a failing job is retried (default 25; 0
            sends a failing job straight to the failed set).
        timeout: seconds a run may take before it is cancelled and fails.
        dead: keep jobs whose retries ran out in the failed set (default
            True); False drops them.
        backtrace: lines of traceback kept with a failure (True = 20).
        unique_for: seconds (or a timedelta, at least 1 s) during which
            enqueueing this class again with the same queue, args and kwargs
            stores nothing while a job is pending (see :mod:`natskiq.enqueue.unique`);
            ``perform_async`` then returns the pending job's jid.
        unique_until: when the lock is released: ``"success"`` (default,
            once the job succeeded) or ``"start"`` (as it starts); it also
            expires after ``unique_for``.
        expires_in: seconds (or a timedelta) after enqueueing (or after the
            scheduled time) by which the job must have started; later, a
            node skips it.
        keep_result: seconds (or a timedelta, 1 s to a year) to keep each
            job's outcome (its return value, or its failure) for
            ``await handle.result()``; None (the default) keeps none. The
            return value of ``perform`` must then be JSON-serialisable.
        concurrency: at most this many jobs of the class run at once across
            the whole cluster, every node and shard together (see
            :mod:`natskiq.run.limits`); a job over the limit is put back,
            scheduled a moment later, without counting as a delivery.
        rate: at most this many jobs of the class start in any window of
            time across the cluster: ``"100/s"``, ``"1000/m"``, ``"10/h"``,
            ``"5/d"``, or ``(count, seconds)`` with whole seconds from 1.
        name: the registered name, ``module.QualName`` by default.

    Optional hooks, as Sidekiq has them:
        ``retry_in(self, count, exc)``: seconds until retry ``count + 1``, or
        ``"discard"`` (drop the job) or ``"kill"`` (to the failed set now);
        None keeps the default backoff.
        ``retries_exhausted(self, job, exc)``: called (sync or async) once a
        job has failed for good.
    """

    options: ClassVar[Options] = Options()
    name: ClassVar[str] = ""
    jobs = _FakeJobs()
    _plain: ClassVar[Configured[Any] | None] = None  # the class with its own options, made once

    jid: str
    job: Any
    lease_token: int
    lease_shard: int = 0
    delivered_at: float
    report_progress: Callable[[Worker, float, str], Awaitable[None]] | None = None
    batch: Batch | None = None
    """The batch this job belongs to (set by the node), or None: ``async with
    self.batch.jobs():`` adds jobs to it, ``parent=self.batch`` opens a child batch."""

    @property
    def batch_id(self) -> str | None:
        """The id of the batch this job belongs to, or None."""
        return None if self.batch is None else self.batch.bid

    """Set by the node that runs the job: where :meth:`progress` reports go."""

    async def progress(self, fraction: float, message: str = "") -> None:
        """Report how far the job is, from 0.0 to 1.0, with a short message.

        ``await self.progress(0.4, "resized 40 of 100")`` updates the job's
        status (``handle.status()``, ``natskiq job JID``, the dashboard) with
        a ``progress`` event. Reports closer together than half a second are
        dropped, so a chatty loop cannot flood the server; the first report
        of 1.0 always goes out. A plain ``def perform`` runs in a thread:
        call ``anyio.from_thread.run(self.progress, 0.4, "...")``. Outside a
        node (``natskiq.testing``'s modes) it checks its arguments and does
        nothing.

        Raises:
            ValueError: ``fraction`` is not a number from 0 to 1.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise ValueError(f"progress must be a number from 0 to 1, not {fraction!r}")
        if self.report_progress is not None:
            await self.report_progress(self, float(fraction), str(message)[:1000])

    def __init_subclass__(
        cls,
        *,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | timedelta | None = None,
        dead: bool | None = None,
        backtrace: bool | int | None = None,
        unique_for: float | timedelta | None = None,
        unique_until: str | None = None,
        expires_in: float | timedelta | None = None,
        keep_result: float | timedelta | None = None,
        concurrency: int | None = None,
        rate: str | tuple[int, float | timedelta] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        given: dict[str, Any] = {
            "queue": queue,
            "retries": retries,
            "timeout": timeout,
            "dead": dead,
            "backtrace": backtrace,
            "unique_for": unique_for,
            "unique_until": unique_until,
            "expires_in": expires_in,
            "keep_result": keep_result,
            "concurrency": concurrency,
            "rate": rate,
        }
        changes = {key: value for key, value in given.items() if value is not None}
        cls.options = attrs.evolve(cls.options, **changes)
        cls._plain = None
        cls.name = name or f"{cls.__module__}.{cls.__qualname__}"
        if not cls.name or any(c.isspace() for c in cls.name):
            raise ConfigError(f"invalid worker name {cls.name!r}")
        previous = _registry.get(cls.name)
        if previous is not None and previous is not cls:
            log.debug("worker %s registered again, the newer class wins", cls.name)
        _registry[cls.name] = cls

    @classmethod
    def clear(cls) -> None:
        """Forget the jobs a fake-mode test enqueued for this worker (``cls.jobs``)."""
        cls.jobs.clear()

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        """The job's work; override it with ``async def`` or a plain ``def``.

        Typed to return ``Any`` so both kinds of override type-check.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define perform()")

    @classmethod
    def set(cls: type[_Performs[P]], *, client: Client | None = None, **options: Any) -> Configured[P]:
        """Options for one call: ``SendEmail.set(queue="urgent").perform_async(1)``.

        Raises:
            ConfigError: an option is unknown or invalid.
        """
        unknown = set(options) - PER_CALL_OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown per-call option(s): {', '.join(sorted(unknown))} "
                f"(set() takes {', '.join(sorted(PER_CALL_OPTIONS))}; the rest are class keywords)"
            )
        worker = cast(type[Worker], cls)  # every _Performs here is a Worker subclass
        return Configured(worker=worker, options=attrs.evolve(cls.options, **options), client=client)

    @classmethod
    def s(cls, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this call, to run later as a step of :func:`natskiq.chain`.

        ``Fetch.s(url)`` takes the arguments ``perform`` takes, except the
        previous step's result, which a step asks for with
        ``.set(pass_result=True)`` and receives as its first argument.

        Raises:
            TypeError: an argument is not JSON-native.
        """
        return Signature(name=cls.name, args=args, kwargs=kwargs, options=cls.options)

    @classmethod
    async def perform_async(cls: type[_Performs[P]], *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Enqueue a job to run as soon as a node is free; returns its jid.

        Returns:
            The new job's jid; for a ``unique_for`` class whose lock is held,
            the jid of the pending job holding it (nothing is stored); ``""``
            when client middleware vetoed the job (nothing is stored; see
            :meth:`natskiq.Client.push`).
        """
        plain = _configured(cls)  # what Configured.perform_async does, one await less
        return await plain._client().push(plain.worker, args, kwargs, options=plain.options)

    @classmethod
    async def perform_bulk(
        cls, args_list: Iterable[Sequence[Any]], *, batch_size: int = 4000
    ) -> list[JobHandle]:
        """Enqueue one job per argument list (``[[1], [2], ...]``), pipelined; returns the jids
        in order (see :meth:`natskiq.Client.push_many`)."""
        return await _configured(cls).perform_bulk(args_list, batch_size=batch_size)

    @classmethod
    async def perform_in(
        cls: type[_Performs[P]], delay: float | timedelta, *args: P.args, **kwargs: P.kwargs
    ) -> JobHandle:
        """Enqueue a job to run after ``delay`` (seconds or timedelta); returns its jid."""
        return await _configured(cls).perform_in(delay, *args, **kwargs)

    @classmethod
    async def perform_at(
        cls: type[_Performs[P]], when: datetime, *args: P.args, **kwargs: P.kwargs
    ) -> JobHandle:
        """Enqueue a job to run at ``when`` (a timezone-aware datetime); returns its jid."""
        return await _configured(cls).perform_at(when, *args, **kwargs)


@attrs.frozen(kw_only=True)
class Configured(Generic[P]):
    """A worker class with per-call options, returned by :meth:`Worker.set`."""

    worker: type[Worker]
    options: Options
    client: Client | None = None

    def _client(self) -> Enqueuer:
        if _modes:
            return _modes[-1]  # natskiq.testing's inline or fake mode
        if self.client is not None:
            return self.client
        return _default_client()

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this call with these options (see :meth:`Worker.s`)."""
        return Signature(name=self.worker.name, args=args, kwargs=kwargs, options=self.options)

    async def perform_async(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Enqueue now; returns the jid."""
        return await self._client().push(self.worker, args, kwargs, options=self.options)

    async def perform_bulk(
        self, args_list: Iterable[Sequence[Any]], *, batch_size: int = 4000
    ) -> list[JobHandle]:
        """Enqueue one job per argument list, pipelined; returns the jids."""
        return await self._client().push_many(
            self.worker, args_list, options=self.options, batch_size=batch_size
        )

    async def perform_in(self, delay: float | timedelta, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Enqueue after ``delay`` seconds (or a timedelta); returns the jid."""
        seconds = to_seconds(delay)
        if seconds is None or seconds != seconds:
            raise TypeError(f"delay must be seconds or a timedelta, not {delay!r}")
        return await self._client().push(self.worker, args, kwargs, options=self.options, delay=seconds)

    async def perform_at(self, when: datetime, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Enqueue at an aware datetime; returns the jid."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise TypeError(f"perform_at needs a timezone-aware datetime, not {when!r}")
        return await self._client().push(self.worker, args, kwargs, options=self.options, at=when.timestamp())


class Enqueuer(Protocol):
    """What ``perform_*`` hands a job to: a Client, or a natskiq.testing mode."""

    async def push(
        self,
        worker: type[Worker],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        options: Options,
        delay: float | None = None,
        at: float | None = None,
    ) -> JobHandle: ...

    async def push_many(
        self,
        worker: type[Worker],
        args_list: Iterable[Sequence[Any]],
        *,
        options: Options,
        batch_size: int = ...,
    ) -> list[JobHandle]: ...


_modes: list[Enqueuer] = []  # testing modes in force, innermost last
open_clients: list[Enqueuer] = []
"""The open clients, newest last: ``natskiq.enqueue.client`` adds each one it opens
and removes it on close. Kept here, below the client, so that defining a
worker needs no client module (and the two do not import each other)."""


def _default_client() -> Enqueuer:
    """The client opened last (``natskiq.enqueue.client.current_client()``), the default for ``perform_*``."""
    if not open_clients:
        raise NotConnected()
    return open_clients[-1]


def _configured(cls: type[_Performs[P]]) -> Configured[P]:
    """The class with its own options, for the ``perform_*`` classmethods (made once per class)."""
    worker = cast(type[Worker], cls)  # every _Performs here is a Worker subclass
    plain = worker._plain
    if plain is None or plain.worker is not worker or plain.options is not worker.options:
        plain = worker._plain = Configured(worker=worker, options=worker.options)
    return cast(Configured[P], plain)


def lookup(name: str) -> type[Worker]:
    """The worker class registered under ``name``.

    Raises:
        UnknownWorker: nothing is registered under that name.
    """
    try:
        return _registry[name]
    except KeyError:
        raise UnknownWorker(name) from None


def registered() -> Mapping[str, type[Worker]]:
    """A read-only view of every registered worker, by name."""
    return dict(_registry)


def is_async(worker: type[Worker]) -> bool:
    """Whether the worker's ``perform`` is a coroutine function."""
    perform = worker.perform
    known = _async_performs.get(perform)
    if known is None:
        known = _async_performs[perform] = inspect.iscoroutinefunction(perform)
    return known


# ``inspect.iscoroutinefunction`` unwraps and inspects on every call; a node asks once per job.
_async_performs: dict[Callable[..., Any], bool] = {}
