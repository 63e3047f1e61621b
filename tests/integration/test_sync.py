"""Anti-entropy: a top that lost instance rows gets exactly the differing buckets back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from sqlalchemy import delete, func, select

from cellplane.db.models import Instance, OutboxEntry
from cellplane.demo import demo_configs, with_parent
from cellplane.service import Cell
from cellplane.v1 import cells_pb2, cells_pb2_grpc, compute_pb2, compute_pb2_grpc

ADMIN = [("authorization", "Bearer admin-token")]
CIRROS = "5f6a1c0e-0000-4000-8000-000000000001"
XEN = "5f6a1c0e-0000-4000-8000-000000000003"


async def _until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _count(cell: Cell, *where: object) -> int:
    with cell.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance).where(*where)) or 0)


async def _scenario(data_dir: Path) -> None:
    cells: dict[str, Cell] = {}
    try:
        for demo in demo_configs(
            data_dir, "127.0.0.1:0", 0.2, spawn_latency=0.0, action_latency=0.0
        ):
            config = demo.config
            if demo.parent is not None:
                config = with_parent(demo, cells[demo.parent].address)
            cells[demo.name] = cell = Cell(config)
            await cell.start()
        api = cells["api"]
        # Ready when the top knows every cell's capacity and the xen cell's capability.
        await _until(
            lambda: (
                len(api.state.children) == 2
                and all(r.capacity.ram_free_mb for r in api.state.children.values())
                and "xen" in api.state.subtree_capabilities().get("hypervisor", set())
            )
        )
        async with grpc.aio.insecure_channel(api.address) as channel:
            compute = compute_pb2_grpc.ComputeServiceStub(channel)
            for image in (CIRROS, XEN):
                await compute.CreateInstances(
                    compute_pb2.CreateInstancesRequest(
                        name="s", flavor_id="1", image_id=image, count=3
                    ),
                    metadata=ADMIN,
                )
            await _until(lambda: _count(api, Instance.vm_state == "active") == 6)

            def outboxes_empty() -> bool:
                for cell in cells.values():
                    with cell.sessions() as session:
                        if session.scalar(select(func.count()).select_from(OutboxEntry)):
                            return False
                return True

            await _until(outboxes_empty)
            cells_api = cells_pb2_grpc.CellsServiceStub(channel)
            in_sync = await cells_api.SyncInstances(
                cells_pb2.SyncInstancesRequest(), metadata=ADMIN
            )
            assert all(r.answered for r in in_sync.results)
            assert sum(r.sync.instances_resent for r in in_sync.results) == 0

            # The top loses two of its rows (a partial loss of its database).
            with api.sessions.begin() as session:
                lost = session.scalars(select(Instance.uuid).limit(2)).all()
                session.execute(delete(Instance).where(Instance.uuid.in_(lost)))
            healed = await cells_api.SyncInstances(cells_pb2.SyncInstancesRequest(), metadata=ADMIN)
            resent = sum(r.sync.instances_resent for r in healed.results)
            assert 2 <= resent < 6, "only the differing buckets are re-sent"
            await _until(lambda: _count(api, Instance.vm_state == "active") == 6)
            with api.sessions() as session:
                paths = set(session.scalars(select(Instance.cell_path)))
            assert paths == {"api!eu-west", "api!eu-west!eu-west-a"}

            bad = cells_pb2.SyncInstancesRequest(cell_path="api!nowhere")
            try:
                await cells_api.SyncInstances(bad, metadata=ADMIN)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError("an unknown cell path was accepted")
    finally:
        for cell in reversed(list(cells.values())):
            await cell.stop()


def test_sync_resends_only_what_the_top_lost(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))
