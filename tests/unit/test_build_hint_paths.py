"""Regressions found by the multi-process instance tests (PostgreSQL, three levels).

- A ``target_cell`` two levels below the API cell was refused by every cell:
  each build hop starts its paths at the cell that sends it, while the hint
  kept the path from the top.
- A fault message longer than its column (a "no valid host" chain from three
  levels) made PostgreSQL refuse the row and CreateInstances fail with INTERNAL.
"""

from __future__ import annotations

from cellplane.db.models import FAULT_MESSAGE_LENGTH, InstanceFault
from cellplane.federation.builds import _from_here
from cellplane.scheduling.cells import CellCandidate, TargetCellFilter
from cellplane.scheduling.spec import FlavorSpec, Hints, RequestSpec


def _spec(target: str) -> RequestSpec:
    return RequestSpec(
        flavor=FlavorSpec(flavor_id="1", vcpus=1, memory_mb=512, root_gb=1),
        hints=Hints(target_cell=target),
        is_admin=True,
    )


def _passes(name: str, path: str, is_self: bool, target: str) -> bool:
    candidate = CellCandidate(name=name, path=path, is_self=is_self)
    return TargetCellFilter().passes(candidate, _spec(target))


def test_target_cell_two_levels_down_is_found_hop_by_hop() -> None:
    target = "api!region!zone"
    # At the API cell (paths from "api"): the way goes through region.
    assert _passes("region", "api!region", False, target)
    assert not _passes("other", "api!other", False, target)
    # The API cell calls region: region's paths start at "api" ("api!region").
    at_region = _from_here(target, "api")
    assert at_region == target
    assert _passes("zone", "api!region!zone", False, at_region)
    assert not _passes("region", "api!region", True, at_region)
    # Region calls zone: zone's paths start at region ("region!zone").
    at_zone = _from_here(at_region, "api!region")
    assert at_zone == "region!zone"
    assert _passes("zone", "region!zone", True, at_zone)


def test_paths_outside_this_cell_stay_as_they_are() -> None:
    assert _from_here("api!other", "api!region") == "api!other"
    assert _from_here("api!region-x!a", "api!region") == "api!region-x!a"
    assert _from_here("api!region", "api!region") == "region"


def test_long_fault_message_is_cut_to_its_column() -> None:
    fault = InstanceFault(instance_uuid="u", code=8, message="no valid host; " * 40)
    assert len(fault.message) == FAULT_MESSAGE_LENGTH
    assert fault.message.startswith("no valid host; ")
    assert InstanceFault(instance_uuid="u", code=8, message="short").message == "short"
