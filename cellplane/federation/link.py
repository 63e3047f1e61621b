"""CellLink over gRPC: the parent's server side and the child's dialling side.

The child dials each parent and says Hello; the parent checks who it is
(configured child, protocol version, certificate identity) and answers with
its own Hello; then both run :func:`~cellplane.federation.session.run_session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from cellplane.config import CELL_NAME, ParentConfig, TlsConfig
from cellplane.errors import CellplaneError, Code, PermissionDenied
from cellplane.federation import paths, security
from cellplane.federation.channel import OPTIONAL_PAYLOADS, LinkState, PeerChannel, Relation
from cellplane.federation.cursors import CursorStore, CursorWriter
from cellplane.federation.neighbours import Neighbours
from cellplane.federation.session import Receive, WriteBatch, run_session
from cellplane.v1 import link_pb2, link_pb2_grpc

PROTOCOL_VERSION = 1
# Optional payloads this cell takes, told in its Hello (see Hello.features).
FEATURES = tuple(sorted(OPTIONAL_PAYLOADS))
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
HELLO_TIMEOUT = 10.0

# Client keepalive pings every 20 s; the server accepts pings down to every 10 s,
# so it never answers a client's pings with GOAWAY "too_many_pings".
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
SERVER_MIN_PING_INTERVAL_MS = 10_000


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """gRPC server options for a cell's server (links and API)."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # gRPC lets a second server bind a port in use (SO_REUSEPORT) and share its
        # connections: a cell started twice would answer as two. Refuse instead.
        ("grpc.so_reuseport", 0),
    ]


def client_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """gRPC channel options for a child's link to its parent."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # Each dialler keeps its own connection, so two links to one parent never share.
        ("grpc.use_local_subchannel_pool", 1),
    ]


@dataclass
class LinkEndpoint:
    """What both ends of a link need from their cell."""

    name: str
    epoch: str
    neighbours: Neighbours
    cursors: CursorStore
    receive: Receive
    tls: TlsConfig | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    # This cell's path from the top: its own name until a parent tells it more.
    path: str = ""
    on_link_change: Callable[[PeerChannel], None] = lambda channel: None
    tls_identities: dict[str, str] = field(default_factory=dict)
    log: Any = None

    def __post_init__(self) -> None:
        self.path = self.path or self.name
        self.log = self.log or structlog.get_logger().bind(cell=self.name)

    def hello(self, channel: PeerChannel) -> link_pb2.Hello:
        """This cell's Hello to ``channel``'s neighbour, with where to resume."""
        return link_pb2.Hello(
            cell=self.name,
            protocol_version=PROTOCOL_VERSION,
            epoch=self.epoch,
            peer_epoch=channel.cursor.epoch,
            peer_last_seq=channel.cursor.last_seq,
            path=self.path,
            features=FEATURES,
            max_message_bytes=self.max_message_bytes,
        )

    async def run(
        self,
        channel: PeerChannel,
        peer_hello: link_pb2.Hello,
        read: Callable[[], Any],
        write: WriteBatch,
    ) -> None:
        """Run an established link until its stream ends."""
        channel.resume(peer_hello.peer_epoch, peer_hello.peer_last_seq)
        # Frames and envelopes fit what both sides take (a peer that does not say
        # takes what this cell does, as before the Hello said it).
        limit = min(self.max_message_bytes, peer_hello.max_message_bytes or self.max_message_bytes)
        channel.connected(peer_hello.path, peer_hello.features, max_message_bytes=limit)
        self.on_link_change(channel)
        self.log.info(
            "link_up", peer=channel.peer, relation=channel.relation.value, unacked=channel.unacked
        )
        writer = CursorWriter(self.cursors, channel.peer, channel.persisted)
        try:
            await run_session(
                channel,
                peer_hello.epoch,
                read,
                write,
                self.receive,
                writer,
                max_bytes=limit // 2,
            )
        finally:
            channel.disconnected()
            self.on_link_change(channel)
            self.log.info("link_down", peer=channel.peer, relation=channel.relation.value)


def check_hello(hello: link_pb2.Hello) -> None:
    """Refuse a Hello that is not well formed or speaks another protocol version."""
    if not CELL_NAME.match(hello.cell):
        raise _LinkRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"{hello.cell!r} is not a valid cell name"
        )
    if hello.protocol_version != PROTOCOL_VERSION:
        raise _LinkRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"protocol version {hello.protocol_version} is not supported "
            f"(this cell speaks {PROTOCOL_VERSION})",
        )


class _LinkRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LinkServicer(link_pb2_grpc.CellLinkServicer):
    """The parent's side: accepts streams from configured children."""

    def __init__(self, endpoint: LinkEndpoint) -> None:
        self.endpoint = endpoint
        self._sessions: dict[str, asyncio.Task[None]] = {}
        # Sessions this side ended on purpose: they end the stream with a status.
        self._closing: set[asyncio.Task[Any]] = set()

    async def Connect(
        self,
        request_iterator: AsyncIterator[link_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[link_pb2.ConnectRequest, link_pb2.ConnectResponse],
    ) -> None:
        ep = self.endpoint
        try:
            channel, hello = await self._accept(context)
        except _LinkRefused as exc:
            ep.log.warning("link_refused", reason=exc.message, peer=context.peer())
            await context.abort(exc.code, exc.message)
            return
        previous = self._sessions.get(channel.peer)
        if previous is not None:
            self._closing.add(previous)
            previous.cancel()
        await context.write(link_pb2.ConnectResponse(hello=ep.hello(channel)))

        async def read() -> link_pb2.ConnectRequest | None:
            frame = await context.read()
            if frame is _EOF:
                return None
            if frame.WhichOneof("frame") != "batch":
                raise _LinkRefused(
                    grpc.StatusCode.INVALID_ARGUMENT, "only batches may follow the Hello"
                )
            return frame

        async def write(envs: list[link_pb2.Envelope], ack: int) -> None:
            frame = link_pb2.ConnectResponse()
            _fill_batch(frame.batch, envs, ack)
            await context.write(frame)

        task = asyncio.current_task()
        assert task is not None
        self._sessions[channel.peer] = task
        try:
            await ep.run(channel, hello, read, write)
        except _LinkRefused as exc:
            ep.log.warning("link_protocol_violation", peer=channel.peer, reason=exc.message)
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            if task not in self._closing:
                raise
            # gRPC takes a cancelled handler for a client that went away and never
            # ends the stream: end it, so the child sees its link closed.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{ep.name} closed the link to {channel.peer}"
            )
        finally:
            self._closing.discard(task)
            if self._sessions.get(channel.peer) is task:
                del self._sessions[channel.peer]

    async def _accept(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[PeerChannel, link_pb2.Hello]:
        ep = self.endpoint
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            raise _LinkRefused(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello received") from None
        if first is _EOF or first.WhichOneof("frame") != "hello":
            raise _LinkRefused(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be a Hello")
        hello = first.hello
        check_hello(hello)
        channel = ep.neighbours.get(hello.cell, Relation.CHILD)
        if channel is None:
            raise _LinkRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"cell {hello.cell!r} is not a configured child of {ep.name!r}",
            )
        if ep.tls is not None:
            try:
                security.check_peer_cell(
                    hello.cell,
                    context.auth_context(),
                    tls_required=ep.tls.ca is not None,
                    expected_identity=ep.tls_identities.get(hello.cell) or None,
                )
            except CellplaneError as exc:
                raise _LinkRefused(_grpc_code(exc.code), str(exc)) from None
        return channel, hello

    async def close(self, peer: str) -> None:
        """End the stream of child ``peer``, if one is open."""
        task = self._sessions.pop(peer, None)
        if task is not None:
            self._closing.add(task)
            task.cancel()


class ParentDialer:
    """The child's side: keeps one stream open to one parent, reconnecting with
    jittered exponential backoff."""

    INITIAL_BACKOFF = 0.1
    MAX_BACKOFF = 5.0

    def __init__(self, endpoint: LinkEndpoint, parent: ParentConfig, channel: PeerChannel) -> None:
        self.endpoint = endpoint
        self.parent = parent
        self.channel = channel
        self.last_error = ""
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Dial until :meth:`stop`."""
        attempt = 0
        ep = self.endpoint
        while not self._stopping.is_set():
            self.channel.state = LinkState.CONNECTING
            connected = False
            try:
                connected = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
                ep.log.warning(
                    "link_dial_failed",
                    peer=self.parent.name,
                    address=self.parent.address,
                    error=self.last_error,
                )
            except Exception as exc:  # keep dialling whatever broke
                self.last_error = f"{type(exc).__name__}: {exc}"
                ep.log.warning("link_dial_failed", peer=self.parent.name, error=self.last_error)
            self.channel.state = LinkState.DOWN
            attempt = 0 if connected else attempt + 1
            delay = random.uniform(0, min(self.MAX_BACKOFF, self.INITIAL_BACKOFF * 2**attempt))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _connect_once(self) -> bool:
        ep = self.endpoint
        options = client_options(ep.max_message_bytes)
        if ep.tls is not None:
            # The parent's certificate must name the parent cell (as the parent checks
            # its children's): TLS verifies this name instead of the address's host.
            identity = ep.tls_identities.get(self.parent.name) or self.parent.name
            target_name = security.identity_san(identity)
            creds = security.channel_credentials(ep.tls)
            grpc_channel = grpc.aio.secure_channel(
                self.parent.address,
                creds,
                options=[*options, ("grpc.ssl_target_name_override", target_name)],
            )
        else:
            grpc_channel = grpc.aio.insecure_channel(self.parent.address, options=options)
        async with grpc_channel:
            call = link_pb2_grpc.CellLinkStub(grpc_channel).Connect()
            await call.write(link_pb2.ConnectRequest(hello=ep.hello(self.channel)))
            first = await asyncio.wait_for(call.read(), HELLO_TIMEOUT)
            if first is _EOF or first.WhichOneof("frame") != "hello":
                raise PermissionDenied(f"{self.parent.name} did not answer with a Hello")
            hello = first.hello
            check_hello(hello)
            if hello.cell != self.parent.name:
                raise PermissionDenied(
                    f"{self.parent.address} is cell {hello.cell!r}, not {self.parent.name!r}"
                )
            self.last_error = ""
            if ep.neighbours.parents() and ep.neighbours.parents()[0] is self.channel:
                ep.path = paths.join(hello.path, ep.name)

            async def read() -> link_pb2.ConnectResponse | None:
                frame = await call.read()
                return None if frame is _EOF else frame

            async def write(envs: list[link_pb2.Envelope], ack: int) -> None:
                frame = link_pb2.ConnectRequest()
                _fill_batch(frame.batch, envs, ack)
                await call.write(frame)

            try:
                await ep.run(self.channel, hello, read, write)
            finally:
                call.cancel()
            return True

    def stop(self) -> None:
        """Stop dialling (the caller cancels the running task to end the stream)."""
        self._stopping.set()


def _fill_batch(batch: link_pb2.EnvelopeBatch, envs: list[link_pb2.Envelope], ack: int) -> None:
    # Filled in place: building an EnvelopeBatch first would copy every envelope twice.
    batch.envelopes.extend(envs)
    batch.ack = ack
    batch.SetInParent()  # an empty frame (neither envelopes nor ack) is still a batch


def _grpc_code(code: Code) -> grpc.StatusCode:
    return _GRPC_CODES.get(int(code), grpc.StatusCode.UNKNOWN)


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

__all__ = ["LinkEndpoint", "LinkServicer", "ParentDialer"]
