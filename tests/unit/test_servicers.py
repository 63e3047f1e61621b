"""Every RPC in the generated stubs has an implementation in its servicer."""

from __future__ import annotations

import pytest

from cellplane.api.cells import CellsServicer
from cellplane.api.compute import ComputeServicer
from cellplane.federation.link import LinkServicer
from cellplane.v1 import (
    cells_pb2,
    cells_pb2_grpc,
    compute_pb2,
    compute_pb2_grpc,
    link_pb2,
    link_pb2_grpc,
)

SERVICERS = [
    (compute_pb2, "ComputeService", compute_pb2_grpc.ComputeServiceServicer, ComputeServicer),
    (cells_pb2, "CellsService", cells_pb2_grpc.CellsServiceServicer, CellsServicer),
    (link_pb2, "CellLink", link_pb2_grpc.CellLinkServicer, LinkServicer),
]


@pytest.mark.parametrize(("module", "service", "base", "servicer"), SERVICERS)
def test_every_rpc_is_implemented(module, service, base, servicer) -> None:  # type: ignore[no-untyped-def]
    methods = module.DESCRIPTOR.services_by_name[service].methods_by_name
    missing = [name for name in methods if getattr(servicer, name) is getattr(base, name)]
    assert missing == [], f"{servicer.__name__} leaves {missing} to the generated UNIMPLEMENTED"
