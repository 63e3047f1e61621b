"""The scheduling framework, every cell and host filter and weigher, and claims on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from cellplane import scheduling
from cellplane.config import SchedulerConfig
from cellplane.db import Base, ComputeNode, Instance, Service, create_engine, utcnow
from cellplane.db import make_session_factory as make_sessions
from cellplane.errors import InvalidArgument, NoValidHost, PermissionDenied
from cellplane.scheduling import cells, hosts
from cellplane.scheduling import claims as claims_module
from cellplane.scheduling.claims import HostScheduler, claim, release, resize_claim
from cellplane.scheduling.framework import Weigher, normalize, select, select_or_raise, weigh
from cellplane.scheduling.spec import FlavorSpec, Hints, RequestSpec
from cellplane.v1 import types_pb2

SMALL = FlavorSpec("small", vcpus=1, memory_mb=512, root_gb=10, ephemeral_gb=0)
BIG = FlavorSpec("big", vcpus=4, memory_mb=4096, root_gb=40, ephemeral_gb=10)


def spec(**kwargs: Any) -> RequestSpec:
    return RequestSpec(flavor=kwargs.pop("flavor", SMALL), **kwargs)


def cell(name: str, **kwargs: Any) -> cells.CellCandidate:
    kwargs.setdefault("path", f"api!{name}")
    kwargs.setdefault("ram_free_mb", 8192)
    kwargs.setdefault("disk_free_gb", 500)
    return cells.CellCandidate(name=name, **kwargs)


def host(name: str, **kwargs: Any) -> hosts.HostCandidate:
    base: dict[str, Any] = {
        "availability_zone": "nova",
        "hypervisor_type": "kvm",
        "vcpus_total": 8,
        "memory_mb_total": 4096,
        "disk_gb_total": 100,
    }
    return hosts.HostCandidate(host=name, **{**base, **kwargs})


def names(weighed: list[Any]) -> list[str]:
    return [w.candidate.name for w in weighed]


# --- the framework ----------------------------------------------------------------


def test_public_surface_is_what_all_says() -> None:
    assert sorted(scheduling.__all__) == scheduling.__all__
    for name in scheduling.__all__:
        assert hasattr(scheduling, name), name


def test_normalize_min_max_equal_and_fixed_range() -> None:
    assert normalize([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert normalize([5.0, 5.0]) == [0.0, 0.0]
    assert normalize([]) == []
    assert normalize([0.0, 1.0], lo=0.0, hi=4.0) == [0.0, 0.25]


class _Raw(Weigher[hosts.HostCandidate]):
    def __init__(self, values: dict[str, float], multiplier: float) -> None:
        self.values, self.multiplier = values, multiplier

    def weigh(self, candidate: hosts.HostCandidate, spec: RequestSpec) -> float:
        return self.values[candidate.host]


def test_weights_are_normalized_per_weigher_then_scaled_and_summed() -> None:
    a, b, c = host("a"), host("b"), host("c")
    # Raw scales differ by 1000x; after normalization only the multipliers matter.
    big = _Raw({"a": 0.0, "b": 1000.0, "c": 500.0}, multiplier=1.0)
    small = _Raw({"a": 1.0, "b": 0.0, "c": 0.5}, multiplier=3.0)
    result = weigh([a, b, c], spec(), [big, small])
    assert names(result) == ["a", "c", "b"]
    assert [w.weight for w in result] == pytest.approx([3.0, 2.0, 1.0])
    assert result[0].parts == {"_Raw": pytest.approx(3.0)}  # same name: the last wins


def test_ties_are_broken_by_name_deterministically() -> None:
    candidates = [host("c"), host("a"), host("b")]
    assert names(weigh(candidates, spec(), [hosts.RAMWeigher()])) == ["a", "b", "c"]


def test_filters_run_in_order_and_log_what_they_removed() -> None:
    candidates = [host("a", up=False), host("b", memory_mb_total=100), host("c")]
    with capture_logs() as logs:
        result = select(candidates, spec(), hosts.default_host_filters(), [])
    assert names(result) == ["c"]
    removed = [(e["filter"], e["removed"]) for e in logs if e["event"] == "scheduler_filtered"]
    assert removed == [("ComputeFilter", ["a"]), ("RamFilter", ["b"])]


def test_no_valid_host_names_the_filter_that_removed_the_last() -> None:
    candidates = [host("a", up=False), host("b", vcpus_total=0)]
    with pytest.raises(NoValidHost, match=r"CoreFilter eliminated the last 1 of 2 \(b\)"):
        select_or_raise(candidates, spec(), hosts.default_host_filters(), [])
    with pytest.raises(NoValidHost, match="no hosts to choose from"):
        select_or_raise([], spec(), hosts.default_host_filters(), [])
    assert select([host("a", up=False)], spec(), hosts.default_host_filters(), []) == []


# --- request specs -----------------------------------------------------------------


def test_request_spec_round_trips_through_a_dict() -> None:
    original = RequestSpec(
        flavor=BIG,
        image_properties={"hypervisor_type": "kvm"},
        hints=Hints(
            target_cell="api!eu",
            different_cell=("api!us",),
            group="g",
            group_policy="anti-affinity",
            same_host=("u1",),
            different_host=("u2",),
        ),
        availability_zone="az1",
        num_instances=3,
        tried_cells=("api!asia",),
        is_admin=True,
        project_id="p1",
    )
    assert RequestSpec.from_dict(original.to_dict()) == original
    assert BIG.disk_gb == 50


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"flavor": None}, "flavor is required"),
        ({"num_instances": 0}, "num_instances must be >= 1"),
        ({"num_instances": True}, "num_instances must be int"),
        ({"hints": {"group": "g", "group_policy": "sideways"}}, "group_policy"),
        ({"hints": {"group_policy": "affinity"}}, "needs hints.group"),
        ({"hints": {"same_host": "u1"}}, "hints.same_host"),
        ({"image_properties": {"a": 1}}, "image_properties"),
    ],
)
def test_request_spec_from_dict_refuses_bad_fields(patch: dict[str, Any], message: str) -> None:
    data = {**spec().to_dict(), **patch}
    if data["flavor"] is None:
        del data["flavor"]
    with pytest.raises(InvalidArgument, match=message):
        RequestSpec.from_dict(data)


# --- cell filters and weighers ------------------------------------------------------


def test_target_cell_is_admin_only() -> None:
    hinted = spec(hints=Hints(target_cell="api!eu"))
    with pytest.raises(PermissionDenied):
        select([cell("eu")], hinted, cells.default_cell_filters(), [])


def test_target_cell_keeps_the_way_to_the_target() -> None:
    me = cell("api", path="api", is_self=True)
    eu, us = cell("eu"), cell("us")
    flt = [cells.TargetCellFilter()]
    below = spec(hints=Hints(target_cell="api!eu!eu-a"), is_admin=True)
    assert names(select([me, eu, us], below, flt, [])) == ["eu"]
    at_child = spec(hints=Hints(target_cell="api!eu"), is_admin=True)
    assert names(select([me, eu, us], at_child, flt, [])) == ["eu"]
    at_self = spec(hints=Hints(target_cell="api"), is_admin=True)
    assert names(select([me, eu, us], at_self, flt, [])) == ["api"]
    # "api!eu-x" shares a prefix with "api!eu" but is not below it.
    sibling = spec(hints=Hints(target_cell="api!eu-x"), is_admin=True)
    assert select([me, eu, us], sibling, flt, []) == []


def test_different_cell_tried_cells_and_disabled() -> None:
    eu, us, asia = cell("eu"), cell("us", disabled=True), cell("asia")
    chosen = select(
        [eu, us, asia],
        spec(hints=Hints(different_cell=("api!eu",)), tried_cells=("api!asia",)),
        cells.default_cell_filters(),
        [],
    )
    assert chosen == []
    assert names(select([eu, us, asia], spec(), cells.default_cell_filters(), [])) == [
        "asia",
        "eu",
    ]
    # A cell named below a child excludes only that subtree, not the child.
    deeper = spec(hints=Hints(different_cell=("api!eu!eu-a",)))
    assert names(select([eu], deeper, [cells.DifferentCellFilter()], [])) == ["eu"]


def test_cell_image_properties_against_capabilities() -> None:
    kvm = cell("kvm", capabilities={"hypervisor": frozenset({"kvm", "qemu"})})
    xen = cell("xen", capabilities={"hypervisor": frozenset({"xen"}), "arch": frozenset({"arm"})})
    silent = cell("silent")
    flt = [cells.ImagePropertiesFilter()]
    wants_kvm = spec(image_properties={"hypervisor_type": "KVM"})
    assert names(select([kvm, xen, silent], wants_kvm, flt, [])) == ["kvm", "silent"]
    wants_x86 = spec(image_properties={"arch": "x86_64"})
    assert names(select([kvm, xen, silent], wants_x86, flt, [])) == ["kvm", "silent"]


def test_capacity_filter_uses_units_for_the_size_else_free_totals() -> None:
    flt = [cells.CapacityFilter()]
    units = cell("units", ram_units={512: 2}, ram_free_mb=100_000)
    totals = cell("totals", ram_free_mb=1024)
    assert names(select([units, totals], spec(num_instances=2), flt, [])) == ["totals", "units"]
    # Units beat the free total: fragmentation can leave room for fewer than it suggests.
    assert names(select([units, totals], spec(num_instances=3), flt, [])) == []
    no_disk = cell("no_disk", disk_free_gb=15)
    assert names(select([no_disk], spec(num_instances=1), flt, [])) == ["no_disk"]
    assert select([no_disk], spec(num_instances=2), flt, []) == []
    disk_units = cell("disk_units", disk_units={10: 1})
    assert select([disk_units], spec(num_instances=2), flt, []) == []


def test_cell_weighers_units_offset_and_mute() -> None:
    roomy = cell("roomy", ram_units={512: 100})
    tight = cell("tight", ram_units={512: 10})
    favoured = cell("favoured", ram_units={512: 10}, weight_offset=5.0, weight_scale=4.0)
    result = weigh([tight, roomy, favoured], spec(), cells.default_cell_weighers())
    assert names(result) == ["roomy", "favoured", "tight"]
    assert result[1].parts["WeightOffsetWeigher"] == pytest.approx(1.0)
    # A mute cell loses even with every other advantage.
    mute = replace(roomy, name="mute", mute=True, weight_offset=1000.0)
    result = weigh([mute, tight], spec(), cells.default_cell_weighers())
    assert names(result) == ["tight", "mute"]
    assert result[1].weight < -1000


def test_cell_candidate_from_a_capacity_report() -> None:
    capacity = types_pb2.Capacity(ram_free_mb=2048, disk_free_gb=80)
    capacity.ram_units.add(memory_mb=512, units=4)
    capacity.disk_units.add(disk_gb=10, units=8)
    got = cells.cell_candidate_from_capacity(
        "eu", "api!eu", capacity, capabilities={"hypervisor": {"kvm"}}, mute=True
    )
    assert got.ram_units == {512: 4} and got.disk_units == {10: 8}
    assert got.capabilities == {"hypervisor": frozenset({"kvm"})}
    assert (got.ram_free_mb, got.disk_free_gb, got.mute) == (2048, 80, True)


# --- host filters and weighers -------------------------------------------------------


def test_resource_filters_honour_allocation_ratios() -> None:
    h = host(
        "h",
        memory_mb_total=1000,
        memory_mb_used=1000,
        ram_allocation_ratio=1.5,
        disk_gb_total=10,
        disk_gb_used=0,
        vcpus_total=1,
        vcpus_used=2,
        cpu_allocation_ratio=3.0,
    )
    assert (h.free_ram_mb, h.free_disk_gb, h.free_vcpus) == (500.0, 10.0, 1.0)
    assert hosts.RamFilter().passes(h, spec(flavor=replace(SMALL, memory_mb=500)))
    assert not hosts.RamFilter().passes(h, spec(flavor=replace(SMALL, memory_mb=501)))
    assert hosts.DiskFilter().passes(h, spec())
    assert not hosts.DiskFilter().passes(h, spec(flavor=replace(SMALL, ephemeral_gb=1)))
    assert hosts.CoreFilter().passes(h, spec())
    assert not hosts.CoreFilter().passes(h, spec(flavor=replace(SMALL, vcpus=2)))


def test_zone_image_and_compute_filters() -> None:
    h = host("h", availability_zone="az1", hypervisor_type="kvm")
    assert hosts.AvailabilityZoneFilter().passes(h, spec())
    assert hosts.AvailabilityZoneFilter().passes(h, spec(availability_zone="az1"))
    assert not hosts.AvailabilityZoneFilter().passes(h, spec(availability_zone="az2"))
    assert hosts.ImagePropertiesFilter().passes(
        h, spec(image_properties={"hypervisor_type": "KVM"})
    )
    assert not hosts.ImagePropertiesFilter().passes(
        h, spec(image_properties={"img_hv_type": "xen"})
    )
    assert hosts.ComputeFilter().passes(h, spec())
    assert not hosts.ComputeFilter().passes(replace(h, enabled=False), spec())
    assert not hosts.ComputeFilter().passes(replace(h, up=False), spec())


def test_same_and_different_host_hints() -> None:
    a, b = host("a", instances=frozenset({"u1"})), host("b")
    assert names(
        select([a, b], spec(hints=Hints(same_host=("u1",))), [hosts.SameHostFilter()], [])
    ) == ["a"]
    assert names(
        select([a, b], spec(hints=Hints(different_host=("u1",))), [hosts.DifferentHostFilter()], [])
    ) == ["b"]
    assert (
        len(select([a, b], spec(), [hosts.SameHostFilter(), hosts.DifferentHostFilter()], [])) == 2
    )


def test_server_group_affinity_and_anti_affinity() -> None:
    members = frozenset({"a"})
    a = host("a", group_members=frozenset({"u1"}), group_hosts=members)
    b = host("b", group_hosts=members)
    affinity = spec(hints=Hints(group="g", group_policy="affinity"))
    anti = spec(hints=Hints(group="g", group_policy="anti-affinity"))
    flt = [hosts.ServerGroupAffinityFilter(), hosts.ServerGroupAntiAffinityFilter()]
    assert names(select([a, b], affinity, flt, [])) == ["a"]
    assert names(select([a, b], anti, flt, [])) == ["b"]
    empty = [host("a"), host("b")]
    assert len(select(empty, affinity, flt, [])) == 2


def test_ram_weigher_spreads_or_packs() -> None:
    full, empty = host("full", memory_mb_used=3000), host("empty")
    assert names(weigh([full, empty], spec(), hosts.default_host_weighers(1.0))) == [
        "empty",
        "full",
    ]
    assert names(weigh([full, empty], spec(), hosts.default_host_weighers(-1.0))) == [
        "full",
        "empty",
    ]


# --- loading hosts and claiming on SQLite -------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cell.db'}")
    Base.metadata.create_all(engine)
    yield make_sessions(engine)
    engine.dispose()


def add_host(
    sessions: sessionmaker[Session],
    name: str,
    *,
    heartbeat_age: float = 0.0,
    service: bool = True,
    **node: Any,
) -> None:
    fields: dict[str, Any] = {
        "hypervisor_type": "kvm",
        "availability_zone": "nova",
        "vcpus": 4,
        "memory_mb": 2048,
        "local_gb": 100,
        "ram_allocation_ratio": 1.0,
        **node,
    }
    with sessions.begin() as s:
        s.add(ComputeNode(host=name, **fields))
        if service:
            s.add(
                Service(
                    host=name,
                    role="compute",
                    last_heartbeat=utcnow() - timedelta(seconds=heartbeat_age),
                )
            )


def node(sessions: sessionmaker[Session], name: str) -> ComputeNode:
    with sessions() as s:
        return s.scalars(sa.select(ComputeNode).where(ComputeNode.host == name)).one()


def test_load_hosts_reads_liveness_usage_and_group_members(
    sessions: sessionmaker[Session],
) -> None:
    add_host(sessions, "alive", memory_mb_used=100)
    add_host(sessions, "stale", heartbeat_age=120)
    add_host(sessions, "orphan", service=False)
    add_host(sessions, "forced")
    with sessions.begin() as s:
        s.execute(sa.update(Service).where(Service.host == "forced").values(forced_down=True))
        s.add(Service(host="alive", role="scheduler", disabled=True))
        common = {
            "name": "i",
            "project_id": "p",
            "user_id": "u",
            "flavor_id": "small",
            "image_id": "img",
            "vm_state": "active",
            "cell_path": "c",
        }
        s.add(Instance(uuid="u1", host="alive", server_group="g", **common))
        s.add(Instance(uuid="u2", host="stale", **common))
        s.add(Instance(uuid="u3", host="stale", server_group="g", deleted=True, **common))
    wanted = spec(hints=Hints(group="g", group_policy="affinity", different_host=("u2",)))
    with sessions() as s:
        found = {h.host: h for h in hosts.load_hosts(s, wanted, service_down_time=60)}
    assert {n: (h.up, h.enabled) for n, h in found.items()} == {
        "alive": (True, True),
        "stale": (False, True),
        "orphan": (False, True),
        "forced": (False, True),
    }
    assert found["alive"].memory_mb_used == 100
    assert found["alive"].group_members == {"u1"} and found["stale"].group_members == set()
    assert found["orphan"].group_hosts == {"alive"}
    assert found["stale"].instances == {"u2"}


def test_claim_release_and_resize_claim(sessions: sessionmaker[Session]) -> None:
    add_host(sessions, "h", vcpus=2, memory_mb=1024, local_gb=20, cpu_allocation_ratio=1.0)
    with sessions.begin() as s:
        assert claim(s, "h", SMALL)
        assert claim(s, "h", SMALL)
        assert not claim(s, "h", SMALL)  # RAM and vCPUs are full
        assert not claim(s, "nowhere", SMALL)
    n = node(sessions, "h")
    assert (n.vcpus_used, n.memory_mb_used, n.local_gb_used, n.running_vms) == (2, 1024, 20, 2)
    with sessions.begin() as s:
        bigger = replace(SMALL, memory_mb=768)
        assert not resize_claim(s, "h", SMALL, bigger)  # no room to grow
        release(s, "h", SMALL)
        assert resize_claim(s, "h", SMALL, bigger)
        assert resize_claim(s, "h", bigger, replace(SMALL, memory_mb=256))  # shrinking
        assert resize_claim(s, "h", SMALL, SMALL)
        assert not resize_claim(s, "nowhere", SMALL, SMALL)
    assert node(sessions, "h").memory_mb_used == 256
    with sessions.begin() as s:
        for _ in range(3):
            release(s, "h", SMALL)
    n = node(sessions, "h")
    assert (n.vcpus_used, n.memory_mb_used, n.local_gb_used, n.running_vms) == (0, 0, 0, 0)


def test_host_scheduler_spreads_and_packs(sessions: sessionmaker[Session]) -> None:
    add_host(sessions, "a", memory_mb=4096)
    add_host(sessions, "b", memory_mb=4096)
    spread = HostScheduler(sessions, SchedulerConfig(ram_weight_multiplier=1.0))
    assert spread.place(spec(), 4) == ["a", "b", "a", "b"]
    pack = HostScheduler(sessions, SchedulerConfig(ram_weight_multiplier=-1.0))
    assert pack.place(spec(), 3) == ["a", "a", "a"]
    assert node(sessions, "a").running_vms == 5


def test_host_scheduler_group_policies_count_its_own_placements(
    sessions: sessionmaker[Session],
) -> None:
    add_host(sessions, "a")
    add_host(sessions, "b")
    scheduler = HostScheduler(sessions, SchedulerConfig())
    anti = spec(hints=Hints(group="g", group_policy="anti-affinity"))
    assert sorted(scheduler.place(anti, 2)) == ["a", "b"]
    scheduler.release_all(SMALL, ["a", "b"])
    together = spec(hints=Hints(group="g2", group_policy="affinity"))
    placed = scheduler.place(together, 3)
    assert len(set(placed)) == 1


def test_host_scheduler_releases_its_claims_when_the_rest_do_not_fit(
    sessions: sessionmaker[Session],
) -> None:
    add_host(sessions, "a")
    add_host(sessions, "b")
    scheduler = HostScheduler(sessions, SchedulerConfig())
    anti = spec(hints=Hints(group="g", group_policy="anti-affinity"))
    with pytest.raises(NoValidHost, match=r"ServerGroupAntiAffinityFilter.*instance 3 of 3"):
        scheduler.place(anti, 3)
    assert node(sessions, "a").running_vms == 0 and node(sessions, "b").memory_mb_used == 0
    with pytest.raises(NoValidHost, match="RamFilter"):
        scheduler.place(spec(flavor=BIG), 1)


def test_a_lost_claim_rereads_hosts_with_this_requests_own_claims_counted(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_host(sessions, "a", memory_mb=4096)
    add_host(sessions, "b", memory_mb=4096)
    lost: list[str] = []

    def claim_losing_once(session: Session, host: str, flavor: FlavorSpec, count: int = 1) -> bool:
        if len(lost) == 0 and host == "b":
            lost.append(host)  # a concurrent build took it: the hosts are read again
            return False
        return claim(session, host, flavor, count)

    monkeypatch.setattr(claims_module, "claim", claim_losing_once)
    spread = HostScheduler(sessions, SchedulerConfig(ram_weight_multiplier=1.0))
    placed = spread.place(spec(), 4)
    assert lost == ["b"]
    # Planned a, b, a, b: a's two claims hold, b's are lost; the hosts are read again:
    # the read does not show a's two uncommitted claims, but the scheduler counts
    # them, so the last two go to b.
    assert placed == ["a", "a", "b", "b"]


def _usage(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        return {n.host: n.memory_mb_used for n in s.scalars(sa.select(ComputeNode))}


@pytest.mark.parametrize("multiplier", [1.0, -1.0])
def test_a_planned_request_claims_each_host_once_and_places_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multiplier: float
) -> None:
    """Spread (1.0) and stack (-1.0): one UPDATE per chosen host, the same hosts as
    claiming instance by instance gives."""
    placements = {}
    for planned in (True, False):
        engine = create_engine(f"sqlite:///{tmp_path / f'{planned}.db'}")
        Base.metadata.create_all(engine)
        cell = make_sessions(engine)
        for name, memory in (("a", 4096), ("b", 3072), ("c", 1024)):
            add_host(cell, name, memory_mb=memory)
        calls: list[tuple[str, int]] = []

        def counting(session: Session, host: str, flavor: FlavorSpec, count: int = 1) -> bool:
            calls.append((host, count))  # noqa: B023 (read right after this loop's place)
            return claim(session, host, flavor, count)

        monkeypatch.setattr(claims_module, "claim", counting)
        scheduler = HostScheduler(cell, SchedulerConfig(ram_weight_multiplier=multiplier))
        if not planned:
            monkeypatch.setattr(scheduler, "_place_planned", lambda *args: [])
        hosts_placed = scheduler.place(spec(), 10)
        placements[planned] = (sorted(hosts_placed), _usage(cell))
        if planned:
            assert len(calls) == len(set(hosts_placed))  # one claim per host
        else:
            assert len(calls) == 10
        engine.dispose()
    assert placements[True] == placements[False]


def test_a_planned_request_that_does_not_fit_takes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    add_host(sessions, "a", memory_mb=1536)  # room for 3
    add_host(sessions, "b", memory_mb=1024)  # room for 2
    scheduler = HostScheduler(sessions, SchedulerConfig())
    with pytest.raises(NoValidHost, match="placing instance 6 of 6"):
        scheduler.place(spec(), 6)
    assert _usage(sessions) == {"a": 0, "b": 0}
    assert sorted(scheduler.place(spec(), 5)) == ["a", "a", "a", "b", "b"]
    assert _usage(sessions) == {"a": 1536, "b": 1024}


def test_a_planned_claim_lost_to_a_concurrent_build_goes_elsewhere(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_host(sessions, "a", memory_mb=2048)  # room for 4
    add_host(sessions, "b", memory_mb=2048)
    scheduler = HostScheduler(sessions, SchedulerConfig(ram_weight_multiplier=1.0))
    real_candidates = scheduler.candidates

    def read_then_lose_room(request: RequestSpec, session: Session | None = None) -> list[Any]:
        read = real_candidates(request, session)
        with sessions.begin() as s:  # another build fills b after the read
            assert claim(s, "b", SMALL, 4)
        return read

    monkeypatch.setattr(scheduler, "candidates", read_then_lose_room)
    monkeypatch.setattr(scheduler, "_place_one", _place_one_reading(scheduler, real_candidates))
    placed = scheduler.place(spec(), 4)  # planned a, b, a, b: b's two go to a
    assert placed == ["a", "a", "a", "a"]
    assert _usage(sessions) == {"a": 2048, "b": 2048}


def test_placing_takes_one_connection_even_after_a_lost_claim(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hosts are read again after a lost claim inside the request's transaction,
    not on a second connection: on SQLite that transaction holds the write lock, and
    threads waiting for it may hold every other connection of the pool, and the cell
    would then stand still for the busy timeout and fail writes with "database is
    locked"."""
    add_host(sessions, "a", memory_mb=2048)
    add_host(sessions, "b", memory_mb=2048)
    engine = sessions.kw["bind"]
    scheduler = HostScheduler(sessions, SchedulerConfig(ram_weight_multiplier=1.0))
    real_candidates = scheduler.candidates
    checkouts: list[int] = []
    sa.event.listen(engine.pool, "checkout", lambda *_: checkouts.append(1))

    def read_then_lose_room(request: RequestSpec, session: Session | None = None) -> list[Any]:
        read = real_candidates(request, session)
        with sessions.begin() as s:  # another build fills b after the read
            assert claim(s, "b", SMALL, 4)
        checkouts.clear()  # from here on, only the request's own transaction
        return read

    monkeypatch.setattr(scheduler, "candidates", read_then_lose_room)
    monkeypatch.setattr(scheduler, "_place_one", _place_one_reading(scheduler, real_candidates))
    assert scheduler.place(spec(), 4) == ["a", "a", "a", "a"]  # b's two read again, to a
    assert len(checkouts) == 0  # the request's connection was checked out before


def _place_one_reading(scheduler: HostScheduler, read: Any) -> Any:
    """_place_one with the real host read (only the planned read loses room)."""
    original = HostScheduler._place_one

    def place_one(session: Session, request: RequestSpec, placed: Any, known: Any) -> str:
        scheduler.candidates = read  # type: ignore[method-assign]
        return original(scheduler, session, request, placed, known)

    return place_one
