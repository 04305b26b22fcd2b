"""Stage 1, enqueue: which batch the jobs enqueued here join.

``async with natskiq.batch(...)`` (and a job's ``self.batch.jobs()``) set
:data:`current` to a :class:`Joining` for the block; the client reads it in
one place per path: :meth:`natskiq.Client.build` stamps the batch id into
each envelope it builds, and the points where a stored job's ``queued``
event is emitted count it (:meth:`Joining.joined`). Jobs enqueued outside a
block (and jobs a job enqueues on its own) join no batch. The batch logic
itself is :mod:`natskiq.flow.batches`, above this stage.
"""

from __future__ import annotations

import contextvars

import attrs


@attrs.define
class Joining:
    """An open batch block: its batch id and how many jobs (and child batches) joined it."""

    bid: str
    count: int = 0

    def joined(self, count: int = 1) -> None:
        """Count ``count`` more jobs stored in this batch."""
        self.count += count


current: contextvars.ContextVar[Joining | None] = contextvars.ContextVar("natskiq_batch", default=None)
"""The batch block open in this task, if any (a copy of the context follows each new task)."""
