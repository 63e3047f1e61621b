"""Building envelopes: ids, kinds, responses. No routing decisions live here."""

from __future__ import annotations

import os
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


def new_id() -> str:
    """A random 128-bit envelope id in hex."""
    return os.urandom(16).hex()


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
