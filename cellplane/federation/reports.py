"""The state manager: what this cell can do and how much room it has, reported to
its parents periodically (with jitter) and soon after a change; children that go
silent past the mute interval are marked mute.

Capacity is counted as Nova's cells did: free and total RAM and disk over the
cell's compute nodes, less ``reserve_percent``, plus "units": how many instances
of each flavor size still fit, host by host. An inner cell adds its children's
last reports to its own.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db.models import Cell, ComputeNode, Flavor, utcnow
from cellplane.federation import paths
from cellplane.federation.channel import LinkState, PeerChannel, Relation
from cellplane.federation.dispatch import Delivery
from cellplane.federation.neighbours import Neighbours
from cellplane.v1 import link_pb2, types_pb2

CHANGE_DEBOUNCE = 0.2  # seconds between a change and the report that follows it


@dataclass
class ChildReport:
    """The last capabilities and capacity a child reported for its subtree."""

    capabilities: dict[str, set[str]] = field(default_factory=dict)
    capacity: types_pb2.Capacity = field(default_factory=types_pb2.Capacity)
    received_at: float = 0.0
    capacity_at: float = 0.0  # when ``capacity`` arrived
    mute: bool = False
    # Cells below the child that it cannot reach, as paths from the child (its name left out).
    unreachable: frozenset[str] = frozenset()
    # Each cell of the child's subtree with its own capacity (empty from a child that
    # does not say: its ``capacity`` then stands for its whole subtree).
    cells: dict[str, types_pb2.Capacity] = field(default_factory=dict)


def own_capacity(
    nodes: Iterable[ComputeNode], flavor_sizes: Iterable[tuple[int, int]], reserve_percent: float
) -> types_pb2.Capacity:
    """Capacity of this cell's own hosts, with ``reserve_percent`` of each kept back."""
    reserve = reserve_percent / 100.0
    sizes = sorted(set(flavor_sizes))
    ram_units = dict.fromkeys((ram for ram, _ in sizes), 0)
    disk_units = dict.fromkeys((disk for _, disk in sizes), 0)
    cap = types_pb2.Capacity()
    for node in nodes:
        ram_total = int(node.memory_mb * node.ram_allocation_ratio)
        disk_total = int(node.local_gb * node.disk_allocation_ratio)
        vcpus_total = int(node.vcpus * node.cpu_allocation_ratio)
        ram_free = max(0, ram_total - node.memory_mb_used - int(ram_total * reserve))
        disk_free = max(0, disk_total - node.local_gb_used - int(disk_total * reserve))
        cap.ram_total_mb += ram_total
        cap.disk_total_gb += disk_total
        cap.vcpus_total += vcpus_total
        cap.ram_free_mb += ram_free
        cap.disk_free_gb += disk_free
        cap.vcpus_free += max(0, vcpus_total - node.vcpus_used)
        for ram in ram_units:
            ram_units[ram] += ram_free // ram if ram else 0
        for disk in disk_units:
            disk_units[disk] += disk_free // disk if disk else 0
    cap.ram_units.extend(types_pb2.FlavorUnits(memory_mb=r, units=u) for r, u in ram_units.items())
    cap.disk_units.extend(types_pb2.FlavorUnits(disk_gb=d, units=u) for d, u in disk_units.items())
    return cap


def add_capacity(total: types_pb2.Capacity, other: types_pb2.Capacity) -> None:
    """Add ``other`` into ``total`` (units are summed per size)."""
    for name in (
        "ram_free_mb",
        "ram_total_mb",
        "disk_free_gb",
        "disk_total_gb",
        "vcpus_free",
        "vcpus_total",
    ):
        setattr(total, name, getattr(total, name) + getattr(other, name))
    for units_field, key in (("ram_units", "memory_mb"), ("disk_units", "disk_gb")):
        merged: dict[int, int] = {}
        for item in [*getattr(total, units_field), *getattr(other, units_field)]:
            merged[getattr(item, key)] = merged.get(getattr(item, key), 0) + item.units
        del getattr(total, units_field)[:]
        getattr(total, units_field).extend(
            types_pb2.FlavorUnits(**{key: size, "units": units})
            for size, units in sorted(merged.items())
        )


def sum_capacities(capacities: Iterable[types_pb2.Capacity]) -> types_pb2.Capacity:
    """The capacities added up (see :func:`add_capacity`)."""
    total = types_pb2.Capacity()
    for capacity in capacities:
        add_capacity(total, capacity)
    return total


def capability_list(caps: dict[str, set[str]]) -> list[types_pb2.Capability]:
    """Capabilities as protobuf, sorted."""
    return [types_pb2.Capability(name=n, values=sorted(v)) for n, v in sorted(caps.items())]


class StateManager:
    """Keeps and sends this cell's capability and capacity reports; tracks its
    children's reports and who is mute."""

    def __init__(
        self,
        name: str,
        neighbours: Neighbours,
        sessions: sessionmaker[Session],
        send_up: Callable[[str, dict[str, object]], None],
        *,
        capabilities: Iterable[tuple[str, Iterable[str]]] = (),
        reserve_percent: float = 0.0,
        report_interval: float = 10.0,
        mute_interval: float = 60.0,
    ) -> None:
        self.name = name
        self.neighbours = neighbours
        self.sessions = sessions
        self.send_up = send_up
        self.capabilities = {n: set(v) for n, v in capabilities}
        self.reserve_percent = reserve_percent
        self.report_interval = report_interval
        self.mute_interval = mute_interval
        self.children: dict[str, ChildReport] = {}
        self.reports_sent = 0
        self._changed = asyncio.Event()
        self.log = structlog.get_logger().bind(cell=name)

    # --- what this cell reports ----------------------------------------------------

    def subtree_capabilities(self) -> dict[str, set[str]]:
        """Own capabilities merged with every child's report."""
        merged = {n: set(v) for n, v in self.capabilities.items()}
        for report in self.children.values():
            for name, values in report.capabilities.items():
                merged.setdefault(name, set()).update(values)
        return merged

    def own_capacity(self) -> types_pb2.Capacity:
        """This cell's own hosts only."""
        with self.sessions() as session:
            nodes = session.scalars(select(ComputeNode)).all()
            sizes = session.execute(
                select(Flavor.memory_mb, Flavor.root_gb + Flavor.ephemeral_gb).where(
                    Flavor.disabled.is_(False)
                )
            ).all()
        return own_capacity(nodes, [(int(r), int(d)) for r, d in sizes], self.reserve_percent)

    def subtree_capacity(self) -> types_pb2.Capacity:
        """Own capacity plus every child's last report, each cell counted once."""
        return sum_capacities(self.subtree_cells().values())

    def subtree_cells(self) -> dict[str, types_pb2.Capacity]:
        """Each cell of this subtree (this one first) with its own capacity, as the
        children last reported them. A cell below two children (it has several
        parents) is there once, as the child heard from last reported it."""
        cells = {self.name: self.own_capacity()}
        below: dict[str, types_pb2.Capacity] = {}
        for child, report in sorted(self.children.items(), key=lambda c: c[1].capacity_at):
            below.update(report.cells or {child: report.capacity})
        below.pop(self.name, None)
        cells.update(below)
        return cells

    def unreachable_below(self) -> list[str]:
        """Cells below this one it cannot reach now, as paths from here (this cell's
        name left out): children whose link is down or that are mute, and what the
        reachable children report of their own subtrees."""
        out: list[str] = []
        for channel in self.neighbours.children():
            if self._cut_off(channel):
                out.append(channel.peer)
                continue
            report = self.children.get(channel.peer)
            if report is not None:
                out.extend(paths.join(channel.peer, path) for path in report.unreachable)
        return sorted(out)

    def reachable(self, path: str) -> bool:
        """Whether the cell at ``path`` (from this cell, its name first) can be reached
        as far as this cell knows: every hop's link up and not mute, for the hops below
        a child as that child last reported."""
        hops = paths.hops(path)
        if len(hops) < 2:
            return True
        channel = self.neighbours.get(hops[1], Relation.CHILD)
        if channel is None or self._cut_off(channel):
            return False
        report = self.children.get(hops[1])
        if report is None or not report.unreachable:
            return True
        below = hops[2:]
        return not any(
            paths.join(*below[:depth]) in report.unreachable for depth in range(1, len(below) + 1)
        )

    def _cut_off(self, child: PeerChannel) -> bool:
        return child.state is not LinkState.UP or self.is_mute(child.peer)

    def changed(self) -> None:
        """Something changed: report soon."""
        self._changed.set()

    async def run(self) -> None:
        """Report periodically with jitter and soon after changes; check for mute children."""
        while True:
            interval = self.report_interval * random.uniform(0.5, 1.0)
            try:
                await asyncio.wait_for(self._changed.wait(), interval)
                await asyncio.sleep(CHANGE_DEBOUNCE)
            except TimeoutError:
                pass
            self._changed.clear()
            await asyncio.to_thread(self.check_mute)
            if self.neighbours.parents():
                await self.report()

    async def report(self) -> None:
        """Send capabilities and capacity to every parent now."""
        cells = await asyncio.to_thread(self.subtree_cells)
        capacity = sum_capacities(cells.values())
        stamp = Timestamp()
        stamp.GetCurrentTime()
        caps = link_pb2.CapabilityReport(
            cell_path=self.name,
            capabilities=capability_list(self.subtree_capabilities()),
            reported_at=stamp,
        )
        cap = link_pb2.CapacityReport(
            cell_path=self.name,
            capacity=capacity,
            reported_at=stamp,
            unreachable=self.unreachable_below(),
            cells=[link_pb2.OwnCapacity(cell=n, capacity=c) for n, c in cells.items()],
        )
        for channel in self.neighbours.parents():
            target = paths.join(self.name, channel.peer)
            self.send_up(target, {"capability_report": caps})
            self.send_up(target, {"capacity_report": cap})
        self.reports_sent += 1

    # --- what children report ------------------------------------------------------

    def on_capability_report(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        """Inline handler: a child's capabilities."""
        child = paths.hops(env.routing_path)[-2]
        report = self._child(child, delivery)
        report.capabilities = {c.name: set(c.values) for c in env.capability_report.capabilities}
        caps = {n: sorted(v) for n, v in report.capabilities.items()}
        delivery.db_work.append(lambda s: _store(s, child, capabilities=caps))
        self.changed()

    def on_capacity_report(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        """Inline handler: a child's capacity."""
        child = paths.hops(env.routing_path)[-2]
        report = self._child(child, delivery)
        report.capacity = env.capacity_report.capacity
        report.cells = {c.cell: c.capacity for c in env.capacity_report.cells}
        report.capacity_at = report.received_at
        unreachable = frozenset(env.capacity_report.unreachable)
        if unreachable != report.unreachable:
            report.unreachable = unreachable
            self.log.info("child_reports_unreachable", child=child, cells=sorted(unreachable))
        data = _capacity_dict(report.capacity)
        delivery.db_work.append(lambda s: _store(s, child, capacities=data))
        self.changed()

    def _child(self, name: str, delivery: Delivery) -> ChildReport:
        report = self.children.setdefault(name, ChildReport())
        report.received_at = time.time()
        if report.mute:
            report.mute = False
            self.log.info("child_unmuted", child=name)
            # With the link's cursor, off the event loop (as the report itself is stored).
            delivery.db_work.append(lambda s: _store(s, name, mute=False))
        return report

    def is_mute(self, child: str) -> bool:
        """Whether ``child`` has been silent past the mute interval."""
        report = self.children.get(child)
        return report.mute if report else False

    def check_mute(self) -> None:
        """Mark children silent past the mute interval as mute."""
        now = time.time()
        for channel in self.neighbours.children():
            report = self.children.setdefault(channel.peer, ChildReport(received_at=now))
            silent = now - max(report.received_at, channel.last_seen)
            if not report.mute and silent > self.mute_interval:
                report.mute = True
                self.log.warning("child_mute", child=channel.peer, silent_s=round(silent, 1))
                self._persist_mute(channel.peer, True)

    def _persist_mute(self, child: str, mute: bool) -> None:
        with self.sessions.begin() as session:
            _store(session, child, mute=mute)


def _store(session: Session, child: str, **values: object) -> None:
    row = session.scalar(select(Cell).where(Cell.name == child))
    if row is None:
        return
    for key, value in values.items():
        setattr(row, key, value)
    row.last_seen = utcnow()


def _capacity_dict(cap: types_pb2.Capacity) -> dict[str, object]:
    return MessageToDict(cap, preserving_proto_field_name=True)


def capacity_from_dict(data: dict[str, object]) -> types_pb2.Capacity:
    """Rebuild a stored capacity."""
    return ParseDict(data or {}, types_pb2.Capacity(), ignore_unknown_fields=True)


__all__ = ["ChildReport", "StateManager"]
