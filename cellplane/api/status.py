"""The one boundary where cellplane errors become gRPC statuses."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from cellplane.errors import Code, status_of

T = TypeVar("T")

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code(code: Code | int) -> grpc.StatusCode:
    """The grpc.StatusCode with the same number as ``code``."""
    return _GRPC_CODES.get(int(code), grpc.StatusCode.UNKNOWN)


def rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a servicer method: our errors abort with their status; anything else is
    logged and aborts with INTERNAL. Cancellation passes through untouched."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            if code is Code.INTERNAL:
                structlog.get_logger().exception("rpc_failed", method=method.__name__)
            await context.abort(grpc_code(code), message)
            raise  # unreachable: abort raises

    return wrapper
