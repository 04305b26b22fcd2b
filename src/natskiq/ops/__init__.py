"""Operating natskiq: the worker process, the embedded server, metrics and traces.

``launcher`` is one ``natskiq worker`` process (settings, topology, node,
shards, heartbeats), ``server`` the embedded ``nats-server`` (one or a
3-node cluster), ``demo`` the ``natskiq demo`` run, ``metrics`` the
Prometheus endpoint and ``otel`` the OpenTelemetry spans.
"""
