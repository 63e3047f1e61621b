"""Link sessions: the cursor of a link follows what came in on that link, and a
session ends with its stream whatever happened to its cursor writer."""

from __future__ import annotations

import asyncio

from cellplane.federation.channel import Cursor, PeerChannel, Relation
from cellplane.federation.cursors import CursorWriter
from cellplane.federation.session import run_session
from cellplane.v1 import link_pb2

Envelope = link_pb2.Envelope


class _Store:
    """Keeps committed cursors in memory (the CursorStore interface)."""

    def __init__(self) -> None:
        self.committed: list[Cursor] = []

    def commit(self, peer: str, cursor: Cursor, work: list[object]) -> None:
        self.committed.append(cursor)


def _frame(seq: int) -> link_pb2.ConnectRequest:
    env = Envelope(id=f"from-leaf-{seq}", seq=seq, echo=link_pb2.Echo(sequence=seq))
    return link_pb2.ConnectRequest(batch=link_pb2.EnvelopeBatch(envelopes=[env]))


def test_forwarding_an_envelope_does_not_move_the_cursor_of_its_link() -> None:
    """Regression: the handled seq was read after routing had renumbered the envelope
    for the next link, so later envelopes from the same neighbour were dropped as
    duplicates (and acked, so never sent again)."""

    async def main() -> tuple[PeerChannel, PeerChannel, list[Cursor]]:
        incoming = PeerChannel("leaf", Relation.CHILD, "mid-epoch", Cursor())
        outgoing = PeerChannel("api", Relation.PARENT, "mid-epoch", Cursor())
        for n in range(40):  # the next link's numbering runs well ahead
            outgoing.send(Envelope(id=f"earlier-{n}"))
        frames: list[link_pb2.ConnectRequest | None] = [_frame(1), _frame(2), _frame(3), None]

        async def read() -> link_pb2.ConnectRequest | None:
            return frames.pop(0)

        async def write(envs: list[Envelope], ack: int) -> None:
            return None

        async def receive(channel: PeerChannel, envs: list[Envelope], work: list[object]) -> None:
            for env in envs:
                outgoing.send(env)  # what the router does to forward

        store = _Store()
        writer = CursorWriter(store, "leaf", incoming.persisted)  # type: ignore[arg-type]
        await asyncio.wait_for(run_session(incoming, "leaf-epoch", read, write, receive, writer), 5)
        return incoming, outgoing, store.committed

    incoming, outgoing, committed = asyncio.run(main())
    assert outgoing.unacked == 43  # all three were forwarded, none dropped
    assert incoming.cursor == Cursor("leaf-epoch", 3)
    assert committed[-1] == Cursor("leaf-epoch", 3)


class _BrokenStore:
    """A database that refuses every commit."""

    def commit(self, peer: str, cursor: Cursor, work: list[object]) -> None:
        raise RuntimeError("disk I/O error")


def test_a_session_whose_cursor_commits_fail_still_ends_with_its_stream() -> None:
    """Regression: when the cursor writer died, the session waited forever for it to
    drain, so the link never ended and the child never dialled again."""

    async def main() -> PeerChannel:
        incoming = PeerChannel("leaf", Relation.CHILD, "mid-epoch", Cursor())
        frames: list[link_pb2.ConnectRequest | None] = [_frame(1), None]

        async def read() -> link_pb2.ConnectRequest | None:
            await asyncio.sleep(0.05)  # let the failing commit happen first
            return frames.pop(0)

        async def write(envs: list[Envelope], ack: int) -> None:
            return None

        async def receive(channel: PeerChannel, envs: list[Envelope], work: list[object]) -> None:
            return None

        writer = CursorWriter(_BrokenStore(), "leaf", incoming.persisted)  # type: ignore[arg-type]
        await asyncio.wait_for(run_session(incoming, "leaf-epoch", read, write, receive, writer), 5)
        return incoming

    incoming = asyncio.run(main())
    assert incoming.cursor == Cursor()  # nothing was acked: the neighbour sends it again
