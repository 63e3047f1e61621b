"""Interpreter settings for a long-running cellplane process, set by its entry point.

**Garbage collection.** Python's cyclic collector runs a young collection every
700 new container objects by default, and with that a full one every 100
young ones. A busy cell allocates protobuf wrappers, SQLAlchemy rows and
asyncio futures by the hundred thousand a second, nearly all freed at once by
reference counting; the collections found little and cost about 7% of a
cell's CPU (the full ones 50-150 ms each, walking every long-lived object). A
young generation of 10,000 makes every kind of collection about fourteen times
rarer; the ratios stay (a full collection follows every hundred young ones), so
cyclic garbage is still freed, later.

**Event loop.** Cells run on uvloop's event loop where it is installed (libuv
in C instead of asyncio's loop in Python): gRPC's asyncio stack calls back into
the loop several times per call and per stream message, and those callbacks
cost about a tenth less. ``cellplane --event-loop asyncio`` (or
``CELLPLANE_EVENT_LOOP=asyncio``, read by the command line) keeps asyncio's own.
"""

from __future__ import annotations

import asyncio
import gc

# Container objects allocated (net of frees) between young collections.
GC_YOUNG_THRESHOLD = 10_000
EVENT_LOOPS = ("uvloop", "asyncio")


def configure_runtime(event_loop: str = "uvloop") -> str:
    """Set the collector's thresholds (keeping its ratios) and the event loop
    (``event_loop``, one of EVENT_LOOPS) for a server process; returns the loop it got
    ("asyncio" when uvloop is asked for but not installed)."""
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, not {event_loop!r}")
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # not built for this platform: asyncio's loop serves
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
    asyncio.set_event_loop_policy(None)
    return "asyncio"


def event_loop_name() -> str:
    """The event loop that ``asyncio.run`` gives in this process: "uvloop" or "asyncio"."""
    return type(asyncio.get_event_loop_policy()).__module__.split(".")[0]
