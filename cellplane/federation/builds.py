"""Builds and instance actions as they travel down the tree.

At every cell the same steps: the cell scheduler ranks this cell (if it runs
computes) and its children from their reports; a child gets the build as a
targeted envelope and either takes it or answers "no valid host", and then the
next candidate is tried, up to ``scheduler.retries``. The cell that keeps the
build claims hosts through its scheduler role, creates the instances (which
pushes them up) and casts the builds to its computes.

A build goes to one cell at a time, and to the next candidate only when the
one asked answered that it took nothing (see ``REFUSALS``). A cell that did not
answer in time may have taken it; sending the same instances elsewhere could
build them twice, so the build fails where it waited, and if the silent cell
did build the instances, their pushes bring them up all the same.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient
from cellplane.compute import states
from cellplane.compute.actions import begin_action
from cellplane.config import CellConfig
from cellplane.db.instances import InstanceChanges, record_events, start_actions
from cellplane.errors import (
    CellplaneError,
    Code,
    NoValidHost,
    ResourceExhausted,
    Timeout,
    Unavailable,
    from_status,
    status_of,
)
from cellplane.federation import codec, envelopes, paths
from cellplane.federation.channel import LinkState
from cellplane.federation.dispatch import Delivery
from cellplane.federation.reports import StateManager
from cellplane.federation.router import Router
from cellplane.scheduling.cells import (
    CellCandidate,
    cell_candidate_from_capacity,
    default_cell_filters,
    default_cell_weighers,
)
from cellplane.scheduling.claims import release, release_pending, take_pending
from cellplane.scheduling.framework import select_or_raise
from cellplane.scheduling.spec import FlavorSpec, Hints, RequestSpec
from cellplane.v1 import link_pb2, types_pb2

# Answers that say a cell took nothing: the next candidate is tried. Any other
# failure, no answer before the deadline above all, leaves that open.
REFUSALS = frozenset({Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE})
# Errors that the scheduler role itself answered with: its transaction rolled back,
# so it claimed nothing.
_SCHEDULER_ANSWERS = frozenset({Code.RESOURCE_EXHAUSTED, Code.INVALID_ARGUMENT})
HOP_MARGIN = 0.5  # seconds a cell keeps back from its deadline to answer its parent


def spec_from_request(req: link_pb2.BuildRequest, *, is_admin: bool) -> RequestSpec:
    """The scheduler's view of a build request."""
    flavor = req.flavor
    first = req.instances[0] if req.instances else types_pb2.Instance()
    return RequestSpec(
        flavor=FlavorSpec(
            flavor_id=flavor.id,
            vcpus=flavor.vcpus,
            memory_mb=flavor.memory_mb,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
        ),
        image_properties=dict(req.image.properties),
        hints=Hints(
            target_cell=req.hints.target_cell,
            different_cell=tuple(req.hints.different_cell),
            group=req.hints.group,
            group_policy=req.hints.group_policy,
            same_host=tuple(req.hints.same_host),
            different_host=tuple(req.hints.different_host),
        ),
        availability_zone=first.availability_zone,
        num_instances=max(1, len(req.instances)),
        tried_cells=tuple(req.tried_cells),
        is_admin=is_admin,
        project_id=first.project_id,
    )


def _from_here(path: str, my_path: str) -> str:
    """``path`` (from where ``my_path`` starts) as seen from this cell, if it lies at or
    below this cell; other paths cannot match anything below and stay as they are."""
    mine, hops = paths.hops(my_path), paths.hops(path)
    if hops[: len(mine)] != mine:
        return path
    return paths.join(*hops[len(mine) - 1 :])


def take_sent(
    capacity: types_pb2.Capacity,
    sent: list[tuple[float, int, int, int, int]],
    reported_at: float,
) -> list[tuple[float, int, int, int, int]]:
    """Take from ``capacity`` (a child's last report, from ``reported_at``) the builds
    the child accepted since (``(sent_at, ram_mb, disk_gb, vcpus, instances)`` each);
    returns those still pending. Until the child's next report says so itself, a
    burst of builds would otherwise all go to whichever child looked emptiest."""
    pending = [s for s in sent if s[0] > reported_at]
    for _, ram, disk, vcpus, count in pending:
        capacity.ram_free_mb = max(0, capacity.ram_free_mb - ram * count)
        capacity.disk_free_gb = max(0, capacity.disk_free_gb - disk * count)
        capacity.vcpus_free = max(0, capacity.vcpus_free - vcpus * count)
        for units in capacity.ram_units:
            if units.memory_mb:
                units.units = max(0, units.units - -(-ram // units.memory_mb) * count)
        for units in capacity.disk_units:
            if units.disk_gb:
                units.units = max(0, units.units - -(-disk // units.disk_gb) * count)
    return pending


class BuildCoordinator:
    """Handles ``build_request`` and ``instance_action`` envelopes in one cell."""

    def __init__(
        self,
        config: CellConfig,
        router: Router,
        state: StateManager,
        sessions: sessionmaker[Session],
        changes: InstanceChanges,
        rpc: Callable[[], RpcClient | None] | None,
        weights: Callable[[str], tuple[float, float, bool]],
    ) -> None:
        self.config = config
        self.name = config.name
        self.router = router
        self.state = state
        self.sessions = sessions
        self.changes = changes
        self.rpc = rpc
        self.weights = weights  # child -> (weight_offset, weight_scale, disabled)
        # The cell has hosts if its config names any, whichever process runs them.
        self.runs_computes = bool(config.compute.hosts)
        # child -> builds it took since its last report (sent_at, ram_mb, disk_gb, vcpus
        # of each instance, instances)
        self._sent: dict[str, list[tuple[float, int, int, int, int]]] = {}
        self.log = structlog.get_logger().bind(cell=self.name)

    def register(self, handlers: Any) -> None:
        """Take builds and actions addressed to this cell."""
        handlers.register("build_request", self.on_build)
        handlers.register("instance_action", self.on_action)

    # --- builds ----------------------------------------------------------------------

    async def on_build(
        self, env: link_pb2.Envelope, delivery: Delivery
    ) -> link_pb2.CellResult | None:
        """A parent asks this cell (or its subtree) to build."""
        deadline = env.deadline_ms / 1000 if env.deadline_ms else time.time() + 30
        accepted = await self.schedule(env.build_request, delivery.path, deadline)
        return delivery.ok(build=accepted)

    async def schedule(
        self, req: link_pb2.BuildRequest, my_path: str, deadline: float, *, is_admin: bool = True
    ) -> link_pb2.BuildAccepted:
        """Place ``req`` in this cell or below; raise NoValidHost when nothing fits."""
        tried = set(req.tried_cells)
        retries = self.config.scheduler.retries
        last_error = ""
        for _ in range(retries + 1):
            spec = spec_from_request(req, is_admin=is_admin)
            # Own hosts are read from the database: off the event loop.
            own = await asyncio.to_thread(self.state.own_capacity) if self.runs_computes else None
            candidates = [c for c in self.candidates(my_path, own) if c.path not in tried]
            try:
                ranked = select_or_raise(
                    candidates, spec, default_cell_filters(), default_cell_weighers()
                )
            except NoValidHost as exc:
                raise NoValidHost(f"{exc}; {last_error}" if last_error else str(exc)) from None
            best = ranked[0].candidate
            try:
                if best.is_self:
                    return await self._build_here(req, my_path, deadline)
                return await self._build_below(req, best.name, my_path, deadline)
            except CellplaneError as exc:
                if exc.code not in REFUSALS:
                    raise
                tried.add(best.path)
                del req.tried_cells[:]
                req.tried_cells.extend(sorted(tried))
                last_error = f"{best.path}: {exc}"
                self.log.info("build_rescheduled", cell=best.path, reason=str(exc))
        raise NoValidHost(f"no valid host after {retries + 1} attempts; last: {last_error}")

    def candidates(
        self, my_path: str, own: types_pb2.Capacity | None = None
    ) -> list[CellCandidate]:
        """This cell (if it runs computes; ``own`` is its capacity, read here if not
        given) and every child, from their latest reports."""
        out = []
        if self.runs_computes:
            if own is None:
                own = self.state.own_capacity()
            out.append(
                cell_candidate_from_capacity(
                    name=self.name,
                    path=my_path,
                    is_self=True,
                    capabilities=self.state.capabilities,
                    capacity=own,
                )
            )
        for channel in self.router.neighbours.children():
            report = self.state.children.get(channel.peer)
            offset, scale, disabled = self.weights(channel.peer)
            capacity = types_pb2.Capacity()
            if report is not None:
                capacity.CopyFrom(report.capacity)
                sent = self._sent.get(channel.peer)
                if sent:
                    sent[:] = take_sent(capacity, sent, report.capacity_at)
            out.append(
                cell_candidate_from_capacity(
                    name=channel.peer,
                    path=paths.join(my_path, channel.peer),
                    is_self=False,
                    capabilities=report.capabilities if report else {},
                    capacity=capacity,
                    disabled=disabled or channel.state is not LinkState.UP,
                    mute=self.state.is_mute(channel.peer),
                    weight_offset=offset,
                    weight_scale=scale,
                )
            )
        return out

    async def _build_below(
        self, req: link_pb2.BuildRequest, child: str, my_path: str, deadline: float
    ) -> link_pb2.BuildAccepted:
        """Ask ``child``; the answer names the cell that took the build by a path from
        this cell, which becomes a path from wherever ``my_path`` starts."""
        timeout = deadline - time.time() - HOP_MARGIN
        if timeout <= 0:
            raise ResourceExhausted(f"no time left to try {child}")
        # The child sees paths from this cell (the call starts here): the hints'
        # paths below this cell must start here too, or a target two levels down
        # would never match.
        sub = link_pb2.BuildRequest()
        sub.CopyFrom(req)
        if req.hints.target_cell:
            sub.hints.target_cell = _from_here(req.hints.target_cell, my_path)
        sub.hints.different_cell[:] = [_from_here(p, my_path) for p in req.hints.different_cell]
        sub.tried_cells[:] = [_from_here(p, my_path) for p in req.tried_cells]
        result = await self.router.call(
            paths.join(self.name, child), envelopes.DOWN, timeout=timeout, build_request=sub
        )
        if result.status.code != Code.OK:
            raise from_status(result.status.code, result.status.message)
        accepted = result.build
        flavor = req.flavor
        disk = flavor.root_gb + flavor.ephemeral_gb
        self._sent.setdefault(child, []).append(
            (time.time(), flavor.memory_mb, disk, flavor.vcpus, len(accepted.instance_uuids))
        )
        above = paths.hops(my_path)[:-1]
        accepted.cell_path = paths.join(*above, accepted.cell_path)
        return accepted

    async def _build_here(
        self, req: link_pb2.BuildRequest, my_path: str, deadline: float
    ) -> link_pb2.BuildAccepted:
        rpc = self.rpc() if self.rpc is not None else None
        if rpc is None:
            raise NoValidHost(f"cell {self.name} runs no scheduler")
        if time.time() >= deadline:
            # Whoever sent it has stopped waiting and failed the build: building it
            # now would bring back instances a client was told had failed.
            raise ResourceExhausted(f"the build reached {self.name} after its deadline")
        spec = spec_from_request(req, is_admin=True)
        await asyncio.to_thread(self._claim_create_cast, rpc, req, spec, deadline)
        return link_pb2.BuildAccepted(
            instance_uuids=[i.uuid for i in req.instances], cell_path=my_path
        )

    def _claim_create_cast(
        self, rpc: RpcClient, req: link_pb2.BuildRequest, spec: RequestSpec, deadline: float
    ) -> None:
        """Claim hosts, create the instances and cast their builds: one thread hop.

        Whatever fails before the instances exist is a refusal (nothing was
        created; claims are given back). Once they exist they are this cell's:
        a cast that fails fails its instances here, and the answer is still
        that the cell took the build.

        The claims stay pending under a claim id until the transaction that
        creates the instances takes them. If the scheduler claimed but its answer
        was lost, they are given back here; if it claimed after that (it was slow),
        or this process dies before the create, the scheduler role gives them back
        once they expire, a build timeout after the build's deadline.
        """
        claim_id = str(uuidlib.uuid4())
        try:
            hosts: list[str] = rpc.call(
                "scheduler",
                "select_and_claim",
                spec=spec.to_dict(),
                count=len(req.instances),
                claim_id=claim_id,
                expires_at=deadline + self.config.scheduler.build_timeout,
                timeout=self.config.scheduler.build_timeout,
            )
        except Timeout as exc:
            # It may have claimed all the same, and only its answer was lost.
            self._release_claims(claim_id)
            raise Unavailable(f"the scheduler of {self.name} did not answer: {exc}") from exc
        except CellplaneError as exc:
            if exc.code not in _SCHEDULER_ANSWERS:  # not the scheduler's own answer
                self._release_claims(claim_id)
            raise
        try:
            self._create(req, hosts, claim_id)
        except BaseException:
            self._release_claims(claim_id)
            raise
        properties = dict(req.image.properties)
        per_host: dict[str, list[dict[str, str]]] = {}
        for instance, host in zip(req.instances, hosts, strict=True):
            request_id = req.request_ids.get(instance.uuid, req.request_id)
            per_host.setdefault(host, []).append(
                {"instance_uuid": instance.uuid, "request_id": request_id}
            )
        for host, builds in per_host.items():
            try:
                rpc.cast(
                    f"compute.{host}",
                    "build_and_run_instances",
                    builds=builds,
                    image_properties=properties,
                )
            except Exception as exc:
                self._fail_uncast(host, builds, spec.flavor, exc)

    def _release_claims(self, claim_id: str) -> None:
        """Give back the claims made under ``claim_id`` for instances never created."""
        try:
            with self.sessions.begin() as session:
                released = release_pending(session, claim_id)
        except Exception as exc:  # they expire and are given back then: say so
            self.log.error("claims_not_released", claim_id=claim_id, error=str(exc))
            return
        if released:
            self.log.info(
                "claims_released",
                claim_id=claim_id,
                hosts=sorted({r.host for r in released}),
                count=sum(r.instances for r in released),
            )

    def _fail_uncast(
        self, host: str, builds: list[dict[str, str]], flavor: FlavorSpec, exc: Exception
    ) -> None:
        """Builds that never reached ``compute.<host>``: error with a fault, claims
        given back, as a failed build leaves them."""
        code, reason = status_of(exc)
        message = f"the build could not be sent to compute.{host}: {reason}"
        self.log.warning("build_cast_failed", host=host, count=len(builds), error=reason)
        try:
            with self.sessions.begin() as session:
                for build in builds:
                    uuid = build["instance_uuid"]
                    release(session, host, flavor)
                    self.changes.update(session, uuid, host=None, node=None)
                    self.changes.fault(session, uuid, int(code), message, host=host)
                record_events(
                    session,
                    [(b["instance_uuid"], b["request_id"]) for b in builds],
                    "schedule_and_build_instances",
                    "Error",
                    host=host,
                    details=message,
                )
        except Exception as failed:  # they stay building here: never built twice
            self.log.error("build_cast_failure_not_recorded", host=host, error=str(failed))

    def _create(self, req: link_pb2.BuildRequest, hosts: list[str], claim_id: str) -> None:
        with self.sessions.begin() as session:
            if take_pending(session, claim_id) != len(hosts):
                # Given back as expired (this thread was held up that long): the hosts
                # may be full again. Nothing is created.
                raise Unavailable(f"the host claims of this build in {self.name} expired")
            rows = []
            for msg, host in zip(req.instances, hosts, strict=True):
                fields = codec.instance_fields(msg)
                fields.update(
                    vm_state=states.BUILDING,
                    task_state=states.SCHEDULING,
                    power_state=states.NOSTATE,
                    host=host,
                    node=host,
                    flavor=codec.flavor_snapshot(req.flavor),
                    flavor_id=req.flavor.id,
                    image_id=req.image.id or msg.image_id,
                    cell_path=self.name,
                    server_group=req.hints.group or None,
                )
                rows.append({"uuid": msg.uuid, **fields})
            created = self.changes.create_many(session, rows)
            start_actions(
                session,
                [(row, "create", req.request_ids.get(row.uuid, req.request_id)) for row in created],
            )

    # --- actions ---------------------------------------------------------------------

    async def on_action(
        self, env: link_pb2.Envelope, delivery: Delivery
    ) -> link_pb2.CellResult | None:
        """An action on an instance this cell owns."""
        action = env.instance_action
        name = action.action
        params: dict[str, Any] = {}
        if name == "reboot" and action.hard:
            name = "reboot_hard"
            params["hard"] = True
        if action.image_id:
            params["image_id"] = action.image_id
        if action.HasField("flavor"):
            params["flavor"] = codec.flavor_snapshot(action.flavor)
        if action.snapshot_name:
            params["snapshot_name"] = action.snapshot_name

        def begin() -> tuple[types_pb2.Instance, str | None]:
            with self.sessions.begin() as session:
                row = begin_action(
                    session,
                    self.changes,
                    action.instance_uuid,
                    name,
                    action.request_id,
                    params=params,
                    user_id=action.user_id,
                )
                return codec.instance_to_proto(row), row.host

        instance, host = await asyncio.to_thread(begin)
        rpc = self.rpc() if self.rpc is not None else None
        if host is None or rpc is None:
            # Never placed on a host (failed build): nothing runs, just destroy it.
            if name == "delete":
                await asyncio.to_thread(self._destroy_unplaced, action.instance_uuid)
                return delivery.ok(instance=instance)
            raise NoValidHost(f"instance {action.instance_uuid} has no host")
        await asyncio.to_thread(
            rpc.cast,
            f"compute.{host}",
            "run_action",
            instance_uuid=action.instance_uuid,
            action=name,
            request_id=action.request_id,
            params=params,
        )
        return delivery.ok(instance=instance)

    def _destroy_unplaced(self, uuid: str) -> None:
        with self.sessions.begin() as session:
            self.changes.destroy(session, uuid)
