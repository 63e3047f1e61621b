"""One open CellLink stream: the Hello exchange is done; this moves batches.

The same loops serve both ends: the parent (server) and the child (client)
differ only in how they read and write frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cellplane.federation.channel import FRAME_BYTES, PeerChannel
from cellplane.federation.cursors import CursorWriter
from cellplane.v1 import link_pb2

MAX_BATCH = 512

ReadFrame = Callable[[], Awaitable[Any]]
# Writes one frame: its envelopes and the ack of the other direction (0: none).
WriteBatch = Callable[[list[link_pb2.Envelope], int], Awaitable[None]]
Receive = Callable[[PeerChannel, list[link_pb2.Envelope], list[Any]], Awaitable[None]]


async def run_session(
    channel: PeerChannel,
    peer_epoch: str,
    read: ReadFrame,
    write: WriteBatch,
    receive: Receive,
    cursor_writer: CursorWriter,
    *,
    max_batch: int = MAX_BATCH,
    max_bytes: int = FRAME_BYTES,
) -> None:
    """Move batches both ways until the stream ends; returns when it does."""
    writer = asyncio.create_task(_write_loop(channel, write, max_batch, max_bytes))
    persister = asyncio.create_task(cursor_writer.run())
    try:
        await _read_loop(channel, peer_epoch, read, receive, cursor_writer)
    finally:
        writer.cancel()
        # Commit what was handled, unless the cursor writer is gone (its commit failed,
        # or it was cancelled): then nothing will ever drain, and the unacked rest is
        # sent again on the next connection.
        drained = asyncio.ensure_future(cursor_writer.drain())
        try:
            await asyncio.wait({drained, persister}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            persister.cancel()
        await asyncio.gather(writer, persister, drained, return_exceptions=True)


async def _read_loop(
    channel: PeerChannel,
    peer_epoch: str,
    read: ReadFrame,
    receive: Receive,
    cursor_writer: CursorWriter,
) -> None:
    while True:
        frame = await read()
        if frame is None:
            return
        if frame.WhichOneof("frame") != "batch":
            raise _ProtocolViolation("only batches may follow the Hello")
        batch = frame.batch
        if batch.ack:
            channel.apply_ack(batch.ack)
        envs = batch.envelopes
        if not envs:
            continue
        # Read before routing: forwarding renumbers an envelope for its next link.
        last_seq = envs[-1].seq
        fresh = [env for env in envs if channel.accept(peer_epoch, env)]
        work: list[Any] = []
        if fresh:
            await receive(channel, fresh, work)
        cursor = channel.handled(peer_epoch, last_seq)
        if cursor is not None:
            cursor_writer.add(cursor, work)


async def _write_loop(
    channel: PeerChannel, write: WriteBatch, max_batch: int, max_bytes: int
) -> None:
    while True:
        envs, ack = await channel.next_frame(max_batch, max_bytes)
        await write(envs, ack or 0)


class _ProtocolViolation(Exception):
    """The peer sent a frame out of order."""
