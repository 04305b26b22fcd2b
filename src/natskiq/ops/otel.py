"""OpenTelemetry spans for job runs (``pip install 'natskiq[otel]'``).

``natskiq.ops.otel.install()`` registers server middleware that wraps every run
in a ``CONSUMER`` span named ``perform <class>``, with the job's jid, class,
queue and retry count as attributes, and records the exception and an error
status when ``perform`` raises. Spans go to whatever tracer provider the
application configured (exporters are the application's choice).
"""

from __future__ import annotations

from typing import Any

from natskiq.job import Job
from natskiq.middleware import ServerNext, server_middleware
from natskiq.worker import Worker

try:
    from opentelemetry import trace
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("natskiq.ops.otel needs OpenTelemetry: pip install 'natskiq[otel]'") from exc

_installed = False


async def trace_jobs(worker: Worker, job: Job, call_next: ServerNext) -> Any:
    """Server middleware: one span per job run."""
    tracer = trace.get_tracer("natskiq")
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.jid,
        "natskiq.class": job.cls,
        "natskiq.retry_count": job.retry_count if job.retry_count is not None else 0,
    }
    with tracer.start_as_current_span(
        f"perform {job.cls}", kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        try:
            return await call_next()
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)[:200]))
            raise


def install() -> None:
    """Trace every job run in this process (idempotent); call it in your app module."""
    global _installed
    if not _installed:
        server_middleware(trace_jobs)
        _installed = True
