"""A fake hypervisor for one host: guests in memory, resource accounting, latency, failures.

The fake behaves like a virt driver as the compute manager sees one: it keeps
its own view of the guests it runs (what they use, their power state), refuses
operations that make no sense for a guest's power state, takes time when told
to (``spawn_latency``, ``action_latency``) and fails on request, either
through image properties or programmatically:

- image property ``fail_spawn = "true"``: spawning a guest of that image fails;
- image property ``fail_action = "reboot"`` (or ``"reboot,stop"``): those
  actions fail for guests of that image;
- :meth:`FakeDriver.inject_failure` ``(action, times)``: the next ``times``
  calls of ``action`` fail, whatever the image.

Action names are the user-facing ones: ``spawn``, ``delete``, ``reboot``,
``rebuild``, ``resize``, ``confirm_resize``, ``revert_resize``, ``snapshot``,
``start``, ``stop``, ``pause``, ``unpause``, ``suspend``, ``resume``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from cellplane.compute import states
from cellplane.config import HostConfig
from cellplane.errors import AlreadyExists, CellplaneError, InstanceNotFound

# A snapshot is a compressed copy of the used part of the root disk: 64 MiB per GB.
_SNAPSHOT_BYTES_PER_GB = 64 * 1024 * 1024
_MIN_SNAPSHOT_BYTES = 16 * 1024 * 1024


class HypervisorError(CellplaneError):
    """The hypervisor failed to carry out an operation on a guest."""


@dataclass(frozen=True)
class GuestSize:
    """What a guest takes from its host."""

    vcpus: int
    memory_mb: int
    disk_gb: int

    @classmethod
    def of(cls, flavor: dict[str, Any]) -> GuestSize:
        """The size of ``flavor`` (keys vcpus, memory_mb, root_gb, ephemeral_gb)."""
        return cls(
            vcpus=int(flavor.get("vcpus", 0)),
            memory_mb=int(flavor.get("memory_mb", 0)),
            disk_gb=int(flavor.get("root_gb", 0)) + int(flavor.get("ephemeral_gb", 0)),
        )


@dataclass
class Guest:
    """One guest as the hypervisor sees it."""

    uuid: str
    size: GuestSize
    image_id: str
    image_properties: dict[str, Any]
    power_state: int = states.RUNNING
    # During a resize on the same host both disks exist until confirm or revert.
    resize_from: GuestSize | None = None
    fail_actions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        uuid: str,
        flavor: dict[str, Any],
        image_id: str,
        properties: dict[str, Any],
        *,
        power_state: int = states.RUNNING,
        resize_from: dict[str, Any] | None = None,
    ) -> Guest:
        """A guest of ``flavor`` from image ``image_id`` (with its ``properties``)."""
        return cls(
            uuid=uuid,
            size=GuestSize.of(flavor),
            image_id=image_id,
            image_properties=properties,
            power_state=power_state,
            resize_from=GuestSize.of(resize_from) if resize_from else None,
            fail_actions=_fail_actions(properties),
        )


class FakeDriver:
    """A simulated hypervisor for one host; thread-safe."""

    def __init__(
        self, host: HostConfig, *, spawn_latency: float = 0.0, action_latency: float = 0.0
    ) -> None:
        self.host = host
        self.spawn_latency = spawn_latency
        self.action_latency = action_latency
        self._guests: dict[str, Guest] = {}
        self._injected: Counter[str] = Counter()
        self._lock = threading.Lock()

    # -- failure injection and inspection ---------------------------------

    def inject_failure(self, action: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``action`` fail on any guest."""
        with self._lock:
            self._injected[action] += times

    def get_power_state(self, uuid: str) -> int:
        """The power state of guest ``uuid`` (InstanceNotFound if it does not run here)."""
        with self._lock:
            return self._guest(uuid).power_state

    def list_instances(self) -> list[str]:
        """UUIDs of the guests on this host."""
        with self._lock:
            return sorted(self._guests)

    def instance_exists(self, uuid: str) -> bool:
        """Whether guest ``uuid`` is on this host (a look-up, not a listing)."""
        with self._lock:
            return uuid in self._guests

    def get_available_resource(self) -> dict[str, Any]:
        """The host's size and what its guests use, as the resource tracker reports it."""
        with self._lock:
            sizes = [g.size for g in self._guests.values()]
            sizes += [g.resize_from for g in self._guests.values() if g.resize_from]
            return {
                "hypervisor_type": self.host.hypervisor_type,
                "vcpus": self.host.vcpus,
                "memory_mb": self.host.memory_mb,
                "local_gb": self.host.local_gb,
                "vcpus_used": sum(s.vcpus for s in sizes),
                "memory_mb_used": sum(s.memory_mb for s in sizes),
                "local_gb_used": sum(s.disk_gb for s in sizes),
                "running_vms": len(self._guests),
            }

    # -- lifecycle ---------------------------------------------------------

    def spawn(
        self,
        uuid: str,
        flavor: dict[str, Any],
        image_id: str,
        image_properties: dict[str, Any] | None = None,
    ) -> None:
        """Create and boot guest ``uuid``."""
        properties = dict(image_properties or {})
        self._wait(self.spawn_latency)
        with self._lock:
            if uuid in self._guests:
                raise AlreadyExists(f"guest {uuid} already exists on host {self.host.name}")
            if _truthy(properties.get("fail_spawn")):
                raise HypervisorError(f"spawn of {uuid} failed (image {image_id} has fail_spawn)")
            self._take_injected("spawn", uuid)
            self._guests[uuid] = Guest.of(uuid, flavor, image_id, properties)

    def adopt(
        self,
        uuid: str,
        flavor: dict[str, Any],
        image_id: str,
        image_properties: dict[str, Any] | None = None,
        *,
        power_state: int = states.RUNNING,
        resize_from: dict[str, Any] | None = None,
    ) -> bool:
        """Know guest ``uuid`` as already on this host, in ``power_state`` (with its
        old size too if a resize awaits confirmation): a hypervisor's guests outlive
        a restart of its compute service, and this is how the fake gets them back.
        No latency, no failure; False if the guest is here already."""
        properties = dict(image_properties or {})
        with self._lock:
            if uuid in self._guests:
                return False
            self._guests[uuid] = Guest.of(
                uuid, flavor, image_id, properties, power_state=power_state, resize_from=resize_from
            )
            return True

    def destroy(self, uuid: str) -> bool:
        """Power off and delete guest ``uuid``; False if it was not here."""
        self._wait(self.action_latency)
        with self._lock:
            guest = self._guests.get(uuid)
            if guest is None:
                return False
            self._check_failure(guest, "delete")
            del self._guests[uuid]
            return True

    def reboot(self, uuid: str, hard: bool = False) -> None:
        """Reboot guest ``uuid``; a soft reboot needs a running guest."""
        with self._acting(uuid, "reboot") as guest:
            if not hard and guest.power_state != states.RUNNING:
                raise HypervisorError(f"soft reboot of {uuid}: guest is not running")
            guest.power_state = states.RUNNING

    def rebuild(
        self, uuid: str, image_id: str, image_properties: dict[str, Any] | None = None
    ) -> None:
        """Re-create guest ``uuid``'s root disk from ``image_id`` and boot it."""
        with self._acting(uuid, "rebuild") as guest:
            properties = dict(image_properties or {})
            if _truthy(properties.get("fail_spawn")):
                raise HypervisorError(f"rebuild of {uuid} failed (image {image_id} has fail_spawn)")
            guest.image_id, guest.image_properties = image_id, properties
            guest.fail_actions = _fail_actions(properties)
            guest.power_state = states.RUNNING

    # -- resize: migrate + finish, then confirm or revert -----------------

    def migrate_disk_and_power_off(self, uuid: str, flavor: dict[str, Any]) -> None:
        """First half of a resize: power off and copy the disk to the new size."""
        with self._acting(uuid, "resize") as guest:
            if guest.resize_from is not None:
                raise HypervisorError(f"guest {uuid} is already being resized")
            guest.resize_from, guest.size = guest.size, GuestSize.of(flavor)
            guest.power_state = states.SHUTDOWN

    def finish_migration(self, uuid: str, power_on: bool = True) -> None:
        """Second half of a resize: boot the guest at its new size (if it was running)."""
        with self._lock:
            guest = self._guest(uuid)
            if power_on:
                guest.power_state = states.RUNNING

    def resize(self, uuid: str, flavor: dict[str, Any], power_on: bool = True) -> None:
        """Both halves of a resize on this host."""
        self.migrate_disk_and_power_off(uuid, flavor)
        self.finish_migration(uuid, power_on)

    def confirm_migration(self, uuid: str) -> None:
        """Drop the disk of the old size."""
        with self._acting(uuid, "confirm_resize") as guest:
            if guest.resize_from is None:
                raise HypervisorError(f"guest {uuid} has no resize to confirm")
            guest.resize_from = None

    def finish_revert_migration(self, uuid: str, power_on: bool = True) -> None:
        """Go back to the old size and disk."""
        with self._acting(uuid, "revert_resize") as guest:
            if guest.resize_from is None:
                raise HypervisorError(f"guest {uuid} has no resize to revert")
            guest.size, guest.resize_from = guest.resize_from, None
            guest.power_state = states.RUNNING if power_on else states.SHUTDOWN

    def abort_migration(self, uuid: str) -> None:
        """Undo a failed resize without failing (cleanup path)."""
        with self._lock:
            guest = self._guests.get(uuid)
            if guest is not None and guest.resize_from is not None:
                guest.size, guest.resize_from = guest.resize_from, None

    # -- everything else ---------------------------------------------------

    def snapshot(self, uuid: str) -> int:
        """Snapshot guest ``uuid``'s root disk; returns the image size in bytes."""
        with self._acting(uuid, "snapshot") as guest:
            return max(_MIN_SNAPSHOT_BYTES, guest.size.disk_gb * _SNAPSHOT_BYTES_PER_GB)

    def power_on(self, uuid: str) -> None:
        """Boot a shut-down guest."""
        self._switch(uuid, "start", {states.SHUTDOWN, states.CRASHED}, states.RUNNING)

    def power_off(self, uuid: str) -> None:
        """Shut a guest down (from any power state)."""
        self._switch(uuid, "stop", None, states.SHUTDOWN)

    def pause(self, uuid: str) -> None:
        """Freeze a running guest in memory."""
        self._switch(uuid, "pause", {states.RUNNING}, states.POWER_PAUSED)

    def unpause(self, uuid: str) -> None:
        """Thaw a paused guest."""
        self._switch(uuid, "unpause", {states.POWER_PAUSED}, states.RUNNING)

    def suspend(self, uuid: str) -> None:
        """Save a running guest's memory to disk and stop it."""
        self._switch(uuid, "suspend", {states.RUNNING}, states.POWER_SUSPENDED)

    def resume(self, uuid: str) -> None:
        """Restore a suspended guest."""
        self._switch(uuid, "resume", {states.POWER_SUSPENDED}, states.RUNNING)

    # -- internals ---------------------------------------------------------

    def _switch(self, uuid: str, action: str, allowed: set[int] | None, target: int) -> None:
        with self._acting(uuid, action) as guest:
            if allowed is not None and guest.power_state not in allowed:
                raise HypervisorError(
                    f"cannot {action} guest {uuid} in power state {guest.power_state}"
                )
            guest.power_state = target

    def _acting(self, uuid: str, action: str) -> _Acting:
        self._wait(self.action_latency)
        return _Acting(self, uuid, action)

    def _guest(self, uuid: str) -> Guest:
        guest = self._guests.get(uuid)
        if guest is None:
            raise InstanceNotFound(f"guest {uuid} is not on host {self.host.name}")
        return guest

    def _check_failure(self, guest: Guest, action: str) -> None:
        if action in guest.fail_actions:
            raise HypervisorError(f"{action} of {guest.uuid} failed (image has fail_action)")
        self._take_injected(action, guest.uuid)

    def _take_injected(self, action: str, uuid: str) -> None:
        if self._injected[action] > 0:
            self._injected[action] -= 1
            raise HypervisorError(f"{action} of {uuid} failed (injected failure)")

    @staticmethod
    def _wait(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class _Acting:
    """Holds the driver lock around one operation on a guest, after its failure checks.

    The operation works on a copy that replaces the guest only if it succeeds,
    so a failing operation leaves the guest as it was.
    """

    def __init__(self, driver: FakeDriver, uuid: str, action: str) -> None:
        self._driver, self._uuid, self._action = driver, uuid, action
        self._copy: Guest | None = None

    def __enter__(self) -> Guest:
        self._driver._lock.acquire()
        try:
            guest = self._driver._guest(self._uuid)
            self._driver._check_failure(guest, self._action)
        except BaseException:
            self._driver._lock.release()
            raise
        self._copy = replace(guest)
        return self._copy

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        try:
            if exc_type is None and self._copy is not None:
                self._driver._guests[self._uuid] = self._copy
        finally:
            self._driver._lock.release()


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes", "on"}


def _fail_actions(properties: dict[str, Any]) -> frozenset[str]:
    raw = properties.get("fail_action") or ""
    return frozenset(a.strip() for a in str(raw).split(",") if a.strip())
