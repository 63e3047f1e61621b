"""``ComputeManager.build_and_run_instances``: one host's share of a build, in a batch.

The compute and network roles of one cell run on kombu ``memory://`` (a private
exchange) over a SQLite file, as in tests/integration/test_compute_role.py; the
tests call the host's manager directly, so each call returns when the batch is
done and its results can be checked against the database.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane import catalog
from cellplane.amqp import connect
from cellplane.compute import states
from cellplane.compute.manager import ComputeManager
from cellplane.compute.resources import claim, flavor_spec
from cellplane.compute.role import ComputeRole, start_compute_role
from cellplane.config import CellConfig, ComputeConfig, HostConfig, NetworkConfig
from cellplane.db import (
    Base,
    ComputeNode,
    Instance,
    InstanceAction,
    InstanceFault,
    IpAllocation,
    create_engine,
    make_session_factory,
)
from cellplane.db.instances import InstanceChanges, start_action
from cellplane.errors import Code
from cellplane.network import NetworkRole, start_network_role

if TYPE_CHECKING:
    from conftest import PushLog

SMALL = {"vcpus": 1, "memory_mb": 1024, "root_gb": 10, "ephemeral_gb": 0}
CIRROS = catalog.DEFAULT_IMAGES[0][0]
BROKEN = next(uuid for uuid, name, _, _ in catalog.DEFAULT_IMAGES if name == "broken")
POOL_SIZE = 5  # 10.0.0.0/29: .2-.6
BUILD_EVENT = "compute_build_and_run_instance"


@dataclass
class Cell:
    sessions: sessionmaker[Session]
    changes: InstanceChanges
    hosts: list[str]
    compute: ComputeRole
    network: NetworkRole
    pushes: list[tuple[str, str, int]] = field(default_factory=list)

    def manager(self, host: str | None = None) -> ComputeManager:
        return self.compute.managers[host or self.hosts[0]]

    def create(
        self,
        count: int,
        *,
        host: str | None = None,
        image_id: str = CIRROS,
        zone: str | None = None,
    ) -> list[dict[str, str]]:
        """Building instances placed (and claimed) on ``host`` as the build coordinator does;
        the ``builds`` argument for them, each with its own request id."""
        host = host or self.hosts[0]
        builds = []
        with self.sessions.begin() as session:
            for _ in range(count):
                uuid, request_id = str(uuidlib.uuid4()), f"req-{uuidlib.uuid4().hex}"
                instance = self.changes.create(
                    session,
                    Instance(
                        uuid=uuid, name=f"vm-{uuid[:8]}", project_id="p1", user_id="u1",
                        flavor_id="m1.small", flavor=dict(SMALL), image_id=image_id,
                        vm_state=states.BUILDING, task_state=states.SCHEDULING,
                        power_state=states.NOSTATE, host=host, node=host, cell_path="top!c",
                        availability_zone=zone,
                    ),
                )  # fmt: skip
                assert claim(session, host, flavor_spec("m1.small", SMALL))
                start_action(session, instance, "create", request_id)
                builds.append({"instance_uuid": uuid, "request_id": request_id})
        return builds

    def instance(self, uuid: str) -> Instance:
        with self.sessions() as session:
            row = session.scalar(sa.select(Instance).where(Instance.uuid == uuid))
            assert row is not None
            return row

    def events(self, uuid: str) -> list[tuple[str, str, str, str | None, str | None]]:
        """``(action, request_id, event, result, host)`` of every event of ``uuid``."""
        with self.sessions() as session:
            actions = session.scalars(
                sa.select(InstanceAction)
                .where(InstanceAction.instance_uuid == uuid)
                .order_by(InstanceAction.id)
            ).all()
            return [
                (a.action, a.request_id, e.event, e.result, e.host)
                for a in actions
                for e in a.events
            ]

    def finished(self, uuid: str) -> bool:
        with self.sessions() as session:
            action = session.scalars(
                sa.select(InstanceAction).where(InstanceAction.instance_uuid == uuid)
            ).one()
            return action.finish_time is not None

    def faults(self, uuid: str) -> list[InstanceFault]:
        with self.sessions() as session:
            query = sa.select(InstanceFault).where(InstanceFault.instance_uuid == uuid)
            return list(session.scalars(query.order_by(InstanceFault.id)))

    def held(self) -> dict[str, str]:
        with self.sessions() as session:
            rows = session.execute(
                sa.select(IpAllocation.instance_uuid, IpAllocation.address).where(
                    IpAllocation.instance_uuid.is_not(None)
                )
            ).all()
        assert len({u for u, _ in rows}) == len(rows), "an instance holds two addresses"
        return {str(u): str(a) for u, a in rows}

    def running_vms(self, host: str) -> tuple[int, int]:
        with self.sessions() as session:
            node = session.scalars(sa.select(ComputeNode).where(ComputeNode.host == host)).one()
            return node.running_vms, node.memory_mb_used

    def versions_pushed_in_order(self) -> None:
        with self.sessions() as session:
            rows = dict(session.execute(sa.select(Instance.uuid, Instance.version)).all())
        for uuid, version in rows.items():
            assert [v for u, _, v in self.pushes if u == uuid] == list(range(1, version + 1))


@pytest.fixture
def cell(tmp_path: Path, push_log: PushLog) -> Iterator[Cell]:
    suffix = uuidlib.uuid4().hex[:8]
    hosts = [f"h0-{suffix}", f"h1-{suffix}"]
    config = CellConfig(
        name=f"cell-{suffix}",
        database_url=f"sqlite:///{tmp_path / 'cell.db'}",
        roles=("cells", "scheduler", "compute", "network"),
        compute=ComputeConfig(
            hosts=tuple(
                HostConfig(h, vcpus=8, memory_mb=8192, local_gb=100, availability_zone="az-1")
                for h in hosts
            ),
            heartbeat_interval=60.0,
        ),
        network=NetworkConfig(pools=(("net1", "10.0.0.0/29"),)),
    )
    engine = create_engine(config.database_url)
    Base.metadata.create_all(engine)
    sessions = make_session_factory(engine)
    catalog.seed(sessions, images=True)
    changes = InstanceChanges(push_log.record)
    exchange = f"test-{suffix}"
    network = start_network_role(config, sessions, "memory://", exchange=exchange)
    compute = start_compute_role(config, sessions, changes, "memory://", exchange=exchange)
    try:
        yield Cell(sessions, changes, hosts, compute, network, push_log.pushes)
    finally:
        compute.stop()
        network.stop()
        engine.dispose()
        with connect("memory://") as conn:
            for key in ("compute", *[f"compute.{h}" for h in hosts], "network"):
                conn.default_channel.queue_delete(f"{exchange}.{key}")
            conn.default_channel.queue_delete(f"{exchange}.network.{config.name}")


def _by_uuid(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["instance_uuid"]: r for r in results}


def test_several_instances_end_active_with_addresses_and_their_own_events(cell: Cell) -> None:
    host = cell.hosts[0]
    builds = cell.create(4)
    results = cell.manager().build_and_run_instances(builds)
    assert [r["instance_uuid"] for r in results] == [b["instance_uuid"] for b in builds]
    assert all(r["ok"] and r["vm_state"] == states.ACTIVE for r in results), results
    held = cell.held()
    for build in builds:
        uuid = build["instance_uuid"]
        instance = cell.instance(uuid)
        assert (instance.vm_state, instance.task_state) == (states.ACTIVE, None)
        assert instance.power_state == states.RUNNING
        assert instance.host == host and instance.launched_at is not None
        assert [a["address"] for a in instance.addresses] == [held[uuid]]
        assert instance.addresses[0]["pool"] == "net1"
        assert cell.events(uuid) == [("create", build["request_id"], BUILD_EVENT, "Success", host)]
        assert cell.finished(uuid)
        assert cell.faults(uuid) == []
    assert len(set(held.values())) == 4
    assert sorted(cell.compute.drivers[host].list_instances()) == sorted(
        b["instance_uuid"] for b in builds
    )
    assert cell.compute.drivers[cell.hosts[1]].list_instances() == []
    assert cell.running_vms(host) == (4, 4096)
    cell.versions_pushed_in_order()


def test_a_failed_spawn_fails_only_its_instance(cell: Cell) -> None:
    host = cell.hosts[0]
    builds = cell.create(4)
    cell.compute.drivers[host].inject_failure("spawn", 1)  # the next spawn fails, whichever
    results = _by_uuid(cell.manager().build_and_run_instances(builds))
    failed = [u for u, r in results.items() if not r["ok"]]
    assert len(failed) == 1 and len(results) == 4
    [doomed] = failed
    assert results[doomed]["code"] == Code.INTERNAL
    assert "injected failure" in results[doomed]["message"]
    instance = cell.instance(doomed)
    assert (instance.vm_state, instance.host, instance.addresses) == (states.ERROR, None, [])
    [fault] = cell.faults(doomed)
    assert fault.host == host and "injected failure" in fault.message
    request_of = {b["instance_uuid"]: b["request_id"] for b in builds}
    assert cell.events(doomed) == [("create", request_of[doomed], BUILD_EVENT, "Error", host)]
    for uuid in set(request_of) - {doomed}:
        assert cell.instance(uuid).vm_state == states.ACTIVE
        assert cell.events(uuid) == [("create", request_of[uuid], BUILD_EVENT, "Success", host)]
        assert cell.faults(uuid) == []
    held = cell.held()
    assert set(held) == set(request_of) - {doomed}  # the failed one gave its address back
    assert cell.running_vms(host) == (3, 3072)  # and its claim
    assert doomed not in cell.compute.drivers[host].list_instances()
    cell.versions_pushed_in_order()


def test_an_image_that_fails_spawn_leaves_each_instance_in_error_with_a_fault(
    cell: Cell,
) -> None:
    host = cell.hosts[0]
    builds = cell.create(3, image_id=BROKEN)
    # image_properties is not passed: the manager reads the image's own (fail_spawn).
    results = cell.manager().build_and_run_instances(builds)
    assert [r["ok"] for r in results] == [False, False, False]
    for build in builds:
        uuid = build["instance_uuid"]
        assert cell.instance(uuid).vm_state == states.ERROR
        [fault] = cell.faults(uuid)
        assert "fail_spawn" in fault.message and fault.host == host
        assert cell.events(uuid) == [("create", build["request_id"], BUILD_EVENT, "Error", host)]
    assert cell.held() == {}
    assert cell.running_vms(host) == (0, 0)
    assert cell.compute.drivers[host].list_instances() == []


def test_broken_and_good_builds_on_one_host_in_two_batches(cell: Cell) -> None:
    """As the coordinator casts them: one batch per image (its properties passed along)."""
    host = cell.hosts[0]
    good = cell.create(3)
    bad = cell.create(2, image_id=BROKEN)
    manager = cell.manager()
    good_results = manager.build_and_run_instances(good, image_properties={})
    bad_results = manager.build_and_run_instances(bad, image_properties={"fail_spawn": "true"})
    assert [r["ok"] for r in good_results] == [True] * 3
    assert [r["ok"] for r in bad_results] == [False] * 2
    assert {cell.instance(b["instance_uuid"]).vm_state for b in good} == {states.ACTIVE}
    assert {cell.instance(b["instance_uuid"]).vm_state for b in bad} == {states.ERROR}
    assert all(cell.faults(b["instance_uuid"]) for b in bad)
    assert set(cell.held()) == {b["instance_uuid"] for b in good}
    assert cell.running_vms(host) == (3, 3072)


def test_instances_the_pool_has_no_room_for_fail_alone(cell: Cell) -> None:
    host = cell.hosts[0]
    builds = cell.create(POOL_SIZE + 2)
    results = _by_uuid(cell.manager().build_and_run_instances(builds))
    ok = [u for u, r in results.items() if r["ok"]]
    refused = [u for u, r in results.items() if not r["ok"]]
    assert (len(ok), len(refused)) == (POOL_SIZE, 2)
    for uuid in refused:
        assert results[uuid]["code"] == Code.RESOURCE_EXHAUSTED
        [fault] = cell.faults(uuid)
        assert fault.code == Code.RESOURCE_EXHAUSTED
        assert "no free fixed IP address" in fault.message
        assert cell.instance(uuid).vm_state == states.ERROR
    held = cell.held()
    assert set(held) == set(ok) and len(set(held.values())) == POOL_SIZE
    assert cell.running_vms(host) == (POOL_SIZE, POOL_SIZE * 1024)


def test_a_redelivered_batch_changes_nothing(cell: Cell) -> None:
    host = cell.hosts[0]
    builds = cell.create(3)
    manager = cell.manager()
    first = manager.build_and_run_instances(builds)
    versions = {b["instance_uuid"]: cell.instance(b["instance_uuid"]).version for b in builds}
    again = manager.build_and_run_instances(builds)
    assert again == first
    for build in builds:
        uuid = build["instance_uuid"]
        assert cell.instance(uuid).version == versions[uuid]
        assert len(cell.events(uuid)) == 1
    assert len(cell.compute.drivers[host].list_instances()) == 3


def test_unplaced_and_missing_instances_are_built_alone(cell: Cell) -> None:
    host = cell.hosts[0]
    [placed] = cell.create(1)
    [unplaced] = cell.create(1, host=cell.hosts[1])  # claimed elsewhere; moved here alone
    with cell.sessions.begin() as session:
        cell.changes.update(session, unplaced["instance_uuid"], host=None, node=None)
    missing = {"instance_uuid": str(uuidlib.uuid4()), "request_id": "req-missing"}
    results = cell.manager().build_and_run_instances([placed, unplaced, missing])
    assert [r["instance_uuid"] for r in results] == [
        placed["instance_uuid"],
        unplaced["instance_uuid"],
        missing["instance_uuid"],
    ]
    assert [r["ok"] for r in results] == [True, True, False]
    assert results[2]["vm_state"] == "deleted"
    for build in (placed, unplaced):
        instance = cell.instance(build["instance_uuid"])
        assert (instance.vm_state, instance.host) == (states.ACTIVE, host)
        assert cell.events(build["instance_uuid"])[0][1:4] == (
            build["request_id"],
            BUILD_EVENT,
            "Success",
        )


def test_a_batch_build_sets_the_host_zone_as_a_single_build_does(cell: Cell) -> None:
    [alone] = cell.create(1)
    batched = cell.create(2)
    manager = cell.manager()
    manager.build_and_run_instance(alone["instance_uuid"], alone["request_id"], {})
    manager.build_and_run_instances(batched, image_properties={})
    assert cell.instance(alone["instance_uuid"]).availability_zone == "az-1"
    for build in batched:
        assert cell.instance(build["instance_uuid"]).availability_zone == "az-1"


def test_an_instance_deleted_while_its_batch_spawns_is_cleaned_up_and_the_rest_built_once(
    cell: Cell,
) -> None:
    host = cell.hosts[0]
    builds = cell.create(3)
    victim = builds[1]["instance_uuid"]
    driver = cell.compute.drivers[host]
    spawn = driver.spawn
    deleted: list[str] = []

    def spawn_then_delete(uuid: str, *args: Any, **kwargs: Any) -> None:
        spawn(uuid, *args, **kwargs)
        if not deleted:  # the user deletes the victim while the batch spawns
            deleted.append(victim)
            with cell.sessions.begin() as session:
                cell.changes.destroy(session, victim)

    driver.spawn = spawn_then_delete  # type: ignore[method-assign]
    results = _by_uuid(cell.manager().build_and_run_instances(builds))
    assert deleted == [victim]
    assert victim not in driver.list_instances()  # its guest did not outlive it
    assert victim not in cell.held()  # nor its address
    survivors = {b["instance_uuid"] for b in builds} - {victim}
    for uuid in survivors:
        assert results[uuid]["ok"] and cell.instance(uuid).vm_state == states.ACTIVE
    # Each survivor went building -> spawning -> active once: versions 1, 2, 3.
    assert {cell.instance(uuid).version for uuid in survivors} == {3}
    assert not results[victim]["ok"]
