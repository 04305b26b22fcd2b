"""Stage 1, enqueue: a producer connects and stores jobs in their queue's stream.

``client`` is what producers hold: it opens its ``connection`` (with the
credentials and TLS ``auth`` reads), stores one job with ``publish`` (waiting
for its PubAck, again through a failover), and takes ``unique_locks`` first
for unique jobs (whose rules live in ``unique``). ``bulk`` pipelines many
jobs, and ``cron`` turns periodic jobs into repeating message schedules.
"""
