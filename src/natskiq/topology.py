"""Stage 2, the stream: every NATS name natskiq uses, and their creation.

This is the only module that builds subject, stream, consumer and bucket
names. It receives a namespace (``natskiq`` by default) and hands out
:class:`Names`; its ``ensure_*`` coroutines create streams, consumers and
buckets idempotently. They guarantee that starting against objects that
already exist (with whatever defaults the server filled in) never fails,
and that an existing object whose configuration conflicts with natskiq's
raises :class:`~natskiq.errors.ConfigError` saying what differs.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import attrs
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from natskiq.errors import ConfigError
from natskiq.job import NAME_RE

log = logging.getLogger(__name__)

NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
CONSUMER = "aggregator"
LEASE_KEY = "aggregator"
FAILED_MAX_MSGS = 10_000
FAILED_MAX_AGE = 180 * 24 * 3600.0
DUPLICATE_WINDOW = 120.0
DEFAULT_ACK_WAIT = 4.0  # seconds; see the README on recovery and its cost
MAX_PARTITIONS = 64


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe queue/node name, else raise ConfigError.

    A name becomes a subject token and part of a stream name, so it must never
    be able to inject ``.``, ``*``, ``>`` or white space into a subject.
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigError(f"invalid {kind} name {value!r}: use 1-64 letters, digits, '_' or '-'")
    return value


def _check_namespace(_: object, __: object, value: str) -> None:
    if not isinstance(value, str) or not NAMESPACE_RE.fullmatch(value):
        raise ConfigError(f"invalid namespace {value!r}: use 1-32 letters, digits, '_' or '-'")


MAX_CACHED_SUBJECTS = 1024


@attrs.frozen
class Names:
    """Subject, stream and bucket names for one namespace."""

    namespace: str = attrs.field(default="natskiq", validator=_check_namespace)
    # Every enqueue needs its queue's subject: checking the name each time
    # costs more than a look-up. Only checked names get in.
    _queue_subjects: dict[str, str] = attrs.field(init=False, factory=dict, eq=False, repr=False)
    # Partitions per queue, as learned from its stream (see ensure_queue);
    # a queue not in here has one.
    _partitions: dict[str, int] = attrs.field(init=False, factory=dict, eq=False, repr=False)
    _turns: itertools.count[int] = attrs.field(init=False, factory=itertools.count, eq=False, repr=False)

    @property
    def _stream_prefix(self) -> str:
        return self.namespace.upper()

    def queue_stream(self, queue: str) -> str:
        return f"{self._stream_prefix}_Q_{check_name('queue', queue)}"

    def queue_subject(self, queue: str) -> str:
        subject = self._queue_subjects.get(queue) if type(queue) is str else None
        if subject is None:
            subject = f"{self.namespace}.queue.{check_name('queue', queue)}"
            if len(self._queue_subjects) >= MAX_CACHED_SUBJECTS:
                self._queue_subjects.clear()
            self._queue_subjects[queue] = subject
        return subject

    def partition_subject(self, queue: str, partition: int) -> str:
        """Where ready jobs of one partition of a queue are stored: partition 0
        is ``<ns>.queue.<q>``, partition ``p`` is ``<ns>.queue.<q>.<p>``."""
        base = self.queue_subject(queue)
        return base if partition == 0 else f"{base}.{int(partition)}"

    def partitions(self, queue: str) -> int:
        """How many partitions the queue has, as last learned from its stream (1 if unknown)."""
        return self._partitions.get(queue, 1)

    def learn_partitions(self, queue: str, count: int) -> None:
        """Remember the queue's partition count (from its stream's subjects)."""
        self._partitions[check_name("queue", queue)] = max(1, min(MAX_PARTITIONS, count))

    def enqueue_subject(self, queue: str) -> str:
        """The subject a new ready job of ``queue`` goes to: its partitions in turn."""
        count = self._partitions.get(queue, 1)
        if count == 1:
            return self.queue_subject(queue)
        return self.partition_subject(queue, next(self._turns) % count)

    def scheduled_subject(self, queue: str, jid: str) -> str:
        return f"{self.namespace}.scheduled.{check_name('queue', queue)}.{check_name('jid', jid)}"

    def retry_subject(self, queue: str, jid: str) -> str:
        return f"{self.namespace}.retry.{check_name('queue', queue)}.{check_name('jid', jid)}"

    def queue_subjects(self, queue: str, partitions: int = 1) -> list[str]:
        """Every subject the queue's stream holds, with ``partitions`` ready subjects."""
        q = check_name("queue", queue)
        ns = self.namespace
        ready = [self.partition_subject(q, p) for p in range(1, partitions)]
        return [f"{ns}.queue.{q}", *ready, f"{ns}.scheduled.{q}.*", f"{ns}.retry.{q}.*"]

    @property
    def ready_filter(self) -> str:
        """A subject filter that, within one queue's stream, matches the ready
        jobs of every partition (and nothing else the stream holds)."""
        return f"{self.namespace}.queue.>"

    def is_ready_subject(self, queue: str, subject: str) -> bool:
        """Whether ``subject`` holds ready jobs of ``queue`` (any partition)."""
        base = self.queue_subject(queue)
        if subject == base:
            return True
        rest = subject[len(base) + 1 :] if subject.startswith(base + ".") else ""
        return rest.isdigit() and 0 < int(rest) < MAX_PARTITIONS

    def schedule_filter(self, queue: str) -> str:
        """One filter for the queue's scheduled and retry subjects: in its stream
        it matches those two and nothing else (``<ns>.queue.<q>`` has a token less)."""
        return f"{self.namespace}.*.{check_name('queue', queue)}.*"

    @property
    def failed_stream(self) -> str:
        return f"{self._stream_prefix}_FAILED"

    def failed_subject(self, queue: str) -> str:
        return f"{self.namespace}.failed.{check_name('queue', queue)}"

    @property
    def failed_subjects(self) -> str:
        return f"{self.namespace}.failed.*"

    @property
    def stats_stream(self) -> str:
        return f"{self._stream_prefix}_STATS"

    def stats_subject(self, name: str, day: str | None = None) -> str:
        """A counter's subject: ``<ns>.stats.<name>``, or per UTC day ``...<name>.<YYYY-MM-DD>``."""
        base = f"{self.namespace}.stats.{check_name('stat', name)}"
        return base if day is None else f"{base}.{check_name('day', day)}"

    @property
    def lease_bucket(self) -> str:
        return f"{self.namespace}_leases"

    @property
    def nodes_bucket(self) -> str:
        return f"{self.namespace}_nodes"

    @property
    def unique_bucket(self) -> str:
        """The KV bucket of unique-job locks."""
        return f"{self.namespace}_unique"

    def unique_subject(self, key: str) -> str:
        """The KV subject of a unique-job lock (a create or a release is a publish to it)."""
        return f"$KV.{self.unique_bucket}.{check_name('unique key', key)}"

    def lease_subject(self, key: str = LEASE_KEY) -> str:
        """The KV subject of a lease key (used to renew with a TTL)."""
        return f"$KV.{self.lease_bucket}.{key}"

    @staticmethod
    def shard_key(shard: int) -> str:
        """The lease key of a dispatch shard: ``aggregator`` for shard 0, ``aggregator-<n>`` after."""
        return LEASE_KEY if shard == 0 else f"{LEASE_KEY}-{int(shard)}"

    @staticmethod
    def shard_of_key(key: str) -> int | None:
        """The shard a lease key belongs to, or None for a key that is not one."""
        if key == LEASE_KEY:
            return 0
        rest = key[len(LEASE_KEY) + 1 :] if key.startswith(LEASE_KEY + "-") else ""
        return int(rest) if rest.isdigit() and 0 < int(rest) < MAX_PARTITIONS else None

    @staticmethod
    def consumer(shard: int) -> str:
        """The durable pull consumer a shard's master pulls a queue's partition from."""
        return CONSUMER if shard == 0 else f"{CONSUMER}-{int(shard)}"

    @property
    def demand_subject(self) -> str:
        return f"{self.namespace}.ctl.demand"

    @property
    def master_subject(self) -> str:
        """Where a newly elected master announces itself."""
        return f"{self.namespace}.ctl.master"

    def dispatch_subject(self, node_id: str) -> str:
        return f"{self.namespace}.ctl.dispatch.{check_name('node', node_id)}"

    @property
    def cancel_subject(self) -> str:
        """Where cancel requests for running jobs go (every node listens)."""
        return f"{self.namespace}.ctl.cancel"

    def command_subject(self, node_id: str) -> str:
        return f"{self.namespace}.ctl.node.{check_name('node', node_id)}"

    def pull_subject(self, queue: str, shard: int = 0) -> str:
        """The JetStream API subject for pull requests on a queue's consumer for ``shard``."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.queue_stream(queue)}.{self.consumer(shard)}"


def partitions_of(names: Names, queue: str, subjects: list[str] | None) -> int:
    """A queue's partition count, from its stream's subjects (``<ns>.queue.<q>.<p>``)."""
    return 1 + sum(
        1 for s in subjects or [] if s != names.queue_subject(queue) and names.is_ready_subject(queue, s)
    )


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
    consumer too (a producer may have created it with the default).
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
    )
    if info is not None:
        log.info("queue %s: ack wait %.1fs -> %.1fs", queue, info.config.ack_wait or 0, config.ack_wait)
    return await js.add_consumer(stream, config)


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


async def ensure_stats(js: JetStreamContext, names: Names, *, replicas: int | None = None) -> None:
    """Create the counter stream holding cluster-wide totals (ADR-49 counters)."""
    config = jsapi.StreamConfig(
        name=names.stats_stream,
        subjects=[f"{names.namespace}.stats.>"],
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
    info = await js.stream_info(f"KV_{bucket}")
    if not info.config.allow_msg_ttl:
        raise ConfigError(f"KV bucket {bucket} exists without per-key TTLs (allow_msg_ttl)")
    if replicas and info.config.num_replicas != replicas:
        raise ConfigError(
            f"KV bucket {bucket} exists with num_replicas={info.config.num_replicas} "
            f"(natskiq wants {replicas})"
        )
    return kv
