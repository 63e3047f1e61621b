"""``cellplane cells ...`` and ``cellplane tree``: the CellsService from a terminal."""

from __future__ import annotations

import argparse
import collections
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cellplane.cli.tables import table
from cellplane.config import TlsConfig
from cellplane.errors import InvalidArgument
from cellplane.federation import security
from cellplane.v1 import cells_pb2, cells_pb2_grpc, types_pb2

RELATIONS = {"parent": types_pb2.CELL_RELATION_PARENT, "child": types_pb2.CELL_RELATION_CHILD}
LINK = {
    types_pb2.LINK_STATE_UP: "up",
    types_pb2.LINK_STATE_DOWN: "down",
    types_pb2.LINK_STATE_CONNECTING: "connecting",
    types_pb2.LINK_STATE_UNSPECIFIED: "?",
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cells`` and ``tree``."""
    cells = sub.add_parser("cells", help="list and change this cell's neighbours")
    verbs = cells.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="parents and children with link state")
    show = verbs.add_parser("show", help="one neighbour")
    show.add_argument("name")
    add = verbs.add_parser("add", help="add a parent or a child")
    add.add_argument("name")
    add.add_argument("--relation", choices=sorted(RELATIONS), required=True)
    add.add_argument("--address", default="", help="host:port of a parent's CellLink server")
    add.add_argument("--tls-identity", default="")
    add.add_argument("--weight-offset", type=float, default=0.0)
    add.add_argument("--weight-scale", type=float, default=1.0)
    add.add_argument("--disabled", action="store_true")
    update = verbs.add_parser("update", help="change a neighbour's settings")
    update.add_argument("name")
    update.add_argument("--address")
    update.add_argument("--tls-identity")
    update.add_argument("--weight-offset", type=float)
    update.add_argument("--weight-scale", type=float)
    group = update.add_mutually_exclusive_group()
    group.add_argument("--disable", dest="disabled", action="store_const", const=True)
    group.add_argument("--enable", dest="disabled", action="store_const", const=False)
    remove = verbs.add_parser("remove", help="forget a neighbour")
    remove.add_argument("name")
    caps = verbs.add_parser("capacities", help="capacities and capabilities of a subtree")
    caps.add_argument("path", nargs="?", default="")
    sub.add_parser("tree", help="the tree below a cell, with link state and capacity")


def open_channel(opts: argparse.Namespace) -> grpc.Channel:
    """A channel to ``opts.server``: plaintext, or TLS when ``--ca`` or ``--cert`` is given.

    ``--cert``/``--key`` present a client certificate (a server with a CA configured
    requires one); ``--ca`` verifies the server (the system roots when it is absent).
    """
    channel = _transport(opts)
    token = getattr(opts, "token", "")
    if token:
        return grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def _transport(opts: argparse.Namespace) -> grpc.Channel:
    ca, cert, key = (getattr(opts, name, None) for name in ("ca", "cert", "key"))
    if ca is None and cert is None and key is None:
        return grpc.insecure_channel(opts.server)
    if (cert is None) != (key is None):
        raise InvalidArgument("--cert and --key go together")
    for path in (ca, cert, key):
        if path is not None and not path.is_file():
            raise InvalidArgument(f"{path} is not a file")
    if cert is not None and key is not None:
        credentials = security.channel_credentials(TlsConfig(cert=cert, key=key, ca=ca))
    else:
        roots = ca.read_bytes() if ca is not None else None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(opts.server, credentials)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def run(opts: argparse.Namespace) -> int:
    """Run a ``cells`` or ``tree`` command against ``opts.server``."""
    with open_channel(opts) as channel:
        stub = cells_pb2_grpc.CellsServiceStub(channel)
        if opts.command == "tree":
            tree = stub.GetTree(cells_pb2.GetTreeRequest(), timeout=opts.timeout)
            print(render_tree(tree.root))
            return 0
        return _cells(stub, opts)


def _cells(stub: cells_pb2_grpc.CellsServiceStub, opts: argparse.Namespace) -> int:
    t = opts.timeout
    if opts.verb == "list":
        listing = stub.ListCells(cells_pb2.ListCellsRequest(), timeout=t)
        print(f"cell {listing.cell} (path {listing.path})")
        print(_cell_table(listing.cells))
    elif opts.verb == "show":
        print(_cell_table([stub.GetCell(cells_pb2.GetCellRequest(name=opts.name), timeout=t).cell]))
    elif opts.verb == "add":
        cell = types_pb2.Cell(
            name=opts.name,
            relation=RELATIONS[opts.relation],
            address=opts.address,
            tls_identity=opts.tls_identity,
            weight_offset=opts.weight_offset,
            weight_scale=opts.weight_scale,
            disabled=opts.disabled,
        )
        print(_cell_table([stub.AddCell(cells_pb2.AddCellRequest(cell=cell), timeout=t).cell]))
    elif opts.verb == "update":
        cell = types_pb2.Cell(name=opts.name)
        mask = []
        for key in ("address", "tls_identity", "weight_offset", "weight_scale", "disabled"):
            value = getattr(opts, key)
            if value is not None:
                setattr(cell, key, value)
                mask.append(key)
        if not mask:
            raise SystemExit("cellplane cells update: nothing to change")
        request = cells_pb2.UpdateCellRequest(cell=cell, update_mask=mask)
        print(_cell_table([stub.UpdateCell(request, timeout=t).cell]))
    elif opts.verb == "remove":
        stub.RemoveCell(cells_pb2.RemoveCellRequest(name=opts.name), timeout=t)
        print(f"removed {opts.name}")
    elif opts.verb == "capacities":
        reply = stub.GetCapacities(cells_pb2.GetCapacitiesRequest(cell_path=opts.path), timeout=t)
        rows = [
            (
                c.cell_path,
                c.capacity.ram_free_mb,
                c.capacity.ram_total_mb,
                c.capacity.disk_free_gb,
                c.capacity.disk_total_gb,
                _units(c.capacity),
                _caps(c.capabilities),
                c.mute,
            )
            for c in reply.cells
        ]
        print(
            table(
                [
                    "cell",
                    "ram free MB",
                    "ram total MB",
                    "disk free GB",
                    "disk total GB",
                    "units (ram MB: n)",
                    "capabilities",
                    "mute",
                ],
                rows,
            )
        )
    return 0


def _cell_table(cells: object) -> str:
    rows = [
        (
            c.name,
            "parent" if c.relation == types_pb2.CELL_RELATION_PARENT else "child",
            c.address or "-",
            LINK[c.link_state],
            c.mute,
            c.disabled,
            _ago(c.last_seen),
            c.weight_offset,
            c.weight_scale,
            _caps(c.capabilities),
        )
        for c in cells  # type: ignore[attr-defined]
    ]
    return table(
        [
            "name",
            "relation",
            "address",
            "link",
            "mute",
            "disabled",
            "last seen",
            "w.offset",
            "w.scale",
            "capabilities",
        ],
        rows,
    )


def render_tree(root: types_pb2.CellNode) -> str:
    """The tree as indented lines: name, link state, mute flag, capacity."""
    lines: list[str] = []

    def walk(node: types_pb2.CellNode, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        link = "" if top else f" link={LINK[node.link_state]}"
        mute = " MUTE" if node.mute else ""
        cap = node.capacity
        lines.append(
            f"{prefix}{branch}{node.name}{link}{mute}  ram={cap.ram_free_mb}/{cap.ram_total_mb}MB"
            f" disk={cap.disk_free_gb}/{cap.disk_total_gb}GB {_caps(node.capabilities)}".rstrip()
        )
        inner = prefix + ("" if top else ("    " if last else "│   "))
        for i, child in enumerate(node.children):
            walk(child, inner, i == len(node.children) - 1, False)

    walk(root, "", True, True)
    return "\n".join(lines)


def _caps(caps: object) -> str:
    return " ".join(f"{c.name}={';'.join(c.values)}" for c in caps)  # type: ignore[attr-defined]


def _units(cap: types_pb2.Capacity) -> str:
    return " ".join(f"{u.memory_mb}:{u.units}" for u in cap.ram_units) or "-"


def _ago(stamp: Timestamp) -> str:
    if not stamp.seconds:
        return "never"
    seconds = (datetime.now(UTC) - stamp.ToDatetime(UTC)).total_seconds()
    return f"{max(0.0, seconds):.1f}s ago"
