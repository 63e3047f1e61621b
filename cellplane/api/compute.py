"""ComputeService: the public compute API of an API cell.

Validation happens here, at the edge; builds go to the cell scheduler, actions
go to the owning cell as targeted envelopes, and what the caller sees is the
API cell's view, which the owning cells keep current with their pushes.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from sqlalchemy import bindparam, select

from cellplane.api.auth import Authenticator, Caller
from cellplane.api.status import grpc_code, rpc
from cellplane.api.view import ApiView, NewInstance, ViewRow
from cellplane.batching import Batcher
from cellplane.compute import states
from cellplane.db.models import Flavor, Image, Instance
from cellplane.errors import (
    CellplaneError,
    CellUnavailable,
    Code,
    InvalidArgument,
    from_status,
)
from cellplane.federation import codec, envelopes, paths
from cellplane.federation.builds import REFUSALS
from cellplane.v1 import compute_pb2, compute_pb2_grpc, link_pb2, types_pb2

if TYPE_CHECKING:
    from cellplane.service import Cell

Context = grpc.aio.ServicerContext[Any, Any]
log = structlog.get_logger()

MAX_COUNT = 1000
#: The most instances that concurrent creates put in one transaction or one build
#: request (a single create of more goes alone).
MERGED_INSTANCES = 256
# Built once: every create looks its flavor and image up.
_FLAVOR = select(Flavor).where(Flavor.flavor_id == bindparam("flavor_id"))
_IMAGE = select(Image).where(Image.uuid == bindparam("uuid"))
# Seconds a flavor and image found fit for a create serve later creates without being
# read again. They change rarely (and only at the API cell); creates may come in
# thousands a second. What was refused is read again every time.
USABLE_FOR = 2.0
# Seconds alike builds wait behind a merged build still on its way down before they
# go down beside it.
BUILD_STALL = 0.5
DEFAULT_PAGE = 100
MAX_PAGE = 1000
WATCH_POLL = 0.05
GAP_WAIT = 10.0
MAX_GAPS = 1000
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,62}$")


def _check_uuid(value: str) -> str:
    if not _UUID.match(value):
        raise InvalidArgument(f"uuid {value!r} is not a UUID")
    return value


class RevisionCursor:
    """Where a watcher is in the change log.

    Revisions are given out at insert and become visible at commit, so on
    PostgreSQL a lower one can appear after a higher one: revisions skipped over
    are asked for again for ``GAP_WAIT`` seconds before they count as never
    committed (a rolled-back insert also leaves a gap).
    """

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.gaps: dict[int, float] = {}

    def seen(self, revision: int, now: float) -> None:
        """A change with ``revision`` was sent."""
        if revision in self.gaps:
            del self.gaps[revision]
            return
        if revision <= self.revision:
            return
        self.gaps.update(dict.fromkeys(range(self.revision + 1, revision), now))
        self.revision = revision
        while len(self.gaps) > MAX_GAPS:
            del self.gaps[min(self.gaps)]

    def expire(self, now: float) -> None:
        """Stop waiting for gaps older than GAP_WAIT."""
        for stale in [r for r, since in self.gaps.items() if now - since > GAP_WAIT]:
            del self.gaps[stale]

    def gap_list(self) -> list[int]:
        """The skipped revisions still looked for."""
        return sorted(self.gaps)


def _plain_action(action: str, response: Any) -> Any:
    """A servicer method that runs ``action`` on ``request.uuid`` and answers ``response``."""

    @rpc
    async def method(self: ComputeServicer, request: Any, context: Context) -> Any:
        instance, request_id = await self._act(request, context, action)
        return response(instance=instance, request_id=request_id)

    method.__name__ = f"{action}_instance"
    return method


@dataclass
class _Create:
    """One CreateInstances call on its way into the API cell's database."""

    request: compute_pb2.CreateInstancesRequest
    caller: Caller
    request_id: str
    names: list[str]
    new: list[NewInstance] | None = None


class ComputeServicer(compute_pb2_grpc.ComputeServiceServicer):
    """ComputeService over a running API :class:`~cellplane.service.Cell`."""

    def __init__(self, cell: Cell, auth: Authenticator, view: ApiView) -> None:
        self.cell = cell
        self.auth = auth
        self.view = view
        # (flavor id, image id) -> (when read, monotonic; the flavor; the image), for
        # creates (read and written by _create_rows alone, one batch at a time)
        self._usable: dict[tuple[str, str], tuple[float, Flavor, Image]] = {}
        # Concurrent creates share a transaction, and alike builds one trip down.
        self._creates: Batcher[_Create, tuple[Flavor, Image, list[ViewRow], bool]] = Batcher(
            self._create_many,
            max_items=MERGED_INSTANCES,
            max_running=1,  # one writer at a time anyway: the others wait and merge
            size=lambda c: len(c.names),
        )
        # One trip down at a time gathers the most alike builds; one that takes long
        # lets others go beside it (BUILD_STALL seconds on).
        self._builds: Batcher[tuple[link_pb2.BuildRequest, float, bool], list[ViewRow]] = Batcher(
            self._schedule_many,
            max_items=MERGED_INSTANCES,
            max_running=1,
            size=lambda b: len(b[0].instances),
            stall_after=BUILD_STALL,
        )

    # --- create ----------------------------------------------------------------------

    @rpc
    async def CreateInstances(
        self, request: compute_pb2.CreateInstancesRequest, context: Context
    ) -> compute_pb2.CreateInstancesResponse:
        caller = self.auth.caller(context)
        count = request.count or 1
        if not 1 <= count <= MAX_COUNT:
            raise InvalidArgument(f"count must be in 1..{MAX_COUNT}, got {count}")
        if not _NAME.match(request.name):
            raise InvalidArgument(f"name {request.name!r}: 1-63 letters, digits, '._ -'")
        if len(request.idempotency_key) > 255:
            raise InvalidArgument("idempotency_key is longer than 255 characters")
        hints = request.scheduler_hints
        if hints.target_cell:
            caller.require_admin("the target_cell hint")
            paths.validate(hints.target_cell, "scheduler_hints.target_cell")
        for uuid in [*hints.same_host, *hints.different_host]:
            _check_uuid(uuid)
        if len(request.metadata) > 128 or any(
            len(k) > 255 or len(v) > 255 for k, v in request.metadata.items()
        ):
            raise InvalidArgument("metadata: at most 128 items of at most 255 characters")
        request_id = f"req-{uuidlib.uuid4()}"
        names = [request.name] if count == 1 else [f"{request.name}-{i + 1}" for i in range(count)]

        flavor, image, rows, created = await self._creates.submit(
            None, _Create(request, caller, request_id, names)
        )
        if created:
            rows = await self._schedule(rows, flavor, image, request, request_id, caller)
        return compute_pb2.CreateInstancesResponse(
            instances=[self._to_proto(r) for r in rows], request_id=request_id
        )

    async def _create_many(
        self, key: object, creates: list[_Create]
    ) -> list[tuple[Flavor, Image, list[ViewRow], bool] | BaseException]:
        """The API rows of concurrent creates: one thread hop, one transaction."""
        del key
        return await asyncio.to_thread(self._create_rows, creates)

    def _create_rows(
        self, creates: list[_Create]
    ) -> list[tuple[Flavor, Image, list[ViewRow], bool] | BaseException]:
        out: list[tuple[Flavor, Image, list[ViewRow], bool] | BaseException] = []
        found: dict[tuple[str, str], tuple[Flavor, Image] | CellplaneError] = {}
        valid: list[tuple[int, Flavor, Image, _Create]] = []
        for create in creates:
            request, caller = create.request, create.caller
            ids = (request.flavor_id, request.image_id)
            if ids not in found:
                try:
                    found[ids] = self._usable_pair(ids, request)
                except CellplaneError as exc:
                    found[ids] = exc
            known = found[ids]
            if isinstance(known, CellplaneError):
                out.append(known)
                continue
            flavor, image = known
            snapshot = codec.flavor_snapshot(codec.flavor_to_proto(flavor))
            create.new = [
                NewInstance(
                    name=n,
                    project_id=caller.project_id,
                    user_id=caller.user_id,
                    flavor=snapshot,
                    image_id=image.uuid,
                    availability_zone=request.availability_zone or None,
                    metadata=dict(request.metadata),
                )
                for n in create.names
            ]
            valid.append((len(out), flavor, image, create))
            out.append(InvalidArgument("not created"))  # replaced below
        made = self.view.create_many(
            [
                (c.caller.project_id, c.request.idempotency_key, c.request_id, c.new or [])
                for _, _, _, c in valid
            ]
        )
        for (index, flavor, image, _), (rows, created) in zip(valid, made, strict=True):
            out[index] = (flavor, image, rows, created)
        return out

    def _usable_pair(
        self, ids: tuple[str, str], request: compute_pb2.CreateInstancesRequest
    ) -> tuple[Flavor, Image]:
        """:meth:`_flavor_and_image`, as read in the last USABLE_FOR seconds if it was
        fit then."""
        now = time.monotonic()
        known = self._usable.get(ids)
        if known is not None and now - known[0] < USABLE_FOR:
            return known[1], known[2]
        flavor, image = self._flavor_and_image(request)
        if len(self._usable) >= 1024:
            self._usable.clear()
        self._usable[ids] = (now, flavor, image)
        return flavor, image

    def _flavor_and_image(
        self, request: compute_pb2.CreateInstancesRequest
    ) -> tuple[Flavor, Image]:
        with self.cell.sessions() as session:
            flavor = session.scalar(_FLAVOR, {"flavor_id": request.flavor_id})
            image = session.scalar(_IMAGE, {"uuid": request.image_id})
        if flavor is None or flavor.disabled:
            raise InvalidArgument(f"flavor {request.flavor_id!r} does not exist")
        if image is None:
            raise InvalidArgument(f"image {request.image_id!r} does not exist")
        if image.status != "active":
            raise InvalidArgument(f"image {request.image_id} is {image.status}, not active")
        if flavor.memory_mb < image.min_ram_mb or flavor.root_gb < image.min_disk_gb:
            raise InvalidArgument(
                f"flavor {flavor.flavor_id} is too small for image {image.uuid} "
                f"(needs {image.min_ram_mb} MB RAM, {image.min_disk_gb} GB disk)"
            )
        return flavor, image

    async def _schedule(
        self,
        rows: list[ViewRow],
        flavor: Flavor,
        image: Image,
        request: compute_pb2.CreateInstancesRequest,
        request_id: str,
        caller: Caller,
    ) -> list[ViewRow]:
        """Send the build down; the instances as the view holds them afterwards."""
        build = link_pb2.BuildRequest(
            instances=[self._to_proto(r) for r in rows],
            flavor=codec.flavor_to_proto(flavor),
            image=codec.image_to_proto(image),
            request_id=request_id,
            retries_left=self.cell.config.scheduler.retries,
        )
        hints = request.scheduler_hints
        build.hints.CopyFrom(
            link_pb2.SchedulerHints(
                target_cell=hints.target_cell,
                different_cell=list(hints.different_cell),
                group=hints.group,
                group_policy=hints.group_policy,
                same_host=list(hints.same_host),
                different_host=list(hints.different_host),
            )
        )
        uuids = [r.uuid for r in rows]
        deadline = time.time() + self.cell.config.scheduler.build_timeout
        key = (
            build.flavor.id,
            build.image.id,
            build.hints.SerializeToString(deterministic=True),
            caller.is_admin,
            caller.project_id,
            request.availability_zone,
        )
        try:
            return await self._builds.submit(key, (build, deadline, caller.is_admin))
        except CellplaneError as exc:
            if exc.code in {Code.PERMISSION_DENIED, Code.INVALID_ARGUMENT}:
                await asyncio.to_thread(self.view.failed, uuids, int(exc.code), str(exc))
                raise
            if exc.code in REFUSALS:
                message = f"No valid host was found: {exc}"
            else:
                # A cell may have taken the build without its answer coming back: its
                # pushes would then bring the instances out of error.
                message = f"The build was not confirmed: {exc}"
            await asyncio.to_thread(self.view.failed, uuids, int(exc.code), message)
        return await asyncio.to_thread(self.view.get_many, uuids)

    async def _schedule_many(
        self, key: object, builds: list[tuple[link_pb2.BuildRequest, float, bool]]
    ) -> list[list[ViewRow] | BaseException]:
        """Send alike builds down as one request (their instances together); if no
        cell takes that, each on its own, so that no build fails for sharing a
        request. Each gets its instances as the view holds them afterwards."""
        del key
        if len(builds) > 1:
            merged = link_pb2.BuildRequest()
            merged.CopyFrom(builds[0][0])
            for build, _, _ in builds[1:]:
                merged.instances.extend(build.instances)
            for build, _, _ in builds:
                for instance in build.instances:
                    merged.request_ids[instance.uuid] = build.request_id
            deadline = min(d for _, d, _ in builds)
            try:
                rows = await self._place(merged, deadline, builds[0][2])
                return [[rows[i.uuid] for i in b.instances if i.uuid in rows] for b, _, _ in builds]
            except CellplaneError as exc:
                if exc.code not in REFUSALS:
                    # Not known to be refused (no answer in time, say): a cell may hold
                    # the instances already, so sending them again could build them twice.
                    return [exc] * len(builds)
                log.info("merged_build_split", builds=len(builds), error=str(exc))
        placed = await asyncio.gather(
            *[self._place(b, d, admin) for b, d, admin in builds], return_exceptions=True
        )
        return [
            r if isinstance(r, BaseException) else [r[i.uuid] for i in b.instances if i.uuid in r]
            for r, (b, _, _) in zip(placed, builds, strict=True)
        ]

    async def _place(
        self, build: link_pb2.BuildRequest, deadline: float, is_admin: bool
    ) -> dict[str, ViewRow]:
        accepted = await self.cell.builds.schedule(
            build, self.cell.name, deadline, is_admin=is_admin
        )
        uuids = [i.uuid for i in build.instances]

        rows = await asyncio.to_thread(self.view.placed, uuids, accepted.cell_path)
        return {row.uuid: row for row in rows}

    # --- reading ---------------------------------------------------------------------

    @rpc
    async def GetInstance(
        self, request: compute_pb2.GetInstanceRequest, context: Context
    ) -> compute_pb2.GetInstanceResponse:
        caller = self.auth.caller(context)
        row = await asyncio.to_thread(self.view.get, _check_uuid(request.uuid), _scope(caller))
        faults = await asyncio.to_thread(self.view.latest_faults, [row.uuid])
        return compute_pb2.GetInstanceResponse(instance=self._to_proto(row, faults.get(row.uuid)))

    @rpc
    async def ListInstances(
        self, request: compute_pb2.ListInstancesRequest, context: Context
    ) -> compute_pb2.ListInstancesResponse:
        caller = self.auth.caller(context)
        project = request.project_id if caller.is_admin else caller.project_id
        page_size = request.page_size or DEFAULT_PAGE
        if page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size must be at most {MAX_PAGE}")
        after = 0
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument(f"page_token {request.page_token!r} is not valid")
            after = int(request.page_token)
        if request.cell_path:
            paths.validate(request.cell_path, "cell_path")

        def query() -> list[Instance]:
            q = select(Instance).where(Instance.id > after)
            if project:
                q = q.where(Instance.project_id == project)
            if request.vm_state:
                q = q.where(Instance.vm_state == codec.vm_state_from_proto(request.vm_state))
            if request.cell_path:
                q = q.where(
                    (Instance.cell_path == request.cell_path)
                    | Instance.cell_path.startswith(request.cell_path + paths.SEP)
                )
            if request.name:
                q = q.where(Instance.name.contains(request.name, autoescape=True))
            if not request.include_deleted:
                q = q.where(Instance.deleted.is_(False))
            with self.cell.sessions() as session:
                return list(session.scalars(q.order_by(Instance.id).limit(page_size + 1)))

        rows = await asyncio.to_thread(query)
        more = len(rows) > page_size
        rows = rows[:page_size]
        faults = await asyncio.to_thread(
            self.view.latest_faults, [r.uuid for r in rows if r.vm_state == states.ERROR]
        )
        response = compute_pb2.ListInstancesResponse(
            instances=[self._to_proto(r, faults.get(r.uuid)) for r in rows],
            next_page_token=str(rows[-1].id) if more and rows else "",
        )
        response.cells.extend(self._reachability({r.cell_path for r in rows if r.cell_path}))
        return response

    def _reachability(self, cell_paths: set[str]) -> list[compute_pb2.CellReachability]:
        """Every cell of ``cell_paths``, every child, and every cell below that a child
        reports it cannot reach: whether it can be reached as far as this cell knows
        (``mute`` and ``last_seen`` are this cell's own view of its children)."""
        out = []
        state = self.cell.state
        children = {c.peer: c for c in self.cell.neighbours.children()}
        cell_paths.update(paths.join(self.cell.name, name) for name in children)
        cell_paths.update(paths.join(self.cell.name, p) for p in state.unreachable_below())
        for path in sorted(cell_paths):
            hops = paths.hops(path)
            reachable = len(hops) > 1 and hops[1] in children and state.reachable(path)
            child = children.get(hops[1]) if len(hops) == 2 else None  # a child itself
            mute = child is not None and state.is_mute(child.peer)
            item = compute_pb2.CellReachability(cell_path=path, reachable=reachable, mute=mute)
            if child is not None and child.last_seen:
                item.last_seen.FromNanoseconds(int(child.last_seen * 1e9))
            out.append(item)
        return out

    def _to_proto(self, row: ViewRow, fault: Any = None) -> types_pb2.Instance:
        out = codec.instance_to_proto(row)
        if row.cell_path and not self.cell.state.reachable(row.cell_path):
            out.stale = True
        if fault is not None:
            out.fault.CopyFrom(codec.fault_to_proto(fault))
        return out

    # --- actions ---------------------------------------------------------------------

    async def _act(
        self, request: Any, context: Context, action: str, **fields: Any
    ) -> tuple[types_pb2.Instance, str]:
        caller = self.auth.caller(context)
        row = await asyncio.to_thread(self.view.get, _check_uuid(request.uuid), _scope(caller))
        check = "reboot_hard" if action == "reboot" and fields.get("hard") else action
        states.check_allowed(check, row.uuid, row.vm_state, row.task_state)
        if not row.cell_path:
            raise CellUnavailable(f"instance {row.uuid} is not in any cell yet")
        hops = paths.hops(row.cell_path)
        if not self.cell.state.reachable(row.cell_path):
            raise CellUnavailable(
                f"cell {row.cell_path} of instance {row.uuid} is unreachable or mute"
            )
        request_id = f"req-{uuidlib.uuid4()}"
        message = link_pb2.InstanceActionRequest(
            instance_uuid=row.uuid,
            action=action,
            request_id=request_id,
            project_id=row.project_id,
            user_id=caller.user_id,
            **fields,
        )
        result = await self.cell.router.call(
            row.cell_path,
            envelopes.DOWN,
            timeout=self.cell.config.response_timeout,
            instance_action=message,
        )
        if result.status.code != Code.OK:
            raise from_status(result.status.code, result.status.message)
        instance = result.instance
        await asyncio.to_thread(
            self.view.record_action, row, action, request_id, caller.user_id, instance.version
        )
        # The owning cell's answer is newer than our view: apply it now, so that a read
        # right after this call already shows the task that started.
        instance.cell_path = paths.join(*hops[1:])
        await asyncio.to_thread(self._apply, instance)
        instance.cell_path = row.cell_path
        return instance, request_id

    def _apply(self, instance: types_pb2.Instance) -> None:
        with self.cell.sessions.begin() as session:
            self.cell.pushes.apply_update(session, instance)

    @rpc
    async def DeleteInstance(
        self, request: compute_pb2.DeleteInstanceRequest, context: Context
    ) -> compute_pb2.DeleteInstanceResponse:
        caller = self.auth.caller(context)
        row = await asyncio.to_thread(self.view.get, _check_uuid(request.uuid), _scope(caller))
        if row.deleted:
            raise from_status(Code.FAILED_PRECONDITION, f"instance {row.uuid} is deleted")
        if not row.cell_path or row.version == 0:
            gone = await asyncio.to_thread(self.view.delete_unplaced, row.uuid)
            return compute_pb2.DeleteInstanceResponse(instance=self._to_proto(gone))
        instance, request_id = await self._act(request, context, "delete")
        return compute_pb2.DeleteInstanceResponse(instance=instance, request_id=request_id)

    @rpc
    async def RebootInstance(
        self, request: compute_pb2.RebootInstanceRequest, context: Context
    ) -> compute_pb2.RebootInstanceResponse:
        instance, rid = await self._act(request, context, "reboot", hard=request.hard)
        return compute_pb2.RebootInstanceResponse(instance=instance, request_id=rid)

    @rpc
    async def RebuildInstance(
        self, request: compute_pb2.RebuildInstanceRequest, context: Context
    ) -> compute_pb2.RebuildInstanceResponse:
        image_id = request.image_id
        if image_id:
            await asyncio.to_thread(self._active_image, image_id)
        instance, rid = await self._act(request, context, "rebuild", image_id=image_id)
        return compute_pb2.RebuildInstanceResponse(instance=instance, request_id=rid)

    def _active_image(self, image_id: str) -> Image:
        with self.cell.sessions() as session:
            image = session.scalar(select(Image).where(Image.uuid == image_id))
        if image is None or image.status != "active":
            raise InvalidArgument(f"image {image_id!r} does not exist or is not active")
        return image

    @rpc
    async def ResizeInstance(
        self, request: compute_pb2.ResizeInstanceRequest, context: Context
    ) -> compute_pb2.ResizeInstanceResponse:
        def flavor() -> Flavor:
            with self.cell.sessions() as session:
                found = session.scalar(select(Flavor).where(Flavor.flavor_id == request.flavor_id))
            if found is None or found.disabled:
                raise InvalidArgument(f"flavor {request.flavor_id!r} does not exist")
            return found

        new = await asyncio.to_thread(flavor)
        instance, rid = await self._act(
            request, context, "resize", flavor=codec.flavor_to_proto(new)
        )
        return compute_pb2.ResizeInstanceResponse(instance=instance, request_id=rid)

    @rpc
    async def SnapshotInstance(
        self, request: compute_pb2.SnapshotInstanceRequest, context: Context
    ) -> compute_pb2.SnapshotInstanceResponse:
        caller = self.auth.caller(context)
        name = request.image_name or f"snapshot-{request.uuid[:8]}"
        if not _NAME.match(name):
            raise InvalidArgument(f"image_name {name!r}: 1-63 letters, digits, '._ -'")
        row = await asyncio.to_thread(self.view.get, _check_uuid(request.uuid), _scope(caller))
        states.check_allowed("snapshot", row.uuid, row.vm_state, row.task_state)
        image = await asyncio.to_thread(self.view.create_snapshot_image, row, name)
        instance, rid = await self._act(
            request, context, "snapshot", image_id=image.uuid, snapshot_name=name
        )
        return compute_pb2.SnapshotInstanceResponse(
            instance=instance, request_id=rid, image=codec.image_to_proto(image)
        )

    # Actions that take nothing but the instance: one method each, made from this table.
    StartInstance = _plain_action("start", compute_pb2.StartInstanceResponse)
    StopInstance = _plain_action("stop", compute_pb2.StopInstanceResponse)
    PauseInstance = _plain_action("pause", compute_pb2.PauseInstanceResponse)
    UnpauseInstance = _plain_action("unpause", compute_pb2.UnpauseInstanceResponse)
    SuspendInstance = _plain_action("suspend", compute_pb2.SuspendInstanceResponse)
    ResumeInstance = _plain_action("resume", compute_pb2.ResumeInstanceResponse)
    ConfirmResize = _plain_action("confirm_resize", compute_pb2.ConfirmResizeResponse)
    RevertResize = _plain_action("revert_resize", compute_pb2.RevertResizeResponse)

    # --- history, catalogue, watch -------------------------------------------------------

    @rpc
    async def ListInstanceActions(
        self, request: compute_pb2.ListInstanceActionsRequest, context: Context
    ) -> compute_pb2.ListInstanceActionsResponse:
        caller = self.auth.caller(context)
        row = await asyncio.to_thread(self.view.get, _check_uuid(request.uuid), _scope(caller))
        actions = await asyncio.to_thread(self.view.actions, row.uuid)
        response = compute_pb2.ListInstanceActionsResponse()
        for action in actions:
            item = response.actions.add(
                request_id=action.request_id,
                instance_uuid=action.instance_uuid,
                action=action.action,
                project_id=action.project_id,
                user_id=action.user_id,
                message=action.message or "",
            )
            _stamp(item.start_time, action.start_time)
            _stamp(item.finish_time, action.finish_time)
            for event in action.events:
                ev = item.events.add(
                    event=event.event,
                    result=event.result or "",
                    host=event.host or "",
                    details=event.details or "",
                )
                _stamp(ev.start_time, event.start_time)
                _stamp(ev.finish_time, event.finish_time)
        return response

    @rpc
    async def ListInstanceFaults(
        self, request: compute_pb2.ListInstanceFaultsRequest, context: Context
    ) -> compute_pb2.ListInstanceFaultsResponse:
        caller = self.auth.caller(context)
        row = await asyncio.to_thread(self.view.get, _check_uuid(request.uuid), _scope(caller))
        faults = await asyncio.to_thread(self.view.faults, row.uuid)
        return compute_pb2.ListInstanceFaultsResponse(
            faults=[codec.fault_to_proto(f) for f in faults]
        )

    @rpc
    async def ListFlavors(
        self, request: compute_pb2.ListFlavorsRequest, context: Context
    ) -> compute_pb2.ListFlavorsResponse:
        self.auth.caller(context)

        def load() -> list[Flavor]:
            q = select(Flavor).order_by(Flavor.memory_mb, Flavor.flavor_id)
            if not request.include_disabled:
                q = q.where(Flavor.disabled.is_(False))
            with self.cell.sessions() as session:
                return list(session.scalars(q))

        flavors = await asyncio.to_thread(load)
        return compute_pb2.ListFlavorsResponse(flavors=[codec.flavor_to_proto(f) for f in flavors])

    @rpc
    async def ListImages(
        self, request: compute_pb2.ListImagesRequest, context: Context
    ) -> compute_pb2.ListImagesResponse:
        caller = self.auth.caller(context)

        def load() -> list[Image]:
            q = select(Image).order_by(Image.name)
            if not caller.is_admin:
                q = q.where((Image.owner.is_(None)) | (Image.owner == caller.project_id))
            with self.cell.sessions() as session:
                return list(session.scalars(q))

        images = await asyncio.to_thread(load)
        return compute_pb2.ListImagesResponse(images=[codec.image_to_proto(i) for i in images])

    async def WatchInstances(
        self, request: compute_pb2.WatchInstancesRequest, context: Context
    ) -> AsyncIterator[compute_pb2.WatchInstancesResponse]:
        try:
            caller = self.auth.caller(context)
        except CellplaneError as exc:
            await context.abort(grpc_code(exc.code), str(exc))
            return
        project = (request.project_id or None) if caller.is_admin else caller.project_id
        revision = request.from_revision
        if revision < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "from_revision must be >= 0")
            return
        if revision == 0:
            revision = await asyncio.to_thread(self.view.last_revision)
        # Say at once that the watch is established, before the first change.
        await context.send_initial_metadata(())
        cursor = RevisionCursor(revision)
        while True:
            cursor.expire(time.monotonic())
            changes = await asyncio.to_thread(
                self.view.changes_after, cursor.revision, project, gaps=cursor.gap_list()
            )
            for change in changes:
                cursor.seen(change.revision, time.monotonic())
                instance = types_pb2.Instance.FromString(change.snapshot)
                yield compute_pb2.WatchInstancesResponse(
                    revision=change.revision,
                    kind=_CHANGE_KINDS.get(change.kind, 0),
                    instance=instance,
                )
            if not changes:
                await asyncio.sleep(WATCH_POLL)


_CHANGE_KINDS: dict[str, Any] = {
    "update": compute_pb2.CHANGE_KIND_UPDATED,
    "destroy": compute_pb2.CHANGE_KIND_DELETED,
    "fault": compute_pb2.CHANGE_KIND_FAULT,
}


def _scope(caller: Caller) -> str | None:
    """The project a caller is limited to (None: every project)."""
    return None if caller.is_admin else caller.project_id


def _stamp(field: Any, value: Any) -> None:
    if value is not None:
        field.FromDatetime(value)
