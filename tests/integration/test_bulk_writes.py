"""The driver-level writes of state up (cellplane.db.bulk) store what the ORM would, on
SQLite and on PostgreSQL: JSON text, timestamps, booleans, bytes and NULLs; an UPDATE
by key with an increment and a guard column; more rows than one statement carries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Engine, Table, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cellplane import db
from cellplane.db import bulk
from cellplane.db.instances import InstanceChanges
from cellplane.db.models import Instance, OutboxEntry
from cellplane.errors import Code

INSTANCES = cast(Table, Instance.__table__)
OUTBOX = cast(Table, OutboxEntry.__table__)
WHEN = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@pytest.fixture
def sessions(cell_database_url: str) -> Iterator[sessionmaker[Session]]:
    db.upgrade(cell_database_url)
    engine = db.create_engine(cell_database_url)
    yield db.make_session_factory(engine)
    engine.dispose()


def _instance_row(i: int) -> tuple[Any, ...]:
    return (
        f"00000000-0000-4000-8000-{i:012d}",
        f"vm-{i}",
        "p",
        "u",
        "1",
        '{"id": "1", "vcpus": 2}',
        "img",
        "active",
        None,
        1,
        "leaf",
        7,
        "{}" if i % 2 else '{"k": "v"}',
        False,
        '[{"pool": "private", "address": "10.0.0.1", "version": 4}]',
        WHEN + timedelta(seconds=i),
        WHEN,
    )


INSTANCE_COLUMNS = (
    "uuid", "name", "project_id", "user_id", "flavor_id", "flavor", "image_id", "vm_state",
    "task_state", "power_state", "cell_path", "version", "metadata", "deleted", "addresses",
    "created_at", "updated_at",
)  # fmt: skip


def test_rows_read_back_as_the_orm_writes_them(sessions: sessionmaker[Session]) -> None:
    count = bulk.PG_ROWS + 7  # more than one PostgreSQL statement
    with sessions.begin() as session:
        bulk.insert_many(
            session, INSTANCES, INSTANCE_COLUMNS, [_instance_row(i) for i in range(count)]
        )
        bulk.insert_many(
            session,
            OUTBOX,
            ("peer", "kind", "instance_uuid", "version", "payload", "created_at"),
            [("top", "instance_update", None, None, b"\x00\xffbytes", WHEN)],
        )
    with sessions() as session:
        rows = {r.name: r for r in session.scalars(select(Instance))}
        assert len(rows) == count
        first, second = rows["vm-0"], rows["vm-1"]
        assert first.flavor == {"id": "1", "vcpus": 2}
        assert (first.metadata_, second.metadata_) == ({"k": "v"}, {})
        assert first.addresses == [{"pool": "private", "address": "10.0.0.1", "version": 4}]
        assert (first.task_state, first.deleted, first.version) == (None, False, 7)
        assert first.created_at == WHEN and second.created_at == WHEN + timedelta(seconds=1)
        assert first.updated_at == WHEN and first.updated_at.tzinfo is not None
        outbox = session.scalar(select(OutboxEntry))
        assert outbox is not None
        assert (outbox.payload, outbox.instance_uuid, outbox.created_at) == (
            b"\x00\xffbytes",
            None,
            WHEN,
        )


def test_text_and_bytes_of_every_kind_read_back_as_written(
    sessions: sessionmaker[Session],
) -> None:
    # On PostgreSQL inserts go as COPY text: its escapes (backslash, tab, newline,
    # carriage return) and its NULL marker must come back as the values they stand for.
    awkward = ["a\tb", "line\nnext\r", "back\\slash", "\\N", "\\x00", "é ü 中 🙂", "", "'\";"]
    every_byte = bytes(range(256))
    other_zone = WHEN.astimezone(timezone(timedelta(hours=9, minutes=30)))
    with sessions.begin() as session:
        bulk.insert_many(
            session,
            OUTBOX,
            ("peer", "kind", "instance_uuid", "version", "payload", "created_at"),
            [
                (text, "k", None if i % 2 else text, i, every_byte[i:] + b"\\\t\n", other_zone)
                for i, text in enumerate(awkward)
            ],
        )
    with sessions() as session:
        rows = session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)).all()
    assert [(r.peer, r.instance_uuid, r.version) for r in rows] == [
        (text, None if i % 2 else text, i) for i, text in enumerate(awkward)
    ]
    assert [r.payload for r in rows] == [every_byte[i:] + b"\\\t\n" for i in range(len(awkward))]
    assert {r.created_at for r in rows} == {WHEN}


def test_a_duplicate_key_is_an_integrity_error(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        bulk.insert_many(session, INSTANCES, INSTANCE_COLUMNS, [_instance_row(1)])
    with pytest.raises(IntegrityError), sessions.begin() as session:
        bulk.insert_many(session, INSTANCES, INSTANCE_COLUMNS, [_instance_row(2), _instance_row(1)])
    with sessions() as session:
        assert session.scalars(select(Instance.name)).all() == ["vm-1"]


def test_a_connection_lost_during_an_insert_is_not_used_again(postgres_url: str) -> None:
    db.upgrade(postgres_url)
    engine = db.create_engine(postgres_url)
    try:
        _lose_a_connection_during_a_copy(engine, db.make_session_factory(engine))
    finally:
        engine.dispose()


def _lose_a_connection_during_a_copy(engine: Engine, sessions: sessionmaker[Session]) -> None:
    row = ("top", "k", None, None, b"", WHEN)
    columns = ("peer", "kind", "instance_uuid", "version", "payload", "created_at")
    with pytest.raises(DBAPIError) as lost, sessions.begin() as session:
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        bulk.insert_many(session, OUTBOX, columns, [row])
    # The COPY's own error, not one of a rollback on the dead connection after it.
    assert lost.value.statement is not None and lost.value.statement.startswith("COPY")
    assert lost.value.connection_invalidated
    with sessions.begin() as session:  # a new connection takes over
        bulk.insert_many(session, OUTBOX, columns, [row])
    with sessions() as session:
        assert len(session.scalars(select(OutboxEntry.id)).all()) == 1


def test_an_int_enum_is_written_as_its_number(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        bulk.insert_many(
            session,
            OUTBOX,
            ("peer", "kind", "version", "payload", "created_at"),
            [("top", "k", Code.ABORTED, b"", WHEN)],
        )
    with sessions() as session:
        assert session.scalar(select(OutboxEntry.version)) == int(Code.ABORTED)


def test_update_by_key_with_increment_and_guard(sessions: sessionmaker[Session]) -> None:
    count = bulk.PG_ROWS + 3
    with sessions.begin() as session:
        bulk.insert_many(
            session, INSTANCES, INSTANCE_COLUMNS, [_instance_row(i) for i in range(count)]
        )
    uuids = [_instance_row(i)[0] for i in range(count)]
    later = (WHEN + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5)))
    with sessions.begin() as session:
        session.execute(INSTANCES.update().where(INSTANCES.c.uuid == uuids[1]).values(deleted=True))
        bulk.update_many(
            session,
            INSTANCES,
            ("vm_state", "task_state", "addresses", "updated_at"),
            "uuid",
            [("stopped", None, "[]", later, uuid) for uuid in uuids],
            increment="version",
            unless="deleted",
        )
    with sessions() as session:
        rows = {r.uuid: r for r in session.scalars(select(Instance))}
    changed, guarded = rows[uuids[0]], rows[uuids[1]]
    assert (changed.vm_state, changed.version, changed.addresses) == ("stopped", 8, [])
    assert changed.updated_at == later  # stored as UTC
    assert (guarded.vm_state, guarded.version) == ("active", 7)
    assert sum(r.version == 8 for r in rows.values()) == count - 1


def test_unknown_columns_and_naive_times_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="no column 'nope'"), sessions.begin() as session:
        bulk.insert_many(session, OUTBOX, ("peer", "nope"), [("a", 1)])
    with pytest.raises(ValueError, match="a uuid appears twice"), sessions.begin() as session:
        bulk.update_many(session, INSTANCES, ("name",), "uuid", [("a", "u1"), ("b", "u1")])
    with pytest.raises(ValueError, match="naive"), sessions.begin() as session:
        naive = ("top", "instance_update", None, None, b"", datetime(2026, 1, 1))
        bulk.insert_many(
            session,
            OUTBOX,
            ("peer", "kind", "instance_uuid", "version", "payload", "created_at"),
            [naive],
        )


def test_update_many_of_instances_round_trips(sessions: sessionmaker[Session]) -> None:
    """InstanceChanges.update_many through the bulk UPDATE: JSON attributes, an explicit
    version, and the rows it gives back."""
    changes = InstanceChanges()
    with sessions.begin() as session:
        bulk.insert_many(session, INSTANCES, INSTANCE_COLUMNS, [_instance_row(i) for i in range(3)])
    uuids = [_instance_row(i)[0] for i in range(3)]
    with sessions.begin() as session:
        rows = changes.update_many(
            session,
            [
                (uuids[0], {"metadata_": {"a": "b"}, "power_state": 4}),
                (uuids[1], {"metadata_": {}, "power_state": 1}),
                (uuids[2], {"version": 40}),
            ],
        )
        assert [r.version for r in rows] == [8, 8, 41]
        assert rows[0].metadata_ == '{"a": "b"}'  # JSON as stored text
    with sessions() as session:
        got = {i.uuid: i for i in session.scalars(select(Instance))}
    assert (got[uuids[0]].metadata_, got[uuids[0]].power_state) == ({"a": "b"}, 4)
    assert got[uuids[1]].metadata_ == {}
    assert got[uuids[2]].version == 41
