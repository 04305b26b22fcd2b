"""Server middleware around every run, and the Prometheus metrics built on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

import natskiq
from natskiq import middleware

from .conftest import running_node, until, wait_for_ledger
from .sample_workers import Boom, Record


async def test_server_middleware_wraps_each_run(client: natskiq.Client, ledger: Path) -> None:
    """Registered server middleware sees the worker and job around perform, errors included."""
    seen: list[tuple[str, str, str]] = []

    async def spy(worker: natskiq.Worker, job: natskiq.Job, call_next: Any) -> Any:
        seen.append(("before", job.cls, worker.jid))
        try:
            return await call_next()
        except Exception as exc:
            seen.append(("error", job.cls, type(exc).__name__))
            raise
        finally:
            seen.append(("after", job.cls, worker.jid))

    middleware.server_middleware(spy)
    try:
        ok = await Record.perform_async(note="mw")
        await Boom.set(retries=0).perform_async()
        async with running_node(client.url, client.namespace, concurrency=1):
            await wait_for_ledger(ledger, 2)
            await until(lambda: len(seen) == 5)
    finally:
        middleware._server.remove(spy)
    assert ("before", "tests.Record", ok) in seen and ("after", "tests.Record", ok) in seen
    assert ("error", "tests.Boom", "ValueError") in seen


async def test_metrics_endpoint(client: natskiq.Client, ledger: Path) -> None:
    """--metrics-port serves Prometheus text with per-class counts, a histogram and queue sizes."""
    await Record.perform_async(note=1)
    await Boom.set(retries=0).perform_async()
    async with running_node(client.url, client.namespace, metrics_port=0) as launcher:
        await wait_for_ledger(ledger, 2)
        url = f"http://127.0.0.1:{launcher.metrics_address}/metrics"
        async with httpx.AsyncClient() as http:

            async def counted() -> bool:
                text = (await http.get(url)).text
                return 'natskiq_jobs_failed_total{queue="default",class="tests.Boom"} 1' in text

            await until(counted)
            text = (await http.get(url)).text
            missing = await http.get(url.replace("/metrics", "/nope"))
    assert 'natskiq_jobs_processed_total{queue="default",class="tests.Record"} 1' in text
    assert 'natskiq_job_duration_seconds_count{queue="default",class="tests.Record"} 1' in text
    assert 'natskiq_queue_size{queue="default"} 0' in text
    assert "# TYPE natskiq_job_duration_seconds histogram" in text
    assert "natskiq_jobs_dead_total 1" in text and "natskiq_jobs_retried_total 0" in text
    assert "natskiq_jobs_held_total 0" in text
    assert missing.status_code == 404
