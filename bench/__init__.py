"""natskiq's benchmark suite: ``make bench`` or ``python -m bench.run``.

Every figure is measured on one local nats-server started by the suite
(temporary store, random port), against raw nats-py, natskiq and
taskiq-nats in the same run, so the ratios compare like with like. See
``bench/run.py`` for what is measured and how.
"""

from __future__ import annotations
