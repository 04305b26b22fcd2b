"""Stage 2, the stream: every NATS name natskiq uses, and their creation.

Only this package builds subject, stream, consumer and bucket names.
:mod:`~natskiq.topology.names` hands out the :class:`Names` of a namespace
(and checks every name that goes into a subject); :mod:`~natskiq.topology.ensure`
creates the streams, consumers and buckets they name, idempotently;
:mod:`~natskiq.topology.kv` writes a KV key by compare-and-set;
:mod:`~natskiq.topology.pausing` reads and changes a queue's pause, which
its consumers hold. Everything
is re-exported here: import from ``natskiq.topology``.
"""

from __future__ import annotations

from natskiq.topology.ensure import (
    DEFAULT_ACK_WAIT,
    DUPLICATE_WINDOW,
    FAILED_MAX_AGE,
    FAILED_MAX_MSGS,
    ensure_bucket,
    ensure_consumer,
    ensure_events,
    ensure_failed,
    ensure_queue,
    ensure_results,
    ensure_stats,
    read_partitions,
)
from natskiq.topology.kv import (
    EXPECTED_LAST_SEQUENCE,
    TOMBSTONE_HEADERS,
    WRONG_LAST_SEQUENCE,
    delete_if,
    is_tombstone,
    put_if,
    ttl_header,
)
from natskiq.topology.names import (
    CONSUMER,
    LEASE_KEY,
    MAX_CACHED_SUBJECTS,
    MAX_PARTITIONS,
    NAMESPACE_RE,
    PERIODIC_PREFIX,
    Names,
    check_name,
    class_token,
    partitions_of,
)
from natskiq.topology.pausing import (
    INDEFINITE,
    NOT_PAUSED,
    Pause,
    pause_consumer,
    pause_of,
    pause_until_of,
    resume_consumer,
)

__all__ = [
    "CONSUMER",
    "DEFAULT_ACK_WAIT",
    "DUPLICATE_WINDOW",
    "EXPECTED_LAST_SEQUENCE",
    "FAILED_MAX_AGE",
    "FAILED_MAX_MSGS",
    "INDEFINITE",
    "LEASE_KEY",
    "MAX_CACHED_SUBJECTS",
    "MAX_PARTITIONS",
    "NAMESPACE_RE",
    "NOT_PAUSED",
    "PERIODIC_PREFIX",
    "TOMBSTONE_HEADERS",
    "WRONG_LAST_SEQUENCE",
    "Names",
    "Pause",
    "check_name",
    "class_token",
    "delete_if",
    "ensure_bucket",
    "ensure_consumer",
    "ensure_events",
    "ensure_failed",
    "ensure_queue",
    "ensure_results",
    "ensure_stats",
    "is_tombstone",
    "partitions_of",
    "pause_consumer",
    "pause_of",
    "pause_until_of",
    "put_if",
    "read_partitions",
    "resume_consumer",
    "ttl_header",
]
