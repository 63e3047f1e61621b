"""Cell paths: routes through the tree, hops joined by ``!`` as in Nova.

Paths are relative to the cell that sends a message: an envelope's routing path
starts at its origin and grows by one hop at each cell it reaches. An API cell
at the top therefore addresses ``api!eu!eu-a``; an upward target is written
bottom-up (``eu-a!eu!api``).
"""

from __future__ import annotations

from cellplane.config import CELL_NAME
from cellplane.errors import InvalidArgument

SEP = "!"


def join(*parts: str) -> str:
    """Join hops (or paths) into one path, skipping empty parts."""
    return SEP.join(p for p in parts if p)


def hops(path: str) -> list[str]:
    """The cell names along ``path``."""
    return path.split(SEP) if path else []


def reverse(path: str) -> str:
    """The same route walked the other way."""
    return SEP.join(reversed(hops(path)))


def last(path: str) -> str:
    """The last hop of ``path`` ("" for an empty path)."""
    return path.rpartition(SEP)[2]


_VALID: set[str] = set()  # paths already found valid: the same few recur on every envelope
_VALID_MAX = 4096


def validate(path: str, what: str = "path") -> str:
    """Return ``path`` if every hop is a valid cell name, else raise InvalidArgument."""
    if path in _VALID:
        return path
    if not path:
        raise InvalidArgument(f"{what} is empty")
    for hop in hops(path):
        if not CELL_NAME.match(hop):
            raise InvalidArgument(f"{what} {path!r}: {hop!r} is not a valid cell name")
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add(path)
    return path


def next_hop(routing_path: str, target_path: str) -> str | None:
    """The neighbour to forward to, or None when ``routing_path`` is the target.

    ``routing_path`` already ends at this cell. Raises InvalidArgument when the
    target does not continue the route travelled so far.
    """
    if routing_path == target_path:
        return None
    prefix = routing_path + SEP
    if not target_path.startswith(prefix):
        raise InvalidArgument(
            f"target {target_path!r} is not reachable from {routing_path!r} in this direction"
        )
    return target_path[len(prefix) :].partition(SEP)[0]
