"""The one exception tree of cellplane and its one table to status codes.

    CellplaneError                      INTERNAL
    ├── InvalidArgument                 INVALID_ARGUMENT
    │   ├── ConfigError
    │   └── ProtocolError               (a peer broke the CellLink protocol)
    ├── NotFound                        NOT_FOUND
    │   ├── InstanceNotFound
    │   ├── CellNotFound
    │   ├── FlavorNotFound
    │   └── ImageNotFound
    ├── AlreadyExists                   ALREADY_EXISTS
    ├── WrongState                      FAILED_PRECONDITION
    ├── Unavailable                     UNAVAILABLE
    │   └── CellUnavailable             (a down, mute or unreachable cell)
    ├── Timeout                         DEADLINE_EXCEEDED
    ├── PermissionDenied                PERMISSION_DENIED
    ├── Unauthenticated                 UNAUTHENTICATED
    └── ResourceExhausted               RESOURCE_EXHAUSTED
        ├── NoValidHost
        └── PoolExhausted

Status codes are the canonical gRPC codes (same numbers), kept here as a plain
``IntEnum`` so that domain code never imports grpc. Python exceptions never
travel between processes: a failure crosses AMQP or a CellLink as a code and a
message, and :func:`from_status` turns it back into the matching exception.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes (numerically identical to ``grpc.StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CellplaneError(Exception):
    """Base of every error cellplane raises on purpose."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__

    def __str__(self) -> str:
        return self.message


class InvalidArgument(CellplaneError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    code = Code.INVALID_ARGUMENT


class ConfigError(InvalidArgument):
    """A configuration key is missing, malformed or out of range."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config {key}: {problem}")
        self.key = key
        self.problem = problem


class ProtocolError(InvalidArgument):
    """A neighbour cell sent something the CellLink protocol does not allow."""


class NotFound(CellplaneError):
    """The named object does not exist (or is not visible to the caller)."""

    code = Code.NOT_FOUND


class InstanceNotFound(NotFound):
    """No such instance."""


class CellNotFound(NotFound):
    """No such cell, or no route to it."""


class FlavorNotFound(NotFound):
    """No such flavor."""


class ImageNotFound(NotFound):
    """No such image."""


class AlreadyExists(CellplaneError):
    """An object with that identity already exists."""

    code = Code.ALREADY_EXISTS


class WrongState(CellplaneError):
    """The object is in a state that does not allow the action."""

    code = Code.FAILED_PRECONDITION


class Unavailable(CellplaneError):
    """A dependency (broker, database, peer) cannot be reached right now."""

    code = Code.UNAVAILABLE


class CellUnavailable(Unavailable):
    """A cell is down, mute, or has no live link."""


class Timeout(CellplaneError):
    """Nobody answered before the deadline."""

    code = Code.DEADLINE_EXCEEDED


class PermissionDenied(CellplaneError):
    """The caller is known but may not do this."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(CellplaneError):
    """The caller presented no valid credentials."""

    code = Code.UNAUTHENTICATED


class ResourceExhausted(CellplaneError):
    """A limit or a pool has run out."""

    code = Code.RESOURCE_EXHAUSTED


class NoValidHost(ResourceExhausted):
    """No cell or host passed the scheduler's filters."""


class PoolExhausted(ResourceExhausted):
    """An IP pool has no free address left."""


# Code -> the exception raised when that code arrives from another process.
# Several classes share a code; the most general one is the one rebuilt.
_CLASS_FOR_CODE: dict[Code, type[CellplaneError]] = {
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.NOT_FOUND: NotFound,
    Code.ALREADY_EXISTS: AlreadyExists,
    Code.FAILED_PRECONDITION: WrongState,
    Code.UNAVAILABLE: Unavailable,
    Code.DEADLINE_EXCEEDED: Timeout,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def status_of(exc: BaseException) -> tuple[Code, str]:
    """Return the (code, message) that represents ``exc`` on the wire.

    Errors that are not ours become ``INTERNAL``; the caller logs them.
    """
    if isinstance(exc, CellplaneError):
        return exc.code, exc.message
    return Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def from_status(code: int, message: str) -> CellplaneError:
    """Rebuild the exception for a status that arrived from another process."""
    try:
        known = Code(code)
    except ValueError:
        known = Code.UNKNOWN
    cls = _CLASS_FOR_CODE.get(known)
    if cls is None:
        err = CellplaneError(message)
        err.code = known
        return err
    return cls(message)
