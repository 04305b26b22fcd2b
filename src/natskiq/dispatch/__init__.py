"""Stages 3 and 4, election and dispatch: one master per shard pulls ready jobs and hands them to nodes.

``lease`` is the compare-and-set election with its fencing token, ``shards``
runs one election per dispatch shard and balances them between nodes, and
``aggregator`` is a shard's master: its dispatch loop hands jobs out by the
nodes' credit (``credit``, from their demand reports) from what its pull
side holds (``pulls``); ``protocol`` is what travels from it to the nodes.
Nothing here settles a job: the node that runs it does (an import-linter
contract keeps it so).
"""
