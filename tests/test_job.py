"""The envelope: encode/decode, argument checks, and refusal of bad payloads."""

from __future__ import annotations

import json
import math
import pickle
import re
import time
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

import natskiq
from natskiq import job as jobs

from .conftest import nested


def _job(**changes: Any) -> jobs.Job:
    base = jobs.Job(
        jid=jobs.new_jid(),
        cls="tests.Record",
        args=[1, "two", 3.5, None, True, [1, [2]], {"k": {"n": [None]}}],
        kwargs={"note": "x", "nested": {"a": [1, 2]}},
        queue="emails",
        retry=5,
        created_at=1764280000.25,
        enqueued_at=1764280001.5,
    )
    return attrs.evolve(base, **changes)


def _envelope(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"jid": "abc123", "class": "tests.Record", "args": [], "queue": "default"}
    data.update(changes)
    return data


def _raw(data: object) -> bytes:
    return json.dumps(data).encode()


# -- encode / decode ----------------------------------------------------


def test_new_jid_is_24_hex_digits_and_unique() -> None:
    """new_jid() returns distinct 24-hex-digit ids, like Sidekiq's."""
    jids = {jobs.new_jid() for _ in range(100)}
    assert len(jids) == 100
    assert all(len(j) == 24 and int(j, 16) >= 0 for j in jids)


def test_round_trip_keeps_every_field() -> None:
    """decode(encode(job)) gives back an equal Job."""
    job = _job()
    assert jobs.decode(jobs.encode(job)) == job


def test_round_trip_with_failure_fields() -> None:
    """The optional failure fields survive a round trip too."""
    job = _job(
        retry_count=3,
        error_class="ValueError",
        error_message="boom",
        failed_at=1764280002.0,
        retried_at=1764280003.0,
        backtrace=["Traceback (most recent call last):\n", "ValueError: boom\n"],
        at=1764280100.0,
    )
    assert jobs.decode(jobs.encode(job)) == job


def test_encode_is_compact_json_with_wire_names() -> None:
    """The wire form uses 'class' (not 'cls') and omits unset optional fields."""
    data = json.loads(jobs.encode(_job()))
    assert data["class"] == "tests.Record"
    assert "cls" not in data
    assert set(data) == {"jid", "class", "args", "kwargs", "queue", "retry", "created_at", "enqueued_at"}
    assert b" " not in jobs.encode(_job(args=[], kwargs={}))


def test_round_trip_with_middleware_unique_and_expiry_fields() -> None:
    """headers, expires_at and the unique lock fields survive a round trip."""
    job = _job(
        headers={"tenant": "acme", "trace": [1, {"x": None}]},
        expires_at=1764283600.5,
        unique_key="0123abcd",
        unique_revision=42,
        unique_until="start",
    )
    assert jobs.decode(jobs.encode(job)) == job


@pytest.mark.parametrize(
    "optional",
    [{}, {"at": 1764280100.125}, {"expires_at": 1764283600.0}, {"at": 1764280100.0, "expires_at": 1.5}],
)
def test_encode_new_is_encode_of_the_same_job(optional: dict[str, float]) -> None:
    """encode_new() writes exactly what encode() writes for the Job it describes."""
    now = 1764280000.123456
    args, kwargs = [1, "two", {"k": ["é", None]}], {"note": '\u2603 "quoted"'}
    raw = jobs.encode_new("ab12", 'w."odd"', args, kwargs, queue="emails", retry=5, now=now, **optional)
    job = jobs.Job(
        jid="ab12", cls='w."odd"', args=args, kwargs=kwargs, queue="emails", retry=5,
        created_at=now, enqueued_at=now, **optional,
    )  # fmt: skip
    assert raw == jobs.encode(job)


def test_encode_new_refuses_a_time_json_cannot_carry() -> None:
    """A non-finite scheduled time raises ValueError, as encode() does."""
    with pytest.raises(ValueError, match="JSON"):
        jobs.encode_new("j", "c", [], {}, queue="q", retry=1, now=1.0, at=math.inf)


def test_encode_many_splices_jid_and_args_into_the_shared_fields() -> None:
    """Each payload of encode_many() decodes to the template with its own jid and args."""
    template = _job(args=[], kwargs={}, expires_at=1764283600.0)
    jids = jobs.new_jids(3)
    args_list: list[Any] = [[1], ("t", 2), [{"k": [None]}]]
    payloads = jobs.encode_many(template, jids, args_list)
    decoded = [jobs.decode(raw) for raw in payloads]
    assert decoded == [
        attrs.evolve(template, jid=jid, args=list(args)) for jid, args in zip(jids, args_list, strict=True)
    ]


def test_new_jids_are_like_new_jid() -> None:
    """new_jids(n) gives n distinct 24-hex-digit ids."""
    jids = jobs.new_jids(500)
    assert len(set(jids)) == 500
    assert all(len(j) == 24 and int(j, 16) >= 0 for j in jids)
    assert jobs.new_jids(0) == []


def test_decode_fills_defaults_for_optional_fields() -> None:
    """A minimal envelope from another language gets kwargs {}, retry 25 and timestamps."""
    job = jobs.decode(_raw(_envelope(args=[1])))
    assert job.kwargs == {}
    assert job.retry == 25
    assert job.retry_count is None
    assert isinstance(job.created_at, float)
    assert isinstance(job.enqueued_at, float)


def test_decode_accepts_integer_timestamps() -> None:
    """Epoch seconds given as JSON integers are read as floats."""
    job = jobs.decode(_raw(_envelope(created_at=1764280000, enqueued_at=1764280001)))
    assert job.created_at == 1764280000.0
    assert type(job.created_at) is float


# -- check_arguments ----------------------------------------------------


def test_check_arguments_accepts_json_native_values() -> None:
    """str, int, finite float, bool, None, lists and string-keyed dicts pass."""
    jobs.check_arguments(
        (1, "s", 1.5, True, None, [1, [2, {"a": None}]], {"k": [1.0, "x"]}),
        {"kw": {"deep": [{"x": 1}]}},
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        (b"raw", "bytes"),
        (datetime(2025, 1, 1, tzinfo=UTC), "datetime"),
        (object(), "object"),
        (frozenset(), "frozenset"),
    ],
)
def test_check_arguments_refuses_non_native_types(value: object, kind: str) -> None:
    """A tuple, set, bytes, datetime or object positional argument is refused, naming it and its type."""
    with pytest.raises(TypeError, match=rf"argument 1 is a {kind}\b"):
        jobs.check_arguments(("fine", value), {})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_arguments_refuses_non_finite_floats(value: float) -> None:
    """NaN and infinities are refused, since JSON cannot carry them."""
    with pytest.raises(TypeError, match="argument 0 is"):
        jobs.check_arguments((value,), {})


def test_check_arguments_names_the_keyword_argument() -> None:
    """A bad keyword argument is named by its keyword."""
    with pytest.raises(TypeError, match=r"keyword argument 'when' is a datetime"):
        jobs.check_arguments((), {"ok": 1, "when": datetime.now(UTC)})


def test_check_arguments_names_the_path_inside_containers() -> None:
    """A bad value deep inside lists and dicts is named by its full path."""
    with pytest.raises(TypeError, match=r"argument 0\[1\]\['b'\]\[0\] is a bytes"):
        jobs.check_arguments(([0, {"a": 1, "b": [b"x"]}],), {})
    with pytest.raises(TypeError, match=r"keyword argument 'opts'\['ratio'\] is nan"):
        jobs.check_arguments((), {"opts": {"ratio": math.nan}})


@pytest.mark.parametrize("key", [1, None, (1, 2), 1.5])
def test_check_arguments_refuses_non_string_dict_keys(key: object) -> None:
    """A dict with a non-string key is refused, naming the argument and the key."""
    with pytest.raises(TypeError, match=re.escape(f"argument 0['a'] has a non-string key {key!r}")):
        jobs.check_arguments(({"a": {key: 1}},), {})


def test_check_arguments_refuses_subclasses_of_native_types() -> None:
    """Subclasses of native types (str enums, OrderedDict...) are refused: they would not round-trip."""

    class Name(str):
        pass

    with pytest.raises(TypeError, match="argument 0 is a Name"):
        jobs.check_arguments((Name("x"),), {})


def test_check_arguments_accepts_nesting_up_to_max_depth() -> None:
    """Containers nested exactly MAX_DEPTH levels deep are accepted."""
    jobs.check_arguments((nested(jobs.MAX_DEPTH),), {})


def test_check_arguments_refuses_nesting_deeper_than_max_depth() -> None:
    """Nesting one level deeper than MAX_DEPTH is refused, naming the argument."""
    with pytest.raises(TypeError, match=rf"argument 0(\[0\])* is nested deeper than {jobs.MAX_DEPTH}"):
        jobs.check_arguments((nested(jobs.MAX_DEPTH + 1),), {})
    with pytest.raises(TypeError, match=r"keyword argument 'tree'"):
        jobs.check_arguments((), {"tree": nested(jobs.MAX_DEPTH + 1)})


def test_check_arguments_refuses_self_referencing_list() -> None:
    """A list that contains itself is refused instead of recursing forever."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="nested deeper"):
        jobs.check_arguments((loop,), {})


# -- decode refusals ----------------------------------------------------


def _invalid(raw: bytes) -> natskiq.InvalidJob:
    with pytest.raises(natskiq.InvalidJob) as info:
        jobs.decode(raw)
    assert info.value.raw == raw
    assert info.value.reason
    assert info.value.reason in str(info.value)
    return info.value


def test_invalid_job_is_a_value_error_and_natskiq_error() -> None:
    """InvalidJob is both a ValueError and a NatskiqError."""
    exc = _invalid(b"nope")
    assert isinstance(exc, ValueError)
    assert isinstance(exc, natskiq.NatskiqError)


def test_decode_refuses_bytes_that_are_not_utf8() -> None:
    """Bytes that are not UTF-8 are refused with that reason."""
    assert "UTF-8" in _invalid(b'{"jid": "\xff\xfe"}').reason


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b'{"jid": }', b"{'jid': 'x'}"])
def test_decode_refuses_text_that_is_not_json(raw: bytes) -> None:
    """Text that is not JSON is refused with that reason."""
    assert "not JSON" in _invalid(raw).reason


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1, 2]", "list"), (b'"job"', "str"), (b"42", "int"), (b"4.2", "float"), (b"null", "NoneType")],
)
def test_decode_refuses_json_that_is_not_an_object(raw: bytes, kind: str) -> None:
    """A JSON array, string, number or null is refused, naming what it is."""
    reason = _invalid(raw).reason
    assert "not an object" in reason
    assert kind in reason


@pytest.mark.parametrize("field", ["jid", "class", "args", "queue"])
def test_decode_refuses_a_missing_required_field(field: str) -> None:
    """An envelope without jid, class, args or queue is refused, naming the field."""
    data = _envelope()
    del data[field]
    assert _invalid(_raw(data)).reason == f"missing field {field!r}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("args", {"a": 1}),
        ("args", "1,2"),
        ("args", None),
        ("kwargs", [1]),
        ("retry", True),
        ("retry", "5"),
        ("retry", 2.5),
        ("jid", 42),
        ("jid", None),
        ("class", ["tests.Record"]),
        ("queue", 1),
        ("created_at", "yesterday"),
        ("enqueued_at", False),
        ("retry_count", "1"),
        ("retry_count", True),
        ("error_message", 3),
        ("backtrace", "line"),
        ("at", "soon"),
        ("reply", 7),
    ],
)
def test_decode_refuses_fields_of_the_wrong_type(field: str, value: object) -> None:
    """A field of the wrong JSON type (bool for int included) is refused, naming the field."""
    assert f"field {field!r}" in _invalid(_raw(_envelope(**{field: value}))).reason


def test_decode_refuses_deeply_nested_json() -> None:
    """100,000 nested lists are refused as InvalidJob, not a RecursionError."""
    depth = 100_000
    raw = b'{"jid":"a","class":"c","queue":"q","args":' + b"[" * depth + b"]" * depth + b"}"
    _invalid(raw)


def test_decode_refuses_deeply_nested_objects() -> None:
    """100,000 nested JSON objects are refused as InvalidJob too."""
    depth = 100_000
    raw = b'{"a":' * depth + b"1" + b"}" * depth
    _invalid(raw)


_unpickled: list[str] = []


def _mark_unpickled(note: str) -> str:
    _unpickled.append(note)
    return note


class _Trap:
    """Unpickling it calls _mark_unpickled, so a test can tell if decode() ever unpickles."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_mark_unpickled, ("unpickled!",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_decode_never_unpickles(protocol: int) -> None:
    """A pickle payload is refused as InvalidJob and never unpickled."""
    raw = pickle.dumps(_Trap(), protocol=protocol)
    _invalid(raw)
    assert _unpickled == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_decode_refuses_non_finite_numbers(constant: str) -> None:
    """NaN and Infinity (which Python's json accepts) are refused: encode() could not write them back."""
    raw = b'{"jid":"a","class":"c","queue":"q","args":[' + constant.encode() + b"]}"
    _invalid(raw)
    raw = b'{"jid":"a","class":"c","queue":"q","args":[],"created_at":' + constant.encode() + b"}"
    _invalid(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("jid", "a.b"),
        ("jid", "*"),
        ("jid", ""),
        ("jid", "abc\n"),
        ("queue", "a.b"),
        ("queue", ">"),
        ("queue", "q\n"),
        ("reply", "a.b"),
        ("reply", ">"),
        ("reply", ""),
    ],
)
def test_decode_refuses_names_that_cannot_be_subject_tokens(field: str, value: str) -> None:
    """A jid, queue or reply token that could inject '.', '*' or '>' into a subject is refused."""
    _invalid(_raw(_envelope(**{field: value})))


def test_every_decoded_job_can_be_encoded_again() -> None:
    """Whatever decode() accepts, encode() can write back (a failing job must reach retry/failed)."""
    raw = _raw(_envelope(args=[1e308, -0.0, {"a": [None]}], kwargs={"x": "é"}, retry=0))
    job = jobs.decode(raw)
    assert jobs.decode(jobs.encode(job)) == job


@pytest.mark.parametrize("field", ["created_at", "enqueued_at"])
def test_decode_takes_a_null_time_as_now(field: str) -> None:
    """A null created_at or enqueued_at (found by the fuzz test) decodes as now, not a TypeError."""
    before = time.time()
    job = jobs.decode(_raw(_envelope(**{field: None})))
    assert getattr(job, field) >= before
