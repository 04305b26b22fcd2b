"""Stage 1, the envelope on the wire: encode and decode, no I/O.

The envelope itself (:class:`Job`, jids, :func:`new_job` and the check that
arguments are JSON-native) is :mod:`natskiq.envelope`, whose docstring
gives the fields; this module re-exports it, so ``natskiq.job`` is the one
name to import. It receives a :class:`Job` (or a new job's fields) and
hands on the bytes to publish (:func:`encode`, :func:`encode_new`,
:func:`encode_many`); it receives bytes from a stream and hands on a
:class:`Job` (:func:`decode`), which validates what arrives and raises
:class:`~natskiq.errors.InvalidJob` with the raw bytes and the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from natskiq.envelope import (
    MAX_CHAIN_STEPS,
    MAX_DEPTH,
    MAX_KEEP_RESULT,
    NAME_RE,
    OPTIONAL_FIELDS,
    Job,
    check_arguments,
    check_chain,
    check_job,
    check_value,
    new_jid,
    new_jids,
    new_job,
)
from natskiq.errors import InvalidJob

__all__ = [
    "MAX_CHAIN_STEPS",
    "MAX_CLASS_CHARS",
    "MAX_DEPTH",
    "MAX_KEEP_RESULT",
    "MAX_OVERHEAD",
    "MAX_RETRIES",
    "MAX_REVISION",
    "NAME_RE",
    "TIME_RANGE",
    "Job",
    "check_arguments",
    "check_chain",
    "check_job",
    "check_value",
    "decode",
    "encode",
    "encode_many",
    "encode_new",
    "headers_size",
    "new_jid",
    "new_jids",
    "new_job",
]

MAX_OVERHEAD = 4096  # bytes a job may grow by on any hop: headers, a failure's error fields


def _make_dumps() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``, set up once.

    ``json.dumps`` with options builds a new JSONEncoder per call, and even a
    kept encoder builds a new C encoder per call: together they cost more
    than encoding a small envelope. The C encoder is made once here, without
    the circular-reference check (arguments are checked to a depth of
    :data:`MAX_DEPTH`, so a cycle is refused before it gets here).
    """
    encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (PyPy): the kept encoder still saves its set-up
        return encoder.encode
    chunks = make(
        None, encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def dumps(value: Any) -> str:
        return "".join(chunks(value, 0))

    return dumps


_dumps = _make_dumps()
_quote = json.encoder.encode_basestring_ascii  # a str as a JSON string, quotes included


def headers_size(headers: dict[str, str]) -> int:
    """Bytes a NATS message's header block takes on the wire (the server counts them in its max payload)."""
    # "NATS/1.0\r\n", then "Key: Value\r\n" each, then "\r\n".
    return 12 + sum(len(key.encode()) + len(value.encode()) + 4 for key, value in headers.items())


def encode(job: Job) -> bytes:
    """Serialise a job to its wire form."""
    return _dumps(job.to_dict()).encode()


def encode_new(
    jid: str,
    cls: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    queue: str,
    retry: int,
    now: float,
    at: float | None = None,
    expires_at: float | None = None,
    keep_result: float | None = None,
    reply: str | None = None,
) -> bytes:
    """``encode(Job(...))`` of a new job, byte for byte, without building the Job.

    The Job would have these fields, ``created_at`` and ``enqueued_at``
    both ``now``, and no other optional field. Building a frozen Job and its
    dict costs more than sending it, and a plain enqueue needs neither.
    ``queue`` must be a checked name, ``retry`` an int, ``now`` finite and
    the arguments checked, as the client's are.
    """
    stamp = repr(float(now))
    text = (
        f'{{"jid":{_quote(jid)},"class":{_quote(cls)},"args":{_dumps(args)},"kwargs":{_dumps(kwargs)},'
        f'"queue":{_quote(queue)},"retry":{int(retry)},"created_at":{stamp},"enqueued_at":{stamp}'
    )
    if at is not None:
        text += f',"at":{_dumps(at)}'
    if expires_at is not None:
        text += f',"expires_at":{_dumps(expires_at)}'
    if keep_result is not None:
        text += f',"keep_result":{_dumps(keep_result)}'
    if reply is not None:
        text += f',"reply":{_quote(reply)}'
    return (text + "}").encode()


def encode_many(template: Job, jids: Sequence[str], args_list: Sequence[Sequence[Any]]) -> list[bytes]:
    """The wire forms of jobs that differ from ``template`` only in jid and args.

    Payload ``i`` decodes to ``attrs.evolve(template, jid=jids[i],
    args=list(args_list[i]))``. The fields they share are encoded once and
    each jid and argument list spliced in, which is what makes a
    ``perform_bulk`` of small jobs as cheap to encode as it is to publish.
    The jids must be plain names (:data:`NAME_RE`), as :func:`new_jids`
    makes them, and the arguments already checked.
    """
    shared = template.to_dict()
    del shared["jid"], shared["args"]
    tail = _dumps(shared)[1:]  # '"class":...}' without its opening brace
    dumps = _dumps
    return [
        f'{{"jid":"{jid}","args":{dumps(args)},{tail}'.encode()
        for jid, args in zip(jids, args_list, strict=True)
    ]


_TYPES: dict[str, tuple[type, ...]] = {
    "jid": (str,),
    "class": (str,),
    "args": (list,),
    "kwargs": (dict,),
    "queue": (str,),
    "retry": (int,),
    "created_at": (int, float),
    "enqueued_at": (int, float),
    "retry_count": (int,),
    "error_class": (str,),
    "error_message": (str,),
    "failed_at": (int, float),
    "retried_at": (int, float),
    "backtrace": (list,),
    "at": (int, float),
    "periodic": (str,),
    "headers": (dict,),
    "expires_at": (int, float),
    "unique_key": (str,),
    "unique_revision": (int,),
    "unique_until": (str,),
    "keep_result": (int, float),
    "reply": (str,),
    "chain": (dict,),
    "batch": (str,),
}
_REQUIRED = ("jid", "class", "args", "queue")
_USUAL = frozenset(("jid", "class", "args", "kwargs", "queue", "retry", "created_at", "enqueued_at"))
_OPTIONAL_SET = frozenset(OPTIONAL_FIELDS)
_NUMBER = (int, float)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every payload: json.loads with an option builds a new one per call.
_decode_json = json.JSONDecoder(parse_constant=_refuse_constant).decode
_is_name = NAME_RE.fullmatch


def _usual_types(data: dict[str, Any]) -> bool:
    """Whether an envelope with exactly the usual fields has each of the usual type."""
    return (
        type(data["jid"]) is str
        and type(data["class"]) is str
        and type(data["args"]) is list
        and type(data["kwargs"]) is dict
        and type(data["queue"]) is str
        and type(data["retry"]) is int
        and type(data["created_at"]) in _NUMBER
        and type(data["enqueued_at"]) in _NUMBER
    )


def _check_types(data: dict[str, Any], raw: bytes) -> None:
    """Every required field present, every known field of its type (optional ones may be null)."""
    for key in _REQUIRED:
        if key not in data:
            raise InvalidJob(f"missing field {key!r}", raw)
    for key, value in data.items():
        kinds = _TYPES.get(key)
        if kinds is None or (value is None and key not in _REQUIRED):
            continue  # unknown fields are ignored
        if type(value) not in kinds and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise InvalidJob(f"field {key!r} is {type(value).__name__}, not {kinds[0].__name__}", raw)


TIME_RANGE = (0.0, 100_000_000_000.0)  # epoch seconds: 1970 to about the year 5138
MAX_CLASS_CHARS = 1000
MAX_RETRIES = 1_000_000
MAX_REVISION = 2**63
_TIMES = ("created_at", "enqueued_at", "failed_at", "retried_at", "at", "expires_at")
_COUNTS = (("retry", MAX_RETRIES), ("retry_count", MAX_RETRIES), ("unique_revision", MAX_REVISION))


def _check_values(data: dict[str, Any], raw: bytes, usual: bool) -> None:
    """The ranges and contents of fields whose types are known to be right."""
    low, high = TIME_RANGE
    for key in _TIMES if not usual else _TIMES[:2]:
        value = data.get(key)
        # Compared before any float(): 1 followed by 400 zeros is an int that no float holds.
        if value is not None and not low <= value <= high:
            raise InvalidJob(f"field {key!r} must be epoch seconds between {low:.0f} and {high:.0f}", raw)
    keep = data.get("keep_result")
    if keep is not None and not 1 <= keep <= MAX_KEEP_RESULT:
        raise InvalidJob(f"field 'keep_result' must be between 1 and {MAX_KEEP_RESULT:.0f} seconds", raw)
    for key, most in _COUNTS:
        value = data.get(key)
        if value is not None and not 0 <= value <= most:
            raise InvalidJob(f"field {key!r} must be between 0 and {most}", raw)
    for key in ("jid", "queue", "unique_key", "reply", "batch"):
        value = data.get(key)
        if value is not None and not _is_name(value):
            raise InvalidJob(f"field {key!r} must be 1-64 letters, digits, '_' or '-'", raw)
    if len(data["class"]) > MAX_CLASS_CHARS:
        raise InvalidJob(f"field 'class' is longer than {MAX_CLASS_CHARS} characters", raw)
    try:
        # Arguments that would not encode again (inf, nesting past what the
        # encoder can recurse through) could not be retried or kept as failed.
        check_arguments(data["args"], data.get("kwargs") or {})
        for key in ("headers", "backtrace"):
            if data.get(key) is not None:
                check_value(data[key], f"field {key!r}", 0)
        if data.get("chain") is not None:
            check_chain(data["chain"])
    except TypeError as exc:
        raise InvalidJob(str(exc), raw) from exc


def decode(raw: bytes) -> Job:
    """Parse and validate a wire payload.

    Everything a job carries is checked before it runs, so nothing that
    arrives can fail later on the way to the retry or failed set: timestamps
    are finite numbers of epoch seconds within :data:`TIME_RANGE`, counts
    within their bounds, arguments and headers JSON-native (finite floats,
    nesting at most :data:`MAX_DEPTH` deep), names subject-safe.

    Raises:
        InvalidJob: the payload is not UTF-8 JSON, not an object, lacks a
            required field or has a field of the wrong type or out of range.
    """
    try:
        data = _decode_json(raw.decode())
    except UnicodeDecodeError as exc:
        raise InvalidJob("payload is not UTF-8", raw) from exc
    except RecursionError as exc:
        raise InvalidJob("payload is nested too deeply", raw) from exc
    except ValueError as exc:
        raise InvalidJob(f"payload is not JSON ({exc})", raw) from exc
    if not isinstance(data, dict):
        raise InvalidJob(f"payload is a JSON {type(data).__name__}, not an object", raw)
    usual = data.keys() == _USUAL and _usual_types(data)  # most envelopes: checked at a glance
    if not usual:
        _check_types(data, raw)
    _check_values(data, raw, usual)
    if usual:
        return Job(
            jid=data["jid"],
            cls=data["class"],
            args=data["args"],
            kwargs=data["kwargs"],
            queue=data["queue"],
            retry=data["retry"],
            created_at=float(data["created_at"]),
            enqueued_at=float(data["enqueued_at"]),
        )
    now = time.time()
    return Job(
        jid=data["jid"],
        cls=data["class"],
        args=data["args"],
        kwargs=data.get("kwargs") or {},
        queue=data["queue"],
        retry=data.get("retry", 25),
        # Missing or null: now (a producer that left them out).
        created_at=float(now if data.get("created_at") is None else data["created_at"]),
        enqueued_at=float(now if data.get("enqueued_at") is None else data["enqueued_at"]),
        # Most jobs carry none of the optional fields: look only at keys beyond the usual ones.
        **{key: data[key] for key in data.keys() - _USUAL if key in _OPTIONAL_SET},
    )
