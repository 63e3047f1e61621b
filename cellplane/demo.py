"""The demo federation that ``cellplane serve`` starts with no arguments.

    api                     API cell (ComputeService, CellsService)
    ├── eu-west             compute cell
    │   └── eu-west-a       compute cell below a compute cell
    └── us-east             compute cell

All cells run in one process on SQLite files in a data directory and kombu
``memory://``, joined by real gRPC links on loopback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cellplane.config import (
    API_CELL_ROLES,
    COMPUTE_CELL_ROLES,
    CellConfig,
    ChildConfig,
    ParentConfig,
)

# name -> (parent, capabilities)
TOPOLOGY: dict[str, tuple[str | None, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "api": (None, ()),
    "eu-west": ("api", (("hypervisor", ("kvm",)),)),
    "eu-west-a": ("eu-west", (("hypervisor", ("kvm", "xen")),)),
    "us-east": ("api", (("hypervisor", ("kvm",)),)),
}


def default_data_dir() -> Path:
    """Where the demo keeps its SQLite files."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cellplane" / "demo"


@dataclass(frozen=True)
class DemoCell:
    """One cell of the demo, before its parent's address is known."""

    name: str
    parent: str | None
    config: CellConfig


def demo_configs(
    data_dir: Path, listen: str = "127.0.0.1:50051", report_interval: float = 5.0
) -> list[DemoCell]:
    """Configs of the demo cells, parents before children (children listen on port 0)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for name, (parent, caps) in TOPOLOGY.items():
        children = tuple(ChildConfig(n) for n, (p, _) in TOPOLOGY.items() if p == name)
        config = CellConfig(
            name=name,
            database_url=f"sqlite:///{data_dir / (name + '.db')}",
            listen=listen if parent is None else "127.0.0.1:0",
            transport_url="memory://",
            roles=API_CELL_ROLES if parent is None else COMPUTE_CELL_ROLES,
            children=children,
            capabilities=caps,
            report_interval=report_interval,
            mute_interval=report_interval * 6,
        )
        cells.append(DemoCell(name, parent, config))
    return cells


def with_parent(cell: DemoCell, address: str) -> CellConfig:
    """``cell``'s config dialling its parent at ``address``."""
    assert cell.parent is not None
    from dataclasses import replace

    return replace(cell.config, parents=(ParentConfig(cell.parent, address),))
