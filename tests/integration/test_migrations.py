"""The alembic migrations build exactly the models' schema, on SQLite and PostgreSQL, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from cellplane.db import migrate
from cellplane.db.engine import create_engine

HEAD = "0003"  # the newest revision


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cell.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_matches_models_and_downgrade_removes_everything(database_url: str) -> None:
    assert migrate.current(database_url) is None

    migrate.upgrade(database_url)
    assert migrate.current(database_url) == HEAD
    assert migrate.check(database_url) == []
    assert {"cells", "instances", "outbox", "link_cursors"} <= _tables(database_url)

    migrate.downgrade(database_url)
    assert migrate.current(database_url) is None
    assert _tables(database_url) <= {"alembic_version"}

    migrate.upgrade(database_url)
    assert migrate.current(database_url) == HEAD
    assert migrate.check(database_url) == []


def test_check_reports_a_model_without_migration(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP INDEX ix_outbox_peer"))
    finally:
        engine.dispose()

    differences = migrate.check(database_url)

    assert [diff[0] for diff in differences] == ["add_index"]


def _upgrade_concurrently(url: str, workers: int = 4) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(migrate.upgrade, url) for _ in range(workers)]:
            future.result()  # the processes of one cell start together: none may fail


def test_concurrent_upgrades_of_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _upgrade_concurrently(url)
    assert migrate.check(url) == []


def test_concurrent_upgrades_on_postgresql_all_succeed(postgres_url: str) -> None:
    _upgrade_concurrently(postgres_url)
    assert migrate.check(postgres_url) == []


def test_a_database_of_the_first_schema_upgrades_with_its_rows(database_url: str) -> None:
    """0001 -> the newest (look-up indexes, pending claims) and back keep what the tables
    hold."""
    migrate.upgrade(database_url, "0001")
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO instances (uuid, name, project_id, user_id, flavor_id, flavor,"
                    " image_id, vm_state, power_state, cell_path, version, metadata, addresses,"
                    " created_at, updated_at, deleted) VALUES ('u1', 'vm', 'p', 'u', '1', '{}',"
                    " 'img', 'active', 1, 'cell', 3, '{}', '[]', :now, :now, false)"
                ),
                {"now": "2026-11-29 00:00:00"},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO ip_allocations (pool, address, instance_uuid)"
                    " VALUES ('private', '10.0.0.2', 'u1')"
                )
            )
        migrate.upgrade(database_url)
        assert migrate.current(database_url) == HEAD
        assert migrate.check(database_url) == []
        migrate.downgrade(database_url, "0001")
        assert migrate.current(database_url) == "0001"
        migrate.upgrade(database_url)
        with engine.connect() as connection:
            held = connection.execute(
                sa.text("SELECT i.version, a.address FROM instances i JOIN ip_allocations a"
                        " ON a.instance_uuid = i.uuid")
            ).all()  # fmt: skip
        assert [tuple(row) for row in held] == [(3, "10.0.0.2")]
    finally:
        engine.dispose()
