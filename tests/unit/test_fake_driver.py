"""The fake hypervisor: guests, power states, resource accounting, failure injection."""

from __future__ import annotations

import pytest

from cellplane.compute import states
from cellplane.compute.driver import FakeDriver, HypervisorError
from cellplane.config import HostConfig
from cellplane.errors import AlreadyExists, InstanceNotFound

SMALL = {"vcpus": 1, "memory_mb": 512, "root_gb": 10}
LARGE = {"vcpus": 4, "memory_mb": 4096, "root_gb": 40, "ephemeral_gb": 10}


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver(HostConfig("host1", vcpus=8, memory_mb=16384, local_gb=500))


def _used(driver: FakeDriver) -> tuple[int, int, int, int]:
    r = driver.get_available_resource()
    return r["vcpus_used"], r["memory_mb_used"], r["local_gb_used"], r["running_vms"]


def test_spawn_and_destroy_account_for_guests(driver: FakeDriver) -> None:
    assert _used(driver) == (0, 0, 0, 0)
    driver.spawn("a", SMALL, "img")
    driver.spawn("b", LARGE, "img")
    assert driver.list_instances() == ["a", "b"]
    assert driver.instance_exists("a") and not driver.instance_exists("c")
    assert _used(driver) == (5, 4608, 60, 2)
    assert driver.get_available_resource()["vcpus"] == 8
    assert driver.destroy("a") is True
    assert driver.destroy("a") is False
    assert _used(driver) == (4, 4096, 50, 1)
    with pytest.raises(AlreadyExists):
        driver.spawn("b", SMALL, "img")
    with pytest.raises(InstanceNotFound):
        driver.get_power_state("a")


def test_power_transitions_follow_the_guest_state(driver: FakeDriver) -> None:
    driver.spawn("a", SMALL, "img")
    assert driver.get_power_state("a") == states.RUNNING
    driver.pause("a")
    assert driver.get_power_state("a") == states.POWER_PAUSED
    with pytest.raises(HypervisorError, match="power state"):
        driver.suspend("a")  # a paused guest cannot be suspended
    driver.unpause("a")
    driver.suspend("a")
    assert driver.get_power_state("a") == states.POWER_SUSPENDED
    driver.resume("a")
    driver.power_off("a")
    assert driver.get_power_state("a") == states.SHUTDOWN
    with pytest.raises(HypervisorError, match="not running"):
        driver.reboot("a")  # soft reboot needs a running guest
    driver.reboot("a", hard=True)
    assert driver.get_power_state("a") == states.RUNNING


def test_resize_holds_both_sizes_until_confirm_or_revert(driver: FakeDriver) -> None:
    driver.spawn("a", SMALL, "img")
    driver.resize("a", LARGE)
    assert _used(driver) == (5, 4608, 60, 1)
    driver.confirm_migration("a")
    assert _used(driver) == (4, 4096, 50, 1)
    driver.resize("a", SMALL, power_on=False)
    assert driver.get_power_state("a") == states.SHUTDOWN
    driver.finish_revert_migration("a", power_on=True)
    assert _used(driver) == (4, 4096, 50, 1)
    assert driver.get_power_state("a") == states.RUNNING
    with pytest.raises(HypervisorError, match="no resize"):
        driver.confirm_migration("a")


def test_snapshot_size_grows_with_the_disk(driver: FakeDriver) -> None:
    driver.spawn("a", SMALL, "img")
    driver.spawn("b", LARGE, "img")
    assert 0 < driver.snapshot("a") < driver.snapshot("b")


def test_rebuild_changes_the_image_and_boots(driver: FakeDriver) -> None:
    driver.spawn("a", SMALL, "img1")
    driver.power_off("a")
    driver.rebuild("a", "img2", {"fail_action": "pause"})
    assert driver.get_power_state("a") == states.RUNNING
    with pytest.raises(HypervisorError, match="fail_action"):
        driver.pause("a")


def test_image_property_fail_spawn_fails_the_spawn(driver: FakeDriver) -> None:
    with pytest.raises(HypervisorError, match="fail_spawn"):
        driver.spawn("a", SMALL, "img", {"fail_spawn": "true"})
    assert driver.list_instances() == []
    driver.spawn("b", SMALL, "img", {"fail_spawn": "false"})


def test_image_property_fail_action_fails_only_that_action(driver: FakeDriver) -> None:
    driver.spawn("a", SMALL, "img", {"fail_action": "reboot,stop"})
    with pytest.raises(HypervisorError):
        driver.reboot("a")
    with pytest.raises(HypervisorError):
        driver.power_off("a")
    assert driver.get_power_state("a") == states.RUNNING  # a failure changes nothing
    driver.pause("a")


def test_injected_failure_fails_the_next_calls_only(driver: FakeDriver) -> None:
    driver.spawn("a", SMALL, "img")
    driver.inject_failure("reboot", times=2)
    for _ in range(2):
        with pytest.raises(HypervisorError, match="injected"):
            driver.reboot("a")
    driver.reboot("a")
    driver.inject_failure("spawn")
    with pytest.raises(HypervisorError):
        driver.spawn("b", SMALL, "img")
    driver.spawn("b", SMALL, "img")
    driver.inject_failure("resize")
    with pytest.raises(HypervisorError):
        driver.resize("a", LARGE)
    assert _used(driver) == (2, 1024, 20, 2)  # the failed resize took nothing


def test_operations_on_an_unknown_guest_raise_not_found(driver: FakeDriver) -> None:
    for call in (driver.pause, driver.power_on, driver.snapshot, driver.confirm_migration):
        with pytest.raises(InstanceNotFound):
            call("missing")
