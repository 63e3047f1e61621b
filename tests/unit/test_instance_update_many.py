"""InstanceChanges.update_many leaves what calling update once per change leaves:
versions, instance rows, one outbox row per parent per change, change log rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cellplane import db
from cellplane.db.instances import InstanceChanges
from cellplane.db.models import Instance, InstanceChange, OutboxEntry
from cellplane.errors import InstanceNotFound
from cellplane.v1 import link_pb2, types_pb2

UUIDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]
PARENTS = ["top", "other"]


def _cell(tmp_path: Path, name: str, *, records: bool = True) -> tuple[InstanceChanges, Any]:
    from cellplane.federation.outbox import Outbox

    url = f"sqlite:///{tmp_path / (name + '.db')}"
    db.upgrade(url)
    sessions = db.make_session_factory(db.create_engine(url))
    outbox = Outbox(lambda: list(PARENTS), change_log=True)
    # records=False: only the one-change hook, as a plain function
    changes = InstanceChanges(outbox.record if records else (lambda *a: outbox.record(*a)))
    with sessions.begin() as session:
        for i, uuid in enumerate(UUIDS):
            changes.create(
                session,
                Instance(
                    uuid=uuid, name=f"vm-{i}", project_id="p", user_id="u", flavor_id="1",
                    flavor={"id": "1"}, image_id="img", vm_state="active", task_state=None,
                    host="h", node="h", cell_path=name,
                ),
            )  # fmt: skip
    return changes, sessions


def _state(sessions: Any) -> tuple[list[Any], list[Any], list[Any]]:
    with sessions() as session:
        rows = [
            (i.uuid, i.version, i.name, i.power_state, i.task_state, i.metadata_)
            for i in session.scalars(select(Instance).order_by(Instance.uuid))
        ]
        outbox = []
        for e in session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)):
            msg = link_pb2.InstanceUpdate.FromString(e.payload).instance
            outbox.append((e.peer, e.kind, e.instance_uuid, e.version, msg.version, msg.name))
        log = []
        for c in session.scalars(select(InstanceChange).order_by(InstanceChange.revision)):
            snap = types_pb2.Instance.FromString(c.snapshot)
            log.append((c.instance_uuid, c.kind, c.version, snap.version, snap.power_state))
    return rows, outbox, log


CHANGES: list[tuple[str, dict[str, Any]]] = [
    (UUIDS[0], {"power_state": 1}),
    (UUIDS[1], {"power_state": 4}),
    (UUIDS[0], {"power_state": 4, "name": "renamed"}),  # the same instance again
    (UUIDS[0], {"task_state": "rebooting"}),
    (UUIDS[2], {"metadata_": {"k": "v"}, "power_state": 1}),
    (UUIDS[1], {"power_state": 1}),
]


@pytest.mark.parametrize("records", [True, False])
def test_update_many_leaves_what_update_one_by_one_leaves(tmp_path: Path, records: bool) -> None:
    one, one_sessions = _cell(tmp_path, "one")
    many, many_sessions = _cell(tmp_path, "many", records=records)
    with one_sessions.begin() as session:
        for uuid, changes in CHANGES:
            one.update(session, uuid, **changes)
    with many_sessions.begin() as session:
        returned = many.update_many(session, CHANGES)
        assert [i.uuid for i in returned] == [u for u, _ in CHANGES]
        assert returned[-1].version == 3
    rows, outbox, log = _state(one_sessions)
    assert _state(many_sessions) == (rows, outbox, log)
    assert [r[1] for r in rows] == [4, 3, 2]
    assert len(outbox) == len(PARENTS) * (len(UUIDS) + len(CHANGES))
    assert ("top", "instance_update", UUIDS[0], 3, 3, "renamed") in outbox
    assert len(log) == len(UUIDS) + len(CHANGES)


def test_update_refreshes_a_loaded_instance(tmp_path: Path) -> None:
    changes, sessions = _cell(tmp_path, "cell")
    with sessions.begin() as session:
        loaded = changes.get(session, UUIDS[0], for_update=True)
        loaded.name = "set-before"  # a pending change goes in first, as before
        updated = changes.update(session, UUIDS[0], power_state=4)
        assert (updated.version, updated.power_state, updated.name) == (2, 4, "set-before")
        assert (loaded.version, loaded.power_state, loaded.name) == (2, 4, "set-before")
        assert json.loads(updated.flavor) == loaded.flavor  # JSON columns as stored text


def test_a_missing_or_deleted_instance_is_not_found(tmp_path: Path) -> None:
    changes, sessions = _cell(tmp_path, "cell")
    with sessions.begin() as session:
        changes.destroy(session, UUIDS[1])
    with pytest.raises(InstanceNotFound), sessions.begin() as session:
        changes.update_many(session, [(UUIDS[0], {"power_state": 4}), (UUIDS[1], {})])
    with pytest.raises(InstanceNotFound), sessions.begin() as session:
        changes.update(session, "no-such-uuid", power_state=4)
    with sessions() as session:
        assert changes.get(session, UUIDS[0]).version == 1


def test_create_many_writes_what_create_does_and_the_same_pushes(tmp_path: Path) -> None:
    """Instances given with only what a caller must give get the model's defaults,
    version 1 and one outbox row per parent, as ORM ``create`` gives them."""
    from cellplane.db.instances import _CREATE_DEFAULTS

    changes, sessions = _cell(tmp_path, "cell")
    given = {
        "name": "vm-9", "project_id": "p", "user_id": "u", "flavor_id": "1",
        "flavor": {"id": "1"}, "image_id": "img", "vm_state": "active", "task_state": None,
        "host": "h", "node": "h", "cell_path": "cell",
    }  # fmt: skip
    new = "00000000-0000-4000-8000-000000000009"
    with sessions.begin() as session:
        [row] = changes.create_many(session, [{"uuid": new, **given}])
    assert row.uuid == new and row.version == 1

    def columns(uuid: str) -> dict[str, Any]:
        with sessions() as session:
            instance = session.scalar(select(Instance).where(Instance.uuid == uuid))
            assert instance is not None
            return {
                a.key: getattr(instance, a.key)
                for a in Instance.__mapper__.column_attrs
                if a.key not in ("id", "uuid", "name", "created_at", "updated_at")
            }

    assert columns(new) == columns(UUIDS[0])  # made by ORM create with the same values
    with sessions() as session:
        pushed = session.scalars(select(OutboxEntry).where(OutboxEntry.instance_uuid == new)).all()
        assert sorted(e.peer for e in pushed) == sorted(PARENTS)
        assert {e.version for e in pushed} == {1}
        created = session.scalar(select(Instance).where(Instance.uuid == new))
        assert created is not None and created.created_at == created.updated_at
    # Every column default the ORM has, apart from the version and timestamps, is here.
    defaults = {
        a.key
        for a in Instance.__mapper__.column_attrs
        if a.columns[0].default is not None and a.key not in ("version", "created_at", "updated_at")
    }
    assert defaults == set(_CREATE_DEFAULTS)
