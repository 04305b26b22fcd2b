"""Stages 5 and 6, run and settle: a node fences, runs and acknowledges the jobs it is handed.

``node`` receives dispatches and runs them, ``retry`` settles a failed run
(backoff to the retry subject, or the failed set once retries run out), and
``sweep`` moves schedules that would never fire to the failed set.
"""
