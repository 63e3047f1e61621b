"""Neighbours with different ``max_message_bytes``: each side's Hello says what it
takes, and frames and outbox envelopes stay within the smaller limit.

A child sending with its own (larger) limit used to have every frame over the
parent's limit refused: the link went down, came back, sent the same frame again,
and nothing behind it ever arrived.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from pathlib import Path

from sqlalchemy import func, select

from cellplane.config import CellConfig, ChildConfig, ParentConfig
from cellplane.db.models import Instance
from cellplane.federation.channel import LinkState, Relation
from cellplane.service import Cell

PARENT_TAKES = 64 * 1024
INSTANCES = 300  # about 1 KB each as a push: several times what the parent takes at once
WAIT = 30.0


def _instance(n: int) -> dict[str, object]:
    return {
        "uuid": str(uuidlib.uuid4()),
        "name": f"big-{n}",
        "project_id": "p1",
        "user_id": "u1",
        "flavor_id": "1",
        "flavor": {"id": "1"},
        "image_id": "img",
        "vm_state": "active",
        "power_state": 1,
        "host": "h1",
        "node": "h1",
        "cell_path": "kid",
        "metadata_": {f"key{i}": "v" * 90 for i in range(10)},
    }


def _count(cell: Cell) -> int:
    with cell.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_pushes_reach_a_parent_that_takes_smaller_messages(tmp_path: Path) -> None:
    async def main() -> None:
        parent = Cell(
            CellConfig(
                name="parent",
                database_url=f"sqlite:///{tmp_path / 'parent.db'}",
                listen="127.0.0.1:0",
                children=(ChildConfig("kid"),),
                max_message_bytes=PARENT_TAKES,
            )
        )
        await parent.start()
        kid = Cell(
            CellConfig(
                name="kid",
                database_url=f"sqlite:///{tmp_path / 'kid.db'}",
                listen="127.0.0.1:0",
                parents=(ParentConfig("parent", parent.address),),
            )
        )
        await kid.start()
        try:
            link = kid.neighbours.get("parent", Relation.PARENT)
            assert link is not None
            loop = asyncio.get_running_loop()
            end = loop.time() + WAIT
            while link.state is not LinkState.UP:
                assert loop.time() < end, "the link never came up"
                await asyncio.sleep(0.02)
            assert link.max_message_bytes == PARENT_TAKES

            def write() -> None:
                with kid.sessions.begin() as session:
                    kid.changes.create_many(session, [_instance(n) for n in range(INSTANCES)])

            await asyncio.to_thread(write)
            while _count(parent) < INSTANCES:
                assert loop.time() < end, f"{_count(parent)} of {INSTANCES} pushes arrived"
                await asyncio.sleep(0.05)
            assert link.connection_count == 1  # never refused, never reconnected
        finally:
            await kid.stop(grace=0.2)
            await parent.stop(grace=0.2)

    asyncio.run(main())
