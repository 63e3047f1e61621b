"""The look-ups a build makes use an index that finds just their rows, on SQLite.

SQLite keeps no statistics, so it picks indexes by rules of thumb: with an index
on ``instances.deleted``, ``uuid IN (a, b, ...) AND NOT deleted`` read every live
instance of the cell instead of probing the uuid index. Here each statement of
the build path's look-ups runs against a migrated file holding a few thousand
instances and addresses, and SQLite's own plan for it must probe, not scan.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db import create_engine, make_session_factory, migrate
from cellplane.db.instances import InstanceChanges, snapshots
from cellplane.network import ipam
from cellplane.network.role import NetworkEndpoint

POOLS = (("private", "10.0.0.0/16"),)
ROWS = 3000


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'cell.db'}"
    migrate.upgrade(url)
    engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def uuids(engine: sa.Engine) -> list[str]:
    """ROWS live instances, each holding an address of POOLS."""
    made = [str(uuidlib.uuid4()) for _ in range(ROWS)]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO instances (uuid, name, project_id, user_id, flavor_id, flavor,"
            " image_id, vm_state, power_state, cell_path, version, metadata, addresses,"
            " created_at, updated_at, deleted) VALUES (?, 'vm', 'p', 'u', 'm1', '{}', 'img',"
            " 'active', 1, 'cell', 3, '{}', '[]', '2026-11-29 00:00:00.000000',"
            " '2026-11-29 00:00:00.000000', 0)",
            [(u,) for u in made],
        )
        conn.exec_driver_sql(
            "INSERT INTO ip_allocations (pool, address, instance_uuid) VALUES ('private', ?, ?)",
            [(f"10.0.{i // 250}.{i % 250 + 2}", u) for i, u in enumerate(made)],
        )
    return made


class Plans:
    """SQLite's plan of every statement run on ``engine`` while recording."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.plans: list[tuple[str, list[str]]] = []
        sa.event.listen(engine, "before_cursor_execute", self._explain)

    def _explain(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if many or not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            return
        rows = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
        self.plans.append((" ".join(statement.split()), [row[-1] for row in rows]))

    def stop(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._explain)

    def touching(self, table: str) -> list[tuple[str, list[str]]]:
        return [(sql, plan) for sql, plan in self.plans if f" {table} " in f" {sql} "]


@pytest.fixture
def plans(engine: sa.Engine) -> Iterator[Plans]:
    recorder = Plans(engine)
    yield recorder
    recorder.stop()


def _probes_by_uuid(plan: list[str]) -> bool:
    return any("instances USING INDEX sqlite_autoindex_instances_1 (uuid=?)" in s for s in plan)


def test_reading_and_updating_a_few_instances_probes_the_uuid_index(
    engine: sa.Engine, uuids: list[str], plans: Plans
) -> None:
    sessions: sessionmaker[Session] = make_session_factory(engine)
    few = uuids[100:107]
    changes = InstanceChanges()
    with sessions() as session:
        assert len(changes.get_many(session, few)) == 7
        assert len(snapshots(session, few)) == 7
    with sessions.begin() as session:
        done = changes.update_many(session, [(u, {"task_state": "spawning"}) for u in few])
        assert [row.version for row in done] == [4] * 7

    reads = plans.touching("instances")
    assert reads, "no statement read instances"
    for sql, plan in reads:
        if sql.startswith("SELECT"):
            assert _probes_by_uuid(plan), f"{plan} for {sql[:120]}"


def test_network_allocation_reads_by_uuid_and_finds_the_newest_address_by_index(
    engine: sa.Engine, uuids: list[str], plans: Plans
) -> None:
    sessions: sessionmaker[Session] = make_session_factory(engine)
    with sessions.begin() as session:
        session.execute(sa.text("DELETE FROM ip_allocations WHERE instance_uuid IN (:a, :b)"),
                        {"a": uuids[5], "b": uuids[6]})  # fmt: skip
    out = NetworkEndpoint(sessions, POOLS).allocate_for_instances(uuids[5:7])
    assert sorted(a["address"] for u in uuids[5:7] for a in out["addresses"][u]) == [
        "10.0.11.252",
        "10.0.11.253",
    ]
    assert out["failed"] == {}

    [(_, live_plan)] = [(s, p) for s, p in plans.touching("instances") if s.startswith("SELECT")]
    assert _probes_by_uuid(live_plan), live_plan
    newest = [
        p for s, p in plans.touching("ip_allocations") if "ORDER BY ip_allocations.id DESC" in s
    ]
    assert newest, "the pool's newest address was not read"
    for plan in newest:
        assert any("ix_ip_allocations_pool_id" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan


def test_the_newest_address_is_found_without_reading_the_pool(
    engine: sa.Engine, uuids: list[str], plans: Plans
) -> None:
    del uuids
    sessions: sessionmaker[Session] = make_session_factory(engine)
    new = str(uuidlib.uuid4())
    with sessions.begin() as session:
        [address] = ipam.allocate(session, POOLS, new)
    assert address["address"] == "10.0.11.252"
    newest = [
        p for s, p in plans.touching("ip_allocations") if "ORDER BY ip_allocations.id DESC" in s
    ]
    assert newest and all(not any("TEMP B-TREE" in step for step in p) for p in newest), newest
