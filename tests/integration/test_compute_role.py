"""The compute and network roles of one cell over real AMQP, on a SQLite file (and PostgreSQL)."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient, connect
from cellplane.compute import states
from cellplane.compute.actions import begin_action
from cellplane.compute.resources import claim, flavor_spec
from cellplane.compute.role import ComputeRole, start_compute_role
from cellplane.config import CellConfig, ComputeConfig, HostConfig, NetworkConfig
from cellplane.db import (
    Base,
    ComputeNode,
    Image,
    Instance,
    InstanceAction,
    InstanceFault,
    IpAllocation,
    Service,
    create_engine,
    make_session_factory,
)
from cellplane.db.instances import InstanceChanges, start_action
from cellplane.errors import Code, InvalidArgument, WrongState
from cellplane.network import NetworkRole, start_network_role

if TYPE_CHECKING:
    from conftest import PushLog

SMALL = {"vcpus": 1, "memory_mb": 1024, "root_gb": 10, "ephemeral_gb": 0}
LARGE = {"flavor_id": "m1.large", "vcpus": 4, "memory_mb": 4096, "root_gb": 40, "ephemeral_gb": 0}
HUGE = {"flavor_id": "m1.huge", "vcpus": 2, "memory_mb": 999_999, "root_gb": 10}
WAIT_SECONDS = 30.0


@dataclass
class Cell:
    sessions: sessionmaker[Session]
    changes: InstanceChanges
    hosts: list[str]
    client: RpcClient
    compute: ComputeRole
    network: NetworkRole
    pushes: list[tuple[str, str, int]] = field(default_factory=list)
    config: CellConfig | None = None
    transport_url: str = ""
    exchange: str = ""

    def restart_compute(self) -> None:
        """Stop the compute role and start it again (its fake guests are gone with it)."""
        assert self.config is not None
        self.compute.stop()
        self.compute = start_compute_role(
            self.config, self.sessions, self.changes, self.transport_url, exchange=self.exchange
        )

    def build(self, host: str, image_properties: dict[str, Any] | None = None) -> str:
        """Create a building instance, claim its host as the scheduler does, cast the build."""
        uuid, request_id = str(uuidlib.uuid4()), f"req-{uuidlib.uuid4().hex}"
        with self.sessions.begin() as session:
            instance = self.changes.create(
                session,
                Instance(
                    uuid=uuid, name=f"vm-{uuid[:8]}", project_id="p1", user_id="u1",
                    flavor_id="m1.small", flavor=dict(SMALL), image_id="cirros",
                    vm_state=states.BUILDING, task_state=states.SCHEDULING, host=host,
                    cell_path="top!cell1",
                ),
            )  # fmt: skip
            assert claim(session, host, flavor_spec("m1.small", SMALL))
            start_action(session, instance, "create", request_id)
        self.client.cast(
            f"compute.{host}", "build_and_run_instance", instance_uuid=uuid,
            request_id=request_id, image_properties=image_properties or {},
        )  # fmt: skip
        return uuid

    def act(self, uuid: str, action: str, **params: Any) -> Instance:
        """Accept ``action`` as the cells role does, cast it, wait until its task is over."""
        request_id = f"req-{uuidlib.uuid4().hex}"
        with self.sessions.begin() as session:
            instance = begin_action(session, self.changes, uuid, action, request_id, params=params)
            # An instance whose build failed has no host: any compute may clean it up.
            host = instance.host or self.hosts[0]
        self.client.cast(
            f"compute.{host}", "run_action", instance_uuid=uuid, action=action,
            request_id=request_id, params=params,
        )  # fmt: skip
        return self.wait(uuid, lambda i: i.task_state is None or i.deleted)

    def wait(self, uuid: str, done: Callable[[Instance], bool]) -> Instance:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with self.sessions() as session:
                instance = session.scalar(sa.select(Instance).where(Instance.uuid == uuid))
            assert instance is not None
            if done(instance):
                return instance
            assert time.monotonic() < deadline, f"{uuid} stuck in {instance.vm_state}"
            time.sleep(0.01)

    def usage(self, host: str) -> tuple[int, int, int, int]:
        with self.sessions() as session:
            node = session.scalars(sa.select(ComputeNode).where(ComputeNode.host == host)).one()
            return node.vcpus_used, node.memory_mb_used, node.local_gb_used, node.running_vms

    def faults(self, uuid: str) -> list[InstanceFault]:
        with self.sessions() as session:
            query = sa.select(InstanceFault).where(InstanceFault.instance_uuid == uuid)
            return list(session.scalars(query.order_by(InstanceFault.id)))

    def held_addresses(self, uuid: str) -> list[str]:
        with self.sessions() as session:
            query = sa.select(IpAllocation.address).where(IpAllocation.instance_uuid == uuid)
            return list(session.scalars(query))

    def check_pushes(self) -> None:
        """Every change was pushed once, in order: versions 1, 2, ... up to the row's."""
        with self.sessions() as session:
            rows = {u: v for u, v in session.execute(sa.select(Instance.uuid, Instance.version))}
        for uuid, version in rows.items():
            assert [v for u, _, v in self.pushes if u == uuid] == list(range(1, version + 1))


def _start_cell(database_url: str, transport_url: str, push_log: PushLog) -> Iterator[Cell]:
    suffix = uuidlib.uuid4().hex[:8]
    hosts = [f"h0-{suffix}", f"h1-{suffix}"]
    config = CellConfig(
        name=f"cell-{suffix}",
        database_url=database_url,
        roles=("cells", "scheduler", "compute", "network"),
        compute=ComputeConfig(
            hosts=tuple(HostConfig(h, vcpus=8, memory_mb=8192, local_gb=100) for h in hosts),
            heartbeat_interval=0.2,
        ),
        network=NetworkConfig(pools=(("net1", "10.0.0.0/29"), ("net2", "10.0.1.0/28"))),
    )
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    sessions = make_session_factory(engine)
    changes = InstanceChanges(push_log.record)
    # A private exchange: other test runs may share the broker (and its `network` queue).
    exchange = f"test-{suffix}"
    network = start_network_role(config, sessions, transport_url, exchange=exchange)
    compute = start_compute_role(config, sessions, changes, transport_url, exchange=exchange)
    client = RpcClient(transport_url, exchange)
    cell = Cell(
        sessions, changes, hosts, client, compute, network, push_log.pushes,
        config, transport_url, exchange,
    )  # fmt: skip
    try:
        yield cell
    finally:
        client.close()
        cell.compute.stop()
        network.stop()
        engine.dispose()
        with connect(transport_url) as conn:
            channel = conn.default_channel
            for key in (
                "compute",
                *[f"compute.{h}" for h in hosts],
                "network",
                f"network.{config.name}",
            ):
                channel.queue_delete(f"{exchange}.{key}")
            if not transport_url.startswith("memory"):
                for name in (exchange, f"{exchange}.compute_fanout", f"{exchange}.network_fanout"):
                    channel.exchange_delete(name)


@pytest.fixture
def cell(transport_url: str, tmp_path: Path, push_log: PushLog) -> Iterator[Cell]:
    yield from _start_cell(f"sqlite:///{tmp_path / 'cell.db'}", transport_url, push_log)


def test_hosts_register_and_builds_become_active_with_an_address(cell: Cell) -> None:
    with cell.sessions() as session:
        nodes = session.scalars(sa.select(ComputeNode).order_by(ComputeNode.host)).all()
        assert [n.host for n in nodes] == cell.hosts
        assert all(n.vcpus == 8 and n.ram_allocation_ratio == 1.5 for n in nodes)
        services = session.scalars(sa.select(Service).where(Service.role == "compute")).all()
        assert sorted(s.host for s in services) == cell.hosts
        assert all(s.report_count >= 1 and s.last_heartbeat for s in services)
    assert cell.usage(cell.hosts[0]) == (0, 0, 0, 0)

    uuids = [cell.build(cell.hosts[0]), cell.build(cell.hosts[1]), cell.build(cell.hosts[0])]
    built = [cell.wait(u, lambda i: i.vm_state != states.BUILDING) for u in uuids]
    for instance, host in zip(built, [cell.hosts[0], cell.hosts[1], cell.hosts[0]], strict=True):
        assert (instance.vm_state, instance.task_state) == (states.ACTIVE, None)
        assert instance.power_state == states.RUNNING
        assert instance.host == host and instance.launched_at is not None
        assert [a["pool"] for a in instance.addresses] == ["net1"]
    assert len({i.addresses[0]["address"] for i in built}) == 3
    assert cell.usage(cell.hosts[0]) == (2, 2048, 20, 2)
    assert sorted(cell.compute.drivers[cell.hosts[0]].list_instances()) == sorted(
        [uuids[0], uuids[2]]
    )
    with cell.sessions() as session:
        action = session.scalars(
            sa.select(InstanceAction).where(InstanceAction.instance_uuid == uuids[1])
        ).one()
        assert [(e.event, e.result) for e in action.events] == [
            ("compute_build_and_run_instance", "Success")
        ]
    cell.check_pushes()


def test_each_action_reaches_its_end_state(cell: Cell) -> None:
    host = cell.hosts[1]
    uuid = cell.build(host)
    cell.wait(uuid, lambda i: i.vm_state == states.ACTIVE)
    address = cell.held_addresses(uuid)
    assert len(address) == 1
    expected = [
        ("reboot", {}, states.ACTIVE, states.RUNNING),
        ("reboot", {"hard": True}, states.ACTIVE, states.RUNNING),
        ("stop", {}, states.STOPPED, states.SHUTDOWN),
        ("start", {}, states.ACTIVE, states.RUNNING),
        ("pause", {}, states.PAUSED, states.POWER_PAUSED),
        ("unpause", {}, states.ACTIVE, states.RUNNING),
        ("suspend", {}, states.SUSPENDED, states.POWER_SUSPENDED),
        ("resume", {}, states.ACTIVE, states.RUNNING),
        ("rebuild", {"image_id": "fedora"}, states.ACTIVE, states.RUNNING),
    ]
    for action, params, vm_state, power_state in expected:
        instance = cell.act(uuid, action, **params)
        assert (action, instance.vm_state, instance.power_state) == (action, vm_state, power_state)
    assert instance.image_id == "fedora"

    with cell.sessions.begin() as session:
        session.add(Image(uuid="snap-1", name="snap", status="queued"))
    instance = cell.act(uuid, "snapshot", image_id="snap-1")
    assert instance.vm_state == states.ACTIVE
    with cell.sessions() as session:
        image = session.scalars(sa.select(Image).where(Image.uuid == "snap-1")).one()
        assert image.status == "active" and image.size_bytes > 0
        events = session.scalars(
            sa.select(InstanceAction).where(InstanceAction.instance_uuid == uuid)
        ).all()
        assert all(a.finish_time is not None for a in events)
        assert len(events) == 1 + len(expected) + 1

    instance = cell.act(uuid, "delete")
    assert instance.deleted and instance.vm_state == states.DELETED
    assert cell.held_addresses(uuid) == []
    assert cell.usage(host) == (0, 0, 0, 0)
    assert cell.compute.drivers[host].list_instances() == []
    assert cell.faults(uuid) == []
    assert cell.pushes[-1] == (uuid, "destroy", instance.version)
    cell.check_pushes()


def test_resize_confirm_revert_and_a_resize_that_does_not_fit(cell: Cell) -> None:
    host = cell.hosts[0]
    uuid = cell.build(host)
    cell.wait(uuid, lambda i: i.vm_state == states.ACTIVE)

    instance = cell.act(uuid, "resize", flavor=LARGE)
    assert (instance.vm_state, instance.flavor_id, instance.flavor["vcpus"]) == (
        states.RESIZED,
        "m1.large",
        4,
    )
    assert cell.usage(host) == (5, 5120, 50, 1)  # both sizes are held until confirmed
    instance = cell.act(uuid, "confirm_resize")
    assert (instance.vm_state, instance.flavor_id, "old" in instance.flavor) == (
        states.ACTIVE,
        "m1.large",
        False,
    )
    assert cell.usage(host) == (4, 4096, 40, 1)

    cell.act(uuid, "stop")
    instance = cell.act(uuid, "resize", flavor={**SMALL, "flavor_id": "m1.small"})
    assert (instance.vm_state, instance.power_state) == (states.RESIZED, states.SHUTDOWN)
    instance = cell.act(uuid, "revert_resize")
    assert (instance.vm_state, instance.flavor_id, instance.flavor) == (
        states.STOPPED,
        "m1.large",
        LARGE,
    )
    assert cell.usage(host) == (4, 4096, 40, 1)
    cell.act(uuid, "start")

    instance = cell.act(uuid, "resize", flavor=HUGE)
    assert (instance.vm_state, instance.flavor_id) == (states.ACTIVE, "m1.large")
    [fault] = cell.faults(uuid)
    assert fault.code == Code.RESOURCE_EXHAUSTED and "does not fit" in fault.message
    assert cell.usage(host) == (4, 4096, 40, 1)

    cell.act(uuid, "delete")
    assert cell.usage(host) == (0, 0, 0, 0)
    cell.check_pushes()


def test_a_wrong_state_action_is_refused_naming_the_state(cell: Cell) -> None:
    uuid = cell.build(cell.hosts[0])
    before = cell.wait(uuid, lambda i: i.vm_state == states.ACTIVE)
    for action in ("unpause", "confirm_resize", "start"):
        with pytest.raises(WrongState, match="while it is active"), cell.sessions.begin() as s:
            begin_action(s, cell.changes, uuid, action, "req-x")
    with pytest.raises(WrongState, match="while it is active"):
        cell.client.call(
            f"compute.{cell.hosts[0]}", "run_action", timeout=WAIT_SECONDS,
            instance_uuid=uuid, action="resume", request_id="req-y",
        )  # fmt: skip
    with pytest.raises(InvalidArgument, match="flavor"), cell.sessions.begin() as s:
        begin_action(s, cell.changes, uuid, "resize", "req-z", params={"flavor": {"vcpus": -1}})
    after = cell.wait(uuid, lambda i: True)
    assert (after.version, after.task_state, after.vm_state) == (before.version, None, "active")

    # Accepted without its params (as a caller that does not pass them may): refused on the host.
    with cell.sessions.begin() as s:
        begin_action(s, cell.changes, uuid, "resize", "req-w")
    reply = cell.client.call(
        f"compute.{cell.hosts[0]}", "run_action", timeout=WAIT_SECONDS,
        instance_uuid=uuid, action="resize", request_id="req-w", params={},
    )  # fmt: skip
    assert (reply["ok"], reply["vm_state"], reply["code"]) == (False, "active", 3)
    after = cell.wait(uuid, lambda i: True)
    assert (after.vm_state, after.task_state) == (states.ACTIVE, None)
    assert [f.code for f in cell.faults(uuid)] == [Code.INVALID_ARGUMENT]


def test_failures_leave_faults_and_release_what_was_taken(cell: Cell) -> None:
    host = cell.hosts[0]
    doomed = cell.build(host, image_properties={"fail_spawn": "true"})
    failed = cell.wait(doomed, lambda i: i.vm_state != states.BUILDING)
    assert (failed.vm_state, failed.task_state, failed.host) == (states.ERROR, None, None)
    [fault] = cell.faults(doomed)
    assert "fail_spawn" in fault.message and fault.host == host
    assert cell.held_addresses(doomed) == []
    assert cell.usage(host) == (0, 0, 0, 0)

    uuid = cell.build(host)
    cell.wait(uuid, lambda i: i.vm_state == states.ACTIVE)
    cell.compute.drivers[host].inject_failure("reboot")
    instance = cell.act(uuid, "reboot")  # a failed reboot goes back to where it was
    assert (instance.vm_state, instance.task_state) == (states.ACTIVE, None)
    assert [f.message for f in cell.faults(uuid)] == [f"reboot of {uuid} failed (injected failure)"]
    cell.compute.drivers[host].inject_failure("rebuild")
    instance = cell.act(uuid, "rebuild", image_id="fedora")
    assert (instance.vm_state, instance.image_id) == (states.ERROR, "cirros")
    assert len(cell.faults(uuid)) == 2

    cell.act(doomed, "delete")  # its claim went with the failed build: nothing to give back
    cell.act(uuid, "delete")
    assert cell.usage(host) == (0, 0, 0, 0)
    cell.check_pushes()


def test_build_and_delete_on_postgresql(postgres_url: str, push_log: PushLog) -> None:
    for cell in _start_cell(postgres_url, "memory://", push_log):
        host = cell.hosts[1]
        uuid = cell.build(host)
        instance = cell.wait(uuid, lambda i: i.vm_state != states.BUILDING)
        assert (instance.vm_state, len(instance.addresses)) == (states.ACTIVE, 1)
        assert cell.usage(host) == (1, 1024, 10, 1)
        instance = cell.act(uuid, "delete")
        assert instance.deleted and cell.held_addresses(uuid) == []
        assert cell.usage(host) == (0, 0, 0, 0)
        cell.check_pushes()


def test_a_restarted_compute_role_takes_back_its_guests(cell: Cell) -> None:
    """Guests outlive the compute service; on memory:// (whose messages died with it)
    work under way is carried on, or ended with a fault when it cannot be."""
    host = cell.hosts[0]
    resized, stopped, snapshotting, rebuilding, migrating = (cell.build(host) for _ in range(5))
    for uuid in (resized, stopped, snapshotting, rebuilding, migrating):
        cell.wait(uuid, lambda i: i.vm_state == states.ACTIVE)
    cell.act(resized, "resize", flavor=LARGE)
    cell.act(stopped, "stop")
    with cell.sessions.begin() as session:  # accepted, never cast: as if cut off by a crash
        begin_action(session, cell.changes, snapshotting, "snapshot", "req-snap")
        begin_action(session, cell.changes, rebuilding, "rebuild", "req-rebuild")
        resize = {"flavor": LARGE}
        begin_action(session, cell.changes, migrating, "resize", "req-resize", params=resize)
        cell.changes.update(session, migrating, task_state=states.RESIZE_MIGRATING)
    usage = cell.usage(host)

    cell.restart_compute()

    # The guest of the resize came back with both sizes: confirming drops the old one.
    instance = cell.act(resized, "confirm_resize")
    assert (instance.vm_state, instance.flavor_id) == (states.ACTIVE, "m1.large")
    assert cell.usage(host) == (usage[0] - 1, usage[1] - 1024, usage[2] - 10, usage[3])
    # The stopped guest starts: its power state came back too.
    assert cell.act(stopped, "start").power_state == states.RUNNING
    assert not cell.faults(resized) and not cell.faults(stopped)
    if cell.transport_url.startswith("memory"):
        # What they were given is gone: each ends with a fault, as Nova ends them.
        snap = cell.wait(snapshotting, lambda i: i.task_state is None)
        assert (snap.vm_state, snap.power_state) == (states.ACTIVE, states.RUNNING)
        for uuid in (rebuilding, migrating):
            assert cell.wait(uuid, lambda i: i.task_state is None).vm_state == states.ERROR
        for uuid, task in (
            (snapshotting, "image_snapshot"),
            (rebuilding, "rebuilding"),
            (migrating, "resize_migrating"),
        ):
            [fault] = cell.faults(uuid)
            assert fault.code == Code.ABORTED, fault.message
            assert fault.message.startswith(f"{task} was interrupted"), fault.message
    cell.check_pushes()
