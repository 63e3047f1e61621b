"""The network role of a cell: fixed-IP allocation from the cell's CIDR pools."""

from cellplane.network.ipam import allocate, release
from cellplane.network.role import (
    NetworkClient,
    NetworkEndpoint,
    NetworkRole,
    start_network_role,
)

__all__ = [
    "NetworkClient",
    "NetworkEndpoint",
    "NetworkRole",
    "allocate",
    "release",
    "start_network_role",
]
