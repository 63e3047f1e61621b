"""The compute manager of one host: builds instances and carries out their actions.

Served over local RPC on topic ``compute`` with server ``<host>``, so a cast
to ``compute.<host>`` reaches exactly this host. Every public method is an
RPC method. Each step commits its own short transaction through
:class:`~cellplane.db.instances.InstanceChanges` (a new version, pushed), and
no transaction stays open across a driver call or an RPC call.

Failures follow Nova: a failed build, rebuild, resize (or confirm, revert,
delete) leaves the instance in ``error`` with a fault; any other failed action
records a fault and returns the instance to the state it started in, with no
task. A resize that does not fit on the host, or an action with bad params,
is refused the same gentle way.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient
from cellplane.batching import ThreadBatcher
from cellplane.compute import states, steps
from cellplane.compute.actions import (
    action_key,
    action_name,
    begin_action,
    check_params,
    event_name,
)
from cellplane.compute.driver import FakeDriver
from cellplane.compute.resources import flavor_spec, release
from cellplane.compute.steps import STEPS, HostContext, Run
from cellplane.config import ComputeConfig, HostConfig
from cellplane.db.instances import (
    InstanceChanges,
    InstanceRow,
    record_event,
    record_events,
    snapshots,
)
from cellplane.db.models import Instance, InstanceAction, utcnow
from cellplane.errors import (
    CellplaneError,
    Code,
    InstanceNotFound,
    InvalidArgument,
    ResourceExhausted,
    status_of,
)
from cellplane.network.role import NetworkClient
from cellplane.scheduling.spec import FlavorSpec

log = structlog.get_logger()

# Actions whose failure leaves the instance in ERROR (the others go back).
_ERROR_ON_FAILURE = frozenset({"rebuild", "resize", "confirm_resize", "revert_resize", "delete"})
_MAX_FAULT_DETAILS = 8000
MAX_BUILDS_PER_BATCH = 32  # build casts (of any size) built together
_UPDATE_ATTEMPTS = 3  # batch updates tried again without instances deleted meanwhile

# This host's live instances, as a start of the service takes them back.
_ON_HOST = select(
    Instance.uuid,
    Instance.vm_state,
    Instance.task_state,
    Instance.power_state,
    Instance.flavor,
    Instance.image_id,
).where(Instance.host == bindparam("host"), Instance.deleted.is_(False))
# The action each task belongs to; those that need nothing but their name run again
# after a restart, the others (their parameters are gone) end with a fault.
_ACTION_OF_TASK = {
    **{step.task: key for key, step in states.ACTIONS.items()},
    states.RESIZE_MIGRATING: "resize",  # the later steps of a resize
    states.RESIZE_FINISH: "resize",
}
_RESUMABLE = frozenset(
    {
        "reboot",
        "reboot_hard",
        "start",
        "stop",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "confirm_resize",
        "revert_resize",
        "delete",
    }
)


class ComputeManager:
    """Builds and runs the instances of one host on its driver."""

    def __init__(
        self,
        host: HostConfig,
        sessions: sessionmaker[Session],
        changes: InstanceChanges,
        driver: FakeDriver,
        network: NetworkClient,
        config: ComputeConfig,
    ) -> None:
        self.host = host
        self._sessions = sessions
        self._changes = changes
        self._driver = driver
        self._network = network
        self._config = config
        self._log = log.bind(host=host.name)
        self._host = HostContext(host.name, driver, sessions, changes, network)
        self._builds: ThreadBatcher[tuple[list[dict], dict | None], list[dict[str, Any]]]
        self._builds = ThreadBatcher(self._build_groups, max_items=MAX_BUILDS_PER_BATCH)

    # -- start-up ------------------------------------------------------------

    def init_host(self) -> list[Any]:
        """Take back this host's guests as the service starts (Nova's init_host).

        A hypervisor's guests outlive its compute service: the fake's are made
        again from the cell database, each with its size, image and power state
        as last recorded (and both sizes while a resize awaits confirmation).
        Returns this host's instances whose work was under way: those still
        building or with a task (see :meth:`resume`).
        """
        with self._sessions() as session:
            rows = session.execute(_ON_HOST, {"host": self.host.name}).all()
            properties = {
                image_id: steps.image_properties(session, image_id)
                for image_id in {row.image_id for row in rows}
            }
        adopted = 0
        for row in rows:
            if row.vm_state == states.BUILDING:
                continue  # no guest yet: the build spawns it
            flavor = dict(row.flavor or {})
            old = flavor.get("old")
            adopted += self._driver.adopt(
                row.uuid,
                flavor,
                row.image_id,
                properties[row.image_id],
                power_state=row.power_state,
                resize_from=old.get("flavor") if isinstance(old, dict) else None,
            )
        interrupted = [r for r in rows if r.vm_state == states.BUILDING or r.task_state]
        if rows:
            self._log.info("host_initialized", guests=adopted, interrupted=len(interrupted))
        return interrupted

    def resume(self, rpc: RpcClient, interrupted: list[Any]) -> None:
        """Carry on with ``interrupted`` (from :meth:`init_host`) when the messages
        that asked for it died with the previous run (an in-process transport).

        Builds are cast to this host again (a build is safe to repeat), and so are
        actions that need nothing but their name; a rebuild, resize or snapshot
        (whose parameters are gone) ends with a fault, in ``error`` for the first
        two, as a failed one would.
        """
        if not interrupted:
            return
        requests = self._open_requests([row.uuid for row in interrupted])
        topic = f"compute.{self.host.name}"
        builds: dict[str, list[dict[str, str]]] = {}  # image -> builds (one cast each)
        for row in interrupted:
            uuid = row.uuid
            if row.vm_state == states.BUILDING:
                request_id = requests.get((uuid, "create"), "")
                builds.setdefault(row.image_id, []).append(
                    {"instance_uuid": uuid, "request_id": request_id}
                )
                continue
            key = _ACTION_OF_TASK.get(row.task_state, "")
            request_id = requests.get((uuid, action_name(key)), "")
            try:
                if key in _RESUMABLE:
                    self._log.info("action_resumed", instance=uuid, action=key)
                    params = {"hard": True} if key == "reboot_hard" else {}
                    rpc.cast(
                        topic,
                        "run_action",
                        instance_uuid=uuid,
                        action=key,
                        request_id=request_id,
                        params=params,
                    )
                else:
                    self._end_interrupted(row, key, request_id)
            except Exception as exc:  # the host serves all the same; this one stays as is
                self._log.error("resume_failed", instance=uuid, task=row.task_state, error=str(exc))
        for image_builds in builds.values():
            self._log.info("builds_resumed", count=len(image_builds))
            try:
                rpc.cast(
                    topic, "build_and_run_instances", builds=image_builds, image_properties=None
                )
            except Exception as exc:
                self._log.error("resume_failed", builds=len(image_builds), error=str(exc))

    def _open_requests(self, uuids: list[str]) -> dict[tuple[str, str], str]:
        """The request id of each instance's latest unfinished action, by
        ``(uuid, action)``."""
        with self._sessions() as session:
            actions = session.execute(
                select(
                    InstanceAction.instance_uuid, InstanceAction.action, InstanceAction.request_id
                )
                .where(
                    InstanceAction.instance_uuid.in_(uuids), InstanceAction.finish_time.is_(None)
                )
                .order_by(InstanceAction.id)
            ).all()
        return {(uuid, action): request_id for uuid, action, request_id in actions}

    def _end_interrupted(self, row: Any, key: str, request_id: str) -> None:
        task = row.task_state
        message = f"{task} was interrupted: the compute service of {self.host.name} restarted"
        vm_state = states.ERROR if key in _ERROR_ON_FAILURE else row.vm_state
        self._log.warning("action_interrupted", instance=row.uuid, task=task)
        with self._sessions.begin() as session:
            self._changes.fault(
                session, row.uuid, int(Code.ABORTED), message, host=self.host.name,
                vm_state=vm_state,
            )  # fmt: skip
            if request_id:
                record_event(
                    session, row.uuid, request_id, event_name(key or "unknown"), "Error",
                    host=self.host.name, details=message,
                )  # fmt: skip

    # -- RPC methods -------------------------------------------------------

    def build_and_run_instance(
        self, instance_uuid: str, request_id: str = "", image_properties: dict | None = None
    ) -> dict[str, Any]:
        """Allocate the instance's IPs and spawn it; it ends ``active`` or ``error``."""
        uuid, host = instance_uuid, self.host.name
        # A read first: an instance created here for this host (as the build coordinator
        # does) needs no networking transaction of its own; the networking transition is
        # committed with the spawning one (one version less, the same final states).
        with self._sessions() as session:
            try:
                instance = self._changes.get(session, uuid)
            except InstanceNotFound:
                self._log.warning("build_of_missing_instance", instance=uuid)
                raise
            if instance.vm_state != states.BUILDING:  # a redelivered cast: already done
                self._log.info("build_skipped", instance=uuid, vm_state=instance.vm_state)
                return self._summary(instance)
            flavor, image_id = dict(instance.flavor), instance.image_id
            zone = instance.availability_zone or self.host.availability_zone
            if image_properties is None:
                image_properties = steps.image_properties(session, image_id)
        if instance.host != host:  # not placed here yet: take it before anything can fail
            self._host.update(
                uuid, task_state=states.NETWORKING, host=host, node=host, availability_zone=zone
            )
        try:
            addresses = self._network.allocate_for_instance(uuid)
            self._host.update(
                uuid, addresses=addresses, task_state=states.SPAWNING, host=host, node=host,
                availability_zone=zone,
            )  # fmt: skip
            if not self._driver.instance_exists(uuid):  # else spawned before a redelivery
                self._driver.spawn(uuid, flavor, image_id, image_properties)
            with self._sessions.begin() as session:
                built = self._changes.update(
                    session, uuid, vm_state=states.ACTIVE, task_state=None,
                    power_state=self._driver.get_power_state(uuid), launched_at=utcnow(),
                )  # fmt: skip
                record_event(
                    session, uuid, request_id, "compute_build_and_run_instance", "Success",
                    host=host,
                )  # fmt: skip
        except Exception as exc:
            return self._fail_build(uuid, request_id, flavor_spec(instance.flavor_id, flavor), exc)
        self._log.info("instance_built", instance=uuid, addresses=addresses)
        return self._summary(built)

    def build_and_run_instances(
        self, builds: list[dict], image_properties: dict | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`build_and_run_instance` for many instances of one image in a few
        transactions (see :meth:`_build_many`); casts that arrive while one runs
        are built together next."""
        return self._builds.submit((builds, image_properties))

    def _build_groups(
        self, calls: list[tuple[list[dict], dict | None]]
    ) -> list[list[dict[str, Any]] | BaseException]:
        # One batch per image (its properties decide how spawning goes).
        groups: dict[str, list[int]] = {}
        for index, (_, properties) in enumerate(calls):
            key = json.dumps(properties, sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        out: list[list[dict[str, Any]] | BaseException] = [[] for _ in calls]
        for indexes in groups.values():
            builds = [b for i in indexes for b in calls[i][0]]
            try:
                done = {
                    r["instance_uuid"]: r for r in self._build_many(builds, calls[indexes[0]][1])
                }
            except Exception as exc:
                for i in indexes:
                    out[i] = exc
                continue
            for i in indexes:
                out[i] = [
                    done[str(b["instance_uuid"])]
                    for b in calls[i][0]
                    if str(b["instance_uuid"]) in done
                ]
        return out

    def _build_many(
        self, builds: list[dict], image_properties: dict | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`build_and_run_instance` for many instances of one image in a few
        transactions: one read, one address allocation, one ``spawning`` and one
        ``active`` transaction for all. ``builds`` holds ``{"instance_uuid",
        "request_id"}`` each. An instance that fails fails alone, as it would in
        its own build; anything unusual (not placed here yet, a failed batch
        transaction) falls back to building one at a time."""
        requests = {str(b["instance_uuid"]): str(b.get("request_id", "")) for b in builds}
        host = self.host.name
        with self._sessions() as session:
            rows = snapshots(session, list(requests))  # Core rows: JSON columns as text
            if image_properties is None and rows:
                image_properties = steps.image_properties(
                    session, next(iter(rows.values())).image_id
                )
        results: dict[str, dict[str, Any]] = {}
        alone = [u for u in requests if u not in rows or rows[u].host != host]
        batch = [rows[u] for u in requests if u in rows and rows[u].host == host]
        for instance in [i for i in batch if i.vm_state != states.BUILDING]:
            results[instance.uuid] = self._summary(instance)  # a redelivered cast: done
        batch = [i for i in batch if i.vm_state == states.BUILDING]
        if batch:
            try:
                results.update(self._build_batch(batch, requests, image_properties or {}))
            except Exception as exc:  # the batch transaction failed: one at a time
                self._log.warning("build_batch_failed", count=len(batch), error=str(exc))
                alone.extend(i.uuid for i in batch if i.uuid not in results)
        for uuid in alone:
            try:
                results[uuid] = self.build_and_run_instance(uuid, requests[uuid], image_properties)
            except InstanceNotFound:
                results[uuid] = {"instance_uuid": uuid, "ok": False, "vm_state": "deleted"}
            except Exception as exc:  # one failure must not cost the others their builds
                self._log.exception("build_failed_unexpectedly", instance=uuid)
                code, message = status_of(exc)
                results[uuid] = {
                    "instance_uuid": uuid,
                    "ok": False,
                    "code": int(code),
                    "message": message,
                }
        return [results[u] for u in requests if u in results]

    def _build_batch(
        self, batch: list[InstanceRow], requests: dict[str, str], properties: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        host = self.host.name
        results: dict[str, dict[str, Any]] = {}
        failed: dict[str, Exception] = {}
        flavors = {i.uuid: json.loads(i.flavor) for i in batch}  # stored text (InstanceRow)
        try:
            addresses, refused = self._network.allocate_for_instances([i.uuid for i in batch])
        except Exception as exc:
            addresses, refused = {}, {i.uuid: str(exc) for i in batch}
        for uuid, message in refused.items():
            failed[uuid] = ResourceExhausted(message)
        going = [i for i in batch if i.uuid in addresses]
        _, gone = self._update_live(
            [
                (
                    i.uuid,
                    {
                        "addresses": addresses[i.uuid],
                        "task_state": states.SPAWNING,
                        "availability_zone": i.availability_zone or self.host.availability_zone,
                    },
                )
                for i in going
            ]
        )
        for uuid in gone:  # deleted meanwhile: cleaned up as a failed build would be
            failed[uuid] = InstanceNotFound(f"instance {uuid} was deleted while building")
        going = [i for i in going if i.uuid not in gone]
        spawned = []
        for instance in going:
            try:
                # A guest already there was spawned before a redelivery.
                if not self._driver.instance_exists(instance.uuid):
                    self._driver.spawn(
                        instance.uuid, flavors[instance.uuid], instance.image_id, properties
                    )
                spawned.append(instance)
            except Exception as exc:
                failed[instance.uuid] = exc
        now = utcnow()

        def events(session: Session, done: list[InstanceRow]) -> None:
            record_events(
                session,
                [(i.uuid, requests[i.uuid]) for i in done],
                "compute_build_and_run_instance",
                "Success",
                host=host,
            )

        done, gone = self._update_live(
            [
                (
                    i.uuid,
                    {
                        "vm_state": states.ACTIVE,
                        "task_state": None,
                        "power_state": self._driver.get_power_state(i.uuid),
                        "launched_at": now,
                    },
                )
                for i in spawned
            ],
            events,
        )
        for uuid in gone:
            failed[uuid] = InstanceNotFound(f"instance {uuid} was deleted while building")
        for row in done:
            results[row.uuid] = self._summary(row)
        self._log.info("instances_built", count=len(done), failed=len(failed))
        by_uuid = {i.uuid: i for i in batch}
        for uuid, error in failed.items():
            instance = by_uuid[uuid]
            spec = flavor_spec(instance.flavor_id, flavors[uuid])
            results[uuid] = self._fail_build(uuid, requests[uuid], spec, error)
        return results

    def _update_live(
        self,
        items: list[tuple[str, dict[str, Any]]],
        also: Callable[[Session, list[InstanceRow]], None] | None = None,
    ) -> tuple[list[InstanceRow], list[str]]:
        """``update_many`` of ``items`` (then ``also``) in one transaction, leaving out
        instances deleted meanwhile: (the updated instances, the uuids left out)."""
        gone: list[str] = []
        for _ in range(_UPDATE_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    done = self._changes.update_many(session, items)
                    if also is not None:
                        also(session, done)
                    return done, gone
            except InstanceNotFound:
                with self._sessions() as session:
                    live = {i.uuid for i in self._changes.get_many(session, [u for u, _ in items])}
                gone += [u for u, _ in items if u not in live]
                items = [(u, c) for u, c in items if u in live]
        raise CellplaneError(f"instances kept disappearing while {len(items)} were updated")

    def run_action(
        self, instance_uuid: str, action: str, request_id: str = "", params: dict | None = None
    ) -> dict[str, Any]:
        """Carry out ``action`` (already begun, or begun here) and set its final states."""
        uuid, params = instance_uuid, dict(params or {})
        key = action_key(action, params)
        step = states.transition(key)
        try:
            with self._sessions.begin() as session:
                instance = self._changes.get(session, uuid)
                if instance.task_state != step.task:
                    # ``instance`` reads the values this leaves it with.
                    begin_action(session, self._changes, uuid, action, request_id, params=params)
                run = Run(
                    uuid, key, request_id, params, instance.vm_state, instance.flavor_id,
                    dict(instance.flavor), instance.image_id, instance.host,
                )  # fmt: skip
        except CellplaneError as exc:
            self._log.warning("action_refused", instance=uuid, action=key, error=exc.message)
            raise
        try:
            check_params(key, params)
            outcome = STEPS[key](self._host, run, step)
        except Exception as exc:
            return self._fail_action(run, exc)
        try:
            with self._sessions.begin() as session:
                if outcome.db_work is not None:
                    outcome.db_work(session)
                final: Instance | InstanceRow
                if key == "delete":
                    final = self._changes.destroy(session, uuid)
                else:
                    final = self._changes.update(session, uuid, task_state=None, **outcome.changes)
                record_event(
                    session, uuid, request_id, event_name(key), "Success", host=self.host.name
                )
        except InstanceNotFound:
            self._log.info("action_outlived_instance", instance=uuid, action=key)
            return {"instance_uuid": uuid, "action": key, "ok": False, "vm_state": "deleted"}
        self._log.info("action_done", instance=uuid, action=key, vm_state=final.vm_state)
        return {**self._summary(final), "action": key, **outcome.result}

    # -- helpers -----------------------------------------------------------

    def _fail_build(
        self, uuid: str, request_id: str, spec: FlavorSpec, exc: Exception
    ) -> dict[str, Any]:
        code, message = status_of(exc)
        self._log.warning("build_failed", instance=uuid, code=code.name, error=message)
        with contextlib.suppress(Exception):
            self._driver.destroy(uuid)
        try:
            self._network.deallocate_for_instance(uuid)
        except Exception as cleanup:
            self._log.warning("build_cleanup_failed", instance=uuid, error=str(cleanup))
        host = self.host.name
        try:
            with self._sessions.begin() as session:
                if self._changes.get(session, uuid).host == host:
                    release(session, host, spec)
                # As Nova does: no host, no node, no addresses after a failed build.
                self._changes.update(session, uuid, host=None, node=None, addresses=[])
                self._changes.fault(
                    session, uuid, code, message, host=host, details=_details(exc),
                    vm_state=states.ERROR,
                )  # fmt: skip
                record_event(
                    session, uuid, request_id, "compute_build_and_run_instance", "Error",
                    host=host, details=message,
                )  # fmt: skip
        except InstanceNotFound:
            self._log.info("build_outlived_instance", instance=uuid)
        return {"instance_uuid": uuid, "ok": False, "code": int(code), "message": message}

    def _fail_action(self, run: Run, exc: Exception) -> dict[str, Any]:
        code, message = status_of(exc)
        refused = isinstance(exc, ResourceExhausted | InvalidArgument)  # nothing was touched
        gentle = refused or run.key not in _ERROR_ON_FAILURE
        vm_state = run.vm_state if gentle else states.ERROR
        self._log.warning(
            "action_failed", instance=run.uuid, action=run.key, code=code.name, error=message
        )
        try:
            with self._sessions.begin() as session:
                for undo in run.undo:
                    undo(session)
                self._changes.fault(
                    session, run.uuid, code, message, host=self.host.name,
                    details=_details(exc), vm_state=vm_state,
                )  # fmt: skip
                record_event(
                    session, run.uuid, run.request_id, event_name(run.key), "Error",
                    host=self.host.name, details=message,
                )  # fmt: skip
        except InstanceNotFound:
            self._log.info("action_outlived_instance", instance=run.uuid, action=run.key)
        return {
            "instance_uuid": run.uuid,
            "action": run.key,
            "ok": False,
            "vm_state": vm_state,
            "code": int(code),
            "message": message,
        }

    @staticmethod
    def _summary(instance: Instance | InstanceRow) -> dict[str, Any]:
        return {
            "instance_uuid": instance.uuid,
            "ok": instance.vm_state != states.ERROR,
            "vm_state": instance.vm_state,
            "task_state": instance.task_state,
            "power_state": instance.power_state,
            "version": instance.version,
        }


def _details(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-_MAX_FAULT_DETAILS:]
