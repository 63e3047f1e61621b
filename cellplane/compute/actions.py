"""Accepting an action on an instance: check the state machine, set the task, record it.

Whoever accepts an action (the cells role, or the compute manager when called
directly) calls :func:`begin_action` in the owning cell; the compute manager
then carries it out and sets the final states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from cellplane.compute import states
from cellplane.db.instances import InstanceChanges, InstanceRow, start_action
from cellplane.errors import InvalidArgument

_FLAVOR_SIZES = ("vcpus", "memory_mb", "root_gb")

# Action -> the event name recorded for its compute step (Nova's names).
_EVENTS = {
    "delete": "compute_terminate_instance",
    "confirm_resize": "compute_confirm_resize",
    "revert_resize": "compute_revert_resize",
}


def action_key(action: str, params: Mapping[str, Any] | None = None) -> str:
    """The state machine entry of ``action``: a reboot with ``hard`` set is ``reboot_hard``."""
    if action == "reboot" and params and params.get("hard"):
        return "reboot_hard"
    return action


def action_name(action: str) -> str:
    """The name an action is recorded under (a hard reboot is a ``reboot``)."""
    return "reboot" if action == "reboot_hard" else action


def event_name(action: str) -> str:
    """The instance action event of the compute step of ``action``."""
    name = action_name(action)
    return _EVENTS.get(name, f"compute_{name}_instance")


def check_params(action: str, params: Mapping[str, Any] | None) -> None:
    """Refuse parameters ``action`` cannot run with (InvalidArgument, nothing changed)."""
    params = params or {}
    if action == "resize":
        flavor = params.get("flavor")
        if not isinstance(flavor, Mapping):
            raise InvalidArgument("resize needs params.flavor, a dict of the new size")
        for key in (*_FLAVOR_SIZES, "ephemeral_gb"):
            value = flavor.get(key, 0 if key == "ephemeral_gb" else None)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"resize: flavor.{key} must be an integer >= 0")
        if flavor["vcpus"] < 1 or flavor["memory_mb"] < 1:
            raise InvalidArgument("resize: flavor needs at least 1 vCPU and 1 MB of RAM")
    elif action == "rebuild":
        image_id = params.get("image_id")
        if image_id is not None and (not isinstance(image_id, str) or not image_id):
            raise InvalidArgument("rebuild: params.image_id must be a non-empty string")


def begin_action(
    session: Session,
    changes: InstanceChanges,
    uuid: str,
    action: str,
    request_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    user_id: str = "",
    message: str = "",
) -> InstanceRow:
    """Accept ``action`` on instance ``uuid`` in the caller's transaction.

    Raises InstanceNotFound, InvalidArgument (unknown action or bad params) or
    WrongState naming the instance's current state; otherwise sets the
    action's task_state (a new version, pushed) and records the
    InstanceAction under ``request_id``.
    """
    key = action_key(action, params)
    if params is not None:  # without params they are checked when the action runs
        check_params(key, params)
    held = changes.get(session, uuid, for_update=True)
    step = states.check_allowed(key, uuid, held.vm_state, held.task_state)
    instance = changes.update(session, uuid, task_state=step.task)
    start_action(session, instance, action_name(key), request_id, user_id=user_id, message=message)
    return instance
