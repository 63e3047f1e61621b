"""Handlers for each payload kind a cell can receive, kept apart from routing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from cellplane.errors import Code
from cellplane.federation import envelopes
from cellplane.v1 import link_pb2

DbWork = Callable[[Session], None]


@dataclass
class Delivery:
    """One envelope being handled here: where this cell sits on its route, and
    database work to commit together with the link cursor (exactly-once effects).

    In line with a link, ``db_work`` is the work list of the whole received batch:
    a handler may add to the last piece of work there instead of adding its own."""

    envelope: link_pb2.Envelope
    path: str
    db_work: list[DbWork] = field(default_factory=list)

    def ok(self, **body: Any) -> link_pb2.CellResult:
        """A successful result of this cell, with an optional body (one CellResult field)."""
        result = link_pb2.CellResult(
            cell_path=self.path, status=envelopes.status(Code.OK), answered=True
        )
        for name, value in body.items():
            getattr(result, name).CopyFrom(value)
        return result


Handler = Callable[[link_pb2.Envelope, Delivery], Awaitable[link_pb2.CellResult | None]]
InlineHandler = Callable[[link_pb2.Envelope, Delivery], None]


@dataclass(frozen=True)
class Registration:
    """How one payload kind is handled: ``inline`` runs in line with the link (fast,
    in order, may add database work committed with the link cursor); ``handler``
    runs as its own task and may answer. An inline-only kind that needs an answer
    gets an empty OK once its inline handler ran."""

    handler: Handler | None = None
    inline: InlineHandler | None = None


class Handlers:
    """Payload field name -> handler."""

    def __init__(self) -> None:
        self._by_payload: dict[str, Registration] = {}

    def register(self, payload: str, handler: Handler) -> None:
        """Handle envelopes whose payload is ``payload`` (an Envelope oneof field) in a task."""
        self._by_payload[self._check(payload)] = Registration(handler=handler)

    def register_inline(self, payload: str, handler: InlineHandler) -> None:
        """Handle ``payload`` in line with the link; ``handler`` must not block."""
        self._by_payload[self._check(payload)] = Registration(inline=handler)

    @staticmethod
    def _check(payload: str) -> str:
        if payload not in envelopes.PAYLOADS:
            raise ValueError(f"unknown payload {payload!r}")
        return payload

    def get(self, payload: str) -> Registration | None:
        """The registration for ``payload``, if any."""
        return self._by_payload.get(payload)


async def echo(env: link_pb2.Envelope, delivery: Delivery) -> link_pb2.CellResult | None:
    """Answer an Echo with itself (links are tested and measured with it)."""
    return delivery.ok(echo=env.echo) if env.need_response else None
