"""Optional OpenTelemetry spans around job runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import natskiq
from natskiq import middleware

from .conftest import running_node, until, wait_for_ledger
from .sample_workers import Boom, Record

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")


async def test_each_run_is_a_span(client: natskiq.Client, ledger: Path) -> None:
    """With natskiq.ops.otel installed, every run is a span with the job's attributes; failures are errors."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from natskiq.ops import otel

    exporter = InMemorySpanExporter()
    provider = otel_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    otel.install()
    try:
        ok = await Record.perform_async(note="traced")
        await Boom.set(retries=0).perform_async()
        async with running_node(client.url, client.namespace):
            await wait_for_ledger(ledger, 2)
            await until(lambda: len(exporter.get_finished_spans()) >= 2)
    finally:
        middleware._server.remove(otel.trace_jobs)
        otel._installed = False
    spans = {s.name: s for s in exporter.get_finished_spans()}
    good, bad = spans["perform tests.Record"], spans["perform tests.Boom"]
    assert good.attributes is not None and good.attributes["messaging.message.id"] == ok
    assert good.status.is_ok and not bad.status.is_ok
    assert bad.events and bad.events[0].name == "exception"
