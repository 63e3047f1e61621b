"""The outbox sender joins a run of updates into one envelope (InstanceUpdates), keeps
other pushes in envelopes of their own, and deletes every row of an envelope once it
is acked. It never loses a row: not one committed below what it already sent
(PostgreSQL hands out ids at insert, shows rows at commit), and not after a database
error (the sender used to die on one, silently ending state up)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from cellplane import db
from cellplane.config import CellConfig, ComputeConfig, HostConfig
from cellplane.db.models import OutboxEntry
from cellplane.federation import outbox
from cellplane.federation.channel import Cursor, PeerChannel, Relation
from cellplane.federation.outbox import OutboxSender
from cellplane.service import outbox_written_here
from cellplane.v1 import link_pb2, types_pb2


class FakeParent:
    """The parts of a PeerChannel the sender uses."""

    peer = "api"
    unacked = 0
    peer_features = frozenset({"instance_updates"})
    max_message_bytes = 0  # not said: the sender's own budget holds

    def __init__(self) -> None:
        self.on_acked: list[Any] = []
        self.on_dropped: list[Any] = []
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


def _add(sessions: Any, rows: list[tuple[str, int]], *, ids: bool = False) -> None:
    """Outbox rows for the parent: (kind, n) each, n naming the instance and version
    (and, with ``ids``, the row's id), noted as the Outbox notes its writes."""
    with sessions.begin() as session:
        outbox.Outbox.written(session)
        for kind, n in rows:
            if kind == "instance_update":
                message: Any = link_pb2.InstanceUpdate(
                    instance=types_pb2.Instance(uuid=_uuid(n), version=n, name="x" * 100)
                )
            else:
                message = link_pb2.InstanceDestroyed(instance_uuid=_uuid(n), version=n)
            session.add(
                OutboxEntry(
                    id=n if ids else None,
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
    assert sender._rows_of == {} and sender._in_flight == {"api": set()}


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


def test_a_different_run_from_the_same_first_row_has_another_id(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(outbox, "UPDATES_PER_ENVELOPE", 2)
    sender, parent, sessions = _sender(tmp_path)
    _add(sessions, [("instance_update", 1), ("instance_update", 3)], ids=True)
    asyncio.run(sender._step())
    first = parent.sent[0]
    assert _carried(first) == [("instance_update", 1), ("instance_update", 3)]
    # Row 2 took its id before row 3 but committed after it (as on a server database);
    # a restarted sender (nothing acked) now sends rows 1 and 2 together: same first
    # row, same count, other rows. The receiver must not take it for the first run.
    _add(sessions, [("instance_update", 2)], ids=True)
    again, parent_again, _ = _sender(tmp_path)
    asyncio.run(again._step())
    assert [_carried(env) for env in parent_again.sent] == [
        [("instance_update", 1), ("instance_update", 2)],
        [("instance_update", 3)],
    ]
    assert parent_again.sent[0].id != first.id


def test_a_forgotten_parent_leaves_nothing_behind(tmp_path: Path) -> None:
    sender, _, sessions = _sender(tmp_path)
    _add(sessions, [("instance_update", n) for n in (1, 2, 3)])
    asyncio.run(sender._step())
    assert sender._rows_of and sender._in_flight["api"]
    sender.forget("api")
    assert sender._rows_of == {} and "api" not in sender._in_flight


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


def test_joined_updates_taken_back_by_the_link_go_again_one_by_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'leaf.db'}"
    db.upgrade(url)
    sessions = db.make_session_factory(db.create_engine(url))
    channel = PeerChannel("api", Relation.PARENT, "leaf-epoch", Cursor())
    sender = OutboxSender("leaf", FakeNeighbours(channel), sessions)  # type: ignore[arg-type]
    channel.connected("api", ["instance_updates"])
    _add(sessions, [("instance_update", n) for n in (1, 2, 3)])
    _add(sessions, [("instance_destroyed", 4)])

    async def frame() -> list[link_pb2.Envelope]:
        envs, _ = await asyncio.wait_for(channel.next_frame(100), 5)
        return envs

    asyncio.run(sender._step())
    assert [len(_carried(env)) for env in asyncio.run(frame())] == [3, 1]
    # The link drops and comes back to a parent of an older release: its Hello names
    # no features. The joined envelope is taken back; the destroy stays as it was.
    channel.disconnected()
    channel.resume("api-epoch", 0)
    channel.connected("api", [])
    asyncio.run(sender._step())
    sent = asyncio.run(frame())
    assert [env.WhichOneof("payload") for env in sent] == [
        "instance_destroyed",
        "instance_update",
        "instance_update",
        "instance_update",
    ]
    assert [v for env in sent for _, v in _carried(env)] == [4, 1, 2, 3]
    channel.apply_ack(max(env.seq for env in sent))
    asyncio.run(sender._step())
    assert sender.pending() == 0


def _versions(parent: FakeParent) -> list[int]:
    """The rows sent, in order (each row's version is its id)."""
    return [version for env in parent.sent for _, version in _carried(env)]


def test_a_row_committed_below_what_was_sent_is_still_sent(tmp_path: Path) -> None:
    sender, parent, sessions = _sender(tmp_path)
    _add(sessions, [("instance_update", 1), ("instance_update", 3)], ids=True)
    asyncio.run(sender._step())
    assert _versions(parent) == [1, 3]
    _add(sessions, [("instance_update", 2)], ids=True)  # took id 2 first, committed last
    parent.ack(parent.sent)
    asyncio.run(sender._step())
    assert _versions(parent) == [1, 3, 2]
    parent.ack(parent.sent)
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
    _add(sessions, [("instance_update", 1)], ids=True)

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


def _send_one_and_wait(sender: OutboxSender, parent: FakeParent, write: Any) -> None:
    """Run the sender, ``write()`` one row once it idles, and wait until it is sent."""

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        try:
            await asyncio.sleep(0.05)  # its first look found nothing: it waits now
            await asyncio.to_thread(write)
            while not parent.sent:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(run(), 10))


def test_a_lone_writer_sends_on_commit_without_polling(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(outbox, "LONE_WRITER_POLL", 3600.0)  # never, within the test
    sender, parent, sessions = _sender(tmp_path, lone_writer=True)
    sender.watch(sessions)
    _send_one_and_wait(sender, parent, lambda: _add(sessions, [("instance_update", 1)]))
    assert _versions(parent) == [1]


def test_a_lone_writer_still_finds_rows_written_elsewhere(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(outbox, "LONE_WRITER_POLL", 0.05)
    sender, parent, sessions = _sender(tmp_path, lone_writer=True)
    sender.watch(sessions)
    # Another process's commit: nothing here hears of it.
    elsewhere = db.make_session_factory(db.create_engine(f"sqlite:///{tmp_path / 'leaf.db'}"))
    _send_one_and_wait(sender, parent, lambda: _add(elsewhere, [("instance_update", 1)]))
    assert _versions(parent) == [1]


def test_a_cell_whose_computes_run_elsewhere_polls_for_their_rows() -> None:
    hosts = ComputeConfig(hosts=(HostConfig("h1", vcpus=1, memory_mb=512, local_gb=1),))
    api = CellConfig(name="api", database_url="sqlite://", roles=("cells", "api"))
    whole = CellConfig(
        name="c1", database_url="sqlite://", roles=("cells", "compute"), compute=hosts
    )
    split = replace(whole, roles=("cells", "scheduler", "network"))
    assert outbox_written_here(api) and outbox_written_here(whole)
    assert not outbox_written_here(split)


def test_envelopes_fit_what_the_parent_takes(tmp_path: Path) -> None:
    sender, parent, sessions = _sender(tmp_path)
    parent.max_message_bytes = 4096  # a quarter of it per envelope
    _add(sessions, [("instance_update", n) for n in range(1, 41)])
    asyncio.run(sender._step())
    assert _versions(parent) == list(range(1, 41))
    assert len(parent.sent) > 1
    assert all(size <= 1024 for size in parent.sizes), parent.sizes
