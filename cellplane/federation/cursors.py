"""Durable link cursors: how far this cell handled each neighbour's envelopes.

A batch's database work (from inline handlers) is committed in the same
transaction as the cursor, so an effect and the record that it happened
survive or vanish together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from sqlalchemy import Table, bindparam
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db.models import LinkCursor, utcnow
from cellplane.federation.channel import Cursor
from cellplane.federation.dispatch import DbWork

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


class CursorWriter:
    """Coalesces cursor commits for one link: while one commit runs, later batches
    pile up and go in the next one. ``on_durable`` is told each committed cursor."""

    def __init__(self, store: CursorStore, peer: str, on_durable: Callable[[Cursor], None]) -> None:
        self._store = store
        self._peer = peer
        self._on_durable = on_durable
        self._cursor: Cursor | None = None
        self._work: list[DbWork] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, cursor: Cursor, work: list[DbWork]) -> None:
        """Queue a handled cursor and its batch's database work."""
        self._cursor = cursor
        self._work.extend(work)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Commit queued cursors until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            cursor, work = self._cursor, self._work
            self._cursor, self._work = None, []
            if cursor is not None:
                await asyncio.to_thread(self._store.commit, self._peer, cursor, work)
                self._on_durable(cursor)
            if self._cursor is None:
                self._idle.set()

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._idle.wait()
