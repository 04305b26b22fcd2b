"""Stage 2, the stream: every NATS name natskiq uses.

This is the only place that builds subject, stream, consumer and bucket
names (with :mod:`natskiq.topology.ensure`, which creates what they name).
It receives a namespace (``natskiq`` by default) and hands out
:class:`Names`; it guarantees that a name it builds from a queue, jid, node
or key never carries ``.``, ``*``, ``>`` or white space into a subject
(:func:`check_name` refuses them with :class:`~natskiq.errors.ConfigError`),
and knows how a queue's ready jobs are spread over its partitions. No I/O.
"""

from __future__ import annotations

import itertools
import re

import attrs

from natskiq.errors import ConfigError
from natskiq.job import NAME_RE

NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
CONSUMER = "aggregator"
LEASE_KEY = "aggregator"
MAX_PARTITIONS = 64


PERIODIC_PREFIX = "periodic-"  # a periodic definition's schedule subject ends periodic-<name>


_CLASS_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
MAX_CLASS_TOKEN = 128


def class_token(cls: str) -> str:
    """A job class as one subject token: ``.`` written as ``:``, any other character
    outside ``A-Za-z0-9_-`` as ``_``, cut to 128 characters (``_`` when empty)."""
    token = "".join(c if c in _CLASS_CHARS else ":" if c == "." else "_" for c in cls[:MAX_CLASS_TOKEN])
    return token or "_"


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
        return f"{self.queue_stream_prefix}{check_name('queue', queue)}"

    @property
    def queue_stream_prefix(self) -> str:
        """How the names of the namespace's queue streams begin (``<NS>_Q_``)."""
        return f"{self._stream_prefix}_Q_"

    @property
    def any_queue_subject(self) -> str:
        """A filter matching partition 0's ready subject of every queue (``<ns>.queue.*``):
        a stream holding it is a queue's."""
        return f"{self.namespace}.queue.*"

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

    def kind_of(self, queue: str, subject: str) -> str | None:
        """What a message on ``subject`` in ``queue``'s stream (or the failed
        stream) is: ``"queued"`` (any partition), ``"scheduled"``, ``"retry"``,
        ``"failed"``, or None for a subject of another queue or of nothing."""
        if self.is_ready_subject(queue, subject):
            return "queued"
        if subject == self.failed_subject(queue):
            return "failed"
        kind, _, rest = subject.removeprefix(f"{self.namespace}.").partition(".")
        if (
            kind in ("scheduled", "retry")
            and rest.startswith(f"{queue}.")
            and "." not in rest[len(queue) + 1 :]
        ):
            return kind
        return None

    def scheduled_filter(self, queue: str) -> str:
        """The queue's scheduled jobs (and periodic definitions), within its stream."""
        return f"{self.namespace}.scheduled.{check_name('queue', queue)}.*"

    def retry_filter(self, queue: str) -> str:
        """The queue's jobs waiting for a retry, within its stream."""
        return f"{self.namespace}.retry.{check_name('queue', queue)}.*"

    def periodic_subject(self, queue: str, name: str) -> str:
        """The repeating schedule of periodic job ``name`` (``periodic-<name>``), in its queue's stream."""
        return f"{self.namespace}.scheduled.{check_name('queue', queue)}.{PERIODIC_PREFIX}{name}"

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

    def queue_of_failed(self, subject: str) -> str | None:
        """The queue whose failed jobs ``subject`` holds, or None for another subject."""
        prefix = f"{self.namespace}.failed."
        return subject[len(prefix) :] if subject.startswith(prefix) else None

    @property
    def events_stream(self) -> str:
        """The bounded stream of every job's lifecycle events."""
        return f"{self._stream_prefix}_EVENTS"

    @property
    def events_subjects(self) -> str:
        """Every lifecycle event's subject: what the events stream holds."""
        return f"{self.namespace}.evt.>"

    def event_subject(self, queue: str, cls: str, state: str, jid: str) -> str:
        """``<ns>.evt.<queue>.<class>.<state>.<jid>``, the class as :func:`class_token` writes it."""
        return f"{self.namespace}.evt.{queue}.{class_token(cls)}.{state}.{jid}"

    def events_filter(self, queue: str | None = None, cls: str | None = None, jid: str | None = None) -> str:
        """A filter on the events stream: one queue's, one class's, one job's, or every event."""
        q = "*" if queue is None else check_name("queue", queue)
        c = "*" if cls is None else class_token(cls)
        j = "*" if jid is None else check_name("jid", jid)
        return f"{self.namespace}.evt.{q}.{c}.*.{j}"

    @property
    def results_bucket(self) -> str:
        """The KV bucket of kept job results, one key per jid with its own TTL."""
        return f"{self.namespace}_results"

    def result_subject(self, jid: str) -> str:
        """The KV subject a job's result is stored on."""
        return self.kv_subject(self.results_bucket, check_name("jid", jid))

    def reply_subject(self, token: str, jid: str) -> str:
        """``<ns>.reply.<token>.<jid>``: where a node tells the client that enqueued a job
        (the envelope's ``reply`` token) the outcome it just kept."""
        return f"{self.namespace}.reply.{check_name('reply token', token)}.{check_name('jid', jid)}"

    def reply_filter(self, token: str) -> str:
        """Every outcome told to the client with this ``reply`` token."""
        return f"{self.namespace}.reply.{check_name('reply token', token)}.*"

    @property
    def batches_bucket(self) -> str:
        """The KV bucket of batches: one record per batch, one outcome marker per job of one."""
        return f"{self.namespace}_batches"

    def batch_subject(self, bid: str) -> str:
        """The KV subject of a batch's record (key ``b.<bid>``)."""
        return self.kv_subject(self.batches_bucket, f"b.{check_name('batch', bid)}")

    @property
    def batch_records(self) -> str:
        """A filter on the batches bucket's stream matching every batch record and no marker."""
        return self.kv_subject(self.batches_bucket, "b.*")

    def batch_marker_subject(self, bid: str, jid: str) -> str:
        """The KV subject of the marker saying a job's outcome counted in its batch
        (key ``m.<bid>.<jid>``; a child batch's marker in its parent has the child's id as ``jid``)."""
        return self.kv_subject(self.batches_bucket, f"m.{check_name('batch', bid)}.{check_name('jid', jid)}")

    @property
    def stats_stream(self) -> str:
        return f"{self._stream_prefix}_STATS"

    @property
    def stats_subjects(self) -> str:
        """Every counter's subject: what the stats stream holds."""
        return f"{self.namespace}.stats.>"

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
        return self.kv_subject(self.unique_bucket, check_name("unique key", key))

    @property
    def limits_bucket(self) -> str:
        """The KV bucket of the cluster-wide limits' slots (``concurrency=``, ``rate=``)."""
        return f"{self.namespace}_limits"

    def limit_subject(self, kind: str, cls: str, slot: int) -> str:
        """The KV subject of slot ``slot`` of a class's limit: key ``<kind>.<class token>.<slot>``,
        ``kind`` ``c`` (concurrency) or ``r`` (rate)."""
        return self.kv_subject(self.limits_bucket, f"{kind}.{class_token(cls)}.{slot}")

    def lease_subject(self, key: str = LEASE_KEY) -> str:
        """The KV subject of a lease key (used to renew with a TTL)."""
        return self.kv_subject(self.lease_bucket, key)

    def node_subject(self, node_id: str) -> str:
        """The KV subject of a node's heartbeat entry in the nodes bucket."""
        return self.kv_subject(self.nodes_bucket, node_id)

    @staticmethod
    def kv_stream(bucket: str) -> str:
        """The stream behind a KV bucket."""
        return f"KV_{bucket}"

    @staticmethod
    def kv_subject(bucket: str, key: str) -> str:
        """The subject a KV bucket stores ``key`` on (``$KV.<bucket>.<key>``)."""
        return f"$KV.{bucket}.{key}"

    @staticmethod
    def kv_key(bucket: str, subject: str) -> str | None:
        """The key a KV bucket's ``subject`` stores, or None for another subject."""
        prefix = f"$KV.{bucket}."
        return subject[len(prefix) :] if subject.startswith(prefix) else None

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
    def pause_subject(self) -> str:
        """Where a queue's pause or resume is announced to the masters (every master
        listens; the body names the queue, and each master asks its consumer)."""
        return f"{self.namespace}.ctl.pause"

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
