"""Stage 2, the stream: creating the streams, consumers and buckets natskiq uses.

It receives a JetStream context and the :class:`~natskiq.topology.names.Names`
of a namespace, and its ``ensure_*`` coroutines create streams, consumers and
buckets idempotently. They guarantee that starting against objects that
already exist (with whatever defaults the server filled in) never fails,
and that an existing object whose configuration conflicts with natskiq's
raises :class:`~natskiq.errors.ConfigError` saying what differs, and that
making or updating a queue's consumer never ends the queue's pause.
:func:`read_partitions` learns a queue's partition count from its stream.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from natskiq.errors import ConfigError
from natskiq.topology.names import MAX_PARTITIONS, Names, partitions_of
from natskiq.topology.pausing import pause_until_of

log = logging.getLogger(__name__)

FAILED_MAX_MSGS = 10_000
FAILED_MAX_AGE = 180 * 24 * 3600.0
DUPLICATE_WINDOW = 120.0
DEFAULT_ACK_WAIT = 4.0  # seconds; see the README on recovery and its cost


async def read_partitions(js: JetStreamContext, names: Names, queue: str) -> int:
    """A queue's partition count as its stream now says (also remembered in ``names``).

    Raises:
        NotFoundError: the queue has no stream.
    """
    info = await js.stream_info(names.queue_stream(queue))
    count = partitions_of(names, queue, info.config.subjects)
    names.learn_partitions(queue, count)
    return count


def _differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    diffs = []
    for key, value in want.items():
        existing = have.get(key)
        if isinstance(value, list):
            same = sorted(value) == sorted(existing or [])
        else:
            same = existing == value
        if not same:
            diffs.append(f"{key}={existing!r} (natskiq wants {value!r})")
    return diffs


async def _ensure_stream(
    js: JetStreamContext, config: jsapi.StreamConfig, check: list[str]
) -> jsapi.StreamInfo | None:
    """Create the stream if missing (None), else check it and return its info."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return None
        except APIError as exc:
            # Another process may have created it between our look-up and add.
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                raise ConfigError(f"cannot create stream {config.name}: {exc}") from exc
    want = {key: _plain(getattr(config, key)) for key in check}
    have = {key: _plain(getattr(info.config, key)) for key in check}
    diffs = _differences(want, have)
    if diffs:
        raise ConfigError(
            f"stream {config.name} exists with a conflicting configuration: " + "; ".join(diffs)
        )
    return info


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


async def ensure_queue(
    js: JetStreamContext,
    names: Names,
    queue: str,
    *,
    replicas: int | None = None,
    ack_wait: float | None = None,
    partitions: int | None = None,
) -> int:
    """Create the queue's stream and a consumer per partition if missing;
    returns its partition count (also remembered in ``names``).

    ``replicas=None`` creates with 1 and accepts whatever an existing stream
    has (producers should not have to know); a number is checked.
    ``partitions=None`` accepts the partitions the stream has (producers
    again); a number adds partitions to reach it, but never removes one:
    jobs stored on a removed partition's subject would never run.
    """
    if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be 1 to {MAX_PARTITIONS}, not {partitions!r}")
    config = jsapi.StreamConfig(
        name=names.queue_stream(queue),
        subjects=names.queue_subjects(queue, partitions or 1),
        retention=jsapi.RetentionPolicy.WORK_QUEUE,
        storage=jsapi.StorageType.FILE,
        num_replicas=replicas or 1,
        allow_msg_schedules=True,
        duplicate_window=DUPLICATE_WINDOW,
    )
    check = ["retention", "storage", "allow_msg_schedules"]
    info = await _ensure_stream(js, config, check + (["num_replicas"] if replicas else []))
    count = partitions or 1
    if info is not None:
        have = list(info.config.subjects or [])
        count = partitions_of(names, queue, have)
        if sorted(have) != sorted(names.queue_subjects(queue, count)):
            diffs = _differences({"subjects": names.queue_subjects(queue, count)}, {"subjects": have})
            raise ConfigError(
                f"stream {config.name} exists with a conflicting configuration: " + "; ".join(diffs)
            )
        if partitions is not None and partitions > count:
            log.info("queue %s: %d -> %d partitions", queue, count, partitions)
            await js.update_stream(info.config.evolve(subjects=names.queue_subjects(queue, partitions)))
            count = partitions
    names.learn_partitions(queue, count)
    for shard in range(count):
        await ensure_consumer(js, names, queue, ack_wait=ack_wait, shard=shard)
    return count


async def ensure_consumer(
    js: JetStreamContext, names: Names, queue: str, *, ack_wait: float | None = None, shard: int = 0
) -> jsapi.ConsumerInfo:
    """Create the durable pull consumer the master of ``shard`` pulls the
    queue's partition of that number from; returns its info (``num_pending``:
    the jobs there it has not delivered yet).

    Workers own its settings: a given ``ack_wait`` is applied to an existing
    consumer too (a producer may have created it with the default). A
    paused consumer stays paused through that update, and a consumer made
    for a partition added to a paused queue starts paused until the same
    time as partition 0's (see :mod:`natskiq.topology.pausing`).
    """
    stream, name = names.queue_stream(queue), names.consumer(shard)
    info: jsapi.ConsumerInfo | None
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        info = None
    if info is not None and (ack_wait is None or info.config.ack_wait == ack_wait):
        return info
    config = jsapi.ConsumerConfig(
        durable_name=name,
        filter_subject=names.partition_subject(queue, shard),
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_wait=ack_wait or DEFAULT_ACK_WAIT,
        max_ack_pending=100_000,
        max_waiting=512,
        max_deliver=-1,
        # A paused queue stays paused: an update keeps the consumer's pause,
        # and a partition's new consumer takes partition 0's.
        pause_until=await _pause_to_keep(js, names, queue, shard, info),
    )
    if info is not None:
        log.info("queue %s: ack wait %.1fs -> %.1fs", queue, info.config.ack_wait or 0, config.ack_wait)
    try:
        return await js.add_consumer(stream, config)
    except BadRequestError:
        if config.pause_until is None:
            raise
        # The pause ended between the look and the request: the server
        # refuses a pause_until in the past.
        return await js.add_consumer(stream, config.evolve(pause_until=None))


async def _pause_to_keep(
    js: JetStreamContext, names: Names, queue: str, shard: int, info: jsapi.ConsumerInfo | None
) -> str | None:
    """The ``pause_until`` a consumer made or updated now must carry: its own, or partition 0's."""
    if info is not None:
        return pause_until_of(info)
    if shard == 0:
        return None
    try:
        first = await js.consumer_info(names.queue_stream(queue), names.consumer(0))
    except NotFoundError:
        return None
    return pause_until_of(first)


async def ensure_failed(
    js: JetStreamContext,
    names: Names,
    *,
    replicas: int | None = None,
    max_jobs: int | None = None,
    max_age: float | None = None,
) -> None:
    """Create the failed stream (natskiq's dead set) if missing.

    ``max_jobs`` and ``max_age`` (seconds) bound it; given, they are applied
    to an existing stream too (logged), since operators tune them over time.
    """
    config = jsapi.StreamConfig(
        name=names.failed_stream,
        subjects=[names.failed_subjects],
        retention=jsapi.RetentionPolicy.LIMITS,
        storage=jsapi.StorageType.FILE,
        num_replicas=replicas or 1,
        max_msgs=max_jobs or FAILED_MAX_MSGS,
        max_age=max_age or FAILED_MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW,
    )
    check = ["subjects", "retention", "storage"]
    await _ensure_stream(js, config, check + (["num_replicas"] if replicas else []))
    if max_jobs is None and max_age is None:
        return
    info = await js.stream_info(names.failed_stream)
    current = info.config
    wanted = {"max_msgs": max_jobs or current.max_msgs, "max_age": max_age or current.max_age}
    if (current.max_msgs, current.max_age) != (wanted["max_msgs"], wanted["max_age"]):
        log.info("failed stream limits: %d jobs, %.0f s", wanted["max_msgs"], wanted["max_age"])
        await js.update_stream(current.evolve(**wanted))


EVENTS_MAX_MSGS = 1_000_000
EVENTS_MAX_AGE = 7 * 24 * 3600.0


async def ensure_events(
    js: JetStreamContext,
    names: Names,
    *,
    replicas: int | None = None,
    max_msgs: int | None = None,
    max_bytes: int | None = None,
    max_age: float | None = None,
) -> None:
    """Create the bounded stream of lifecycle events if missing.

    It keeps at most ``max_msgs`` events (1,000,000), ``max_bytes`` (no byte
    limit unless given: JetStream reserves a stream's byte limit up front),
    for ``max_age`` seconds (7 days), dropping the oldest first. Limits
    given are applied to an existing stream too (logged).
    """
    config = jsapi.StreamConfig(
        name=names.events_stream,
        subjects=[names.events_subjects],
        retention=jsapi.RetentionPolicy.LIMITS,
        discard=jsapi.DiscardPolicy.OLD,
        storage=jsapi.StorageType.FILE,
        num_replicas=replicas or 1,
        max_msgs=max_msgs or EVENTS_MAX_MSGS,
        max_bytes=max_bytes or -1,
        max_age=max_age or EVENTS_MAX_AGE,
        allow_direct=True,
    )
    check = ["subjects", "retention", "storage"]
    info = await _ensure_stream(js, config, check + (["num_replicas"] if replicas else []))
    if info is None or (max_msgs is None and max_bytes is None and max_age is None):
        return
    current = info.config
    wanted = {
        "max_msgs": max_msgs or current.max_msgs,
        "max_bytes": max_bytes or current.max_bytes,
        "max_age": max_age or current.max_age,
    }
    if any(getattr(current, key) != value for key, value in wanted.items()):
        log.info("events stream limits: %(max_msgs)d events, %(max_bytes)d bytes, %(max_age).0f s", wanted)
        await js.update_stream(current.evolve(**wanted))


async def ensure_results(js: JetStreamContext, names: Names, *, replicas: int | None = None) -> None:
    """Create the KV bucket of kept results (a TTL per key) if missing."""
    await ensure_bucket(js, names.results_bucket, replicas=replicas)


async def ensure_stats(js: JetStreamContext, names: Names, *, replicas: int | None = None) -> None:
    """Create the counter stream holding cluster-wide totals (ADR-49 counters)."""
    config = jsapi.StreamConfig(
        name=names.stats_stream,
        subjects=[names.stats_subjects],
        retention=jsapi.RetentionPolicy.LIMITS,
        storage=jsapi.StorageType.FILE,
        num_replicas=replicas or 1,
        allow_msg_counter=True,
        allow_direct=True,
        max_msgs_per_subject=1,
    )
    check = ["subjects", "allow_msg_counter"]
    await _ensure_stream(js, config, check + (["num_replicas"] if replicas else []))


async def ensure_bucket(
    js: JetStreamContext, bucket: str, *, replicas: int | None = None, marker_ttl: float = 5.0
) -> KeyValue:
    """Bind to a KV bucket with per-key TTLs, creating it if missing."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        try:
            kv = await js.create_key_value(
                jsapi.KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    replicas=replicas or 1,
                    storage=jsapi.StorageType.FILE,
                    limit_marker_ttl=marker_ttl,
                )
            )
        except APIError:
            # Another process created it first.
            kv = await js.key_value(bucket)
    info = await js.stream_info(Names.kv_stream(bucket))
    if not info.config.allow_msg_ttl:
        raise ConfigError(f"KV bucket {bucket} exists without per-key TTLs (allow_msg_ttl)")
    if replicas and info.config.num_replicas != replicas:
        raise ConfigError(
            f"KV bucket {bucket} exists with num_replicas={info.config.num_replicas} "
            f"(natskiq wants {replicas})"
        )
    return kv
