"""The outbox sender never loses a row: not one committed below what it already
sent (PostgreSQL hands out ids at insert, shows rows at commit), and not after a
database error (the sender used to die on one, silently ending state up)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from cellplane import db
from cellplane.db.models import OutboxEntry
from cellplane.federation.outbox import OutboxSender
from cellplane.v1 import link_pb2


class FakeParent:
    """The parts of a PeerChannel the sender uses; acks on demand."""

    peer = "api"
    unacked = 0
    peer_features = frozenset({"instance_updates"})

    def __init__(self) -> None:
        self.on_acked: list[Any] = []
        self.on_dropped: list[Any] = []
        self.sent: list[link_pb2.Envelope] = []

    def send_many(self, batch: list[link_pb2.Envelope], sizes: Any = ()) -> None:
        self.sent.extend(batch)

    def ack_all(self) -> None:
        for callback in self.on_acked:
            callback(list(self.sent))


class FakeNeighbours:
    def __init__(self, parent: FakeParent) -> None:
        self.parent = parent

    def parents(self) -> list[FakeParent]:
        return [self.parent]


def _sender(tmp_path: Path) -> tuple[OutboxSender, FakeParent, Any]:
    url = f"sqlite:///{tmp_path / 'leaf.db'}"
    db.upgrade(url)
    sessions = db.make_session_factory(db.create_engine(url))
    parent = FakeParent()
    return OutboxSender("leaf", FakeNeighbours(parent), sessions), parent, sessions  # type: ignore[arg-type]


def _add(sessions: Any, row_id: int) -> None:
    update = link_pb2.InstanceUpdate()
    update.instance.uuid = f"00000000-0000-4000-8000-{row_id:012d}"
    update.instance.version = row_id
    with sessions.begin() as session:
        session.add(
            OutboxEntry(
                id=row_id,
                peer="api",
                kind="instance_update",
                instance_uuid=update.instance.uuid,
                version=row_id,
                payload=update.SerializeToString(),
            )
        )


def _versions(parent: FakeParent) -> list[int]:
    """The rows sent, in order (each row's version is its id)."""
    sent: list[int] = []
    for env in parent.sent:
        if env.WhichOneof("payload") == "instance_updates":
            sent.extend(i.version for i in env.instance_updates.instances)
        else:
            sent.append(env.instance_update.instance.version)
    return sent


def test_a_row_committed_below_what_was_sent_is_still_sent(tmp_path: Path) -> None:
    sender, parent, sessions = _sender(tmp_path)
    _add(sessions, 1)
    _add(sessions, 3)
    asyncio.run(sender._step())
    assert _versions(parent) == [1, 3]
    _add(sessions, 2)  # its transaction took id 2 first but committed last
    parent.ack_all()
    asyncio.run(sender._step())
    assert _versions(parent) == [1, 3, 2]
    parent.ack_all()
    asyncio.run(sender._step())
    assert sender.pending() == 0


def test_the_sender_keeps_sending_after_a_database_error(tmp_path: Path) -> None:
    sender, parent, sessions = _sender(tmp_path)
    load = sender._load
    failures = []

    def flaky_load(*args: Any) -> Any:
        if not failures:
            failures.append(1)
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return load(*args)

    sender._load = flaky_load  # type: ignore[method-assign]
    _add(sessions, 1)

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        try:
            while not parent.sent:
                sender.wake()
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(run(), 10))
    assert failures and _versions(parent) == [1]
