"""Stages 5 and 6, run and settle: a node fences, runs and acknowledges the jobs it is handed.

``node`` receives dispatches and runs them, with its parts: ``intake``
(dispatches from masters in other processes), ``fence`` (the newest master
token per shard), ``execute`` (one job, through the server middleware),
``settle`` (acks, NAKs, in-progress acks, stored successors), ``stats``
(processed and failed) and ``demand`` (its capacity reports). ``retry``
settles a failed run (backoff to the retry subject, or the failed set once
retries run out), and ``sweep`` moves schedules that would never fire to
the failed set.
"""
