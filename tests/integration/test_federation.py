"""A federation of real cells in one event loop: routing, broadcasts, reconnects,
reports, mute detection and the CellsService admin API.

Every cell is a real :class:`cellplane.service.Cell` on port 0 with its own SQLite
file and kombu ``memory://``. The tree is::

        api
       /   \\
      eu    us
     /  \\  /
   eu-a  edge        (edge has two parents: eu and us)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import select
from sqlalchemy.orm import Session

from cellplane.config import CellConfig, ChildConfig, ParentConfig
from cellplane.db.models import Cell as CellRow
from cellplane.db.models import ComputeNode, Flavor
from cellplane.errors import Code, InvalidArgument
from cellplane.federation import envelopes, paths
from cellplane.federation.channel import LinkState, Relation
from cellplane.federation.dispatch import Delivery
from cellplane.service import Cell
from cellplane.v1 import cells_pb2, cells_pb2_grpc, link_pb2, types_pb2

UP, DOWN = envelopes.UP, envelopes.DOWN
WAIT = 10.0  # upper bound for anything we wait for; tests end as soon as it happened

# name -> (parents, children), in start order (parents before their children)
TREE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "api": ((), ("eu", "us")),
    "eu": (("api",), ("eu-a", "edge")),
    "us": (("api",), ("edge",)),
    "eu-a": (("eu",), ()),
    "edge": (("eu", "us"), ()),
}
CAPABILITIES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "eu-a": (("hypervisor", ("kvm",)),),
    "us": (("hypervisor", ("xen",)),),
    "edge": (("arch", ("arm",)),),
}


class EchoCell(Cell):
    """A cell that records the Echo sequences it handled, with the path it was at."""

    echoes: list[tuple[int, str]]

    def _register_handlers(self) -> None:
        super()._register_handlers()
        self.echoes = []

        async def echo(env: link_pb2.Envelope, delivery: Delivery) -> link_pb2.CellResult | None:
            self.echoes.append((env.echo.sequence, delivery.path))
            return delivery.ok(echo=env.echo) if env.need_response else None

        self.handlers.register("echo", echo)

    def sequences(self) -> list[int]:
        return [seq for seq, _ in self.echoes]


class Federation:
    """Cells of one test, stopped children first."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.tmp = tmp
        self.overrides = overrides
        self.cells: dict[str, EchoCell] = {}
        self.configs: dict[str, CellConfig] = {}

    def config(
        self, name: str, parents: Iterable[str] = (), children: Iterable[str] = (), **values: Any
    ) -> CellConfig:
        settings: dict[str, Any] = {
            "report_interval": 0.2,
            "response_timeout": 2.0,
            "capabilities": CAPABILITIES.get(name, ()),
            **self.overrides,
            **values,
        }
        return CellConfig(
            name=name,
            database_url=f"sqlite:///{self.tmp / name}.db",
            listen="127.0.0.1:0",
            parents=tuple(ParentConfig(p, self.cells[p].address) for p in parents),
            children=tuple(ChildConfig(c) for c in children),
            **settings,
        )

    async def start(self, config: CellConfig) -> EchoCell:
        cell = EchoCell(config)
        await cell.start()
        self.cells[config.name] = cell
        self.configs[config.name] = config
        return cell

    async def start_tree(self, **values: Any) -> dict[str, EchoCell]:
        for name, (parents, children) in TREE.items():
            await self.start(self.config(name, parents, children, **values))
        await eventually(lambda: links_up(self.cells.values()), "every link up")
        return self.cells

    async def restart(self, name: str) -> EchoCell:
        """Start ``name`` again with its config, database file and port."""
        old = self.cells[name]
        config = dataclasses.replace(self.configs[name], listen=old.address)
        return await self.start(config)

    async def stop(self) -> None:
        for cell in reversed(list(self.cells.values())):
            await cell.stop(grace=0.2)


def run(tmp: Path, scenario: Callable[[Federation], Awaitable[None]], **overrides: Any) -> None:
    """Run ``scenario`` with a fresh federation, then stop every cell."""

    async def main() -> None:
        fed = Federation(tmp, **overrides)
        try:
            await asyncio.wait_for(scenario(fed), 60)
        finally:
            await fed.stop()

    asyncio.run(main())


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until ``check()`` holds (polling); fail saying ``what`` did not happen."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


def links_up(cells: Iterable[Cell]) -> bool:
    return all(ch.state is LinkState.UP for cell in cells for ch in cell.neighbours.all())


def link(cell: Cell, peer: str, relation: Relation) -> LinkState:
    channel = cell.neighbours.get(peer, relation)
    assert channel is not None, f"{cell.name} has no {relation.value} {peer}"
    return channel.state


def by_cell(results: list[link_pb2.CellResult]) -> dict[str, link_pb2.CellResult]:
    """Results keyed by cell name; fails if a cell appears twice."""
    counts = Counter(paths.last(r.cell_path) for r in results)
    assert all(n == 1 for n in counts.values()), f"a cell answered twice: {counts}"
    return {paths.last(r.cell_path): r for r in results}


def echo(sequence: int, data: bytes = b"ping") -> link_pb2.Echo:
    return link_pb2.Echo(data=data, sequence=sequence)


async def get_tree(cell: Cell) -> types_pb2.CellNode:
    async with grpc.aio.insecure_channel(cell.address) as channel:
        stub = cells_pb2_grpc.CellsServiceStub(channel)
        response = await stub.GetTree(cells_pb2.GetTreeRequest(), timeout=5)
        return response.root


def tree_index(root: types_pb2.CellNode) -> dict[str, types_pb2.CellNode]:
    """Every node of the tree by path."""
    found = {root.path: root}
    for child in root.children:
        found.update(tree_index(child))
    return found


def caps(node: types_pb2.CellNode | cells_pb2.CellCapacity) -> dict[str, list[str]]:
    return {c.name: list(c.values) for c in node.capabilities}


def ram_units(capacity: types_pb2.Capacity) -> dict[int, int]:
    return {u.memory_mb: u.units for u in capacity.ram_units}


# --- targeted calls --------------------------------------------------------------------


def test_targeted_call_down_to_a_leaf_and_up_from_a_leaf(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        down = await cells["api"].router.call("api!eu!eu-a", DOWN, echo=echo(1, b"down"))
        assert down.status.code == Code.OK, down.status.message
        assert down.answered
        assert down.cell_path == "api!eu!eu-a"
        assert (down.echo.data, down.echo.sequence) == (b"down", 1)

        up = await cells["eu-a"].router.call("eu-a!eu!api", UP, echo=echo(2, b"up"))
        assert up.status.code == Code.OK, up.status.message
        assert up.cell_path == "eu-a!eu!api"
        assert (up.echo.data, up.echo.sequence) == (b"up", 2)

        # edge reaches the top through either parent.
        via_us = await cells["edge"].router.call("edge!us!api", UP, echo=echo(3))
        assert (via_us.status.code, via_us.cell_path) == (Code.OK, "edge!us!api")

        assert cells["eu-a"].echoes == [(1, "api!eu!eu-a")]
        assert cells["api"].echoes == [(2, "eu-a!eu!api"), (3, "edge!us!api")]
        assert cells["eu"].echoes == []  # passing through is not handling
        # Each end knows from the other's Hello that it takes joined updates.
        for channel in [*cells["eu"].neighbours.parents(), *cells["eu"].neighbours.children()]:
            assert channel.peer_features == {"instance_updates"}

    run(tmp_path, scenario)


def test_unknown_next_hop_answers_not_found_naming_the_cell(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        api = cells["api"].router
        near = await api.call("api!nowhere", DOWN, echo=echo(1))
        assert near.status.code == Code.NOT_FOUND
        assert "'nowhere'" in near.status.message

        far = await api.call("api!eu!nowhere", DOWN, echo=echo(2))
        assert far.status.code == Code.NOT_FOUND
        assert "eu has no child named 'nowhere'" in far.status.message
        assert far.answered

        # Up from a leaf, to a parent it does not have.
        wrong = await cells["eu-a"].router.call("eu-a!us", UP, echo=echo(3))
        assert wrong.status.code == Code.NOT_FOUND
        assert "'us'" in wrong.status.message

        with pytest.raises(InvalidArgument, match="must start at 'api'"):
            await api.call("eu!eu-a", DOWN, echo=echo(4))
        assert all(not cell.echoes for cell in cells.values())

    run(tmp_path, scenario)


def test_hop_limit_exceeded_answers_an_error_and_delivers_nothing(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        api = cells["api"].router
        api.max_hops = 1  # enough for api -> eu, not for api -> eu -> eu-a

        near = await api.call("api!eu", DOWN, echo=echo(1))
        assert near.status.code == Code.OK

        far = await api.call("api!eu!eu-a", DOWN, echo=echo(2))
        assert far.status.code == Code.INVALID_ARGUMENT
        assert "hop limit 1 exceeded at eu-a" in far.status.message
        assert cells["eu-a"].echoes == []
        assert cells["eu-a"].router.rejected == 1

        # A broadcast stops at the limit too, and says so for the cells it could not reach.
        results = await api.broadcast(DOWN, timeout=2, echo=echo(3))
        reached = {paths.last(r.cell_path): r.status.code for r in results}
        assert reached["api"] == reached["eu"] == reached["us"] == Code.OK
        assert reached["eu-a"] == reached["edge"] == Code.INVALID_ARGUMENT
        assert cells["eu-a"].echoes == [] and cells["edge"].echoes == []

    run(tmp_path, scenario)


def test_targeted_call_over_a_down_link_is_unavailable_at_once(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        await cells["eu-a"].stop()
        await eventually(
            lambda: link(cells["eu"], "eu-a", Relation.CHILD) is not LinkState.UP,
            "eu sees its link to eu-a down",
        )
        # A long timeout: only an answer from eu (not our own deadline) ends the call.
        result = await cells["api"].router.call("api!eu!eu-a", DOWN, timeout=30, echo=echo(1))
        assert result.status.code == Code.UNAVAILABLE
        assert result.answered
        assert "link from eu to eu-a is down" in result.status.message

        await cells["eu"].stop()
        await eventually(
            lambda: link(cells["api"], "eu", Relation.CHILD) is not LinkState.UP,
            "api sees its link to eu down",
        )
        result = await cells["api"].router.call("api!eu!eu-a", DOWN, timeout=30, echo=echo(2))
        assert result.status.code == Code.UNAVAILABLE
        assert "link from api to eu is down" in result.status.message

    run(tmp_path, scenario)


# --- broadcasts ------------------------------------------------------------------------


def test_broadcast_down_answers_once_per_cell(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        results = await cells["api"].router.broadcast(DOWN, timeout=2, echo=echo(7))
        found = by_cell(results)
        assert set(found) == set(TREE)
        for name, result in found.items():
            assert result.answered, name
            assert result.status.code == Code.OK, (name, result.status.message)
            assert result.echo.sequence == 7
        # edge has two parents, yet handled the broadcast once.
        for name, cell in cells.items():
            assert cell.sequences() == [7], name

    run(tmp_path, scenario)


def test_broadcast_with_a_stopped_leaf_reports_it_unanswered(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        before = by_cell(await cells["api"].router.broadcast(DOWN, timeout=1, echo=echo(1)))
        assert set(before) == set(TREE)
        assert all(r.answered and r.status.code == Code.OK for r in before.values())

        await cells["eu-a"].stop()
        results = await cells["api"].router.broadcast(DOWN, timeout=1, echo=echo(2))
        found = by_cell(results)
        assert set(found) == set(TREE), "nobody silently missing"
        gone = found["eu-a"]
        assert not gone.answered
        assert gone.status.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
        assert gone.cell_path == "api!eu!eu-a"
        for name in ("api", "eu", "us", "edge"):
            assert found[name].answered and found[name].status.code == Code.OK, name

    run(tmp_path, scenario)


def test_a_silent_leaf_does_not_hide_its_parent_and_siblings(tmp_path: Path) -> None:
    """Regression: every hop waited for the same deadline, so the parent of a silent
    leaf answered too late and its whole subtree vanished from the results."""

    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        never = asyncio.Event()

        async def hang(env: link_pb2.Envelope, delivery: Delivery) -> link_pb2.CellResult:
            await never.wait()
            raise AssertionError("unreachable")

        cells["eu-a"].handlers.register("echo", hang)
        results = await cells["api"].router.broadcast(DOWN, timeout=1, echo=echo(1))
        found = by_cell(results)
        assert set(found) == set(TREE)
        assert not found["eu-a"].answered
        assert found["eu-a"].status.code == Code.DEADLINE_EXCEEDED
        for name in ("api", "eu", "us", "edge"):
            assert found[name].answered and found[name].status.code == Code.OK, name

    run(tmp_path, scenario)


def test_broadcast_up_from_a_cell_with_two_parents_is_handled_once_at_the_top(
    tmp_path: Path,
) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        handled: list[str] = []

        async def count(env: link_pb2.Envelope, delivery: Delivery) -> link_pb2.CellResult:
            handled.append(delivery.path)
            return delivery.ok(echo=env.echo)

        cells["api"].handlers.register("echo", count)
        results = await cells["edge"].router.broadcast(UP, timeout=2, echo=echo(5))
        found = by_cell(results)
        assert set(found) == {"edge", "eu", "us", "api"}
        assert all(r.answered and r.status.code == Code.OK for r in results)
        assert len(handled) == 1, handled
        assert handled[0] in ("edge!eu!api", "edge!us!api")
        assert cells["eu"].sequences() == [5] and cells["us"].sequences() == [5]
        assert cells["eu-a"].echoes == []  # up is not down

    run(tmp_path, scenario)


# --- reconnects ------------------------------------------------------------------------


def test_envelopes_sent_while_the_parent_is_down_arrive_once_after_reconnect(
    tmp_path: Path,
) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        leaf, old_eu = cells["eu-a"], cells["eu"]
        for seq in range(1, 6):
            leaf.router.send("eu-a!eu", UP, echo=echo(seq))
        await eventually(lambda: old_eu.sequences() == [1, 2, 3, 4, 5], "eu handled 1..5")

        await old_eu.stop(grace=0.2)
        to_eu = leaf.neighbours.get("eu", Relation.PARENT)
        assert to_eu is not None
        await eventually(lambda: to_eu.state is not LinkState.UP, "eu-a sees eu down")
        for seq in range(6, 11):
            leaf.router.send("eu-a!eu", UP, echo=echo(seq))
        for seq in range(11, 14):  # through eu, to the top
            leaf.router.send("eu-a!eu!api", UP, echo=echo(seq))
        assert to_eu.unacked >= 8

        new_eu = await fed.restart("eu")
        await eventually(lambda: to_eu.state is LinkState.UP, "eu-a reconnected to eu")
        await eventually(lambda: to_eu.unacked == 0, "eu acked everything eu-a sent")
        await eventually(lambda: len(cells["api"].echoes) == 3, "api got 11..13")
        assert old_eu.sequences() == [1, 2, 3, 4, 5]
        assert new_eu.sequences() == [6, 7, 8, 9, 10]
        assert cells["api"].sequences() == [11, 12, 13]

    run(tmp_path, scenario)


# --- reports, tree and mute ------------------------------------------------------------


def add_hosts(session: Session) -> None:
    session.add_all(
        [
            ComputeNode(
                host="eu-a-h1",
                hypervisor_type="fake",
                vcpus=8,
                memory_mb=4096,
                local_gb=100,
                memory_mb_used=1024,
                local_gb_used=10,
                ram_allocation_ratio=1.0,
                disk_allocation_ratio=1.0,
            ),
            ComputeNode(
                host="eu-a-h2",
                hypervisor_type="fake",
                vcpus=8,
                memory_mb=8192,
                local_gb=200,
                ram_allocation_ratio=1.5,
                disk_allocation_ratio=1.0,
            ),
            Flavor(flavor_id="f1", name="small", vcpus=1, memory_mb=512, root_gb=1),
            Flavor(flavor_id="f2", name="large", vcpus=4, memory_mb=2048, root_gb=20),
            Flavor(
                flavor_id="f3", name="retired", vcpus=1, memory_mb=256, root_gb=1, disabled=True
            ),
        ]
    )


def test_reports_reach_the_top_and_get_tree_shows_the_whole_tree(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        everything = {"hypervisor": ["kvm", "xen"], "arch": ["arm"]}

        async def tree_has(check: Callable[[dict[str, types_pb2.CellNode]], bool]) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + WAIT
            while True:
                index = tree_index(await get_tree(cells["api"]))
                if check(index):
                    return
                assert loop.time() < end, f"tree never converged: {index}"
                await asyncio.sleep(0.1)

        await tree_has(lambda index: caps(index["api"]) == everything)
        index = tree_index(await get_tree(cells["api"]))
        assert {"api", "api!eu", "api!us", "api!eu!eu-a"} <= set(index)
        assert {"api!eu!edge", "api!us!edge"} <= set(index)  # edge under both parents
        for path, node in index.items():
            if path != "api":
                assert node.link_state == types_pb2.LINK_STATE_UP, path
                assert not node.mute, path
        assert caps(index["api!eu"]) == {"hypervisor": ["kvm"], "arch": ["arm"]}
        assert caps(index["api!us"]) == {"hypervisor": ["xen"], "arch": ["arm"]}
        assert caps(index["api!eu!eu-a"]) == {"hypervisor": ["kvm"]}
        assert index["api"].capacity.ram_free_mb == 0

        # Hosts appear in a leaf: its capacity travels up to the top.
        leaf = cells["eu-a"]
        await asyncio.to_thread(_in_transaction, leaf, add_hosts)
        leaf.state.changed()
        # reserve_percent of the leaf is 0 here; 4096-1024 + 8192*1.5 MB free
        await tree_has(lambda index: index["api"].capacity.ram_free_mb == 3072 + 12288)
        index = tree_index(await get_tree(cells["api"]))
        for path in ("api", "api!eu", "api!eu!eu-a"):
            capacity = index[path].capacity
            assert capacity.ram_total_mb == 4096 + 12288, path
            assert ram_units(capacity).get(512) == 6 + 24, path
            assert ram_units(capacity).get(2048) == 1 + 6, path
            assert ram_units(capacity).get(256, 0) == 0, path  # disabled flavor
        assert index["api!us"].capacity.ram_free_mb == 0

        async with grpc.aio.insecure_channel(cells["api"].address) as channel:
            stub = cells_pb2_grpc.CellsServiceStub(channel)
            answer = await stub.GetCapacities(
                cells_pb2.GetCapacitiesRequest(cell_path="api!eu!eu-a"), timeout=5
            )
        assert [c.cell_path for c in answer.cells] == ["api!eu!eu-a"]
        assert answer.cells[0].capacity.ram_free_mb == 3072 + 12288

    run(tmp_path, scenario)


def test_capacity_at_the_top_keeps_the_leaf_reserve_back(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        api = await fed.start(fed.config("api", children=["eu-a"]))
        leaf = await fed.start(fed.config("eu-a", parents=["api"], reserve_percent=10))
        await eventually(lambda: links_up([api, leaf]), "link up")
        await asyncio.to_thread(_in_transaction, leaf, add_hosts)
        leaf.state.changed()

        def reported() -> bool:
            report = api.state.children.get("eu-a")
            return report is not None and report.capacity.ram_total_mb > 0

        await eventually(reported, "api got eu-a's capacity")
        capacity = api.state.subtree_capacity()
        # h1: 4096 - 1024 - 409 = 2663 MB; h2: 12288 - 1228 = 11060 MB
        assert capacity.ram_free_mb == 2663 + 11060
        units = ram_units(capacity)
        assert (units[512], units[2048]) == (5 + 21, 1 + 5)
        assert units.get(256, 0) == 0  # a disabled flavor has no units

    run(tmp_path, scenario)


def test_a_cell_with_two_parents_counts_once_at_the_top(tmp_path: Path) -> None:
    """edge reports to eu and to us; both pass its hosts up, and the API cell, which
    hears of edge along both paths, counts them once."""

    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        edge, api = cells["edge"], cells["api"]

        def edge_hosts(session: Session) -> None:
            session.add(
                ComputeNode(
                    host="edge-h1", hypervisor_type="fake", vcpus=4, memory_mb=2048,
                    local_gb=50, ram_allocation_ratio=1.0, disk_allocation_ratio=1.0,
                )
            )  # fmt: skip

        await asyncio.to_thread(_in_transaction, edge, edge_hosts)
        edge.state.changed()

        def heard_along_both() -> bool:
            return all(
                (report := api.state.children.get(mid)) is not None
                and report.capacity.ram_total_mb == 2048
                for mid in ("eu", "us")
            ) and set(api.state.subtree_cells()) == {"api", "eu", "us", "eu-a", "edge"}

        await eventually(heard_along_both, "eu and us reporting every cell, edge's hosts too")
        for mid in ("eu", "us"):  # each parent's subtree holds edge, for scheduling
            assert api.state.children[mid].cells["edge"].ram_total_mb == 2048
        total, once = api.state.subtree_capacity(), edge.state.own_capacity()
        assert total == once and once.ram_total_mb == 2048, (total, once)

    run(tmp_path, scenario)


def _in_transaction(cell: Cell, work: Callable[[Session], None]) -> None:
    with cell.sessions.begin() as session:
        work(session)


def stored_mute(cell: Cell, child: str) -> bool | None:
    with cell.sessions() as session:
        return session.scalar(select(CellRow.mute).where(CellRow.name == child))


def test_a_stopped_child_becomes_mute(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        parent = await fed.start(fed.config("p", children=["c1", "c2"], mute_interval=1.0))
        c1 = await fed.start(fed.config("c1", parents=["p"], report_interval=0.1))
        c2 = await fed.start(fed.config("c2", parents=["p"], report_interval=0.1))
        await eventually(lambda: links_up([parent, c1, c2]), "links up")
        await eventually(lambda: "c1" in parent.state.children, "c1 reported")
        assert not parent.state.is_mute("c1")

        await c1.stop()
        await eventually(lambda: parent.state.is_mute("c1"), "c1 marked mute")
        index = tree_index(await get_tree(parent))
        assert index["p!c1"].mute
        assert index["p!c1"].link_state == types_pb2.LINK_STATE_DOWN
        assert not index["p!c2"].mute
        assert index["p!c2"].link_state == types_pb2.LINK_STATE_UP
        async with grpc.aio.insecure_channel(parent.address) as channel:
            stub = cells_pb2_grpc.CellsServiceStub(channel)
            listed = await stub.ListCells(cells_pb2.ListCellsRequest(), timeout=5)
        assert {c.name: c.mute for c in listed.cells} == {"c1": True, "c2": False}

        assert stored_mute(parent, "c1") is True

        # It comes back and reports: no longer mute, in memory and in the database.
        await fed.restart("c1")
        await eventually(lambda: not parent.state.is_mute("c1"), "c1 unmuted")
        await eventually(lambda: stored_mute(parent, "c1") is False, "c1's row unmuted")

    run(tmp_path, scenario)


# --- CellsService admin ----------------------------------------------------------------


def neighbour_rows(listed: cells_pb2.ListCellsResponse) -> list[tuple[Any, ...]]:
    """What an admin call may change (not link state or last_seen, which move)."""
    return [
        (c.name, c.relation, c.address, c.tls_identity, c.disabled, c.weight_offset, c.weight_scale)
        for c in listed.cells
    ]


def test_admin_adds_a_child_and_a_parent_at_run_time_and_removes_them(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        eu, us = cells["eu"], cells["us"]
        async with (
            grpc.aio.insecure_channel(eu.address) as eu_channel,
            grpc.aio.insecure_channel(us.address) as us_channel,
        ):
            eu_admin = cells_pb2_grpc.CellsServiceStub(eu_channel)
            us_admin = cells_pb2_grpc.CellsServiceStub(us_channel)

            # A new child: the running parent lets it in.
            added = await eu_admin.AddCell(
                cells_pb2.AddCellRequest(
                    cell=types_pb2.Cell(name="late", relation=types_pb2.CELL_RELATION_CHILD)
                ),
                timeout=5,
            )
            assert added.cell.name == "late"
            late = await fed.start(fed.config("late", parents=["eu"]))
            await eventually(lambda: links_up([late]), "late linked to eu")
            await eventually(
                lambda: link(eu, "late", Relation.CHILD) is LinkState.UP, "eu sees late"
            )
            got = await eu_admin.GetCell(cells_pb2.GetCellRequest(name="late"), timeout=5)
            assert got.cell.link_state == types_pb2.LINK_STATE_UP
            assert got.cell.path == "api!eu!late"
            answer = await cells["api"].router.call("api!eu!late", DOWN, echo=echo(1))
            assert answer.status.code == Code.OK

            # A new parent of a running cell: it starts dialling.
            orphan = await fed.start(fed.config("orphan"))
            await us_admin.AddCell(
                cells_pb2.AddCellRequest(
                    cell=types_pb2.Cell(name="orphan", relation=types_pb2.CELL_RELATION_CHILD)
                ),
                timeout=5,
            )
            async with grpc.aio.insecure_channel(orphan.address) as orphan_channel:
                orphan_admin = cells_pb2_grpc.CellsServiceStub(orphan_channel)
                await orphan_admin.AddCell(
                    cells_pb2.AddCellRequest(
                        cell=types_pb2.Cell(
                            name="us", relation=types_pb2.CELL_RELATION_PARENT, address=us.address
                        )
                    ),
                    timeout=5,
                )
            await eventually(
                lambda: link(us, "orphan", Relation.CHILD) is LinkState.UP, "orphan dialled us"
            )
            await eventually(lambda: orphan.path == "api!us!orphan", "orphan learnt its path")

            # Removing it closes the link, and it may not come back.
            await us_admin.RemoveCell(cells_pb2.RemoveCellRequest(name="orphan"), timeout=5)
            assert us.neighbours.get("orphan", Relation.CHILD) is None
            to_us = orphan.neighbours.get("us", Relation.PARENT)
            assert to_us is not None
            dialer = orphan._dialers["us"][0]
            await eventually(
                lambda: "not a configured child" in dialer.last_error, "orphan refused by us"
            )
            assert to_us.state is not LinkState.UP
            listed = await us_admin.ListCells(cells_pb2.ListCellsRequest(), timeout=5)
            assert "orphan" not in {c.name for c in listed.cells}

    run(tmp_path, scenario)


def test_a_disabled_child_is_left_out_of_broadcasts(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        api = cells["api"]
        async with grpc.aio.insecure_channel(api.address) as channel:
            admin = cells_pb2_grpc.CellsServiceStub(channel)
            updated = await admin.UpdateCell(
                cells_pb2.UpdateCellRequest(
                    cell=types_pb2.Cell(name="us", disabled=True), update_mask=["disabled"]
                ),
                timeout=5,
            )
            assert updated.cell.disabled

            results = await api.router.broadcast(DOWN, timeout=2, echo=echo(1))
            assert set(by_cell(results)) == {"api", "eu", "eu-a", "edge"}
            assert cells["us"].echoes == []
            targeted = await api.router.call("api!us", DOWN, echo=echo(2))
            assert targeted.status.code == Code.NOT_FOUND

            await admin.UpdateCell(
                cells_pb2.UpdateCellRequest(
                    cell=types_pb2.Cell(name="us", disabled=False), update_mask=["disabled"]
                ),
                timeout=5,
            )
            results = await api.router.broadcast(DOWN, timeout=2, echo=echo(3))
            assert set(by_cell(results)) == set(TREE)

    run(tmp_path, scenario)


BAD_ADMIN_CALLS: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    (
        "bad name",
        "AddCell",
        cells_pb2.AddCellRequest(
            cell=types_pb2.Cell(name="Bad!Name", relation=types_pb2.CELL_RELATION_CHILD)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a valid cell name",
    ),
    (
        "missing relation",
        "AddCell",
        cells_pb2.AddCellRequest(cell=types_pb2.Cell(name="newcell")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "relation",
    ),
    (
        "parent without a port",
        "AddCell",
        cells_pb2.AddCellRequest(
            cell=types_pb2.Cell(
                name="newcell", relation=types_pb2.CELL_RELATION_PARENT, address="nohost"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not host:port",
    ),
    (
        "parent with port out of range",
        "AddCell",
        cells_pb2.AddCellRequest(
            cell=types_pb2.Cell(
                name="newcell", relation=types_pb2.CELL_RELATION_PARENT, address="h:70000"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not host:port",
    ),
    (
        "itself",
        "AddCell",
        cells_pb2.AddCellRequest(
            cell=types_pb2.Cell(name="eu", relation=types_pb2.CELL_RELATION_CHILD)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "own neighbour",
    ),
    (
        "duplicate",
        "AddCell",
        cells_pb2.AddCellRequest(
            cell=types_pb2.Cell(name="eu-a", relation=types_pb2.CELL_RELATION_CHILD)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "already a neighbour",
    ),
    (
        "unknown update_mask field",
        "UpdateCell",
        cells_pb2.UpdateCellRequest(
            cell=types_pb2.Cell(name="eu-a", relation=types_pb2.CELL_RELATION_PARENT),
            update_mask=["relation"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "update_mask",
    ),
    (
        "bad address for a parent",
        "UpdateCell",
        cells_pb2.UpdateCellRequest(
            cell=types_pb2.Cell(name="api", address="api"), update_mask=["address"]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not host:port",
    ),
    (
        "update of an unknown cell",
        "UpdateCell",
        cells_pb2.UpdateCellRequest(cell=types_pb2.Cell(name="ghost", disabled=True)),
        grpc.StatusCode.NOT_FOUND,
        "'ghost'",
    ),
    (
        "removal of an unknown cell",
        "RemoveCell",
        cells_pb2.RemoveCellRequest(name="ghost"),
        grpc.StatusCode.NOT_FOUND,
        "'ghost'",
    ),
    (
        "removal by a bad name",
        "RemoveCell",
        cells_pb2.RemoveCellRequest(name=""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a valid cell name",
    ),
    (
        "get of an unknown cell",
        "GetCell",
        cells_pb2.GetCellRequest(name="ghost"),
        grpc.StatusCode.NOT_FOUND,
        "'ghost'",
    ),
]


def test_bad_admin_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cells = await fed.start_tree()
        eu = cells["eu"]
        async with grpc.aio.insecure_channel(eu.address) as channel:
            admin = cells_pb2_grpc.CellsServiceStub(channel)
            before = await admin.ListCells(cells_pb2.ListCellsRequest(), timeout=5)
            assert {c.name for c in before.cells} == {"api", "eu-a", "edge"}
            for what, method, request, code, message in BAD_ADMIN_CALLS:
                with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                    await getattr(admin, method)(request, timeout=5)
                assert excinfo.value.code() == code, (what, excinfo.value.details())
                assert message in (excinfo.value.details() or ""), (what, excinfo.value.details())
                after = await admin.ListCells(cells_pb2.ListCellsRequest(), timeout=5)
                assert neighbour_rows(after) == neighbour_rows(before), what
            # The links still work as they did.
            assert links_up(cells.values())
            assert eu._dialers.keys() == {"api"}

    run(tmp_path, scenario)


# --- health and reflection -------------------------------------------------------------


def test_health_serves_and_reflection_lists_the_services(tmp_path: Path) -> None:
    async def scenario(fed: Federation) -> None:
        cell = await fed.start(fed.config("api"))
        async with grpc.aio.insecure_channel(cell.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "cellplane.v1.CellLink", "cellplane.v1.CellsService"):
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                await health.Check(health_pb2.HealthCheckRequest(service="nope.Nope"), timeout=5)
            assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflection.ServerReflectionInfo(timeout=5)
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            await call.write(
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="cellplane.v1.CellLink"
                )
            )
            await call.done_writing()
            listed = await call.read()
            names = {s.name for s in listed.list_services_response.service}
            assert {
                "cellplane.v1.CellLink",
                "cellplane.v1.CellsService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names
            described = await call.read()
            assert described.file_descriptor_response.file_descriptor_proto

    run(tmp_path, scenario)
