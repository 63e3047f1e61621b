"""Durable link cursors: how far this cell handled each neighbour's envelopes.

A batch's database work (from inline handlers) is committed in the same
transaction as the cursor, so an effect and the record that it happened
survive or vanish together.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

from sqlalchemy import Table, bindparam
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db.models import LinkCursor, utcnow
from cellplane.federation.channel import Cursor
from cellplane.federation.dispatch import DbWork

MAX_FRAMES_PER_COMMIT = 8  # handled batches (up to 512 envelopes each) per cursor commit
_TABLE = cast(Table, LinkCursor.__table__)
_UPDATE_CURSOR = (
    _TABLE.update()
    .where(_TABLE.c.peer == bindparam("b_peer"))
    .values(epoch=bindparam("b_epoch"), last_seq=bindparam("b_seq"), updated_at=bindparam("b_at"))
)


class CursorStore:
    """Reads and writes ``link_cursors`` rows."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def load(self, peer: str) -> Cursor:
        """The persisted cursor for ``peer`` (an empty one if none)."""
        with self._sessions() as session:
            row = session.get(LinkCursor, peer)
            return Cursor(row.epoch, row.last_seq) if row else Cursor()

    def commit(self, peer: str, cursor: Cursor, work: list[DbWork]) -> None:
        """Run ``work`` and store ``cursor`` in one transaction."""
        with self._sessions.begin() as session:
            for apply in work:
                apply(session)
            # One prepared UPDATE: this runs for nearly every frame a link receives, and
            # loading the row through the ORM cost four times as much.
            params = {
                "b_peer": peer,
                "b_epoch": cursor.epoch,
                "b_seq": cursor.last_seq,
                "b_at": utcnow(),
            }
            updated = session.execute(_UPDATE_CURSOR, params)
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                session.add(LinkCursor(peer=peer, epoch=cursor.epoch, last_seq=cursor.last_seq))


def _append_work(work: list[DbWork], item: DbWork) -> None:
    """Append ``item``, or join it to the last piece of work if that one can take it
    (``joined(other)`` returning the work of both, in order, or None)."""
    if work:
        joined = getattr(work[-1], "joined", None)
        both = joined(item) if joined is not None else None
        if both is not None:
            work[-1] = both
            return
    work.append(item)


class CursorWriter:
    """Coalesces cursor commits for one link: while one commit runs, later batches
    pile up and go in the next one. ``on_durable`` is told each committed cursor.

    One commit takes at most ``max_frames`` handled batches (and their database
    work), so a backlog does not hold SQLite's one write lock for seconds.
    """

    def __init__(
        self,
        store: CursorStore,
        peer: str,
        on_durable: Callable[[Cursor], None],
        *,
        max_frames: int = MAX_FRAMES_PER_COMMIT,
    ) -> None:
        self._store = store
        self._peer = peer
        self._on_durable = on_durable
        self._max_frames = max(1, max_frames)
        self._queued: deque[tuple[Cursor, list[DbWork]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, cursor: Cursor, work: list[DbWork]) -> None:
        """Queue a handled cursor and its batch's database work."""
        self._queued.append((cursor, work))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Commit queued cursors until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queued:
                cursor = self._queued[0][0]
                work: list[DbWork] = []
                taken = 0
                while self._queued and taken < self._max_frames:
                    cursor, batch_work = self._queued.popleft()
                    for item in batch_work:
                        _append_work(work, item)
                    taken += 1
                await asyncio.to_thread(self._store.commit, self._peer, cursor, work)
                self._on_durable(cursor)
            self._idle.set()

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._idle.wait()
