"""The demo federation that ``cellplane serve`` starts with no arguments.

    api                     API cell (ComputeService, CellsService)
    ├── eu-west             compute cell, 3 kvm hosts
    │   └── eu-west-a       compute cell below a compute cell, 3 xen hosts
    └── us-east             compute cell, 3 kvm hosts

All cells run in one process on SQLite files in a data directory and kombu
``memory://``, joined by real gRPC links on loopback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from cellplane.config import (
    API_CELL_ROLES,
    COMPUTE_CELL_ROLES,
    ApiConfig,
    CellConfig,
    ChildConfig,
    ComputeConfig,
    HostConfig,
    NetworkConfig,
    ParentConfig,
)

# name -> (parent, capabilities, fixed-IP pool, hypervisor of its hosts)
TOPOLOGY: dict[str, tuple[str | None, tuple[tuple[str, tuple[str, ...]], ...], str, str]] = {
    "api": (None, (), "", ""),
    "eu-west": ("api", (("hypervisor", ("kvm",)),), "10.10.0.0/16", "kvm"),
    "eu-west-a": ("eu-west", (("hypervisor", ("xen",)),), "10.11.0.0/16", "xen"),
    "us-east": ("api", (("hypervisor", ("kvm",)),), "10.20.0.0/16", "kvm"),
}
HOSTS_PER_CELL = 3
# Bearer tokens of the demo API: token -> (project, role)
DEMO_TOKENS = (("demo-token", ("demo", "member")), ("admin-token", ("admin", "admin")))


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
    data_dir: Path,
    listen: str = "127.0.0.1:50051",
    report_interval: float = 5.0,
    *,
    spawn_latency: float = 1.0,
    action_latency: float = 0.5,
) -> list[DemoCell]:
    """Configs of the demo cells, parents before children (children listen on port 0)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for name, (parent, caps, pool, hypervisor) in TOPOLOGY.items():
        children = tuple(ChildConfig(n) for n, item in TOPOLOGY.items() if item[0] == name)
        hosts = tuple(
            HostConfig(
                name=f"{name}-host{i + 1}",
                vcpus=16,
                memory_mb=32768,
                local_gb=500,
                hypervisor_type=hypervisor,
            )
            for i in range(HOSTS_PER_CELL if parent is not None else 0)
        )
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
            compute=ComputeConfig(
                hosts=hosts,
                spawn_latency=spawn_latency,
                action_latency=action_latency,
                heartbeat_interval=5.0,
            ),
            network=NetworkConfig(pools=(("private", pool),) if pool else ()),
            api=ApiConfig(tokens=DEMO_TOKENS if parent is None else ()),
        )
        cells.append(DemoCell(name, parent, config))
    return cells


def with_parent(cell: DemoCell, address: str) -> CellConfig:
    """``cell``'s config dialling its parent at ``address``."""
    assert cell.parent is not None
    return replace(cell.config, parents=(ParentConfig(cell.parent, address),))
