"""One cell at run time: its database, its links, its gRPC server and its roles.

``Cell(config)`` is a long-running component: ``await cell.start()``, then
``await cell.stop()`` (idempotent), or ``async with Cell(config) as cell``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import IntegrityError

from cellplane import catalog, db
from cellplane.amqp import connect
from cellplane.api.auth import Authenticator
from cellplane.api.cells import CellsServicer
from cellplane.api.compute import ComputeServicer
from cellplane.api.view import ApiView
from cellplane.config import CellConfig, ParentConfig
from cellplane.db.instances import InstanceChanges
from cellplane.db.models import Cell as CellRow
from cellplane.errors import AlreadyExists, CellNotFound, InvalidArgument, Unavailable
from cellplane.federation import dispatch, envelopes, security
from cellplane.federation.builds import BuildCoordinator
from cellplane.federation.channel import PeerChannel, Relation
from cellplane.federation.cursors import CursorStore
from cellplane.federation.digests import Synchronizer
from cellplane.federation.link import LinkEndpoint, LinkServicer, ParentDialer, server_options
from cellplane.federation.neighbours import Neighbours
from cellplane.federation.outbox import ENVELOPE_BYTES, Outbox, OutboxSender, PushReceiver
from cellplane.federation.reports import StateManager
from cellplane.federation.router import Router
from cellplane.federation.views import own_node
from cellplane.roles import LocalRoles
from cellplane.v1 import (
    cells_pb2,
    cells_pb2_grpc,
    compute_pb2,
    compute_pb2_grpc,
    link_pb2,
    link_pb2_grpc,
)

HEALTH_INTERVAL = 5.0
# Threads for blocking work (database, local RPC) of the cells in one event loop.
# asyncio's default (cores + 4) is too few: a build holds one for a whole
# scheduler call.
BLOCKING_THREADS = 32
_PREPARED_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _prepare_loop() -> None:
    loop = asyncio.get_running_loop()
    if loop not in _PREPARED_LOOPS:
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="cellplane")
        )
        _PREPARED_LOOPS.add(loop)


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Cell:
    """Runs the roles of one cell."""

    def __init__(self, config: CellConfig) -> None:
        self.config = config
        self.name = config.name
        self.log = structlog.get_logger().bind(cell=config.name)
        self._phase = _Phase.NEW
        self._tasks: list[asyncio.Task[Any]] = []
        self._dialers: dict[str, tuple[ParentDialer, asyncio.Task[None]]] = {}
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.healthy = False
        self._addresses: dict[str, str] = {}  # neighbour -> host:port of its CellLink server
        self._child_weights: dict[str, tuple[float, float, bool]] = {}

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, start serving and dial the parents."""
        if self._phase is not _Phase.NEW:
            raise RuntimeError(f"cell {self.name} was already started")
        self._phase = _Phase.RUNNING
        _prepare_loop()
        cfg = self.config
        _make_sqlite_dir(cfg.database_url)
        await asyncio.to_thread(db.upgrade, cfg.database_url)
        self.engine = db.create_engine(cfg.database_url)
        self.sessions = db.make_session_factory(self.engine)
        self.cursors = CursorStore(self.sessions)
        self.epoch = os.urandom(8).hex()
        self.neighbours = Neighbours(self.epoch, self.cursors.load)
        self.handlers = dispatch.Handlers()
        self.router = Router(
            self.name,
            self.neighbours,
            self.handlers,
            max_hops=cfg.max_hops,
            response_timeout=cfg.response_timeout,
        )
        self.state = StateManager(
            self.name,
            self.neighbours,
            self.sessions,
            self._send_up,
            capabilities=cfg.capabilities,
            reserve_percent=cfg.reserve_percent,
            report_interval=cfg.report_interval,
            mute_interval=cfg.mute_interval,
        )
        self.endpoint = LinkEndpoint(
            name=self.name,
            epoch=self.epoch,
            neighbours=self.neighbours,
            cursors=self.cursors,
            receive=self.router.receive,
            tls=cfg.tls,
            max_message_bytes=cfg.max_message_bytes,
            on_link_change=self._on_link_change,
        )
        self._register_handlers()
        await asyncio.to_thread(self._seed_neighbours)
        await asyncio.to_thread(catalog.seed, self.sessions, images="api" in cfg.roles)
        self.local_roles = await asyncio.to_thread(
            LocalRoles.start, cfg, self.sessions, self.changes
        )
        self.link_servicer = LinkServicer(self.endpoint)
        if self.runs_links:
            await self._serve()
            for channel in self.neighbours.parents():
                self._start_dialer(channel)
            for name, run in (
                ("reports", self.state.run),
                ("outbox", self.outbox_sender.run),
                ("sync", self.sync.run),
                ("health", self._watch_health),
            ):
                self._tasks.append(asyncio.create_task(run(), name=f"{self.name}-{name}"))
        self.log.info(
            "cell_started",
            address=self.address,
            roles=list(cfg.roles),
            parents=[p.peer for p in self.neighbours.parents()],
            children=[c.peer for c in self.neighbours.children()],
        )

    async def stop(self, grace: float = 2.0) -> None:
        """Close links and the server; safe to call more than once."""
        if self._phase is not _Phase.RUNNING:
            self._phase = _Phase.STOPPED
            return
        self._phase = _Phase.STOPPED
        try:
            for dialer, _ in self._dialers.values():
                dialer.stop()
            for task in [t for _, t in self._dialers.values()] + self._tasks:
                task.cancel()
            await asyncio.gather(
                *[t for _, t in self._dialers.values()], *self._tasks, return_exceptions=True
            )
            self._dialers.clear()
            await self.router.stop()
        finally:
            # The port, the roles and the database go whatever failed above.
            try:
                if self._server is not None:
                    await self._server.stop(grace)
            finally:
                await asyncio.to_thread(self.local_roles.stop)
                self.engine.dispose()
        self.log.info("cell_stopped")

    async def __aenter__(self) -> Cell:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def runs_links(self) -> bool:
        """Whether this process runs the ``cells`` role: links, reports, pushes up and
        the gRPC server. Without it, only the roles on local RPC run here; their
        changes wait in the cell's outbox for the process that has it."""
        return "cells" in self.config.roles

    @property
    def address(self) -> str:
        """host:port this cell serves on (the real port when configured with port 0)."""
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def path(self) -> str:
        """This cell's path from the top, through its first parent."""
        return self.endpoint.path

    # --- serving -------------------------------------------------------------------

    async def _serve(self) -> None:
        cfg = self.config
        server = grpc.aio.server(options=server_options(cfg.max_message_bytes))
        link_pb2_grpc.add_CellLinkServicer_to_server(self.link_servicer, server)
        auth = Authenticator(cfg.api.tokens)
        cells_pb2_grpc.add_CellsServiceServicer_to_server(CellsServicer(self, auth), server)
        names = [cells_pb2.DESCRIPTOR.services_by_name["CellsService"].full_name]
        if self.api_view is not None:
            if auth.open:
                self.log.warning("api_open", reason="no [api] tokens: every caller is admin")
            compute_pb2_grpc.add_ComputeServiceServicer_to_server(
                ComputeServicer(self, auth, self.api_view), server
            )
            names.append(compute_pb2.DESCRIPTOR.services_by_name["ComputeService"].full_name)
        self.health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        services = [
            link_pb2.DESCRIPTOR.services_by_name["CellLink"].full_name,
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(services, server)
        creds = security.server_credentials(cfg.tls) if cfg.tls is not None else None
        try:
            if creds is not None:
                self.port = server.add_secure_port(cfg.listen, creds)
            else:
                self.port = server.add_insecure_port(cfg.listen)
        except RuntimeError:  # gRPC's "Failed to bind": the address is taken or not ours
            self.port = 0
        if self.port == 0:
            raise Unavailable(
                f"cell {self.name} cannot listen on {cfg.listen}: the address is in use "
                "(is this cell running already?) or not an address of this machine"
            )
        await server.start()
        self._server = server
        await self._check_health()

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            await self._check_health()

    async def _check_health(self) -> None:
        ok_db = await asyncio.to_thread(self._database_reachable)
        ok_amqp = await asyncio.to_thread(self._broker_reachable)
        healthy = ok_db and ok_amqp
        if healthy != self.healthy:
            self.log.info("health_changed", serving=healthy, database=ok_db, broker=ok_amqp)
        self.healthy = healthy
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (
            "",
            "cellplane.v1.CellLink",
            "cellplane.v1.CellsService",
            "cellplane.v1.ComputeService",
        ):
            self.health_servicer.set(service, status)

    def _database_reachable(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # any failure means "not reachable"
            return False

    def _broker_reachable(self) -> bool:
        try:
            with connect(self.config.transport_url) as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:  # any failure means "not reachable"
            return False

    # --- neighbours ----------------------------------------------------------------

    def _seed_neighbours(self) -> None:
        """Write the configured neighbours to the DB (the file wins for those it names);
        neighbours added through the API stay there too. Then adopt all of them."""
        try:
            self._write_configured_neighbours()
        except IntegrityError:  # another process of this cell wrote them first
            self._write_configured_neighbours()
        with self.sessions() as session:
            for row in session.scalars(select(CellRow)):
                self._adopt(row)

    def _write_configured_neighbours(self) -> None:
        cfg = self.config
        configured = [("parent", p.name, p.address, p.tls_identity) for p in cfg.parents]
        configured += [("child", c.name, "", c.tls_identity) for c in cfg.children]
        with self.sessions.begin() as session:
            known = {row.name: row for row in session.scalars(select(CellRow))}
            for relation, name, address, identity in configured:
                row = known.get(name)
                if row is None:
                    session.add(
                        CellRow(
                            name=name,
                            relation=relation,
                            address=address,
                            tls_identity=identity or None,
                        )
                    )
                else:
                    row.relation, row.address = relation, address
                    row.tls_identity = identity or row.tls_identity

    def _adopt(self, row: CellRow) -> PeerChannel:
        relation = Relation(row.relation)
        channel = self.neighbours.add(row.name, relation)
        if row.disabled:
            self.neighbours.disabled.add(row.name)
        else:
            self.neighbours.disabled.discard(row.name)
        if row.tls_identity:
            self.endpoint.tls_identities[row.name] = row.tls_identity
        else:
            self.endpoint.tls_identities.pop(row.name, None)
        self._addresses[row.name] = row.address
        self._child_weights[row.name] = (row.weight_offset, row.weight_scale, row.disabled)
        return channel

    def _start_dialer(self, channel: PeerChannel) -> None:
        parent = ParentConfig(
            name=channel.peer,
            address=self._addresses[channel.peer],
            tls_identity=self.endpoint.tls_identities.get(channel.peer, ""),
        )
        dialer = ParentDialer(self.endpoint, parent, channel)
        task = asyncio.create_task(dialer.run(), name=f"{self.name}-dial-{channel.peer}")
        self._dialers[channel.peer] = (dialer, task)

    async def _stop_dialer(self, name: str) -> None:
        entry = self._dialers.pop(name, None)
        if entry is None:
            return
        dialer, task = entry
        dialer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def add_neighbour(self, row: CellRow) -> CellRow:
        """Store a new neighbour and start using it at once."""

        def insert() -> CellRow:
            with self.sessions.begin() as session:
                if session.scalar(select(CellRow).where(CellRow.name == row.name)):
                    raise AlreadyExists(f"cell {row.name!r} is already a neighbour of {self.name}")
                session.add(row)
            return row

        stored = await asyncio.to_thread(insert)
        channel = self._adopt(stored)
        if channel.relation is Relation.PARENT:
            self._start_dialer(channel)
        self.state.changed()
        return stored

    async def update_neighbour(self, name: str, values: dict[str, Any]) -> CellRow:
        """Change a neighbour's settings and apply them without a restart."""

        def update() -> CellRow:
            with self.sessions.begin() as session:
                row = session.scalar(select(CellRow).where(CellRow.name == name))
                if row is None:
                    raise CellNotFound(f"cell {name!r} is not a neighbour of {self.name}")
                for key, value in values.items():
                    setattr(row, key, value)
            return row

        row = await asyncio.to_thread(update)
        channel = self._adopt(row)
        if channel.relation is Relation.PARENT and {"address", "tls_identity"} & set(values):
            await self._stop_dialer(name)
            self._start_dialer(channel)
        return row

    async def remove_neighbour(self, name: str) -> None:
        """Forget a neighbour and close its link."""

        def delete() -> None:
            with self.sessions.begin() as session:
                row = session.scalar(select(CellRow).where(CellRow.name == name))
                if row is None:
                    raise CellNotFound(f"cell {name!r} is not a neighbour of {self.name}")
                session.delete(row)

        await asyncio.to_thread(delete)
        await self._stop_dialer(name)
        await self.link_servicer.close(name)
        self.neighbours.remove(name)
        self.outbox_sender.forget(name)
        self.neighbours.disabled.discard(name)
        self.state.children.pop(name, None)
        self.state.changed()

    def _on_link_change(self, channel: PeerChannel) -> None:
        state = channel.state.value

        def store() -> None:
            with self.sessions.begin() as session:
                row = session.scalar(select(CellRow).where(CellRow.name == channel.peer))
                if row is not None:
                    row.link_state = state
                    if state == "up":
                        row.last_seen = db.utcnow()

        if self._phase is _Phase.RUNNING:
            task = asyncio.ensure_future(asyncio.to_thread(store))
            self._tasks.append(task)
        if channel.relation is Relation.CHILD or state == "up":
            # A parent that came up gets a report at once; every parent hears soon
            # that a child went away or came back (CapacityReport.unreachable).
            self.state.changed()

    # --- handlers ------------------------------------------------------------------

    def _register_handlers(self) -> None:
        cfg = self.config
        is_api = "api" in cfg.roles
        self.outbox = Outbox(lambda: [c.peer for c in self.neighbours.parents()], change_log=is_api)
        self.changes = InstanceChanges(self.outbox.record)
        self.outbox_sender = OutboxSender(
            self.name,
            self.neighbours,
            self.sessions,
            envelope_bytes=min(ENVELOPE_BYTES, cfg.max_message_bytes // 4),
            lone_writer=outbox_written_here(cfg),
        )
        self.outbox_sender.watch(self.sessions)
        self.api_view = ApiView(self.sessions) if is_api else None
        self.pushes = PushReceiver(
            self.name, self.outbox, self.api_view.after_pushes if self.api_view else None
        )
        self.pushes.register(self.handlers)
        self.builds = BuildCoordinator(
            cfg,
            self.router,
            self.state,
            self.sessions,
            self.changes,
            (lambda: self.local_roles.client) if "cells" in cfg.roles else None,
            self._weights,
        )
        self.builds.register(self.handlers)
        self.sync = Synchronizer(
            self.name,
            self.router,
            self.sessions,
            self.outbox,
            interval=cfg.sync_interval,
            timeout=cfg.response_timeout,
        )
        self.sync.register(self.handlers)
        self.handlers.register("echo", dispatch.echo)
        self.handlers.register_inline("capability_report", self.state.on_capability_report)
        self.handlers.register_inline("capacity_report", self.state.on_capacity_report)
        self.handlers.register("service_query", self._on_service_query)

    async def _on_service_query(
        self, env: link_pb2.Envelope, delivery: dispatch.Delivery
    ) -> link_pb2.CellResult | None:
        what = env.service_query.what
        if what == "node":
            node = await asyncio.to_thread(
                own_node, delivery.path, self.neighbours.children(), self.state
            )
            return delivery.ok(node=node)
        raise InvalidArgument(f"unknown service query {what!r}")

    def _weights(self, child: str) -> tuple[float, float, bool]:
        return self._child_weights.get(child, (0.0, 1.0, False))

    def _send_up(self, target: str, payload: dict[str, Any]) -> None:
        self.router.send(target, envelopes.UP, **payload)


def outbox_written_here(config: CellConfig) -> bool:
    """Whether a process running ``config`` writes every row of its cell's outbox: the
    computes (the only writers besides the cells role) run in it, or the cell has none."""
    return "compute" in config.roles or not config.compute.hosts


def _make_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file, so a new cell can start."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


__all__ = ["Cell"]
