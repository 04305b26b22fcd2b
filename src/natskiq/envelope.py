"""Stage 1, the envelope: what a job is and what it may carry.

A job is one JSON object (documented in the README so any language can
enqueue)::

    {"jid": "...", "class": "app.workers.SendEmail", "args": [42], "kwargs": {},
     "queue": "emails", "retry": 5, "created_at": 1764280000.123,
     "enqueued_at": 1764280000.123}

plus, once a job has failed, ``retry_count``, ``error_class``,
``error_message``, ``failed_at``, ``retried_at`` and optionally
``backtrace``. Optional fields a producer may set:

* ``headers``: an object of JSON values that client middleware attaches
  (tenant, trace id...), for server middleware and ``self.job.headers``;
  never passed to ``perform``;
* ``expires_at`` (epoch seconds): a node skips the job if it has not started
  by then (the ``expires_in`` class keyword sets it);
* ``unique_key``, ``unique_revision``, ``unique_until``: the unique lock
  this job holds (the key in the ``<ns>_unique`` bucket, the revision that
  created it, and ``"start"`` or ``"success"``: when a node releases it).
  See :mod:`natskiq.enqueue.unique`;
* ``chain``: the job is one step of a chain (:mod:`natskiq.flow.chains`):
  ``{"id": <chain id>, "step": <this step, from 1>, "of": <steps>,
  "rest": [<step>, ...]}``, each step of the rest ``{"jid", "class",
  "args", "kwargs", "queue", "retry"}`` with optional ``keep_result`` and
  ``pass_result``; :func:`check_chain` says what is valid.
* ``batch``: the id of the batch the job belongs to (a jid-like name, set
  inside ``async with natskiq.batch(...)``). See :mod:`natskiq.flow.batches`.

This module receives a call's name and arguments and hands on a
:class:`Job` (:func:`new_job`), with a fresh jid. It guarantees what the
envelope carries round-trips through JSON: :func:`check_arguments` refuses
arguments that are not JSON-native (raising :class:`TypeError` that names
the argument), so nothing can fail to round-trip at run time. Its wire form
(encode, decode and the validation of what arrives) is :mod:`natskiq.job`,
which re-exports all of this. No I/O.
"""

from __future__ import annotations

import math
import operator
import os
import re
import time
from typing import Any

import attrs

MAX_DEPTH = 64
# Queue names, jids and node ids become subject tokens: no '.', '*', '>' or spaces.
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLAIN = frozenset({str, int, bool, type(None)})  # JSON-native as they are (floats may be inf/nan)


def new_jid() -> str:
    """A random 24-hex-digit job id, like Sidekiq's."""
    return os.urandom(12).hex()


def new_jids(count: int) -> list[str]:
    """``count`` jids as :func:`new_jid` makes them, from one read of the OS's randomness."""
    digits = os.urandom(12 * count).hex()
    return [digits[start : start + 24] for start in range(0, 24 * count, 24)]


MAX_KEEP_RESULT = 366 * 24 * 3600.0
"""The longest a job's result may be kept (``keep_result``): a year and a day, in seconds."""


@attrs.frozen(kw_only=True)
class Job:
    """One job envelope. Change it only with :func:`attrs.evolve`."""

    jid: str
    cls: str
    args: list[Any] = attrs.field(factory=list)
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    queue: str = "default"
    retry: int = 25
    created_at: float = attrs.field(factory=time.time)
    enqueued_at: float = attrs.field(factory=time.time)
    retry_count: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    failed_at: float | None = None
    retried_at: float | None = None
    backtrace: list[str] | None = None
    at: float | None = None
    periodic: str | None = None
    headers: dict[str, Any] | None = None
    expires_at: float | None = None
    unique_key: str | None = None
    unique_revision: int | None = None
    unique_until: str | None = None
    keep_result: float | None = None
    reply: str | None = None
    """The enqueuing client's token: the node tells it the kept outcome at once (see ``keep_result``)."""
    chain: dict[str, Any] | None = None
    batch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict (optional fields only when set)."""
        out: dict[str, Any] = {
            "jid": self.jid,
            "class": self.cls,
            "args": self.args,
            "kwargs": self.kwargs,
            "queue": self.queue,
            "retry": self.retry,
            "created_at": self.created_at,
            "enqueued_at": self.enqueued_at,
        }
        optional = _optional_values(self)
        if optional != _UNSET:  # most jobs set none of them
            out.update(
                (key, value)
                for key, value in zip(OPTIONAL_FIELDS, optional, strict=True)
                if value is not None
            )
        return out


OPTIONAL_FIELDS = (
    "retry_count",
    "error_class",
    "error_message",
    "failed_at",
    "retried_at",
    "backtrace",
    "at",
    "periodic",
    "headers",
    "expires_at",
    "unique_key",
    "unique_revision",
    "unique_until",
    "keep_result",
    "reply",
    "chain",
    "batch",
)
_optional_values = operator.attrgetter(*OPTIONAL_FIELDS)
_UNSET = (None,) * len(OPTIONAL_FIELDS)


def check_arguments(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
    """Raise TypeError naming the first argument that is not JSON-native.

    JSON-native means str, int, float (finite), bool, None, and lists and
    dicts with string keys made of those. Tuples, sets, bytes, datetimes and
    objects are refused, since they would not come back as they went in.
    """
    # Scalars other than floats need no look: skip the call (and the name it is given).
    for index, value in enumerate(args):
        if type(value) not in _PLAIN:
            check_value(value, f"argument {index}", 0)
    for key, value in kwargs.items():
        if type(value) not in _PLAIN:
            check_value(value, f"keyword argument {key!r}", 0)


def check_job(job: Job) -> None:
    """Raise TypeError naming the first argument or header of ``job`` that is not JSON-native."""
    check_arguments(job.args, job.kwargs)
    for key, value in (job.headers or {}).items():
        if type(key) is not str:
            raise TypeError(f"header {key!r} is not a string; JSON keys are strings")
        check_value(value, f"header {key!r}", 0)


def check_value(value: Any, where: str, depth: int) -> None:
    """Raise TypeError naming ``where`` if ``value``, ``depth`` levels down, is not JSON-native."""
    kind = type(value)
    if kind in (str, int, bool, type(None)):
        return
    if kind is float:
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot carry")
        return
    if depth >= MAX_DEPTH:
        raise TypeError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if kind is list:
        for index, item in enumerate(value):
            if type(item) not in _PLAIN:
                check_value(item, f"{where}[{index}]", depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where} has a non-string key {key!r}; JSON keys are strings")
            if type(item) not in _PLAIN:
                check_value(item, f"{where}[{key!r}]", depth + 1)
        return
    raise TypeError(
        f"{where} is a {kind.__name__} ({value!r:.60}), which is not JSON-native: "
        "pass str, int, float, bool, None, list or dict"
    )


def new_job(
    name: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    *,
    queue: str,
    retry: int,
    at: float | None = None,
    now: float | None = None,
    expires_at: float | None = None,
    keep_result: float | None = None,
    reply: str | None = None,
    batch: str | None = None,
) -> Job:
    """A fresh envelope for a call, checking that the arguments are JSON-native."""
    check_arguments(args, kwargs)
    now = time.time() if now is None else now
    return Job(
        jid=new_jid(), cls=name, args=list(args), kwargs=dict(kwargs), queue=queue, retry=retry,
        created_at=now, enqueued_at=now, at=at, expires_at=expires_at, keep_result=keep_result,
        reply=reply,
        batch=batch,
    )  # fmt: skip


MAX_CHAIN_STEPS = 1000
"""The most steps a chain may have."""
_STEP_TYPES: dict[str, tuple[type, ...]] = {
    "jid": (str,), "class": (str,), "args": (list,), "kwargs": (dict,), "queue": (str,), "retry": (int,),
    "keep_result": (int, float), "pass_result": (bool,),
}  # fmt: skip
_STEP_REQUIRED = ("jid", "class", "args", "kwargs", "queue", "retry")


def check_chain(chain: dict[str, Any]) -> None:
    """Raise TypeError saying what is wrong with an envelope's ``chain`` field.

    Valid is ``{"id", "step", "of", "rest"}``: a subject-safe id, ``1 <=
    step <= of <=`` :data:`MAX_CHAIN_STEPS`, and ``rest`` a list of the
    ``of - step`` steps still to run, each an object with a subject-safe
    ``jid`` and ``queue``, a ``class`` name, JSON-native ``args`` and
    ``kwargs``, a ``retry`` count and optionally ``keep_result`` (seconds)
    and ``pass_result`` (a bool).
    """
    cid, step, of, rest = (chain.get(key) for key in ("id", "step", "of", "rest"))
    if type(cid) is not str or not NAME_RE.fullmatch(cid):
        raise TypeError("field 'chain' needs an 'id' of 1-64 letters, digits, '_' or '-'")
    if type(step) is not int or type(of) is not int or not 1 <= step <= of <= MAX_CHAIN_STEPS:
        raise TypeError(f"field 'chain' needs whole numbers 1 <= 'step' <= 'of' <= {MAX_CHAIN_STEPS}")
    if type(rest) is not list or len(rest) != of - step:
        raise TypeError("field 'chain' needs 'rest', a list of the 'of' - 'step' steps still to run")
    for index, item in enumerate(rest):
        _check_step(item, f"field 'chain' step {step + index + 1}")


def _check_step(item: Any, where: str) -> None:
    """Raise TypeError naming ``where`` unless ``item`` is a valid step of a chain's rest."""
    if type(item) is not dict:
        raise TypeError(f"{where} is a {type(item).__name__}, not an object")
    for key in _STEP_REQUIRED:
        if key not in item:
            raise TypeError(f"{where} lacks {key!r}")
    for key, value in item.items():
        kinds = _STEP_TYPES.get(key)
        if kinds is not None and type(value) not in kinds and not (key == "keep_result" and value is None):
            raise TypeError(f"{where} has {key!r} of type {type(value).__name__}")
    for key in ("jid", "queue"):
        if not NAME_RE.fullmatch(item[key]):
            raise TypeError(f"{where} has {key!r} that is not 1-64 letters, digits, '_' or '-'")
    if not 0 < len(item["class"]) <= 1000:
        raise TypeError(f"{where} has a 'class' of {len(item['class'])} characters")
    if not 0 <= item["retry"] <= 1_000_000:
        raise TypeError(f"{where} has a 'retry' out of range")
    keep = item.get("keep_result")
    if keep is not None and not 1 <= keep <= MAX_KEEP_RESULT:
        raise TypeError(f"{where} has a 'keep_result' out of range")
    try:
        check_arguments(item["args"], item["kwargs"])
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}") from None
