"""Scheduling: one filter/weigher framework for the cell and the host scheduler,
and transactional resource claims.

The cell filters and weighers live in :mod:`cellplane.scheduling.cells`, the
host ones in :mod:`cellplane.scheduling.hosts`; the scheduler role's local RPC
endpoint in :mod:`cellplane.scheduling.rpc` (imported on its own, since it
brings in the AMQP transport).
"""

from cellplane.scheduling.cells import (
    CellCandidate,
    cell_candidate_from_capacity,
    default_cell_filters,
    default_cell_weighers,
)
from cellplane.scheduling.claims import HostScheduler, claim, release, resize_claim
from cellplane.scheduling.framework import (
    Filter,
    Filtered,
    Weighed,
    Weigher,
    normalize,
    run_filters,
    select,
    select_or_raise,
    weigh,
)
from cellplane.scheduling.hosts import (
    HostCandidate,
    default_host_filters,
    default_host_weighers,
    load_hosts,
)
from cellplane.scheduling.spec import FlavorSpec, Hints, RequestSpec

__all__ = [
    "CellCandidate",
    "Filter",
    "Filtered",
    "FlavorSpec",
    "Hints",
    "HostCandidate",
    "HostScheduler",
    "RequestSpec",
    "Weighed",
    "Weigher",
    "cell_candidate_from_capacity",
    "claim",
    "default_cell_filters",
    "default_cell_weighers",
    "default_host_filters",
    "default_host_weighers",
    "load_hosts",
    "normalize",
    "release",
    "resize_claim",
    "run_filters",
    "select",
    "select_or_raise",
    "weigh",
]
