"""The message router: targeted, broadcast and response envelopes through the tree.

Routing only: what to do with a payload is the business of the handlers in
:mod:`cellplane.federation.dispatch`; how envelopes travel is the business of the
link sessions. Every failure to route goes back to the sender as an error
response, never into a loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import structlog

from cellplane.errors import (
    CellplaneError,
    CellUnavailable,
    Code,
    InvalidArgument,
    status_of,
)
from cellplane.federation import envelopes, guard, paths
from cellplane.federation.channel import LinkState, PeerChannel, Relation
from cellplane.federation.dispatch import Delivery, Handlers
from cellplane.federation.neighbours import Neighbours
from cellplane.v1 import link_pb2

Envelope = link_pb2.Envelope
CellResult = link_pb2.CellResult

# A broadcast keeps its id on every hop, so a cell reached by two routes (a cell
# with two parents) handles it once; this many broadcast ids are remembered.
RECENT_BROADCASTS = 65536
# Each hop of a broadcast gives its neighbours this share of its remaining time
# (at most MAX_HOP_MARGIN seconds less), so that their merged answers arrive
# before it stops waiting instead of a whole subtree timing out with them.
HOP_MARGIN = 0.2
MAX_HOP_MARGIN = 1.0


class Router:
    """Routes envelopes for the cell ``name``."""

    def __init__(
        self,
        name: str,
        neighbours: Neighbours,
        handlers: Handlers,
        *,
        max_hops: int = 16,
        response_timeout: float = 10.0,
        log: Any = None,
    ) -> None:
        self.name = name
        self.neighbours = neighbours
        self.handlers = handlers
        self.max_hops = max_hops
        self.response_timeout = response_timeout
        self._pending: dict[str, asyncio.Future[link_pb2.Response]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.log = log or structlog.get_logger().bind(cell=name)
        self.rejected = 0
        self._broadcasts_seen: OrderedDict[str, None] = OrderedDict()

    # --- originating ---------------------------------------------------------------

    def send(self, target_path: str, direction: envelopes.Dir, **payload: Any) -> Envelope:
        """Send a targeted envelope without waiting for an answer."""
        env = self._new(envelopes.TARGETED, direction, target_path, need_response=False)
        _set_payload(env, payload)
        self._route_targeted(env, None)
        return env

    async def call(
        self,
        target_path: str,
        direction: envelopes.Dir,
        *,
        timeout: float | None = None,
        **payload: Any,
    ) -> CellResult:
        """Send a targeted envelope and wait for the target cell's result.

        A down link on the way answers UNAVAILABLE at once; silence past the
        timeout answers DEADLINE_EXCEEDED. Never raises for remote failures:
        the result's status says what happened.
        """
        timeout = self.response_timeout if timeout is None else timeout
        env = self._new(envelopes.TARGETED, direction, target_path, True, timeout)
        _set_payload(env, payload)
        waiter = self._expect(env.id)
        self._route_targeted(env, None)
        try:
            response = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return envelopes.failed(
                target_path,
                Code.DEADLINE_EXCEEDED,
                f"{target_path} did not answer within {timeout:.3g}s",
                answered=False,
            )
        finally:
            self._pending.pop(env.id, None)
        if not response.results:
            return envelopes.failed(target_path, Code.INTERNAL, "empty response")
        return response.results[0]

    async def broadcast(
        self,
        direction: envelopes.Dir,
        *,
        timeout: float | None = None,
        run_locally: bool = True,
        **payload: Any,
    ) -> list[CellResult]:
        """Send to every cell up or down and return one result per cell of the subtree
        (cells that did not answer in time appear with ``answered=False``)."""
        timeout = self.response_timeout if timeout is None else timeout
        env = self._new(envelopes.BROADCAST, direction, "", True, timeout)
        env.run_locally = run_locally
        _set_payload(env, payload)
        self._first_sight(env.id)
        return await self._broadcast_here(env, run_locally)

    # --- receiving -----------------------------------------------------------------

    async def receive(
        self, channel: PeerChannel, batch: Iterable[Envelope], work: list[Any]
    ) -> None:
        """Handle envelopes that arrived from ``channel``'s neighbour (already de-duplicated).

        Inline handlers run before this returns; their database work is added to
        ``work`` and committed with the link cursor.
        """
        for env in batch:
            try:
                guard.check(channel, env, self.name)
            except CellplaneError as exc:
                self._reject(channel, env, exc)
                continue
            env.routing_path = env.routing_path + paths.SEP + self.name
            if env.hop_count > env.max_hops:
                self.rejected += 1
                self._fail_back(
                    env, Code.INVALID_ARGUMENT, f"hop limit {env.max_hops} exceeded at {self.name}"
                )
                continue
            kind = env.kind
            if kind == envelopes.RESPONSE:
                self._route_response(env)
            elif kind == envelopes.TARGETED:
                self._route_targeted(env, work)
            elif not self._first_sight(env.id):
                # Already reached this cell by another route, and handled and
                # answered there: say nothing more than an empty answer.
                if env.need_response:
                    self._reply(env, [], one_hop=True)
            else:
                self._spawn(self._broadcast_hop(env, channel, work))

    def _reject(self, channel: PeerChannel, env: Envelope, exc: CellplaneError) -> None:
        self.rejected += 1
        self.log.warning(
            "envelope_rejected",
            peer=channel.peer,
            envelope=env.id,
            reason=str(exc),
            trace_id=env.trace_id,
        )
        if env.kind == envelopes.RESPONSE or not env.id:
            return
        reply = Envelope(
            id=envelopes.new_id(),
            kind=envelopes.RESPONSE,
            direction=envelopes.flip(env.direction) if env.direction else envelopes.UP,
            routing_path=self.name,
            target_path=paths.join(self.name, channel.peer),
            max_hops=2,
            trace_id=env.trace_id,
            response_to=env.id,
        )
        reply.direction = envelopes.DOWN if channel.relation is Relation.CHILD else envelopes.UP
        code, message = exc.code, str(exc)
        reply.response.results.append(envelopes.failed(self.name, code, message))
        channel.send(reply)

    # --- routing -------------------------------------------------------------------

    def _route_targeted(self, env: Envelope, work: list[Any] | None) -> None:
        try:
            hop = paths.next_hop(env.routing_path, env.target_path)
        except InvalidArgument as exc:
            self._fail_back(env, Code.NOT_FOUND, f"no route from {self.name}: {exc}")
            return
        if hop is None:
            self._handle_here(env, work)
            return
        channel = self._channel(hop, env.direction)
        if channel is None:
            self._fail_back(
                env,
                Code.NOT_FOUND,
                f"{self.name} has no {_relation_word(env.direction)} named {hop!r}",
            )
            return
        if env.need_response and channel.state is not LinkState.UP:
            self._fail_back(env, Code.UNAVAILABLE, f"link from {self.name} to {hop} is down")
            return
        self._forward(env, channel)

    def _route_response(self, env: Envelope) -> None:
        try:
            hop = paths.next_hop(env.routing_path, env.target_path)
        except InvalidArgument as exc:
            self.log.warning("response_unroutable", envelope=env.id, reason=str(exc))
            return
        if hop is None:
            waiter = self._pending.pop(env.response_to, None) or self._pending.pop(
                _reply_key(env.response_to, paths.hops(env.routing_path)[0]), None
            )
            if waiter is not None and not waiter.done():
                waiter.set_result(env.response)
            else:
                self.log.debug("response_unexpected", response_to=env.response_to)
            return
        channel = self._channel(hop, env.direction)
        if channel is None:
            self.log.warning("response_unroutable", envelope=env.id, next_hop=hop)
            return
        self._forward(env, channel)

    def _forward(self, env: Envelope, channel: PeerChannel, *, copy: bool = False) -> None:
        if copy:
            clone = Envelope()
            clone.CopyFrom(env)
            env = clone
        env.hop_count += 1
        channel.send(env)

    def _fail_back(self, env: Envelope, code: Code, message: str) -> None:
        """Answer ``env`` with an error, back along the route it came (never forward)."""
        self.log.info(
            "envelope_failed",
            envelope=env.id,
            code=code.name,
            reason=message,
            trace_id=env.trace_id,
        )
        if env.kind == envelopes.RESPONSE:
            return
        result = envelopes.failed(env.routing_path, code, message)
        # A broadcast is answered to the hop that waits for it, a targeted one to its origin.
        one_hop = env.kind == envelopes.BROADCAST
        reply = envelopes.response_to(env, [result], origin=self.name, one_hop=one_hop)
        if reply.target_path == self.name:  # we are the origin
            self._deliver_local_response(env.id, reply.response)
        else:
            self._route_response(reply)

    def _deliver_local_response(self, request_id: str, response: link_pb2.Response) -> None:
        waiter = self._pending.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # --- handling here -------------------------------------------------------------

    def _handle_here(self, env: Envelope, work: list[Any] | None) -> None:
        payload = env.WhichOneof("payload") or ""
        registration = self.handlers.get(payload)
        if registration is None:
            self._fail_back(env, Code.UNIMPLEMENTED, f"{self.name} cannot handle {payload}")
            return
        if registration.inline is not None and not env.need_response and work is not None:
            # Inline handlers add to the batch's own work list: the handlers of one
            # frame may share one piece of work (pushes are applied a frame at a time).
            queued = len(work)
            try:
                registration.inline(env, Delivery(env, env.routing_path, work))
            except CellplaneError as exc:
                del work[queued:]
                self.log.warning("handler_failed", payload=payload, reason=str(exc))
            return
        self._spawn(self._answer(env, Delivery(env, env.routing_path)))

    async def _run_handler(self, env: Envelope, delivery: Delivery) -> CellResult:
        registration = self.handlers.get(env.WhichOneof("payload") or "")
        assert registration is not None
        try:
            if registration.handler is None:
                assert registration.inline is not None
                registration.inline(env, delivery)
                result = None
            else:
                result = await registration.handler(env, delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            if code is Code.INTERNAL:
                self.log.exception("handler_crashed", payload=env.WhichOneof("payload"))
            return envelopes.failed(delivery.path, code, message)
        return result if result is not None else delivery.ok()

    async def _answer(self, env: Envelope, delivery: Delivery) -> None:
        result = await self._run_handler(env, delivery)
        if env.need_response:
            self._reply(env, [result], one_hop=False)

    def _reply(self, env: Envelope, results: list[CellResult], *, one_hop: bool) -> None:
        reply = envelopes.response_to(env, results, origin=self.name, one_hop=one_hop)
        hop = paths.next_hop(self.name, reply.target_path)
        if hop is None:
            self._deliver_local_response(env.id, reply.response)
            return
        channel = self._channel(hop, reply.direction)
        if channel is None:
            self.log.warning("reply_unroutable", envelope=env.id, next_hop=hop)
            return
        reply.routing_path = self.name
        self._forward(reply, channel)

    # --- broadcasts ----------------------------------------------------------------

    async def _broadcast_hop(self, env: Envelope, came_from: PeerChannel, work: list[Any]) -> None:
        if not env.need_response:
            for channel in self._next_channels(env.direction):
                self._forward(env, channel, copy=True)
            if self.handlers.get(env.WhichOneof("payload") or ""):
                await self._run_handler(env, Delivery(env, env.routing_path))
            return
        results = await self._broadcast_here(env, True)
        self._reply(env, results, one_hop=True)

    async def _broadcast_here(self, env: Envelope, run_locally: bool) -> list[CellResult]:
        """Fan ``env`` out to the next cells, handle it here too, merge all results."""
        remaining = max(0.0, env.deadline_ms / 1000 - time.time())
        sub_deadline_ms = env.deadline_ms - int(1000 * min(remaining * HOP_MARGIN, MAX_HOP_MARGIN))
        waits: dict[str, asyncio.Future[link_pb2.Response]] = {}
        results: list[CellResult] = []
        for channel in self._next_channels(env.direction):
            child_path = paths.join(env.routing_path, channel.peer)
            if channel.state is not LinkState.UP:
                results.append(
                    envelopes.failed(
                        child_path,
                        Code.UNAVAILABLE,
                        f"link to {channel.peer} is down",
                        answered=False,
                    )
                )
                continue
            sub = Envelope()
            sub.CopyFrom(env)
            sub.deadline_ms = sub_deadline_ms
            waits[child_path] = self._expect(_reply_key(env.id, channel.peer))
            self._forward(sub, channel)
        own = (
            asyncio.ensure_future(self._run_handler(env, Delivery(env, env.routing_path)))
            if run_locally and self.handlers.get(env.WhichOneof("payload") or "")
            else None
        )
        pending = list(waits.values()) + ([own] if own else [])
        if pending:
            await asyncio.wait(pending, timeout=remaining)
        if own is not None:
            if own.done():
                results.insert(0, own.result())
            else:
                own.cancel()
                results.insert(
                    0,
                    envelopes.failed(
                        env.routing_path,
                        Code.DEADLINE_EXCEEDED,
                        "handler timed out",
                        answered=False,
                    ),
                )
        for child_path, waiter in waits.items():
            if waiter.done() and not waiter.cancelled():
                results.extend(waiter.result().results)
            else:
                waiter.cancel()
                results.append(
                    envelopes.failed(
                        child_path,
                        Code.DEADLINE_EXCEEDED,
                        f"{child_path} did not answer before the deadline",
                        answered=False,
                    )
                )
        for sub_id in [k for k, v in self._pending.items() if v in waits.values()]:
            self._pending.pop(sub_id, None)
        return results

    # --- plumbing ------------------------------------------------------------------

    def _new(
        self,
        kind: envelopes.Kind,
        direction: envelopes.Dir,
        target: str,
        need_response: bool,
        timeout: float | None = None,
    ) -> Envelope:
        if kind != envelopes.BROADCAST:
            paths.validate(target, "target path")
            if paths.hops(target)[0] != self.name:
                raise InvalidArgument(f"target path {target!r} must start at {self.name!r}")
        return envelopes.make(
            origin=self.name,
            kind=kind,
            direction=direction,
            target_path=target,
            need_response=need_response,
            timeout=timeout,
            max_hops=self.max_hops,
        )

    def _first_sight(self, broadcast_id: str) -> bool:
        """Remember ``broadcast_id``; False if this cell has seen it before."""
        seen = self._broadcasts_seen
        if broadcast_id in seen:
            return False
        seen[broadcast_id] = None
        if len(seen) > RECENT_BROADCASTS:
            seen.popitem(last=False)
        return True

    def _expect(self, envelope_id: str) -> asyncio.Future[link_pb2.Response]:
        waiter: asyncio.Future[link_pb2.Response] = asyncio.get_running_loop().create_future()
        self._pending[envelope_id] = waiter
        return waiter

    def _channel(self, name: str, direction: envelopes.Dir) -> PeerChannel | None:
        relation = Relation.CHILD if direction == envelopes.DOWN else Relation.PARENT
        channel = self.neighbours.get(name, relation)
        if channel is None or name in self.neighbours.disabled:
            return None
        return channel

    def _next_channels(self, direction: envelopes.Dir) -> list[PeerChannel]:
        group = (
            self.neighbours.children() if direction == envelopes.DOWN else self.neighbours.parents()
        )
        return [c for c in group if c.peer not in self.neighbours.disabled]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel work in flight and fail every waiter."""
        for task in list(self._tasks):
            task.cancel()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(CellUnavailable(f"cell {self.name} is stopping"))
        self._pending.clear()


def _set_payload(env: Envelope, payload: dict[str, Any]) -> None:
    if len(payload) != 1:
        raise InvalidArgument(f"exactly one payload expected, got {sorted(payload)}")
    ((name, message),) = payload.items()
    if name not in envelopes.PAYLOADS:
        raise InvalidArgument(f"unknown payload {name!r}")
    getattr(env, name).CopyFrom(message)


def _reply_key(broadcast_id: str, neighbour: str) -> str:
    """What a hop waits on for ``neighbour``'s answer to a broadcast (the id is shared)."""
    return f"{broadcast_id}>{neighbour}"


def _relation_word(direction: envelopes.Dir) -> str:
    return "child" if direction == envelopes.DOWN else "parent"
