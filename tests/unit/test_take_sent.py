"""A parent counts what a child accepted until the child's next capacity report."""

from cellplane.federation.builds import take_sent
from cellplane.v1 import types_pb2


def _capacity() -> types_pb2.Capacity:
    return types_pb2.Capacity(
        ram_free_mb=8192,
        disk_free_gb=100,
        vcpus_free=8,
        ram_units=[types_pb2.FlavorUnits(memory_mb=1024, units=8)],
        disk_units=[types_pb2.FlavorUnits(disk_gb=10, units=10)],
    )


def test_builds_accepted_after_the_report_are_taken_off_it() -> None:
    capacity = _capacity()
    sent = [(5.0, 2048, 20, 2, 2)]  # two instances of 2 GB, 20 GB, 2 vcpus
    pending = take_sent(capacity, sent, reported_at=4.0)
    assert pending == sent
    assert capacity.ram_free_mb == 8192 - 4096
    assert capacity.disk_free_gb == 100 - 40
    assert capacity.vcpus_free == 8 - 4
    assert capacity.ram_units[0].units == 8 - 4  # each instance takes two 1 GB units
    assert capacity.disk_units[0].units == 10 - 4


def test_a_newer_report_already_counts_them() -> None:
    capacity = _capacity()
    pending = take_sent(capacity, [(5.0, 2048, 20, 2, 2)], reported_at=6.0)
    assert pending == []
    assert capacity == _capacity()


def test_never_below_zero() -> None:
    capacity = _capacity()
    take_sent(capacity, [(5.0, 4096, 80, 4, 10)], reported_at=0.0)
    assert (capacity.ram_free_mb, capacity.disk_free_gb, capacity.vcpus_free) == (0, 0, 0)
    assert capacity.ram_units[0].units == 0
    assert capacity.disk_units[0].units == 0
