"""natskiq: Sidekiq-style background jobs for async Python on NATS JetStream.

::

    import natskiq

    class SendEmail(natskiq.Worker, queue="emails", retries=5):
        async def perform(self, user_id: int) -> None: ...

    async with natskiq.connect("nats://127.0.0.1:4222"):
        await SendEmail.perform_async(42)
        await SendEmail.perform_in(600, 42)
"""

from __future__ import annotations

from natskiq import api
from natskiq.enqueue.client import Client, connect
from natskiq.enqueue.cron import periodic
from natskiq.errors import (
    BatchError,
    ConfigError,
    DeliveryLimit,
    EnqueueError,
    InvalidJob,
    JobCancelled,
    JobFailed,
    LeaseLost,
    NatskiqError,
    NotConnected,
    NotFound,
    Retry,
    UnknownWorker,
)
from natskiq.flow.batches import Batch, BatchStatus, batch
from natskiq.flow.chains import Chain, ChainHandle, chain
from natskiq.job import Job
from natskiq.middleware import client_middleware, server_middleware
from natskiq.options import Options
from natskiq.run.retry import on_death
from natskiq.signature import Signature
from natskiq.status.handle import JobHandle
from natskiq.status.view import JobStatus
from natskiq.worker import Configured, Worker

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchError",
    "BatchStatus",
    "Chain",
    "ChainHandle",
    "Client",
    "ConfigError",
    "Configured",
    "DeliveryLimit",
    "EnqueueError",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobStatus",
    "LeaseLost",
    "NatskiqError",
    "NotConnected",
    "NotFound",
    "Options",
    "Retry",
    "Signature",
    "UnknownWorker",
    "Worker",
    "__version__",
    "api",
    "batch",
    "chain",
    "client_middleware",
    "connect",
    "on_death",
    "periodic",
    "server_middleware",
]
