"""Batches: one batch's status by id, and the batches kept.

Receives a client and a batch id; hands back
:class:`~natskiq.flow.batches.BatchStatus` values read from the
``<ns>_batches`` bucket (see :mod:`natskiq.flow.batches`). Reading changes
nothing.
"""

from __future__ import annotations

from natskiq.enqueue.client import Client
from natskiq.errors import NotFound
from natskiq.flow.batches import BatchStatus, read_status, read_statuses


async def batch(client: Client, bid: str) -> BatchStatus:
    """A batch's status: total, pending, succeeded, failed, the failed jids, callbacks.

    Raises:
        ConfigError: ``bid`` is not a batch id.
        NotFound: no such batch (never made, or expired after it finished).
    """
    status = await read_status(client.js, client.names, bid)
    if status is None:
        raise NotFound(f"no batch {bid}")
    return status


async def batches(client: Client, *, limit: int = 100) -> list[BatchStatus]:
    """The batches kept (running, and finished within the last days), newest first."""
    return await read_statuses(client.js, client.names, limit=limit)
