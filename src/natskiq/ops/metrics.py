"""Prometheus metrics for one worker node (``natskiq worker --metrics-port``).

:class:`Metrics` is server middleware that counts runs by queue and class
(processed, failed, running, a duration histogram); :func:`serve` answers
``GET /metrics`` in Prometheus' text format, adding retries and the size and
latency of every queue as the cluster sees them at scrape time.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any

import anyio
import attrs
from anyio.abc import SocketStream, TaskStatus

from natskiq import api
from natskiq.enqueue.client import Client
from natskiq.job import Job
from natskiq.middleware import ServerNext
from natskiq.worker import Worker

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, math.inf)


@attrs.define
class Metrics:
    """Counters for this node, filled in as server middleware."""

    processed: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    failed: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    running: int = 0
    _hist: dict[tuple[str, str], list[int]] = attrs.field(factory=dict)
    _sums: dict[tuple[str, str], float] = attrs.field(factory=lambda: collections.defaultdict(float))

    async def __call__(self, worker: Worker, job: Job, call_next: ServerNext) -> Any:
        key = (job.queue, job.cls)
        started = anyio.current_time()
        self.running += 1
        try:
            return await call_next()
        except Exception:
            self.failed[key] += 1
            raise
        finally:
            self.running -= 1
            self.processed[key] += 1
            self._observe(key, anyio.current_time() - started)

    def _observe(self, key: tuple[str, str], seconds: float) -> None:
        counts = self._hist.setdefault(key, [0] * len(BUCKETS))
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        self._sums[key] += seconds

    outcomes: collections.Counter[str] | None = None  # the node's, set by the launcher

    def render(self, queues: list[api.QueueInfo]) -> str:
        """The Prometheus text exposition of these counters and ``queues``."""
        lines: list[str] = []

        def family(name: str, kind: str, about: str) -> None:
            lines.extend([f"# HELP {name} {about}", f"# TYPE {name} {kind}"])

        family(
            "natskiq_jobs_processed_total", "counter", "Job runs finished on this node (success or failure)."
        )
        lines += [f"natskiq_jobs_processed_total{_labels(k)} {v}" for k, v in sorted(self.processed.items())]
        family("natskiq_jobs_failed_total", "counter", "Job runs that raised on this node.")
        lines += [f"natskiq_jobs_failed_total{_labels(k)} {v}" for k, v in sorted(self.failed.items())]
        family("natskiq_jobs_retried_total", "counter", "Failed runs this node scheduled for a retry.")
        outcomes = self.outcomes if self.outcomes is not None else collections.Counter()
        lines.append(f"natskiq_jobs_retried_total {outcomes['retry']}")
        family("natskiq_jobs_dead_total", "counter", "Jobs this node moved to the failed set for good.")
        lines.append(f"natskiq_jobs_dead_total {outcomes['failed']}")
        family(
            "natskiq_jobs_held_total", "counter", "Jobs this node put back for a concurrency or rate limit."
        )
        lines.append(f"natskiq_jobs_held_total {outcomes['held']}")
        family("natskiq_jobs_running", "gauge", "Jobs running on this node now.")
        lines.append(f"natskiq_jobs_running {self.running}")
        family("natskiq_job_duration_seconds", "histogram", "Run time of jobs on this node.")
        for key, counts in sorted(self._hist.items()):
            for bound, count in zip(BUCKETS, counts, strict=True):
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                lines.append(f"natskiq_job_duration_seconds_bucket{_labels(key, le=le)} {count}")
            lines.append(f"natskiq_job_duration_seconds_sum{_labels(key)} {self._sums[key]:.6f}")
            lines.append(f"natskiq_job_duration_seconds_count{_labels(key)} {counts[-1]}")
        for name, about, attr in (
            ("natskiq_queue_size", "Jobs ready in a queue (cluster-wide).", "ready"),
            ("natskiq_queue_latency_seconds", "Age of the oldest ready job in a queue.", "latency"),
            ("natskiq_queue_retries", "Jobs waiting for a retry in a queue.", "retries"),
            ("natskiq_queue_scheduled", "Jobs scheduled for later in a queue.", "scheduled"),
        ):
            family(name, "gauge", about)
            lines += [f'{name}{{queue="{q.name}"}} {getattr(q, attr):g}' for q in queues]
        return "\n".join(lines) + "\n"


def _labels(key: tuple[str, str], **extra: str) -> str:
    pairs = {"queue": key[0], "class": key[1], **extra}
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def serve(
    metrics: Metrics,
    client: Client,
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on ``host:port`` until cancelled (reports the bound port)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    task_status.started(bound)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    request = await stream.receive(4096)
                    path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
                    if not request.startswith(b"GET ") or path.split(b"?")[0] != b"/metrics":
                        await stream.send(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        return
                    try:
                        queues = await api.queues(client)
                    except Exception:  # NATS away: still serve this node's counters
                        queues = []
                    body = metrics.render(queues).encode()
                    head = (
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    )
                    await stream.send(head.encode() + body)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return

    async with listener:
        await listener.serve(handle)
