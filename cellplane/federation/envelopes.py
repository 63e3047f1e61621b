"""Building envelopes: ids, kinds, responses. No routing decisions live here."""

from __future__ import annotations

import os
import threading
import time
from typing import TypeAlias

from cellplane.errors import Code
from cellplane.federation import paths
from cellplane.v1 import link_pb2, types_pb2

Envelope = link_pb2.Envelope
Kind: TypeAlias = link_pb2.EnvelopeKind
Dir: TypeAlias = link_pb2.Direction
CellResult = link_pb2.CellResult
TARGETED = link_pb2.ENVELOPE_KIND_TARGETED
BROADCAST = link_pb2.ENVELOPE_KIND_BROADCAST
RESPONSE = link_pb2.ENVELOPE_KIND_RESPONSE
UP = link_pb2.DIRECTION_UP
DOWN = link_pb2.DIRECTION_DOWN

# Payload fields a cell may originate (the oneof members of Envelope.payload).
PAYLOADS = frozenset(f.name for f in Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields)


_ID_BYTES = 16
_IDS_PER_DRAW = 1024  # one os.urandom call serves this many ids (a syscall per id was
# the largest single cost of sending an envelope)
_random = b""
_offset = 0
_lock = threading.Lock()


def new_id() -> str:
    """A random 128-bit envelope id in hex."""
    global _random, _offset
    with _lock:
        if _offset >= len(_random):
            _random, _offset = os.urandom(_ID_BYTES * _IDS_PER_DRAW), 0
        pool, start = _random, _offset
        _offset = start + _ID_BYTES
    return pool[start : start + _ID_BYTES].hex()


def _forget_random() -> None:
    """A forked child must never hand out the ids its parent will also use."""
    global _random, _offset, _lock
    _random, _offset, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_random)


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


def flip(direction: Dir) -> Dir:
    """The opposite direction."""
    return DOWN if direction == UP else UP


def make(
    *,
    origin: str,
    kind: Kind,
    direction: Dir,
    target_path: str = "",
    need_response: bool = False,
    timeout: float | None = None,
    max_hops: int = 16,
    trace_id: str = "",
    run_locally: bool = False,
) -> Envelope:
    """A new envelope leaving ``origin``; the caller sets its payload."""
    env = Envelope(
        id=new_id(),
        kind=kind,
        direction=direction,
        routing_path=origin,
        target_path=target_path,
        max_hops=max_hops,
        need_response=need_response,
        trace_id=trace_id or new_id()[:16],
        run_locally=run_locally,
    )
    if timeout is not None:
        env.deadline_ms = now_ms() + int(timeout * 1000)
    return env


def response_to(
    request: Envelope, results: list[CellResult], *, origin: str, one_hop: bool
) -> Envelope:
    """The response to ``request``, sent from ``origin`` (whose path ends the routing path).

    A targeted request is answered all the way back to its origin; a broadcast
    is answered to the previous hop only (``one_hop``), which merges answers.
    """
    route = paths.hops(request.routing_path)
    back = route[-2:] if one_hop else route
    env = Envelope(
        id=new_id(),
        kind=RESPONSE,
        direction=flip(request.direction),
        routing_path=origin,
        target_path=paths.SEP.join(reversed(back)),
        # Enough hops to walk back, even for the answer to a request that ran out of them.
        max_hops=max(request.max_hops, len(back)),
        deadline_ms=request.deadline_ms,
        trace_id=request.trace_id,
        response_to=request.id,
    )
    env.response.results.extend(results)
    return env


def status(code: Code, message: str = "") -> types_pb2.Status:
    """A wire status."""
    return types_pb2.Status(code=int(code), message=message)


def failed(cell_path: str, code: Code, message: str, *, answered: bool = True) -> CellResult:
    """A result saying ``cell_path`` failed (or never answered) with ``code``."""
    return CellResult(cell_path=cell_path, status=status(code, message), answered=answered)
