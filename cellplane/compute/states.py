"""Nova's instance state machine: vm_state, task_state, power_state, and which
action is allowed in which state.

States are the lower-case names Nova used (``active``, ``resize_prep``, ...);
the API edge maps them to the protobuf enums.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellplane.errors import InvalidArgument, WrongState

# vm_states
BUILDING = "building"
ACTIVE = "active"
STOPPED = "stopped"
PAUSED = "paused"
SUSPENDED = "suspended"
RESIZED = "resized"
ERROR = "error"
DELETED = "deleted"
SOFT_DELETED = "soft-delete"
RESCUED = "rescued"
SHELVED = "shelved"
VM_STATES = (
    BUILDING,
    ACTIVE,
    STOPPED,
    PAUSED,
    SUSPENDED,
    RESIZED,
    ERROR,
    DELETED,
    SOFT_DELETED,
    RESCUED,
    SHELVED,
)

# task_states (None: no task running)
SCHEDULING = "scheduling"
NETWORKING = "networking"
SPAWNING = "spawning"
REBOOTING = "rebooting"
REBOOTING_HARD = "rebooting_hard"
REBUILDING = "rebuilding"
RESIZE_PREP = "resize_prep"
RESIZE_MIGRATING = "resize_migrating"
RESIZE_FINISH = "resize_finish"
RESIZE_CONFIRMING = "resize_confirming"
RESIZE_REVERTING = "resize_reverting"
IMAGE_SNAPSHOT = "image_snapshot"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
PAUSING = "pausing"
UNPAUSING = "unpausing"
SUSPENDING = "suspending"
RESUMING = "resuming"
DELETING = "deleting"
TASK_STATES = (
    SCHEDULING,
    NETWORKING,
    SPAWNING,
    REBOOTING,
    REBOOTING_HARD,
    REBUILDING,
    RESIZE_PREP,
    RESIZE_MIGRATING,
    RESIZE_FINISH,
    RESIZE_CONFIRMING,
    RESIZE_REVERTING,
    IMAGE_SNAPSHOT,
    POWERING_OFF,
    POWERING_ON,
    PAUSING,
    UNPAUSING,
    SUSPENDING,
    RESUMING,
    DELETING,
)

# power_states (numbers as in Nova and in the protobuf enum)
NOSTATE = 0
RUNNING = 1
POWER_PAUSED = 3
SHUTDOWN = 4
CRASHED = 6
POWER_SUSPENDED = 7


@dataclass(frozen=True)
class Transition:
    """One action: where it may start, the task it runs as, where it ends."""

    allowed: frozenset[str]
    task: str
    final_vm_state: str | None  # None: back to the state it started in
    final_power_state: int | None  # None: unchanged
    any_task: bool = False  # may start while another task runs (delete, hard reboot)


_ALL_LIVE = frozenset(
    {ACTIVE, STOPPED, PAUSED, SUSPENDED, RESIZED, ERROR, BUILDING, RESCUED, SHELVED, SOFT_DELETED}
)

ACTIONS: dict[str, Transition] = {
    "reboot": Transition(frozenset({ACTIVE}), REBOOTING, ACTIVE, RUNNING),
    "reboot_hard": Transition(
        frozenset({ACTIVE, STOPPED, PAUSED, SUSPENDED, ERROR}),
        REBOOTING_HARD,
        ACTIVE,
        RUNNING,
        any_task=True,
    ),
    "rebuild": Transition(frozenset({ACTIVE, STOPPED, ERROR}), REBUILDING, ACTIVE, RUNNING),
    "resize": Transition(frozenset({ACTIVE, STOPPED}), RESIZE_PREP, RESIZED, RUNNING),
    "confirm_resize": Transition(frozenset({RESIZED}), RESIZE_CONFIRMING, ACTIVE, None),
    "revert_resize": Transition(frozenset({RESIZED}), RESIZE_REVERTING, ACTIVE, RUNNING),
    "snapshot": Transition(
        frozenset({ACTIVE, STOPPED, PAUSED, SUSPENDED}), IMAGE_SNAPSHOT, None, None
    ),
    "start": Transition(frozenset({STOPPED}), POWERING_ON, ACTIVE, RUNNING),
    "stop": Transition(frozenset({ACTIVE, ERROR, RESCUED}), POWERING_OFF, STOPPED, SHUTDOWN),
    "pause": Transition(frozenset({ACTIVE}), PAUSING, PAUSED, POWER_PAUSED),
    "unpause": Transition(frozenset({PAUSED}), UNPAUSING, ACTIVE, RUNNING),
    "suspend": Transition(frozenset({ACTIVE}), SUSPENDING, SUSPENDED, POWER_SUSPENDED),
    "resume": Transition(frozenset({SUSPENDED}), RESUMING, ACTIVE, RUNNING),
    "delete": Transition(_ALL_LIVE, DELETING, DELETED, NOSTATE, any_task=True),
}


def transition(action: str) -> Transition:
    """The transition of ``action`` (InvalidArgument if there is no such action)."""
    try:
        return ACTIONS[action]
    except KeyError:
        raise InvalidArgument(
            f"unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}"
        ) from None


def check_allowed(action: str, uuid: str, vm_state: str, task_state: str | None) -> Transition:
    """Raise WrongState (naming the current state) unless ``action`` may start now."""
    step = transition(action)
    if vm_state not in step.allowed:
        raise WrongState(
            f"cannot {action.replace('_', ' ')} instance {uuid} while it is {vm_state}"
            f" (allowed in: {', '.join(sorted(step.allowed))})"
        )
    if task_state is not None and not step.any_task:
        raise WrongState(
            f"cannot {action.replace('_', ' ')} instance {uuid} while it is {vm_state}"
            f" and busy with task {task_state}"
        )
    return step
