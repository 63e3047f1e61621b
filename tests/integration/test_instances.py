"""Instances end to end through the demo tree, on the embedded defaults.

One process, one SQLite file per cell in tmp_path, kombu ``memory://``, real
gRPC links on loopback port 0, and a client talking to the API cell through
the generated ComputeService stubs::

        api
       /   \\
  eu-west   us-east        (kvm hosts)
     |
  eu-west-a                (xen hosts)

Every test runs its own tree in ``asyncio.run``; waits poll with a bound and
end as soon as what they wait for has happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select, update

from cellplane.config import CellConfig
from cellplane.db.models import (
    ComputeNode,
    Instance,
    InstanceChange,
    InstanceFault,
    IpAllocation,
    PendingClaim,
    Service,
)
from cellplane.demo import demo_configs, with_parent
from cellplane.errors import Timeout, Unavailable
from cellplane.federation import envelopes
from cellplane.federation.channel import LinkState, Relation
from cellplane.service import Cell
from cellplane.v1 import compute_pb2, compute_pb2_grpc, link_pb2, types_pb2

CIRROS = "5f6a1c0e-0000-4000-8000-000000000001"  # hypervisor_type=kvm
UBUNTU = "5f6a1c0e-0000-4000-8000-000000000002"
XEN = "5f6a1c0e-0000-4000-8000-000000000003"  # hypervisor_type=xen: only eu-west-a
ADMIN = (("authorization", "Bearer admin-token"),)
DEMO = (("authorization", "Bearer demo-token"),)
WAIT = 20.0  # upper bound for anything we wait for
RPC_DEADLINE = 10.0  # a hanging call fails the test instead of the whole run

VM = types_pb2.VmState
POWER = types_pb2.PowerState
NO_TASK = types_pb2.TASK_STATE_UNSPECIFIED

Tweak = Callable[[CellConfig], CellConfig]


class Tree:
    """The demo tree of one test, with a ComputeService client on the API cell."""

    def __init__(self, tmp: Path, tweak: Tweak | None = None) -> None:
        self.tmp = tmp
        self.tweak = tweak
        self.cells: dict[str, Cell] = {}
        self.configs: dict[str, CellConfig] = {}
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        demos = demo_configs(
            self.tmp, "127.0.0.1:0", report_interval=0.3, spawn_latency=0.0, action_latency=0.0
        )
        for demo in demos:
            config = demo.config
            if demo.parent is not None:
                config = with_parent(demo, self.cells[demo.parent].address)
            if self.tweak is not None:
                config = self.tweak(config)
            cell = Cell(config)
            await cell.start()
            self.cells[demo.name] = cell
            self.configs[demo.name] = config
        await eventually(self._ready, "links up and the API cell knowing its children's capacity")
        self.channel = grpc.aio.insecure_channel(self.api.address)
        self.stub = compute_pb2_grpc.ComputeServiceStub(self.channel)

    def _ready(self) -> bool:
        if not all(
            ch.state is LinkState.UP for cell in self.cells.values() for ch in cell.neighbours.all()
        ):
            return False
        # The API cell's view of each child covers the child's whole subtree.
        for child in ("eu-west", "us-east"):
            report = self.api.state.children.get(child)
            if report is None or report.capacity.ram_total_mb != self.subtree_ram(child):
                return False
        return True

    def subtree_ram(self, name: str) -> int:
        """RAM of every host at and below ``name``, overcommit included."""
        config = self.configs[name]
        total = sum(
            int(h.memory_mb * config.compute.ram_allocation_ratio) for h in config.compute.hosts
        )
        for child in config.children:
            total += self.subtree_ram(child.name)
        return total

    @property
    def api(self) -> Cell:
        return self.cells["api"]

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close(grace=None)
        for cell in reversed(list(self.cells.values())):
            await cell.stop(grace=0.2)

    # --- client helpers ----------------------------------------------------------------

    async def create(
        self,
        name: str,
        image: str = CIRROS,
        flavor: str = "1",
        metadata: Iterable[tuple[str, str]] = ADMIN,
        **fields: Any,
    ) -> compute_pb2.CreateInstancesResponse:
        request = compute_pb2.CreateInstancesRequest(
            name=name, flavor_id=flavor, image_id=image, **fields
        )
        return await self.stub.CreateInstances(
            request, metadata=tuple(metadata), timeout=RPC_DEADLINE
        )

    async def get(self, uuid: str, metadata: Iterable[tuple[str, str]] = ADMIN) -> Any:
        response = await self.stub.GetInstance(
            compute_pb2.GetInstanceRequest(uuid=uuid), metadata=tuple(metadata), timeout=5
        )
        return response.instance

    async def settled(
        self, uuid: str, vm_state: int, power_state: int | None = None
    ) -> types_pb2.Instance:
        """Poll the API view until ``uuid`` is in ``vm_state`` with no task running."""
        last: list[types_pb2.Instance] = []

        async def check() -> bool:
            instance = await self.get(uuid)
            last[:] = [instance]
            return (
                instance.vm_state == vm_state
                and instance.task_state == NO_TASK
                and (power_state is None or instance.power_state == power_state)
            )

        await eventually_async(
            check,
            lambda: f"{uuid} reaching {VM.Name(vm_state)} with no task; last seen: {last}",
        )
        return last[0]

    async def deleted(self, uuid: str) -> types_pb2.Instance:
        """Poll the API view until ``uuid`` is deleted."""
        last: list[types_pb2.Instance] = []

        async def check() -> bool:
            last[:] = [await self.get(uuid)]
            return last[0].deleted and last[0].vm_state == VM.VM_STATE_DELETED

        await eventually_async(check, lambda: f"{uuid} deleted at the top; last seen: {last}")
        return last[0]

    async def list_all(self, metadata: Iterable[tuple[str, str]] = ADMIN, **fields: Any) -> Any:
        return await self.stub.ListInstances(
            compute_pb2.ListInstancesRequest(**fields), metadata=tuple(metadata), timeout=5
        )


def run(tmp: Path, scenario: Callable[[Tree], Awaitable[None]], tweak: Tweak | None = None) -> None:
    """Run ``scenario`` against a fresh demo tree, then stop every cell."""

    async def main() -> None:
        tree = Tree(tmp, tweak)
        try:
            await tree.start()
            await asyncio.wait_for(scenario(tree), 90)
        finally:
            await tree.stop()

    asyncio.run(main())


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def eventually_async(
    check: Callable[[], Awaitable[bool]], what: Callable[[], str], timeout: float = WAIT
) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what()}")
        await asyncio.sleep(0.03)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with (fails the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def cell_rows(cell: Cell, model: Any, *where: Any) -> list[Any]:
    with cell.sessions() as session:
        return list(session.scalars(select(model).where(*where)))


def count_instances(cell: Cell, *where: Any) -> int:
    with cell.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(Instance.deleted.is_(False), *where)
            )
            or 0
        )


def link_down(cell: Cell, child: str) -> bool:
    channel = cell.neighbours.get(child, Relation.CHILD)
    assert channel is not None, f"{cell.name} has no child {child}"
    return channel.state is not LinkState.UP


COMPUTE_CELLS = ("eu-west", "eu-west-a", "us-east")


# --- 1. the whole life of one instance ------------------------------------------------------


def test_lifecycle_of_an_instance_in_the_deepest_cell(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        stub = tree.stub
        created = await tree.create("life", image=XEN, flavor="1")
        (first,) = created.instances
        uuid = first.uuid
        instance = await tree.settled(uuid, VM.VM_STATE_ACTIVE, POWER.POWER_STATE_RUNNING)
        assert instance.cell_path == "api!eu-west!eu-west-a"
        assert instance.host.startswith("eu-west-a-host")
        assert instance.addresses and instance.addresses[0].address.startswith("10.11.")
        assert instance.flavor.id == "1"
        version = instance.version

        async def step(
            call: Awaitable[Any], vm_state: int, power: int | None = None
        ) -> types_pb2.Instance:
            nonlocal version
            response = await call
            assert response.request_id
            after = await tree.settled(uuid, vm_state, power)
            assert after.version > version, f"version did not grow past {version}: {after}"
            version = after.version
            return after

        md = {"metadata": ADMIN, "timeout": RPC_DEADLINE}
        ok = VM.VM_STATE_ACTIVE
        running = POWER.POWER_STATE_RUNNING
        await step(stub.RebootInstance(compute_pb2.RebootInstanceRequest(uuid=uuid), **md), ok)
        await step(
            stub.RebootInstance(compute_pb2.RebootInstanceRequest(uuid=uuid, hard=True), **md),
            ok,
            running,
        )
        await step(
            stub.StopInstance(compute_pb2.StopInstanceRequest(uuid=uuid), **md),
            VM.VM_STATE_STOPPED,
            POWER.POWER_STATE_SHUTDOWN,
        )
        await step(
            stub.StartInstance(compute_pb2.StartInstanceRequest(uuid=uuid), **md), ok, running
        )
        await step(
            stub.PauseInstance(compute_pb2.PauseInstanceRequest(uuid=uuid), **md),
            VM.VM_STATE_PAUSED,
            POWER.POWER_STATE_PAUSED,
        )
        await step(
            stub.UnpauseInstance(compute_pb2.UnpauseInstanceRequest(uuid=uuid), **md), ok, running
        )
        await step(
            stub.SuspendInstance(compute_pb2.SuspendInstanceRequest(uuid=uuid), **md),
            VM.VM_STATE_SUSPENDED,
            POWER.POWER_STATE_SUSPENDED,
        )
        await step(
            stub.ResumeInstance(compute_pb2.ResumeInstanceRequest(uuid=uuid), **md), ok, running
        )
        resized = await step(
            stub.ResizeInstance(compute_pb2.ResizeInstanceRequest(uuid=uuid, flavor_id="2"), **md),
            VM.VM_STATE_RESIZED,
        )
        assert resized.flavor.id == "2"
        confirmed = await step(
            stub.ConfirmResize(compute_pb2.ConfirmResizeRequest(uuid=uuid), **md), ok, running
        )
        assert confirmed.flavor.id == "2" and confirmed.flavor.memory_mb == 2048
        await step(
            stub.ResizeInstance(compute_pb2.ResizeInstanceRequest(uuid=uuid, flavor_id="3"), **md),
            VM.VM_STATE_RESIZED,
        )
        reverted = await step(
            stub.RevertResize(compute_pb2.RevertResizeRequest(uuid=uuid), **md), ok, running
        )
        assert reverted.flavor.id == "2" and reverted.flavor.memory_mb == 2048
        rebuilt = await step(
            stub.RebuildInstance(
                compute_pb2.RebuildInstanceRequest(uuid=uuid, image_id=UBUNTU), **md
            ),
            ok,
            running,
        )
        assert rebuilt.image_id == UBUNTU
        snap = await stub.SnapshotInstance(
            compute_pb2.SnapshotInstanceRequest(uuid=uuid, image_name="life-snap"), **md
        )
        assert snap.image.name == "life-snap" and snap.image.id
        after = await tree.settled(uuid, ok, running)
        assert after.version > version
        version = after.version

        async def image_active() -> bool:
            images = await stub.ListImages(compute_pb2.ListImagesRequest(), **md)
            found = [i for i in images.images if i.id == snap.image.id]
            return bool(found) and found[0].status == "active" and found[0].size_bytes > 0

        await eventually_async(image_active, lambda: "the snapshot image becoming active")

        actions = await stub.ListInstanceActions(
            compute_pb2.ListInstanceActionsRequest(uuid=uuid), **md
        )
        names = [a.action for a in actions.actions]
        assert names == [
            "create",
            "reboot",
            "reboot",
            "stop",
            "start",
            "pause",
            "unpause",
            "suspend",
            "resume",
            "resize",
            "confirm_resize",
            "resize",
            "revert_resize",
            "rebuild",
            "snapshot",
        ]
        assert len({a.request_id for a in actions.actions}) == len(names)

        # Delete: gone at the top, and the owning cell gave back its IP and its claim.
        owner = tree.cells["eu-west-a"]
        assert cell_rows(owner, IpAllocation, IpAllocation.instance_uuid == uuid)
        deleted = await stub.DeleteInstance(compute_pb2.DeleteInstanceRequest(uuid=uuid), **md)
        assert deleted.request_id

        await tree.deleted(uuid)
        final = await tree.get(uuid)
        assert final.version > version
        assert final.power_state == POWER.POWER_STATE_UNSPECIFIED  # no state: nothing runs
        assert not cell_rows(owner, IpAllocation, IpAllocation.instance_uuid == uuid)
        for node in cell_rows(owner, ComputeNode):
            assert (node.vcpus_used, node.memory_mb_used, node.local_gb_used) == (0, 0, 0), node
            assert node.running_vms == 0
        listed = await tree.list_all()
        assert uuid not in [i.uuid for i in listed.instances]
        actions = await stub.ListInstanceActions(
            compute_pb2.ListInstanceActionsRequest(uuid=uuid), **md
        )
        assert actions.actions[-1].action == "delete"
        # Every action of the instance's life finished at the top, the delete included.
        assert all(a.HasField("finish_time") for a in actions.actions), actions

    run(tmp_path, scenario)


# --- 2. wrong state -------------------------------------------------------------------------


def test_an_action_in_the_wrong_state_names_the_current_state(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        (created,) = (await tree.create("busy")).instances
        instance = await tree.settled(created.uuid, VM.VM_STATE_ACTIVE)
        md = {"metadata": ADMIN, "timeout": RPC_DEADLINE}
        calls = [
            tree.stub.StartInstance(compute_pb2.StartInstanceRequest(uuid=created.uuid), **md),
            tree.stub.UnpauseInstance(compute_pb2.UnpauseInstanceRequest(uuid=created.uuid), **md),
            tree.stub.ResumeInstance(compute_pb2.ResumeInstanceRequest(uuid=created.uuid), **md),
            tree.stub.ConfirmResize(compute_pb2.ConfirmResizeRequest(uuid=created.uuid), **md),
        ]
        for call in calls:
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "active" in (error.details() or ""), error.details()
        after = await tree.get(created.uuid)
        assert after.version == instance.version
        assert after.vm_state == VM.VM_STATE_ACTIVE and after.task_state == NO_TASK

    run(tmp_path, scenario)


# --- 3. an unreachable owning cell ----------------------------------------------------------


def test_an_action_on_an_unreachable_cell_is_unavailable(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        (created,) = (await tree.create("far", image=XEN)).instances
        await tree.settled(created.uuid, VM.VM_STATE_ACTIVE)
        request = compute_pb2.StopInstanceRequest(uuid=created.uuid)

        # The owning cell is down; its parent still answers for it.
        await tree.cells["eu-west-a"].stop(grace=0.2)
        await eventually(
            lambda: link_down(tree.cells["eu-west"], "eu-west-a"), "eu-west seeing eu-west-a go"
        )
        error = await rpc_error(tree.stub.StopInstance(request, metadata=ADMIN, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error

        # eu-west's next report tells the API cell, two levels up: a listing shows the
        # cell unreachable and the instance's copy stale, and the API cell refuses the
        # action itself.
        def reported_unreachable() -> bool:
            report = tree.api.state.children.get("eu-west")
            return report is not None and "eu-west-a" in report.unreachable

        await eventually(reported_unreachable, "eu-west reporting eu-west-a unreachable")
        cells = {c.cell_path: c for c in (await tree.list_all()).cells}
        assert cells["api!eu-west!eu-west-a"].reachable is False, cells
        assert cells["api!eu-west"].reachable is True, cells
        assert (await tree.get(created.uuid)).stale
        error = await rpc_error(tree.stub.StopInstance(request, metadata=ADMIN, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "api!eu-west!eu-west-a" in (error.details() or ""), error

        # Back again: reachable, and the copy current.
        restarted = Cell(tree.configs["eu-west-a"])
        await restarted.start()
        tree.cells["eu-west-a"] = restarted
        await eventually(lambda: not reported_unreachable(), "eu-west reporting eu-west-a back")
        cells = {c.cell_path: c for c in (await tree.list_all()).cells}
        assert cells["api!eu-west!eu-west-a"].reachable is True, cells
        assert not (await tree.get(created.uuid)).stale

        # The whole branch is down: the API cell knows without asking.
        await tree.cells["eu-west"].stop(grace=0.2)
        error = await rpc_error(tree.stub.StopInstance(request, metadata=ADMIN, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert (await tree.get(created.uuid)).vm_state == VM.VM_STATE_ACTIVE

    run(tmp_path, scenario)


# --- 4. idempotency -------------------------------------------------------------------------


def test_creates_with_one_idempotency_key_make_the_instances_once(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        first = await tree.create("twin", count=2, idempotency_key="key-1")
        again = await tree.create("twin", count=2, idempotency_key="key-1")
        uuids = [i.uuid for i in first.instances]
        assert len(set(uuids)) == 2
        assert [i.uuid for i in again.instances] == uuids

        racing = await asyncio.gather(
            *[tree.create("race", count=2, idempotency_key="key-2") for _ in range(5)]
        )
        raced = {tuple(i.uuid for i in r.instances) for r in racing}
        assert len(raced) == 1, raced
        (race_uuids,) = raced
        assert len(set(race_uuids)) == 2

        everything = [*uuids, *race_uuids]
        for uuid in everything:
            await tree.settled(uuid, VM.VM_STATE_ACTIVE)
        listed = await tree.list_all()
        assert sorted(i.uuid for i in listed.instances) == sorted(everything)
        assert sum(count_instances(tree.cells[c]) for c in COMPUTE_CELLS) == 4
        # A key is per project: the same key in another project is another request.
        other = await tree.create("twin", count=2, idempotency_key="key-1", metadata=DEMO)
        assert not {i.uuid for i in other.instances} & set(everything)

    run(tmp_path, scenario)


# --- 5. concurrent builds never over-commit --------------------------------------------------


def tiny_hosts(config: CellConfig) -> CellConfig:
    """Each host fits exactly one m1.small (2048 MB; 3072 MB with the 1.5 RAM ratio)."""
    hosts = tuple(dataclasses.replace(h, memory_mb=2048) for h in config.compute.hosts)
    return dataclasses.replace(config, compute=dataclasses.replace(config.compute, hosts=hosts))


def test_concurrent_builds_never_over_commit(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        # cirros needs kvm: 3 hosts in eu-west and 3 in us-east, one m1.small each.
        capacity = 6
        responses = await asyncio.gather(
            *[tree.create(f"crowd-{i}", image=CIRROS, flavor="2") for i in range(20)]
        )
        uuids = [r.instances[0].uuid for r in responses]
        final: dict[str, types_pb2.Instance] = {}

        async def all_settled() -> bool:
            for uuid in uuids:
                if uuid in final:
                    continue
                instance = await tree.get(uuid)
                if instance.task_state == NO_TASK and instance.vm_state in (
                    VM.VM_STATE_ACTIVE,
                    VM.VM_STATE_ERROR,
                ):
                    final[uuid] = instance
            return len(final) == len(uuids)

        await eventually_async(all_settled, lambda: f"only {len(final)} of 20 settled")
        active = [i for i in final.values() if i.vm_state == VM.VM_STATE_ACTIVE]
        errors = [i for i in final.values() if i.vm_state == VM.VM_STATE_ERROR]
        assert 1 <= len(active) <= capacity, [i.host for i in active]
        assert len(active) + len(errors) == 20
        assert len({i.host for i in active}) == len(active)  # one per host
        for instance in errors:
            assert "no valid host" in instance.fault.message.lower(), instance.fault
        for name in COMPUTE_CELLS:
            for node in cell_rows(tree.cells[name], ComputeNode):
                assert node.memory_mb_used <= node.memory_mb * node.ram_allocation_ratio, node
        used = sum(
            node.running_vms
            for name in COMPUTE_CELLS
            for node in cell_rows(tree.cells[name], ComputeNode)
        )
        assert used == len(active)

    run(tmp_path, scenario, tiny_hosts)


# --- 6. pushes: duplicates and reordering -------------------------------------------------


def pushed(uuid: str, version: int, cell_path: str = "us-east") -> types_pb2.Instance:
    return types_pb2.Instance(
        uuid=uuid,
        name=f"v{version}",
        project_id="demo",
        user_id="demo-member",
        flavor=types_pb2.Flavor(id="1", name="m1.tiny", vcpus=1, memory_mb=512, root_gb=1),
        image_id=CIRROS,
        vm_state=VM.VM_STATE_ACTIVE if version % 2 else VM.VM_STATE_STOPPED,
        power_state=POWER.POWER_STATE_RUNNING,
        version=version,
        cell_path=cell_path,
        host=f"us-east-host{version}",
    )


def test_duplicate_and_out_of_order_pushes_leave_the_newest(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        api = tree.api

        # Straight into the receiver, as the link's cursor transaction would.
        direct = str(uuidlib.uuid4())
        for version in (3, 1, 3, 2):
            with api.sessions.begin() as session:
                api.pushes.apply_update(session, pushed(direct, version))
        (row,) = cell_rows(api, Instance, Instance.uuid == direct)
        assert (row.version, row.name, row.host) == (3, "v3", "us-east-host3")
        assert row.cell_path == "api!us-east"

        # Through the real link from us-east: newest first, then older ones, a duplicate.
        linked, barrier = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        child = tree.cells["us-east"]
        for version in (7, 5, 7, 2, 6):
            child.router.send(
                "us-east!api",
                envelopes.UP,
                instance_update=link_pb2.InstanceUpdate(instance=pushed(linked, version)),
            )
        child.router.send(
            "us-east!api",
            envelopes.UP,
            instance_update=link_pb2.InstanceUpdate(instance=pushed(barrier, 1)),
        )
        # The link delivers in order: once the barrier is there, so is everything before it.
        await eventually(
            lambda: bool(cell_rows(api, Instance, Instance.uuid == barrier)), "the barrier push"
        )
        (row,) = cell_rows(api, Instance, Instance.uuid == linked)
        assert (row.version, row.name, row.host) == (7, "v7", "us-east-host7")
        seen = await tree.get(linked)
        assert seen.version == 7 and seen.cell_path == "api!us-east"

    run(tmp_path, scenario)


# --- 7. scheduler retries -------------------------------------------------------------------


def disable_hosts(cell: Cell) -> None:
    """Hosts refuse builds while the cell's capacity report still looks good."""
    with cell.sessions.begin() as session:
        session.execute(update(Service).values(disabled=True))


def enable_hosts(cell: Cell) -> None:
    with cell.sessions.begin() as session:
        session.execute(update(Service).values(disabled=False))


def test_a_build_is_rescheduled_and_fails_after_bounded_attempts(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        api = tree.api
        tried: list[str] = []
        build_below = api.builds._build_below

        async def recording(req: Any, child: str, my_path: str, deadline: float) -> Any:
            tried.append(child)
            return await build_below(req, child, my_path, deadline)

        api.builds._build_below = recording  # type: ignore[method-assign]

        # eu-west (with eu-west-a below it) reports the most room, so it is the first
        # choice for a kvm image, but its kvm hosts are disabled and eu-west-a is xen.
        disable_hosts(tree.cells["eu-west"])
        (moved,) = (await tree.create("moved", image=CIRROS)).instances
        instance = await tree.settled(moved.uuid, VM.VM_STATE_ACTIVE)
        assert instance.cell_path == "api!us-east"
        assert tried == ["eu-west", "us-east"]

        # Nowhere to go: error with a fault that says why.
        tried.clear()
        disable_hosts(tree.cells["us-east"])
        (stuck,) = (await tree.create("stuck", image=CIRROS)).instances
        instance = await tree.settled(stuck.uuid, VM.VM_STATE_ERROR)
        assert "no valid host" in instance.fault.message.lower(), instance.fault
        assert sorted(tried) == ["eu-west", "us-east"]
        assert len(tried) <= api.config.scheduler.retries + 1
        faults = await tree.stub.ListInstanceFaults(
            compute_pb2.ListInstanceFaultsRequest(uuid=stuck.uuid), metadata=ADMIN, timeout=5
        )
        assert (
            faults.faults and faults.faults[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        )

        # With no retries only the first choice is tried, though us-east could place it.
        tried.clear()
        enable_hosts(tree.cells["us-east"])
        no_retries = dataclasses.replace(api.config.scheduler, retries=0)
        api.builds.config = dataclasses.replace(api.config, scheduler=no_retries)
        (once,) = (await tree.create("once", image=CIRROS)).instances
        instance = await tree.settled(once.uuid, VM.VM_STATE_ERROR)
        assert tried == ["eu-west"]
        assert "1 attempts" in instance.fault.message, instance.fault
        assert count_instances(tree.cells["us-east"]) == 1  # only "moved"

    run(tmp_path, scenario)


def api_build_timeout(seconds: float) -> Tweak:
    """The API cell waits ``seconds`` for a build's answer (the other cells as usual)."""

    def tweak(config: CellConfig) -> CellConfig:
        if config.name != "api":
            return config
        scheduler = dataclasses.replace(config.scheduler, build_timeout=seconds)
        return dataclasses.replace(config, scheduler=scheduler)

    return tweak


API_WAITS = 2.0  # seconds, in the tests of answers that come too late


def test_a_build_answered_too_late_is_built_once(tmp_path: Path) -> None:
    """eu-west builds, but its answers come after the API cell stopped waiting: the
    builds must not go to us-east as well, merged or not."""

    async def scenario(tree: Tree) -> None:
        tried: list[str] = []
        build_below = tree.api.builds._build_below

        async def recording(req: Any, child: str, my_path: str, deadline: float) -> Any:
            tried.append(child)
            return await build_below(req, child, my_path, deadline)

        tree.api.builds._build_below = recording  # type: ignore[method-assign]
        eu_west = tree.cells["eu-west"].builds
        build_here = eu_west._build_here

        async def late(*args: Any) -> Any:
            accepted = await build_here(*args)
            await asyncio.sleep(API_WAITS + 0.5)  # answer after the API cell gave up
            return accepted

        eu_west._build_here = late  # type: ignore[method-assign]
        # Concurrent creates: the first goes down alone, the others merged.
        responses = await asyncio.gather(*[tree.create(f"late{n}") for n in range(5)])
        uuids = [r.instances[0].uuid for r in responses]
        assert set(tried) == {"eu-west"}, tried
        settled = await asyncio.gather(*[tree.settled(u, VM.VM_STATE_ACTIVE) for u in uuids])
        assert {i.cell_path for i in settled} == {"api!eu-west"}
        assert count_instances(tree.cells["eu-west"], Instance.uuid.in_(uuids)) == len(uuids)
        assert count_instances(tree.cells["us-east"]) == 0
        assert tried == ["eu-west"] * len(tried)

    run(tmp_path, scenario, api_build_timeout(API_WAITS))


def test_a_build_that_reaches_a_cell_after_its_deadline_is_refused_there(
    tmp_path: Path,
) -> None:
    async def scenario(tree: Tree) -> None:
        eu_west = tree.cells["eu-west"].builds
        schedule = eu_west.schedule
        outcome: list[BaseException] = []

        async def delayed(req: Any, my_path: str, deadline: float, **kwargs: Any) -> Any:
            await asyncio.sleep(max(0.0, deadline - time.time()) + 0.2)
            try:
                return await schedule(req, my_path, deadline, **kwargs)
            except BaseException as exc:
                outcome.append(exc)
                raise

        eu_west.schedule = delayed  # type: ignore[method-assign]
        (instance,) = (await tree.create("delayed")).instances
        failed = await tree.settled(instance.uuid, VM.VM_STATE_ERROR)
        assert failed.fault.message.startswith("The build was not confirmed"), failed.fault
        assert failed.fault.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        await eventually(lambda: bool(outcome), "eu-west handling the late build")
        assert "after its deadline" in str(outcome[0]), outcome
        for name in COMPUTE_CELLS:
            assert count_instances(tree.cells[name]) == 0, name

    run(tmp_path, scenario, api_build_timeout(API_WAITS))


class _BrokenCasts:
    """An RpcClient whose casts to computes fail, as with a broker gone after the claim."""

    def __init__(self, rpc: Any) -> None:
        self._rpc = rpc

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self._rpc.call(*args, **kwargs)

    def cast(self, topic: str, *args: Any, **kwargs: Any) -> None:
        if topic.startswith("compute."):
            raise Unavailable(f"cannot reach broker for topic {topic!r}")
        self._rpc.cast(topic, *args, **kwargs)


def wrap_rpc(cell: Cell, wrapper: Callable[[Any], Any]) -> None:
    """Let ``cell``'s builds reach its local roles through ``wrapper(rpc client)``."""
    rpc = cell.builds.rpc
    assert rpc is not None
    cell.builds.rpc = lambda: wrapper(rpc())


def used(cell: Cell) -> list[tuple[str, int, int, int]]:
    return sorted(
        (n.host, n.vcpus_used, n.memory_mb_used, n.running_vms)
        for n in cell_rows(cell, ComputeNode)
    )


def test_a_build_whose_cast_fails_fails_in_its_cell_only(tmp_path: Path) -> None:
    """The instances exist once the cell created them: a cast that fails then is the
    cell's failure (error, fault, claims given back), not a reason to try another."""

    async def scenario(tree: Tree) -> None:
        eu_west = tree.cells["eu-west"]
        before = used(eu_west)
        wrap_rpc(eu_west, _BrokenCasts)
        (instance,) = (await tree.create("uncast")).instances
        failed = await tree.settled(instance.uuid, VM.VM_STATE_ERROR)
        assert failed.cell_path == "api!eu-west"
        assert "could not be sent to compute." in failed.fault.message, failed.fault
        assert failed.fault.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert count_instances(tree.cells["us-east"]) == 0
        assert used(eu_west) == before
        (row,) = cell_rows(eu_west, Instance, Instance.uuid == instance.uuid)
        assert (row.vm_state, row.host) == ("error", None)

    run(tmp_path, scenario)


class _LostSchedulerAnswers:
    """An RpcClient whose scheduler answers are lost after the scheduler claimed."""

    def __init__(self, rpc: Any) -> None:
        self._rpc = rpc

    def call(self, topic: str, method: str, **kwargs: Any) -> Any:
        answer = self._rpc.call(topic, method, **kwargs)
        if method == "select_and_claim":
            raise Timeout(f"no answer from {topic} (its answer was {answer})")
        return answer

    def cast(self, *args: Any, **kwargs: Any) -> None:
        self._rpc.cast(*args, **kwargs)


def test_a_claim_whose_answer_was_lost_is_given_back(tmp_path: Path) -> None:
    """eu-west's scheduler claims, but its answer never comes: eu-west refuses the
    build (it created nothing), another cell builds it, and eu-west's hosts are left
    as they were rather than counting the claim for good."""

    async def scenario(tree: Tree) -> None:
        eu_west = tree.cells["eu-west"]
        before = used(eu_west)
        wrap_rpc(eu_west, _LostSchedulerAnswers)
        (instance,) = (await tree.create("lost-answer")).instances
        built = await tree.settled(instance.uuid, VM.VM_STATE_ACTIVE)
        assert built.cell_path == "api!us-east", built.cell_path
        assert count_instances(eu_west) == 0
        assert used(eu_west) == before
        assert cell_rows(eu_west, PendingClaim) == []
        assert cell_rows(tree.cells["us-east"], PendingClaim) == []  # taken by the create

    run(tmp_path, scenario)


# --- 8. WatchInstances ----------------------------------------------------------------------


def test_watch_sees_a_build_in_revision_order_and_resumes(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        stream = tree.stub.WatchInstances(
            compute_pb2.WatchInstancesRequest(), metadata=ADMIN, timeout=WAIT
        )
        queue: asyncio.Queue[compute_pb2.WatchInstancesResponse] = asyncio.Queue()

        async def read() -> None:
            async for change in stream:
                await queue.put(change)

        reader = asyncio.create_task(read())
        # With no from_revision the stream starts at the newest revision when the server
        # gets it: a marker change seen on the stream proves it is live before the create.
        marker = str(uuidlib.uuid4())
        for version in range(1, 1000):
            with tree.api.sessions.begin() as session:
                tree.api.pushes.apply_update(session, pushed(marker, version))
            try:
                first = await asyncio.wait_for(queue.get(), 0.2)
                break
            except TimeoutError:
                assert not reader.done(), reader
        assert first.instance.uuid == marker
        (created,) = (await tree.create("watched")).instances
        await tree.settled(created.uuid, VM.VM_STATE_ACTIVE)
        last = tree.api.api_view.last_revision()  # type: ignore[union-attr]
        seen: list[compute_pb2.WatchInstancesResponse] = []
        while not seen or seen[-1].revision < last:
            change = await asyncio.wait_for(queue.get(), WAIT)
            if change.instance.uuid != marker:  # a later marker version already on its way
                seen.append(change)
        stream.cancel()
        reader.cancel()
        revisions = [c.revision for c in seen]
        assert revisions == sorted(set(revisions)), revisions
        assert all(c.instance.uuid == created.uuid for c in seen), seen
        # One message per change the API cell logged for the instance: the create at the
        # top and every push of the build from eu-west(-a) or us-east.
        with tree.api.sessions() as session:
            logged = session.scalars(
                select(InstanceChange)
                .where(InstanceChange.instance_uuid == created.uuid)
                .order_by(InstanceChange.revision)
            ).all()
        assert revisions == [c.revision for c in logged]
        versions = [c.version for c in logged]
        assert versions == sorted(versions) and versions[-1] > versions[0]
        assert len(seen) >= 3  # created at the top, pushed by the owning cell, ..., active
        assert seen[-1].instance.vm_state == VM.VM_STATE_ACTIVE

        middle = revisions[len(revisions) // 2]
        replay = tree.stub.WatchInstances(
            compute_pb2.WatchInstancesRequest(from_revision=middle), metadata=ADMIN, timeout=WAIT
        )
        replayed: list[int] = []
        async for change in replay:
            replayed.append(change.revision)
            if change.revision >= revisions[-1]:
                break
        replay.cancel()
        assert replayed == [r for r in revisions if r > middle]

        # A member watching sees only its project's changes.
        member = tree.stub.WatchInstances(
            compute_pb2.WatchInstancesRequest(from_revision=1), metadata=DEMO, timeout=WAIT
        )
        (mine,) = (await tree.create("mine", metadata=DEMO)).instances
        async for change in member:
            assert change.instance.project_id == "demo", change
            if change.instance.uuid == mine.uuid:
                break
        member.cancel()

    run(tmp_path, scenario)


# --- 9. ListInstances ----------------------------------------------------------------------


def test_list_filters_pages_projects_and_reachability(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        demo_made = [
            (await tree.create(f"web-{i}", metadata=DEMO)).instances[0].uuid for i in range(2)
        ]
        demo_made.append((await tree.create("db-1", image=XEN, metadata=DEMO)).instances[0].uuid)
        hint = link_pb2.SchedulerHints(target_cell="api!us-east")
        admin_made = [
            (await tree.create(f"ops-{i}", scheduler_hints=hint)).instances[0].uuid
            for i in range(2)
        ]
        for uuid in [*demo_made, *admin_made]:
            await tree.settled(uuid, VM.VM_STATE_ACTIVE)
        # Stop one, so that vm_state filters have something to tell apart.
        await tree.stub.StopInstance(
            compute_pb2.StopInstanceRequest(uuid=demo_made[0]), metadata=DEMO, timeout=RPC_DEADLINE
        )
        await tree.settled(demo_made[0], VM.VM_STATE_STOPPED)

        # Projects: a member sees its own only, and nothing of another project's.
        mine = await tree.list_all(DEMO)
        assert sorted(i.uuid for i in mine.instances) == sorted(demo_made)
        other = await tree.list_all(DEMO, project_id="admin")
        assert sorted(i.uuid for i in other.instances) == sorted(demo_made)
        error = await rpc_error(tree.get(admin_made[0], DEMO))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await rpc_error(
            tree.stub.StopInstance(
                compute_pb2.StopInstanceRequest(uuid=admin_made[0]), metadata=DEMO, timeout=5
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        everyone = await tree.list_all()
        assert sorted(i.uuid for i in everyone.instances) == sorted(demo_made + admin_made)
        only_demo = await tree.list_all(project_id="demo")
        assert sorted(i.uuid for i in only_demo.instances) == sorted(demo_made)

        # Filters.
        stopped = await tree.list_all(vm_state=VM.VM_STATE_STOPPED)
        assert [i.uuid for i in stopped.instances] == [demo_made[0]]
        active = await tree.list_all(vm_state=VM.VM_STATE_ACTIVE)
        assert len(active.instances) == 4
        by_cell = {i.uuid: i.cell_path for i in everyone.instances}
        for prefix in ("api!eu-west", "api!eu-west!eu-west-a", "api!us-east"):
            listed = await tree.list_all(cell_path=prefix)
            expected = [u for u, p in by_cell.items() if p == prefix or p.startswith(prefix + "!")]
            assert sorted(i.uuid for i in listed.instances) == sorted(expected), prefix
        assert by_cell[demo_made[2]] == "api!eu-west!eu-west-a"
        assert by_cell[admin_made[0]] == by_cell[admin_made[1]] == "api!us-east"
        named = await tree.list_all(name="web")
        assert sorted(i.uuid for i in named.instances) == sorted(demo_made[:2])

        # Pages of two walk everything once.
        walked: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await tree.list_all(page_size=2, page_token=token)
            pages += 1
            assert len(page.instances) <= 2
            walked += [i.uuid for i in page.instances]
            token = page.next_page_token
            if not token:
                break
        assert pages == 3
        assert sorted(walked) == sorted(demo_made + admin_made) and len(set(walked)) == 5

        # Reachability of the cells, and stale copies once a child is down.
        cells = {c.cell_path: c for c in everyone.cells}
        assert {"api!eu-west", "api!us-east"} <= set(cells)
        assert all(c.reachable and not c.mute for c in cells.values()), cells
        assert not any(i.stale for i in everyone.instances)
        await tree.cells["us-east"].stop(grace=0.2)
        await eventually(lambda: link_down(tree.api, "us-east"), "the API cell seeing us-east go")
        after = await tree.list_all()
        cells = {c.cell_path: c for c in after.cells}
        assert cells["api!us-east"].reachable is False
        assert cells["api!eu-west"].reachable is True
        stale = {i.uuid for i in after.instances if i.stale}
        assert stale == set(admin_made)

    run(tmp_path, scenario)


# --- 10. bad input ------------------------------------------------------------------------


def test_bad_input_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        bad: list[tuple[dict[str, Any], grpc.StatusCode]] = [
            ({"flavor": "99"}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"image": str(uuidlib.uuid4())}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"image": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"count": 1001}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"name": "bad/name"}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"name": "x" * 64}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"idempotency_key": "k" * 256}, grpc.StatusCode.INVALID_ARGUMENT),
            (
                {
                    "scheduler_hints": link_pb2.SchedulerHints(target_cell="api!us-east"),
                    "metadata": DEMO,
                },
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                {"scheduler_hints": link_pb2.SchedulerHints(target_cell="api!no.such")},
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                {"scheduler_hints": link_pb2.SchedulerHints(same_host=["nope"])},
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            ({"metadata": ()}, grpc.StatusCode.UNAUTHENTICATED),
            ({"metadata": (("authorization", "Bearer wrong"),)}, grpc.StatusCode.UNAUTHENTICATED),
        ]
        for fields, code in bad:
            values = {"name": "bad", **fields}
            error = await rpc_error(tree.create(**values))
            assert error.code() == code, (fields, error)
            assert error.details(), fields
        error = await rpc_error(tree.get("not-a-uuid"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = await rpc_error(tree.get(str(uuidlib.uuid4())))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await rpc_error(
            tree.stub.ListInstances(compute_pb2.ListInstancesRequest(), timeout=5)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

        listed = await tree.list_all(include_deleted=True)
        assert list(listed.instances) == []
        assert count_instances(tree.api) == 0
        for name in COMPUTE_CELLS:
            assert count_instances(tree.cells[name]) == 0
        with tree.api.sessions() as session:
            assert not session.scalars(select(InstanceFault)).all()

    run(tmp_path, scenario)


# --- failed builds can be deleted ------------------------------------------------------------

BROKEN = "5f6a1c0e-0000-4000-8000-000000000004"  # fail_spawn=true


def test_instances_whose_build_failed_can_be_deleted(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        md = {"metadata": ADMIN, "timeout": RPC_DEADLINE}
        # Spawning fails in a cell: error with the hypervisor's fault, nothing held.
        (failed,) = (await tree.create("broken", image=BROKEN)).instances
        instance = await tree.settled(failed.uuid, VM.VM_STATE_ERROR)
        assert "fail_spawn" in instance.fault.message, instance.fault
        owner = tree.cells[instance.cell_path.split("!")[-1]]
        assert not cell_rows(owner, IpAllocation, IpAllocation.instance_uuid == failed.uuid)
        assert sum(n.memory_mb_used for n in cell_rows(owner, ComputeNode)) == 0

        # No cell takes it (a flavor no host has room for): error at the top only.
        (huge,) = (await tree.create("huge", flavor="5", image=XEN, count=30)).instances[:1]
        huge_instance = await tree.settled(huge.uuid, VM.VM_STATE_ERROR)
        assert "no valid host" in huge_instance.fault.message.lower()

        for uuid in (failed.uuid, huge.uuid):
            await tree.stub.DeleteInstance(compute_pb2.DeleteInstanceRequest(uuid=uuid), **md)
            await tree.deleted(uuid)
        assert count_instances(owner) == 0
        listed = await tree.list_all()
        assert failed.uuid not in [i.uuid for i in listed.instances]

    run(tmp_path, scenario)


# --- 11. a cell started again ------------------------------------------------------------------


class _LostCasts:
    """An RpcClient that loses every build cast and the action casts of ``lost``, as
    an in-process queue loses what it holds when its process dies."""

    def __init__(self, rpc: Any, lost: set[str]) -> None:
        self._rpc = rpc
        self._lost = lost

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self._rpc.call(*args, **kwargs)

    def cast(self, topic: str, method: str, /, **kwargs: Any) -> None:
        if "builds" in kwargs or kwargs.get("instance_uuid") in self._lost:
            return
        self._rpc.cast(topic, method, **kwargs)


def test_a_restarted_cell_takes_back_its_guests_and_carries_on(tmp_path: Path) -> None:
    """eu-west-a stops with a guest running, one stopped, and a build and a reboot
    whose casts never reached its computes; started again, its guests are still
    there (actions on them work) and the build and the reboot are carried out."""

    async def scenario(tree: Tree) -> None:
        running = (await tree.create("running", image=XEN)).instances[0]
        stopped = (await tree.create("stopped", image=XEN)).instances[0]
        await tree.settled(running.uuid, VM.VM_STATE_ACTIVE)
        await tree.settled(stopped.uuid, VM.VM_STATE_ACTIVE)
        await tree.stub.StopInstance(
            compute_pb2.StopInstanceRequest(uuid=stopped.uuid), metadata=ADMIN, timeout=5
        )
        await tree.settled(stopped.uuid, VM.VM_STATE_STOPPED, POWER.POWER_STATE_SHUTDOWN)

        leaf = tree.cells["eu-west-a"]
        rpc = leaf.builds.rpc
        assert rpc is not None
        leaf.builds.rpc = lambda: _LostCasts(rpc(), {running.uuid})
        await tree.stub.RebootInstance(
            compute_pb2.RebootInstanceRequest(uuid=running.uuid), metadata=ADMIN, timeout=5
        )
        pending = (await tree.create("pending", image=XEN)).instances[0]

        async def under_way() -> bool:
            rebooting, building = await tree.get(running.uuid), await tree.get(pending.uuid)
            return (
                rebooting.task_state == types_pb2.TASK_STATE_REBOOTING
                and building.vm_state == VM.VM_STATE_BUILDING
                and building.cell_path == "api!eu-west!eu-west-a"
            )

        await eventually_async(under_way, lambda: "the reboot and the build under way")
        await leaf.stop(grace=0.2)
        restarted = Cell(tree.configs["eu-west-a"])
        await restarted.start()
        tree.cells["eu-west-a"] = restarted

        built = await tree.settled(pending.uuid, VM.VM_STATE_ACTIVE, POWER.POWER_STATE_RUNNING)
        assert built.addresses and not built.fault.message, built
        rebooted = await tree.settled(running.uuid, VM.VM_STATE_ACTIVE, POWER.POWER_STATE_RUNNING)
        assert not rebooted.fault.message, rebooted.fault
        actions = await tree.stub.ListInstanceActions(
            compute_pb2.ListInstanceActionsRequest(uuid=running.uuid), metadata=ADMIN, timeout=5
        )
        reboot = [a for a in actions.actions if a.action == "reboot"]
        assert len(reboot) == 1 and [e.result for e in reboot[0].events] == ["Success"], reboot

        # The guests came back: actions on them work as before (once the API cell
        # hears from eu-west that eu-west-a is back).
        def back() -> bool:
            report = tree.api.state.children.get("eu-west")
            return report is not None and "eu-west-a" not in report.unreachable

        await eventually(back, "eu-west reporting eu-west-a back")
        await tree.stub.RebootInstance(
            compute_pb2.RebootInstanceRequest(uuid=running.uuid), metadata=ADMIN, timeout=5
        )
        await tree.stub.StartInstance(
            compute_pb2.StartInstanceRequest(uuid=stopped.uuid), metadata=ADMIN, timeout=5
        )
        for uuid in (running.uuid, stopped.uuid):
            instance = await tree.settled(uuid, VM.VM_STATE_ACTIVE, POWER.POWER_STATE_RUNNING)
            assert not instance.fault.message, instance.fault
        assert count_instances(restarted) == 3

    run(tmp_path, scenario)
