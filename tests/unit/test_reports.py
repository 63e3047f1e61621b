"""Capacity as Nova's cells counted it: overcommit ratios, reserve_percent kept back
on every host, and units per flavor size summed host by host."""

from __future__ import annotations

from cellplane.db.models import ComputeNode
from cellplane.federation.reports import add_capacity, own_capacity
from cellplane.v1 import types_pb2


def node(host: str, **values: float) -> ComputeNode:
    fields: dict[str, object] = {
        "host": host,
        "hypervisor_type": "fake",
        "vcpus": 8,
        "memory_mb": 4096,
        "local_gb": 100,
        "vcpus_used": 0,
        "memory_mb_used": 0,
        "local_gb_used": 0,
        "cpu_allocation_ratio": 1.0,
        "ram_allocation_ratio": 1.0,
        "disk_allocation_ratio": 1.0,
    }
    fields.update(values)
    return ComputeNode(**fields)


def units(items: list[types_pb2.FlavorUnits], key: str) -> dict[int, int]:
    return {getattr(item, key): item.units for item in items}


# (memory_mb, root_gb + ephemeral_gb) of the flavors
SIZES = [(512, 1), (2048, 20)]


def test_units_are_counted_per_host_with_the_reserve_kept_back() -> None:
    nodes = [
        # 4096 MB, 1024 used, 10 % (409 MB) kept back: 2663 MB free -> 5 x 512, 1 x 2048
        node("a", memory_mb_used=1024, local_gb_used=10, vcpus_used=2),
        # 8192 x 1.5 = 12288 MB, 1228 kept back: 11060 MB free -> 21 x 512, 5 x 2048
        node("b", memory_mb=8192, ram_allocation_ratio=1.5, local_gb=200, local_gb_used=50),
    ]
    cap = own_capacity(nodes, SIZES, reserve_percent=10)
    assert cap.ram_total_mb == 4096 + 12288
    assert cap.ram_free_mb == 2663 + 11060
    assert units(list(cap.ram_units), "memory_mb") == {512: 5 + 21, 2048: 1 + 5}
    # disk: a keeps 10 of 100 back (80 free), b keeps 20 of 200 back (130 free)
    assert (cap.disk_total_gb, cap.disk_free_gb) == (300, 210)
    assert units(list(cap.disk_units), "disk_gb") == {1: 210, 20: 4 + 6}
    assert (cap.vcpus_total, cap.vcpus_free) == (16, 14)


def test_units_do_not_pool_free_memory_across_hosts() -> None:
    # Two hosts with 1500 MB free each: 3000 MB in all, but no 2048 MB instance fits.
    nodes = [node(h, memory_mb=2000, memory_mb_used=500) for h in ("a", "b")]
    cap = own_capacity(nodes, [(2048, 1)], reserve_percent=0)
    assert cap.ram_free_mb == 3000
    assert units(list(cap.ram_units), "memory_mb") == {2048: 0}


def test_a_full_host_reports_nothing_free_not_a_negative_amount() -> None:
    cap = own_capacity([node("a", memory_mb_used=4000)], [(512, 1)], reserve_percent=50)
    assert cap.ram_free_mb == 0
    assert units(list(cap.ram_units), "memory_mb") == {512: 0}


def test_no_hosts_means_zero_units_for_every_flavor() -> None:
    cap = own_capacity([], SIZES, reserve_percent=0)
    assert units(list(cap.ram_units), "memory_mb") == {512: 0, 2048: 0}
    assert cap.ram_total_mb == 0


def test_add_capacity_sums_totals_and_units_per_size() -> None:
    total = own_capacity([node("a")], SIZES, reserve_percent=0)
    other = own_capacity([node("b", memory_mb=1024)], [(512, 1), (1024, 1)], reserve_percent=0)
    add_capacity(total, other)
    assert total.ram_free_mb == 4096 + 1024
    assert units(list(total.ram_units), "memory_mb") == {512: 8 + 2, 1024: 1, 2048: 2}
