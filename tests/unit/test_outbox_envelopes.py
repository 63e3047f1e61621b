"""The outbox sender joins a run of updates into one envelope (InstanceUpdates), keeps
other pushes in envelopes of their own, and deletes every row of an envelope once it
is acked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cellplane import db
from cellplane.db.models import OutboxEntry
from cellplane.federation import outbox
from cellplane.federation.outbox import OutboxSender
from cellplane.v1 import link_pb2, types_pb2


class FakeParent:
    """The parts of a PeerChannel the sender uses."""

    peer = "api"
    unacked = 0
    peer_features = frozenset({"instance_updates"})

    def __init__(self) -> None:
        self.on_acked: list[Any] = []
        self.sent: list[link_pb2.Envelope] = []
        self.sizes: list[int] = []

    def send_many(self, batch: list[link_pb2.Envelope], sizes: Any = ()) -> None:
        self.sent.extend(batch)
        self.sizes.extend(sizes)

    def ack(self, envs: list[link_pb2.Envelope]) -> None:
        for callback in self.on_acked:
            callback(envs)


class FakeNeighbours:
    def __init__(self, parent: FakeParent) -> None:
        self.parent = parent

    def parents(self) -> list[FakeParent]:
        return [self.parent]


def _sender(tmp_path: Path, **options: Any) -> tuple[OutboxSender, FakeParent, Any]:
    url = f"sqlite:///{tmp_path / 'leaf.db'}"
    db.upgrade(url)
    sessions = db.make_session_factory(db.create_engine(url))
    parent = FakeParent()
    sender = OutboxSender("leaf", FakeNeighbours(parent), sessions, **options)  # type: ignore[arg-type]
    return sender, parent, sessions


def _uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _add(sessions: Any, rows: list[tuple[str, int]]) -> None:
    """Outbox rows for the parent: (kind, n) each, n naming the instance and version."""
    with sessions.begin() as session:
        for kind, n in rows:
            if kind == "instance_update":
                message: Any = link_pb2.InstanceUpdate(
                    instance=types_pb2.Instance(uuid=_uuid(n), version=n, name="x" * 100)
                )
            else:
                message = link_pb2.InstanceDestroyed(instance_uuid=_uuid(n), version=n)
            session.add(
                OutboxEntry(
                    peer="api",
                    kind=kind,
                    instance_uuid=_uuid(n),
                    version=n,
                    payload=message.SerializeToString(),
                )
            )


def _carried(env: link_pb2.Envelope) -> list[tuple[str, int]]:
    payload = env.WhichOneof("payload")
    if payload == "instance_updates":
        return [("instance_update", i.version) for i in env.instance_updates.instances]
    if payload == "instance_update":
        return [("instance_update", env.instance_update.instance.version)]
    return [(str(payload), env.instance_destroyed.version)]


def test_a_run_of_updates_travels_in_one_envelope_in_order(tmp_path: Path) -> None:
    sender, parent, sessions = _sender(tmp_path)
    rows = [("instance_update", n) for n in (1, 2, 3)]
    rows += [("instance_destroyed", 4), ("instance_update", 5), ("instance_update", 6)]
    _add(sessions, rows)
    asyncio.run(sender._step())
    assert [_carried(env) for env in parent.sent] == [rows[:3], rows[3:4], rows[4:]]
    assert [env.WhichOneof("payload") for env in parent.sent] == [
        "instance_updates",
        "instance_destroyed",
        "instance_updates",
    ]
    assert len({env.id for env in parent.sent}) == 3
    assert sender.sent == 6

    parent.ack(parent.sent[:2])  # the first two envelopes: four rows
    asyncio.run(sender._step())
    assert sender.pending() == 2
    parent.ack(parent.sent[2:])
    asyncio.run(sender._step())
    assert sender.pending() == 0


def test_runs_are_cut_by_count_and_by_bytes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(outbox, "UPDATES_PER_ENVELOPE", 3)
    sender, parent, sessions = _sender(tmp_path, envelope_bytes=400)
    _add(sessions, [("instance_update", n) for n in range(1, 9)])
    asyncio.run(sender._step())
    counts = [len(_carried(env)) for env in parent.sent]
    # Each update is about 150 bytes: two fit 400 bytes, a third does not.
    assert counts == [2, 2, 2, 2]
    assert all(size <= 400 for size in parent.sizes)
    assert [v for env in parent.sent for _, v in _carried(env)] == list(range(1, 9))

    (tmp_path / "count").mkdir()
    sender, parent, sessions = _sender(tmp_path / "count", envelope_bytes=1 << 20)
    _add(sessions, [("instance_update", n) for n in range(1, 9)])
    asyncio.run(sender._step())
    assert [len(_carried(env)) for env in parent.sent] == [3, 3, 2]


def test_a_different_run_from_the_same_first_row_has_another_id(tmp_path: Path) -> None:
    sender, parent, sessions = _sender(tmp_path)
    _add(sessions, [("instance_update", n) for n in (1, 2)])
    asyncio.run(sender._step())
    first = parent.sent[0].id
    # A restarted sender (nothing acked) finds a third row: the run it sends from the
    # same first row must not pass for the one already handled.
    _add(sessions, [("instance_update", 3)])
    again, parent_again, _ = _sender(tmp_path)
    asyncio.run(again._step())
    assert [_carried(env) for env in parent_again.sent] == [
        [("instance_update", n) for n in (1, 2, 3)]
    ]
    assert parent_again.sent[0].id != first


def test_a_parent_that_does_not_take_joined_updates_gets_one_envelope_each(
    tmp_path: Path,
) -> None:
    sender, parent, sessions = _sender(tmp_path)
    parent.peer_features = frozenset()  # its Hello named no features: an older release
    rows = [("instance_update", n) for n in (1, 2, 3)]
    _add(sessions, rows)
    asyncio.run(sender._step())
    assert [env.WhichOneof("payload") for env in parent.sent] == ["instance_update"] * 3
    assert [_carried(env) for env in parent.sent] == [[row] for row in rows]
    parent.ack(parent.sent)
    asyncio.run(sender._step())
    assert sender.pending() == 0
