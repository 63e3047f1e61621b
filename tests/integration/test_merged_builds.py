"""Concurrent CreateInstances calls at the API cell are merged, each keeping its own identity.

The API's ComputeServicer puts concurrent creates through one Batcher (one
transaction for their rows) and alike builds through another (one trip down
the tree, split again if the merged one fails). Whatever was merged, every
call must get its own instances, and each instance's ``create`` action must
carry that call's own request id, down to the compute host's build event.

Runs the demo tree of tests/integration/test_instances.py on the embedded
defaults (SQLite files, ``memory://``, gRPC on loopback).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from sqlalchemy import select
from test_instances import ADMIN, CIRROS, RPC_DEADLINE, VM, Tree, eventually_async, run

from cellplane.api.compute import ComputeServicer
from cellplane.db.models import InstanceAction
from cellplane.v1 import compute_pb2

BUILD_EVENT = "compute_build_and_run_instance"
XLARGE = "5"  # m1.xlarge: 160 GB root disk, so 3 per demo host and 9 per kvm cell


def _servicer(tree: Tree) -> ComputeServicer:
    """The API cell's ComputeServicer (the cell does not keep a reference of its own)."""
    found = [o for o in gc.get_objects() if isinstance(o, ComputeServicer) and o.cell is tree.api]
    assert len(found) == 1, found
    return found[0]


async def _actions(tree: Tree, uuid: str) -> compute_pb2.ListInstanceActionsResponse:
    return await tree.stub.ListInstanceActions(
        compute_pb2.ListInstanceActionsRequest(uuid=uuid), metadata=ADMIN, timeout=RPC_DEADLINE
    )


async def _create_actions_carry(tree: Tree, uuid: str, request_id: str) -> None:
    """``uuid``'s only action is ``create`` under ``request_id``: at the API (ended with
    its ``compute_create`` event) and in the cell that built it (with the host's
    ``compute_build_and_run_instance`` event)."""
    last: list[object] = []

    async def check() -> bool:
        response = await _actions(tree, uuid)
        last[:] = [response]
        actions = list(response.actions)
        assert [(a.action, a.request_id) for a in actions] == [("create", request_id)], actions
        assert actions[0].instance_uuid == uuid
        return [(e.event, e.result) for e in actions[0].events] == [("compute_create", "Success")]

    await eventually_async(check, lambda: f"{uuid}'s create ending under {request_id}: {last}")
    instance = await tree.get(uuid)
    owner = tree.cells[instance.cell_path.split("!")[-1]]
    with owner.sessions() as session:
        rows = session.scalars(
            select(InstanceAction).where(InstanceAction.instance_uuid == uuid)
        ).all()
        below = [
            (a.action, a.request_id, [(e.event, e.result, e.host) for e in a.events]) for a in rows
        ]
    assert below == [("create", request_id, [(BUILD_EVENT, "Success", instance.host)])]


def test_concurrent_creates_are_merged_and_each_keeps_its_request_id(tmp_path: Path) -> None:
    calls = 20

    async def scenario(tree: Tree) -> None:
        servicer = _servicer(tree)
        names = [f"merged-{n}" for n in range(calls)]
        responses = await asyncio.gather(*[tree.create(name, image=CIRROS) for name in names])

        # Each call got its own instance, named as it asked, and its own request id.
        request_ids = [r.request_id for r in responses]
        assert all(request_ids) and len(set(request_ids)) == calls
        assert [[i.name for i in r.instances] for r in responses] == [[n] for n in names]
        uuids = [r.instances[0].uuid for r in responses]
        assert len(set(uuids)) == calls

        # They were merged: fewer API transactions and trips down than calls.
        assert servicer._creates.items == calls
        assert servicer._creates.batches < calls
        assert servicer._builds.items == calls
        assert servicer._builds.batches < calls

        settled = await asyncio.gather(*[tree.settled(u, VM.VM_STATE_ACTIVE) for u in uuids])
        addresses = [i.addresses[0].address for i in settled]
        assert len(set(addresses)) == calls
        assert all(i.cell_path in ("api!eu-west", "api!us-east") for i in settled)
        for uuid, request_id in zip(uuids, request_ids, strict=True):
            await _create_actions_carry(tree, uuid, request_id)

    run(tmp_path, scenario)


def test_creates_with_count_merged_keep_their_names_and_request_ids(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        counts = [1, 3, 2, 4, 1, 2]
        responses = await asyncio.gather(
            *[tree.create(f"c{n}", count=count) for n, count in enumerate(counts)]
        )
        for n, (count, response) in enumerate(zip(counts, responses, strict=True)):
            expected = [f"c{n}"] if count == 1 else [f"c{n}-{i + 1}" for i in range(count)]
            assert [i.name for i in response.instances] == expected
        by_uuid = {i.uuid: r.request_id for r in responses for i in r.instances}
        assert len(by_uuid) == sum(counts)
        assert len({r.request_id for r in responses}) == len(counts)
        await asyncio.gather(*[tree.settled(u, VM.VM_STATE_ACTIVE) for u in by_uuid])
        for uuid, request_id in by_uuid.items():
            await _create_actions_carry(tree, uuid, request_id)

    run(tmp_path, scenario)


def test_a_merged_build_no_cell_can_take_is_split_and_every_create_succeeds(
    tmp_path: Path,
) -> None:
    """Four creates of 4 m1.xlarge each: any three merged (12) fit no kvm cell (9 each),
    while each alone (4) does, and all 16 fit the two kvm cells together (18)."""

    async def scenario(tree: Tree) -> None:
        responses = await asyncio.gather(
            *[tree.create(f"big{n}", flavor=XLARGE, count=4) for n in range(4)]
        )
        by_uuid = {i.uuid: r.request_id for r in responses for i in r.instances}
        assert len(by_uuid) == 16
        settled = await asyncio.gather(*[tree.settled(u, VM.VM_STATE_ACTIVE) for u in by_uuid])
        # Each call's instances were built together in one cell.
        for response in responses:
            cells = {s.cell_path for s in settled if s.uuid in {i.uuid for i in response.instances}}
            assert len(cells) == 1, cells
        for uuid, request_id in by_uuid.items():
            await _create_actions_carry(tree, uuid, request_id)

    run(tmp_path, scenario)


def test_merged_creates_with_a_bad_one_fail_only_the_bad_call(tmp_path: Path) -> None:
    async def scenario(tree: Tree) -> None:
        good = [tree.create(f"ok{n}") for n in range(5)]
        bad = tree.create("nope", image="00000000-0000-4000-8000-00000000dead")
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        *oks, failure = results
        assert all(isinstance(r, compute_pb2.CreateInstancesResponse) for r in oks), oks
        assert "does not exist" in failure.details()  # type: ignore[union-attr]
        uuids = [r.instances[0].uuid for r in oks]  # type: ignore[union-attr]
        await asyncio.gather(*[tree.settled(u, VM.VM_STATE_ACTIVE) for u in uuids])

    run(tmp_path, scenario)
