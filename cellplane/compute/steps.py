"""What each instance action does on the host, and the states it ends in.

A step runs the driver (and, for resize, its claim) and returns an
:class:`Outcome`: the instance's final columns plus database work that the
compute manager commits in the same transaction as them. A step that takes
something before it can fail registers how to give it back in ``run.undo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cellplane.compute import states
from cellplane.compute.driver import FakeDriver
from cellplane.compute.resources import claim_extra, flavor_spec, release, release_extra
from cellplane.db.instances import InstanceChanges
from cellplane.db.models import Image, utcnow
from cellplane.errors import CellplaneError, ResourceExhausted
from cellplane.network.role import NetworkClient


@dataclass
class Run:
    """One action being carried out: the instance as it was when the action began."""

    uuid: str
    key: str  # the state machine entry (``reboot_hard`` for a hard reboot)
    request_id: str
    params: dict[str, Any]
    vm_state: str
    flavor_id: str
    flavor: dict[str, Any]
    image_id: str
    host: str | None
    # DB work that gives back what the action took, run in the fault's transaction.
    undo: list[Callable[[Session], None]] = field(default_factory=list)


@dataclass
class Outcome:
    """The final columns of a step, DB work to commit with them, and extras for the caller."""

    changes: dict[str, Any] = field(default_factory=dict)
    db_work: Callable[[Session], None] | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostContext:
    """What the steps of one host work with."""

    name: str
    driver: FakeDriver
    sessions: sessionmaker[Session]
    changes: InstanceChanges
    network: NetworkClient

    def update(self, uuid: str, **changes: Any) -> None:
        with self.sessions.begin() as session:
            self.changes.update(session, uuid, **changes)


Step = Callable[[HostContext, Run, states.Transition], Outcome]


def image_properties(session: Session, image_id: str) -> dict[str, Any]:
    """The properties of image ``image_id`` if this cell knows it, else none."""
    image = session.query(Image).filter_by(uuid=image_id).one_or_none()
    return dict(image.properties or {}) if image is not None else {}


def _settled(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    return Outcome(
        {
            "vm_state": step.final_vm_state or run.vm_state,
            "power_state": host.driver.get_power_state(run.uuid),
        }
    )


def reboot(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    host.driver.reboot(run.uuid, hard=run.key == "reboot_hard")
    return _settled(host, run, step)


def rebuild(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    image_id = run.params.get("image_id") or run.image_id
    properties = run.params.get("image_properties")
    if properties is None:
        with host.sessions() as session:
            properties = image_properties(session, image_id)
    host.driver.rebuild(run.uuid, image_id, properties)
    outcome = _settled(host, run, step)
    outcome.changes.update(image_id=image_id, launched_at=utcnow())
    return outcome


def resize(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    """Same-host resize (Nova's allow_resize_to_same_host): both sizes held until confirmed."""
    new = {k: v for k, v in run.params["flavor"].items() if k != "old"}
    new_id = str(new.get("flavor_id") or new.get("id") or new.get("name") or run.flavor_id)
    spec = flavor_spec(new_id, new)
    with host.sessions.begin() as session:
        if not claim_extra(session, host.name, spec):
            raise ResourceExhausted(
                f"resize of {run.uuid} to flavor {new_id} does not fit on host {host.name}"
            )
        host.changes.update(session, run.uuid, task_state=states.RESIZE_MIGRATING)
    run.undo.append(lambda s: release_extra(s, host.name, spec))
    run.undo.append(lambda s: host.driver.abort_migration(run.uuid))
    host.driver.migrate_disk_and_power_off(run.uuid, new)
    host.update(run.uuid, task_state=states.RESIZE_FINISH)
    host.driver.finish_migration(run.uuid, power_on=run.vm_state != states.STOPPED)
    old = {"flavor_id": run.flavor_id, "flavor": run.flavor, "vm_state": run.vm_state}
    return Outcome(
        {
            "vm_state": states.RESIZED,
            "flavor_id": new_id,
            "flavor": {**new, "old": old},
            "power_state": host.driver.get_power_state(run.uuid),
        }
    )


def confirm_resize(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    old = _old_flavor(run)
    host.driver.confirm_migration(run.uuid)
    spec = flavor_spec(old["flavor_id"], old["flavor"])
    power = host.driver.get_power_state(run.uuid)
    return Outcome(
        {
            "vm_state": states.ACTIVE if power == states.RUNNING else states.STOPPED,
            "flavor": {k: v for k, v in run.flavor.items() if k != "old"},
            "power_state": power,
        },
        db_work=lambda s: release_extra(s, host.name, spec),
    )


def revert_resize(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    old = _old_flavor(run)
    back_to = states.STOPPED if old.get("vm_state") == states.STOPPED else states.ACTIVE
    host.driver.finish_revert_migration(run.uuid, power_on=back_to == states.ACTIVE)
    new = {k: v for k, v in run.flavor.items() if k != "old"}
    spec = flavor_spec(run.flavor_id, new)
    return Outcome(
        {
            "vm_state": back_to,
            "flavor_id": old["flavor_id"],
            "flavor": old["flavor"],
            "power_state": host.driver.get_power_state(run.uuid),
        },
        db_work=lambda s: release_extra(s, host.name, spec),
    )


def snapshot(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    """Snapshot the guest; an image row named by ``params.image_id`` gets its size."""
    size = host.driver.snapshot(run.uuid)
    image_id = run.params.get("image_id")

    def finish_image(session: Session) -> None:
        image = session.query(Image).filter_by(uuid=image_id).one_or_none()
        if image is not None:
            image.size_bytes, image.status = size, "active"

    return Outcome(
        {"vm_state": run.vm_state},
        db_work=finish_image if image_id else None,
        result={"image_size": size},
    )


def delete(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    host.driver.destroy(run.uuid)
    host.network.deallocate_for_instance(run.uuid)
    if run.host != host.name:  # no claim held here (never built, or the build failed)
        return Outcome()
    spec = flavor_spec(run.flavor_id, run.flavor)
    old = run.flavor.get("old")

    def release_claims(session: Session) -> None:
        release(session, host.name, spec)
        if isinstance(old, dict):  # a resize held both sizes
            release_extra(session, host.name, flavor_spec(old["flavor_id"], old["flavor"]))

    return Outcome(db_work=release_claims)


_POWER_METHODS = {
    "start": "power_on",
    "stop": "power_off",
    "pause": "pause",
    "unpause": "unpause",
    "suspend": "suspend",
    "resume": "resume",
}


def power(host: HostContext, run: Run, step: states.Transition) -> Outcome:
    getattr(host.driver, _POWER_METHODS[run.key])(run.uuid)
    return _settled(host, run, step)


def _old_flavor(run: Run) -> dict[str, Any]:
    old = run.flavor.get("old")
    if not isinstance(old, dict) or "flavor" not in old:
        raise CellplaneError(f"instance {run.uuid} has no resize in progress")
    return old


STEPS: dict[str, Step] = {
    "reboot": reboot,
    "reboot_hard": reboot,
    "rebuild": rebuild,
    "resize": resize,
    "confirm_resize": confirm_resize,
    "revert_resize": revert_resize,
    "snapshot": snapshot,
    "delete": delete,
    **dict.fromkeys(_POWER_METHODS, power),
}
