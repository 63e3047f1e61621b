"""Behaviours of the cell database that the rest of cellplane relies on, on a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db import (
    Base,
    CreateRequest,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    OutboxEntry,
    create_engine,
    make_session_factory,
    utcnow,
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cell.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: sa.Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def _instance(uuid: str, project_id: str = "p1", idempotency_key: str | None = None) -> Instance:
    return Instance(
        uuid=uuid,
        name=f"vm-{uuid}",
        project_id=project_id,
        user_id="u1",
        flavor_id="m1.small",
        flavor={"vcpus": 1, "memory_mb": 2048, "root_gb": 20},
        image_id="cirros",
        vm_state="building",
        cell_path="root!cell1",
        idempotency_key=idempotency_key,
    )


def test_file_database_runs_in_wal_mode_with_foreign_keys(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_idempotency_key_is_unique_within_a_project(sessions: sessionmaker[Session]) -> None:
    def request(project_id: str, key: str) -> CreateRequest:
        return CreateRequest(project_id=project_id, idempotency_key=key, request_id="r")

    with sessions.begin() as session:
        session.add(request("p1", "k"))
        session.add(request("p2", "k"))  # another project: fine
        session.add(request("p1", "other"))

    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(request("p1", "k"))


def test_deleting_an_action_deletes_its_events(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for request_id in ("r1", "r2"):
            action = InstanceAction(
                request_id=request_id,
                instance_uuid="a",
                action="create",
                project_id="p1",
                user_id="u1",
            )
            action.events = [
                InstanceActionEvent(event="schedule"),
                InstanceActionEvent(event="spawn"),
            ]
            session.add(action)

    with sessions.begin() as session:
        orm_deleted = session.scalars(
            sa.select(InstanceAction).where(InstanceAction.request_id == "r1")
        ).one()
        session.delete(orm_deleted)
        # The database cascades too, for deletes that bypass the ORM.
        session.execute(sa.delete(InstanceAction).where(InstanceAction.request_id == "r2"))

    with sessions() as session:
        assert session.scalars(sa.select(InstanceActionEvent)).all() == []


def test_soft_deleted_instance_is_still_readable(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(_instance("a"))
    with sessions.begin() as session:
        instance = session.scalars(sa.select(Instance).where(Instance.uuid == "a")).one()
        instance.deleted = True
        instance.deleted_at = utcnow()
        instance.vm_state = "deleted"

    with sessions() as session:
        instance = session.scalars(sa.select(Instance).where(Instance.uuid == "a")).one()
        live = session.scalars(sa.select(Instance).where(Instance.deleted.is_(False))).all()

    assert instance.deleted and instance.vm_state == "deleted"
    assert instance.flavor["memory_mb"] == 2048
    assert live == []


def test_timestamps_come_back_utc_aware(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(OutboxEntry(peer="parent", kind="instance", payload=b"\x00\x01"))
    with sessions() as session:
        entry = session.scalars(sa.select(OutboxEntry)).one()

    assert entry.created_at.tzinfo is UTC
    assert entry.payload == b"\x00\x01"
    assert entry.id == 1


def test_timestamps_read_back_as_written_whatever_their_zone(engine: sa.Engine) -> None:
    from datetime import datetime, timedelta, timezone

    written = [
        datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
        datetime(999, 1, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),  # the same text again
    ]
    table = OutboxEntry.__table__
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [{"peer": "p", "kind": "k", "payload": b"", "created_at": at} for at in written],
        )
        # Written by another hand, with an offset in the text.
        conn.exec_driver_sql(
            "INSERT INTO outbox (peer, kind, payload, created_at)"
            " VALUES ('p', 'k', x'', '2026-01-02T03:04:05+01:00')"
        )
    with engine.connect() as conn:
        read = list(conn.scalars(sa.select(table.c.created_at).order_by(table.c.id)))
    assert read[:5] == written
    assert all(at.tzinfo is UTC for at in read)
    assert read[5] == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
