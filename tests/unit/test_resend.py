"""A child resending its instances to a parent (anti-entropy): every instance of the
buckets asked for, its destroy after its update if deleted, for that parent alone, a
bounded number per transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane import db
from cellplane.db.instances import InstanceChanges
from cellplane.db.models import OutboxEntry
from cellplane.federation import digests
from cellplane.federation.digests import Synchronizer, bucket_of
from cellplane.federation.outbox import Outbox
from cellplane.v1 import link_pb2

UUIDS = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(1, 11)]


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'leaf.db'}"
    db.upgrade(url)
    engine = db.create_engine(url)
    yield db.make_session_factory(engine)
    engine.dispose()


def _cell(sessions: sessionmaker[Session]) -> None:
    """Ten instances (versions 1..3), the last two deleted; nothing in the outbox."""
    changes = InstanceChanges()
    with sessions.begin() as session:
        changes.create_many(
            session,
            [
                {"uuid": u, "name": f"i{i}", "project_id": "p", "user_id": "u", "image_id": "img",
                 "vm_state": "active", "cell_path": "leaf", "flavor_id": "1"}
                for i, u in enumerate(UUIDS)
            ],
        )  # fmt: skip
        changes.update_many(session, [(u, {"task_state": None}) for u in UUIDS[:5]])
    for uuid in UUIDS[-2:]:
        with sessions.begin() as session:
            changes.destroy(session, uuid)


def _outbox(sessions: sessionmaker[Session]) -> list[tuple[str, str, str, int]]:
    with sessions() as session:
        rows = session.execute(
            sa.select(OutboxEntry.peer, OutboxEntry.kind, OutboxEntry.instance_uuid,
                      OutboxEntry.version, OutboxEntry.payload).order_by(OutboxEntry.id)
        ).all()  # fmt: skip
    for _peer, kind, uuid, version, payload in rows:
        if kind == "instance_update":
            sent = link_pb2.InstanceUpdate.FromString(payload).instance
            assert (sent.uuid, sent.version) == (uuid, version)
    return [(p, k, u, v) for p, k, u, v, _ in rows]


def test_a_full_resend_queues_every_instance_a_few_per_transaction(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cell(sessions)
    monkeypatch.setattr(digests, "RESEND_ROWS", 3)
    commits: list[int] = []
    sa.event.listen(sessions, "after_commit", lambda _: commits.append(1))
    sync = Synchronizer("leaf", None, sessions, Outbox(lambda: ["mid", "other"]))  # type: ignore[arg-type]
    assert sync._resend("mid", 16, None) == len(UUIDS)
    assert len(commits) == 4  # 10 instances, 3 a transaction
    expected = []
    for i, uuid in enumerate(UUIDS):
        version = 2 if i < 5 else (2 if i >= 8 else 1)
        expected.append(("mid", "instance_update", uuid, version))
        if i >= 8:
            expected.append(("mid", "instance_destroyed", uuid, version))
    assert _outbox(sessions) == expected


def test_a_resend_of_some_buckets_queues_only_theirs(sessions: sessionmaker[Session]) -> None:
    _cell(sessions)
    wanted = {bucket_of(UUIDS[0], 4), bucket_of(UUIDS[9], 4)}
    sync = Synchronizer("leaf", None, sessions, Outbox(lambda: ["mid"]))  # type: ignore[arg-type]
    inside = [u for u in UUIDS if bucket_of(u, 4) in wanted]
    assert sync._resend("mid", 4, wanted) == len(inside) < len(UUIDS)
    assert [u for _, k, u, _ in _outbox(sessions) if k == "instance_update"] == inside
