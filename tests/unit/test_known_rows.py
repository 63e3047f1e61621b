"""A parent that knows what a row holds writes only the columns a push changes, and
ends with the rows that writing every column leaves; a row written by another hand
is written in full again."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from cellplane import db
from cellplane.db.models import Instance
from cellplane.federation import codec, pushes
from cellplane.federation.outbox import Outbox, PushReceiver
from cellplane.v1 import link_pb2, types_pb2

START = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
UUIDS = [f"00000000-0000-4000-8000-0000000000{i:02d}" for i in range(1, 9)]
# Every column a push carries, and cell_path; ids and rows' own bookkeeping left out.
COLUMNS = [
    "uuid", "name", "project_id", "user_id", "flavor_id", "flavor", "image_id", "vm_state",
    "task_state", "power_state", "host", "availability_zone", "cell_path", "version",
    "metadata_", "deleted", "addresses", "launched_at", "created_at", "updated_at",
]  # fmt: skip


def _message(rng: random.Random, uuid: str, version: int) -> types_pb2.Instance:
    """Version ``version`` of ``uuid``, with fields that change often and some that
    change rarely (sometimes missing timestamps, a move, new addresses)."""
    msg = types_pb2.Instance(
        uuid=uuid,
        name=rng.choice(["a", "a", "a", "renamed"]),
        project_id="p",
        user_id="u",
        image_id=rng.choice(["img", "img", "img2"]),
        vm_state=rng.choice([types_pb2.VM_STATE_ACTIVE, types_pb2.VM_STATE_STOPPED]),
        task_state=rng.choice([0, 0, types_pb2.TASK_STATE_REBOOTING]),  # type: ignore[arg-type]
        power_state=rng.choice([1, 4]),  # type: ignore[arg-type]
        version=version,
        cell_path=rng.choice(["leaf", "leaf", "leaf", "other"]),
        host=rng.choice(["h1", "h1", "h2", ""]),
        availability_zone=rng.choice(["nova", "nova", ""]),
        flavor=rng.choice(
            [
                types_pb2.Flavor(id="1", name="m1.tiny", vcpus=1, memory_mb=512, root_gb=1),
                types_pb2.Flavor(id="2", name="m1.small", vcpus=1, memory_mb=2048, root_gb=20),
            ]
        ),
        metadata=rng.choice([{}, {}, {"k": "v"}, {"k": "w", "z": "1"}]),
        deleted=False,
    )
    for i in range(rng.choice([0, 1, 1, 2])):
        msg.addresses.add(pool="private", address=f"10.0.{i}.{rng.randint(1, 3)}", version=4)
    codec.set_timestamp(msg.created_at, START)
    if rng.random() < 0.9:
        codec.set_timestamp(msg.updated_at, START + timedelta(seconds=version))
    if rng.random() < 0.6:
        codec.set_timestamp(msg.launched_at, START + timedelta(seconds=rng.randint(0, 2)))
    return msg


def _cell(tmp_path: Path, name: str) -> tuple[PushReceiver, Any]:
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    db.upgrade(url)
    sessions = db.make_session_factory(db.create_engine(url))
    return PushReceiver("mid", Outbox(lambda: ["api"])), sessions


def _rows(sessions: Any) -> dict[str, tuple[Any, ...]]:
    with sessions() as session:
        return {
            row.uuid: tuple(getattr(row, c) for c in COLUMNS if c != "updated_at")
            for row in session.scalars(select(Instance))
        }


def _frames(seed: int) -> list[list[pushes.Push]]:
    rng = random.Random(seed)
    versions = dict.fromkeys(UUIDS, 0)
    frames = []
    for _ in range(30):
        frame: list[pushes.Push] = []
        for _ in range(rng.randint(1, 12)):
            uuid = rng.choice(UUIDS)
            versions[uuid] += rng.choice([1, 1, 2])
            if rng.random() < 0.05:
                frame.append((pushes.DESTROY, _destroyed(uuid, versions[uuid])))
            else:
                frame.append((pushes.UPDATE, _message(rng, uuid, versions[uuid])))
            if rng.random() < 0.1:  # a duplicate of an older push
                frame.append((pushes.UPDATE, _message(rng, uuid, max(1, versions[uuid] - 1))))
        frames.append(frame)
    return frames


def _destroyed(uuid: str, version: int) -> link_pb2.InstanceDestroyed:
    return link_pb2.InstanceDestroyed(instance_uuid=uuid, version=version, cell_path="leaf")


@pytest.mark.parametrize("seed", range(6))
def test_known_rows_end_as_full_writes_leave_them(tmp_path: Path, seed: int) -> None:
    knowing, knowing_db = _cell(tmp_path, "knowing")
    full, full_db = _cell(tmp_path, "full")
    for frame in _frames(seed):
        with knowing_db.begin() as session:
            knowing.apply_many(session, frame)
        with full_db.begin() as session:
            full.apply_many(session, frame)
        full._known.clear()  # writes every column every time
    assert knowing._known  # the comparison is worth something only if it was used
    assert _rows(knowing_db) == _rows(full_db)


def test_advance_gives_the_columns_that_differ() -> None:
    rng = random.Random(7)
    for version in range(1, 400):
        before, msg = _message(rng, UUIDS[0], version), _message(rng, UUIDS[0], version + 1)
        if rng.random() < 0.2:
            msg.CopyFrom(before)
            msg.version = version + 1
        old, new = codec.instance_columns(before), codec.instance_columns(msg)
        expected = {c: v for c, v in new.items() if old.get(c) != v}
        mine = types_pb2.Instance()
        mine.CopyFrom(before)
        assert codec.advance(mine, msg) == expected
        assert mine == msg


def test_a_row_written_by_another_hand_is_written_in_full(tmp_path: Path) -> None:
    receiver, sessions = _cell(tmp_path, "cell")
    rng = random.Random(3)
    first = _message(rng, UUIDS[0], 1)
    first.vm_state = types_pb2.VM_STATE_ACTIVE
    with sessions.begin() as session:
        receiver.apply_many(session, [(pushes.UPDATE, first)])
    assert UUIDS[0] in receiver._known
    # Another writer changes the row but not its version (it moves updated_at).
    with sessions.begin() as session:
        session.execute(
            update(Instance)
            .where(Instance.uuid == UUIDS[0])
            .values(vm_state="error", updated_at=datetime.now(UTC))
        )
    second = types_pb2.Instance()
    second.CopyFrom(first)
    second.version = 2  # vm_state as in the first push: no change from what was known
    with sessions.begin() as session:
        receiver.apply_many(session, [(pushes.UPDATE, second)])
    with sessions() as session:
        row = session.scalar(select(Instance).where(Instance.uuid == UUIDS[0]))
        assert row is not None
        assert (row.version, row.vm_state) == (2, "active")
