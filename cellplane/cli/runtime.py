"""Interpreter settings for a long-running cellplane process, set by its entry point.

Python's cyclic garbage collector runs a young collection every 700 new
container objects by default, and with that a full one every 100 young ones.
A busy cell allocates protobuf wrappers, SQLAlchemy rows and asyncio futures
by the hundred thousand a second, nearly all freed at once by reference
counting; the collections found little and cost about 7% of a cell's CPU (the
full ones 50-150 ms each, walking every long-lived object). A young generation
of 10,000 makes every kind of collection about fourteen times rarer; the ratios
stay (a full collection follows every hundred young ones), so cyclic garbage
is still freed, later.
"""

from __future__ import annotations

import gc

# Container objects allocated (net of frees) between young collections.
GC_YOUNG_THRESHOLD = 10_000


def configure_runtime() -> None:
    """Set the collector's thresholds for a server process (keeps its ratios)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
