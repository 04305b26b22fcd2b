"""Stage 1, enqueue: a producer connects and stores jobs in their queue's stream.

``client`` opens the connection and stores one job (waiting for its PubAck),
``bulk`` pipelines many, ``unique`` holds unique-job locks, ``cron`` turns
periodic jobs into repeating message schedules, and ``auth`` reads
credentials and TLS settings.
"""
