"""Helpers for testing code that uses natskiq (natskiq's own tests use them too).

* :func:`server` runs a real JetStream server for a block and yields it;
* :func:`unique_namespace` gives each test its own streams and buckets;
* :func:`fast_retries` shrinks every retry delay for the block.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from . import retry
from .server import Server


@contextlib.contextmanager
def server(store_dir: Path | str | None = None) -> Iterator[Server]:
    """A JetStream server on a free loopback port for the block (``.url``, ``.kill()``...)."""
    srv = Server(store_dir=Path(store_dir) if store_dir else None)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def unique_namespace() -> str:
    """A fresh namespace, so tests never share streams, buckets or jobs."""
    return f"t{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def fast_retries(scale: float = 0.0) -> Iterator[None]:
    """Multiply retry delays by ``scale`` (0: retry at once) inside the block."""
    old = retry.set_backoff_scale(scale)
    try:
        yield
    finally:
        retry.set_backoff_scale(old)
