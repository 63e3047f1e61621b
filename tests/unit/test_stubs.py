"""The committed stubs in cellplane/v1/ match protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_protos() -> None:
    stale = _gen_module().stale_files()
    assert stale == [], f"stale stubs, run: python scripts/gen_protos.py ({stale})"


def test_every_service_of_the_design_is_generated() -> None:
    from cellplane.v1 import cells_pb2, compute_pb2, link_pb2

    services = {
        name
        for module in (cells_pb2, compute_pb2, link_pb2)
        for name in module.DESCRIPTOR.services_by_name
    }
    assert services == {"ComputeService", "CellsService", "CellLink"}
