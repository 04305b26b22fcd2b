"""Operating natskiq: the worker process, the embedded server, metrics and traces.

``launcher`` is one ``natskiq worker`` process: its ``settings`` (flags,
environment, config file), the streams and buckets ``provision`` creates,
the node's ``heartbeat`` entry, the ``watches`` beside its jobs (commands,
partition counts, the failed set's limits), the node and the shards'
elections. ``server`` is the embedded ``nats-server`` (one or a 3-node
cluster), ``demo`` the ``natskiq demo`` run, ``metrics`` the Prometheus
endpoint and ``otel`` the OpenTelemetry spans.
"""
