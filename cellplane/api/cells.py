"""CellsService: a cell's neighbours, capacities and the tree below it (admin only)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from sqlalchemy import select

from cellplane.api.auth import Authenticator
from cellplane.api.status import rpc
from cellplane.config import CELL_NAME
from cellplane.db.models import Cell as CellRow
from cellplane.errors import CellNotFound, CellplaneError, InvalidArgument
from cellplane.federation import envelopes, paths
from cellplane.federation.channel import Relation
from cellplane.federation.reports import capacity_from_dict
from cellplane.federation.views import LINK_STATES, assemble_tree, own_node, timestamp
from cellplane.v1 import cells_pb2, cells_pb2_grpc, link_pb2, types_pb2

if TYPE_CHECKING:
    from cellplane.service import Cell

Context = grpc.aio.ServicerContext[Any, Any]
UPDATABLE = ("address", "tls_identity", "weight_offset", "weight_scale", "disabled")
_RELATIONS = {types_pb2.CELL_RELATION_PARENT: "parent", types_pb2.CELL_RELATION_CHILD: "child"}


class CellsServicer(cells_pb2_grpc.CellsServiceServicer):
    """Admin API over a running :class:`~cellplane.service.Cell`."""

    def __init__(self, cell: Cell, auth: Authenticator) -> None:
        self.cell = cell
        self.auth = auth

    def _admin(self, context: Context) -> None:
        self.auth.caller(context).require_admin("the cells API")

    def _to_proto(self, row: CellRow) -> types_pb2.Cell:
        cell = self.cell
        relation = Relation(row.relation)
        channel = cell.neighbours.get(row.name, relation)
        report = cell.state.children.get(row.name)
        out = types_pb2.Cell(
            name=row.name,
            relation=(
                types_pb2.CELL_RELATION_PARENT
                if relation is Relation.PARENT
                else types_pb2.CELL_RELATION_CHILD
            ),
            address=row.address,
            tls_identity=row.tls_identity or "",
            weight_offset=row.weight_offset,
            weight_scale=row.weight_scale,
            disabled=row.disabled,
            mute=cell.state.is_mute(row.name),
            link_state=LINK_STATES[channel.state] if channel else types_pb2.LINK_STATE_DOWN,
            path=(
                paths.join(cell.path, row.name)
                if relation is Relation.CHILD
                else (channel.peer_path if channel else "")
            ),
        )
        seen = timestamp(
            max(channel.last_seen if channel else 0.0, report.received_at if report else 0.0)
        )
        if seen is not None:
            out.last_seen.CopyFrom(seen)
        elif row.last_seen is not None:
            out.last_seen.FromDatetime(row.last_seen)
        out.capabilities.extend(
            types_pb2.Capability(name=n, values=v) for n, v in sorted(row.capabilities.items())
        )
        out.capacity.CopyFrom(
            report.capacity if report else capacity_from_dict(row.capacities or {})
        )
        return out

    def _rows(self) -> list[CellRow]:
        with self.cell.sessions() as session:
            return list(session.scalars(select(CellRow).order_by(CellRow.relation, CellRow.name)))

    def _row(self, name: str) -> CellRow:
        for row in self._rows():
            if row.name == name:
                return row
        raise CellNotFound(f"cell {name!r} is not a neighbour of {self.cell.name}")

    @rpc
    async def ListCells(
        self, request: cells_pb2.ListCellsRequest, context: Context
    ) -> cells_pb2.ListCellsResponse:
        self._admin(context)
        wanted = _RELATIONS.get(request.relation)
        rows = [r for r in self._rows() if wanted is None or r.relation == wanted]
        return cells_pb2.ListCellsResponse(
            cell=self.cell.name, path=self.cell.path, cells=[self._to_proto(r) for r in rows]
        )

    @rpc
    async def GetCell(
        self, request: cells_pb2.GetCellRequest, context: Context
    ) -> cells_pb2.GetCellResponse:
        self._admin(context)
        _check_name(request.name)
        return cells_pb2.GetCellResponse(cell=self._to_proto(self._row(request.name)))

    @rpc
    async def AddCell(
        self, request: cells_pb2.AddCellRequest, context: Context
    ) -> cells_pb2.AddCellResponse:
        self._admin(context)
        given = request.cell
        _check_name(given.name)
        if given.name == self.cell.name:
            raise InvalidArgument("a cell cannot be its own neighbour")
        relation = _RELATIONS.get(given.relation)
        if relation is None:
            raise InvalidArgument("cell.relation must be CELL_RELATION_PARENT or _CHILD")
        if relation == "parent":
            _check_address(given.address)
        row = CellRow(
            name=given.name,
            relation=relation,
            address=given.address,
            tls_identity=given.tls_identity or None,
            weight_offset=given.weight_offset,
            weight_scale=given.weight_scale or 1.0,
            disabled=given.disabled,
        )
        stored = await self.cell.add_neighbour(row)
        return cells_pb2.AddCellResponse(cell=self._to_proto(stored))

    @rpc
    async def UpdateCell(
        self, request: cells_pb2.UpdateCellRequest, context: Context
    ) -> cells_pb2.UpdateCellResponse:
        self._admin(context)
        given = request.cell
        _check_name(given.name)
        mask = list(request.update_mask) or list(UPDATABLE)
        unknown = sorted(set(mask) - set(UPDATABLE))
        if unknown:
            raise InvalidArgument(f"update_mask: cannot change {unknown}; can: {list(UPDATABLE)}")
        current = self._row(given.name)
        values: dict[str, Any] = {}
        for key in mask:
            value = getattr(given, key)
            if key == "address" and (value or current.relation == "parent"):
                _check_address(value)
            if key == "tls_identity":
                value = value or None
            if key == "weight_scale" and "weight_scale" not in request.update_mask:
                value = value or current.weight_scale
            values[key] = value
        row = await self.cell.update_neighbour(given.name, values)
        return cells_pb2.UpdateCellResponse(cell=self._to_proto(row))

    @rpc
    async def RemoveCell(
        self, request: cells_pb2.RemoveCellRequest, context: Context
    ) -> cells_pb2.RemoveCellResponse:
        self._admin(context)
        _check_name(request.name)
        await self.cell.remove_neighbour(request.name)
        return cells_pb2.RemoveCellResponse()

    @rpc
    async def GetCapacities(
        self, request: cells_pb2.GetCapacitiesRequest, context: Context
    ) -> cells_pb2.GetCapacitiesResponse:
        self._admin(context)
        root = await self._tree(context)
        target = request.cell_path or root.path
        paths.validate(target, "cell_path")
        found = _find(root, target)
        if found is None:
            raise CellNotFound(f"no cell {target!r} below {self.cell.name}")
        response = cells_pb2.GetCapacitiesResponse()
        stack = [found]
        while stack:
            node = stack.pop(0)
            response.cells.append(
                cells_pb2.CellCapacity(
                    cell_path=node.path,
                    capacity=node.capacity,
                    capabilities=node.capabilities,
                    mute=node.mute,
                )
            )
            stack.extend(node.children)
        return response

    @rpc
    async def SyncInstances(
        self, request: cells_pb2.SyncInstancesRequest, context: Context
    ) -> cells_pb2.SyncInstancesResponse:
        self._admin(context)
        cell = self.cell
        children = [c.peer for c in cell.neighbours.children()]
        if request.cell_path:
            hops = paths.hops(paths.validate(request.cell_path, "cell_path"))
            if len(hops) < 2 or hops[0] != cell.name or hops[1] not in children:
                raise CellNotFound(
                    f"{request.cell_path!r} is not below {cell.name} (children: {children})"
                )
            children = [hops[1]]
        response = cells_pb2.SyncInstancesResponse()
        for child in children:
            result = response.results.add(cell_path=paths.join(cell.name, child))
            try:
                sync = await cell.sync.sync_child(child, full=request.full)
            except CellplaneError as exc:
                result.status.code, result.status.message = int(exc.code), str(exc)
                continue
            result.answered = True
            result.sync.CopyFrom(sync)
        return response

    @rpc
    async def GetTree(
        self, request: cells_pb2.GetTreeRequest, context: Context
    ) -> cells_pb2.GetTreeResponse:
        self._admin(context)
        return cells_pb2.GetTreeResponse(root=await self._tree(context))

    async def _tree(self, context: Context) -> types_pb2.CellNode:
        cell = self.cell
        remaining = context.time_remaining()
        timeout = min(cell.config.response_timeout, remaining if remaining else 1e9)
        results = await cell.router.broadcast(
            envelopes.DOWN,
            timeout=max(0.1, timeout * 0.9),
            run_locally=True,
            service_query=link_pb2.ServiceQuery(what="node"),
        )
        nodes = {r.cell_path: r.node for r in results if r.answered and r.HasField("node")}
        root = nodes.get(cell.name)
        if root is None:
            root = await asyncio.to_thread(
                own_node, cell.name, cell.neighbours.children(), cell.state
            )
        return assemble_tree(root, nodes)


def _find(node: types_pb2.CellNode, path: str) -> types_pb2.CellNode | None:
    if node.path == path:
        return node
    for child in node.children:
        if path == child.path or path.startswith(child.path + paths.SEP):
            return _find(child, path)
    return None


def _check_name(name: str) -> None:
    if not CELL_NAME.match(name):
        raise InvalidArgument(f"{name!r} is not a valid cell name ({CELL_NAME.pattern})")


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"address {address!r} is not host:port")
