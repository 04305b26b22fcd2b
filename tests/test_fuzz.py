"""Generated hostile envelopes and headers (Hypothesis): decoding refuses what it
cannot carry through a failure, and a node fed them stays up, runs the legitimate
jobs between them and keeps each refused one in the failed set with a reason."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natskiq
from natskiq import api, testing
from natskiq import job as jobs
from natskiq.run import retry

from .conftest import nested, read_ledger, running_node, until
from .sample_workers import Record

NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e400, -1e400, 0, -1, 2**63, 10**30]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = [
    "jid", "class", "args", "kwargs", "queue", "retry", "created_at", "enqueued_at", "retry_count",
    "error_class", "error_message", "failed_at", "retried_at", "backtrace", "at", "periodic",
    "headers", "expires_at", "unique_key", "unique_revision", "unique_until",
]  # fmt: skip


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed envelopes with some fields replaced by anything at all."""
    doc: dict[str, Any] = {
        "jid": draw(st.from_regex(r"[a-z0-9]{1,24}", fullmatch=True)),
        "class": draw(st.sampled_from(["tests.Record", "tests.Boom", "tests.Nope"])),
        "args": [],
        "kwargs": {},
        "queue": "default",
        "retry": 0,
        "created_at": 1764280000.0,
        "enqueued_at": 1764280000.0,
    }
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        doc[field] = draw(st.one_of(VALUES, st.builds(nested, st.integers(60, 990))))
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    """JSON as a producer in any language might write it (Infinity and NaN included)."""
    return json.dumps(doc, default=str).encode()


@given(st.one_of(envelopes().map(dumps), st.binary(max_size=200)))
@settings(max_examples=400, deadline=None)
def test_decoded_jobs_always_survive_their_failure_path(raw: bytes) -> None:
    """decode() accepts a payload only if its failure record encodes within bounds; else InvalidJob."""
    try:
        job = jobs.decode(raw)
    except natskiq.InvalidJob as exc:
        assert exc.reason
        return
    for stamp in (job.created_at, job.enqueued_at, job.failed_at, job.retried_at, job.at, job.expires_at):
        assert stamp is None or math.isfinite(stamp)
    record = retry.failed_job(job, ValueError("x" * 3000), count=1, backtrace=5)
    payload = retry.fit(record, 1024 * 1024)
    assert payload is not None
    assert jobs.decode(payload).jid == job.jid


HEADERS = st.dictionaries(
    st.sampled_from(["X-Anything", "Nats-Msg-Id", "Natskiq-Token", "Natskiq-Ack", "Status"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30),
    max_size=3,
)


@pytest.mark.slow
@given(batch=st.lists(st.tuples(envelopes().map(dumps), HEADERS), min_size=15, max_size=15))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_a_node_fed_generated_envelopes_stays_up(
    nats_url: str, ledger: Path, batch: list[tuple[bytes, dict[str, str]]]
) -> None:
    """Generated envelopes with generated headers, between legitimate jobs: the node never
    stops, every legitimate job runs, and every message ends run, retried away or in the failed set."""
    namespace = testing.unique_namespace()
    await anyio.Path(ledger).write_text("")
    async with natskiq.connect(nats_url, namespace=namespace) as client:
        await client.ensure_queue("default")
        subject = client.names.queue_subject("default")
        # Real backoff: a generated job that fails waits in the retry set.
        async with running_node(client.url, client.namespace):
            legit = []
            for payload, headers in batch:
                legit.append(await Record.perform_async(note="between"))
                try:
                    await client.js.publish(subject, payload, headers=headers)
                except natskiq.NatskiqError:
                    pass
                except Exception as exc:  # refused by the server (a bad header): fine, nothing stored
                    assert "nats" in type(exc).__module__, exc
            legit.append(await Record.perform_async(note="after"))

            async def legit_ran() -> bool:
                return set(legit) <= {r.jid for r in read_ledger(ledger)}

            await until(legit_ran, timeout=30)

            async def settled() -> bool:
                info = await client.js.stream_info(client.names.queue_stream("default"))
                return not await api.find(client, "queued") and info.state.messages == len(
                    await api.find(client, "retry")
                ) + len(await api.find(client, "scheduled"))

            await until(settled, timeout=30)
            for entry in await api.find(client, "failed"):
                assert entry.job is not None or entry.reason
            json.dumps((await api.stats(client)).to_dict(), allow_nan=False)
        await anyio.lowlevel.checkpoint()
