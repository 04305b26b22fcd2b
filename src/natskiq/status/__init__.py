"""A job's outcome, pushed rather than polled: lifecycle events, kept results, handles.

``events`` publishes every state change of a job on
``<ns>.evt.<queue>.<class>.<state>.<jid>`` into a bounded stream that any
service can follow; ``view`` reads them back as a job's status and
timeline; ``results`` stores the return value of a job that keeps it
(``keep_result``) in a KV bucket with a per-key TTL and waits for it without
polling; ``handle`` is what ``perform_async`` returns: the jid, a ``str``,
that can also wait for the job's result or tell its status.
"""
