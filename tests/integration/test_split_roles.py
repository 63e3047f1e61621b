"""One cell split over two processes: the compute role runs apart from the cells role.

The compute process has no links; its changes wait in the cell's outbox (a
SQLite file both processes open) and the process with the cells role sends
them up. Local RPC between the two goes over RabbitMQ.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import grpc
from test_multiprocess import Launcher, free_port, wait_until

from cellplane.v1 import compute_pb2, compute_pb2_grpc, types_pb2

CIRROS = "5f6a1c0e-0000-4000-8000-000000000001"
ADMIN = [("authorization", "Bearer admin-token")]


def _configs(tmp_path: Path, rabbitmq_url: str) -> tuple[Path, Path, int]:
    tag = uuid.uuid4().hex[:6]
    api, zone = f"api-{tag}", f"zone-{tag}"
    api_port, zone_port = free_port(), free_port()
    api_config = tmp_path / "api.toml"
    api_config.write_text(
        f"""[cell]
name = "{api}"
listen = "127.0.0.1:{api_port}"
database_url = "sqlite:///{tmp_path / "api.db"}"
roles = ["cells", "api"]

[links]
report_interval = 0.3

[api]
tokens = {{ admin-token = "admin:admin" }}

[[children]]
name = "{zone}"
"""
    )
    zone_config = tmp_path / "zone.toml"
    zone_config.write_text(
        f"""[cell]
name = "{zone}"
listen = "127.0.0.1:{zone_port}"
database_url = "sqlite:///{tmp_path / "zone.db"}"
transport_url = "{rabbitmq_url}"
roles = ["cells", "scheduler", "network", "compute"]
capabilities = "hypervisor=kvm"

[links]
report_interval = 0.3

[compute]
host_count = 2
host = {{ name = "{zone}-h", memory_mb = 8192 }}
heartbeat_interval = 1

[network]
pools = {{ private = "10.30.0.0/24" }}

[[parents]]
name = "{api}"
address = "127.0.0.1:{api_port}"
"""
    )
    return api_config, zone_config, api_port


def test_compute_role_in_its_own_process_builds_through_the_outbox(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    api_config, zone_config, api_port = _configs(tmp_path, rabbitmq_url)
    cells = Launcher(tmp_path)
    argv = ["--log-format", "json", "serve", "--config"]
    try:
        cells.serve("api", api_config)
        cells._start(
            "zone-cells",
            [*_python(), *argv, str(zone_config), "--roles", "cells,scheduler,network"],
            None,
        )
        cells._start(
            "zone-compute", [*_python(), *argv, str(zone_config), "--roles", "compute"], None
        )
        address = f"127.0.0.1:{api_port}"
        with grpc.insecure_channel(address) as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)

            def placed() -> str | None:
                reply = stub.CreateInstances(
                    compute_pb2.CreateInstancesRequest(
                        name="split", flavor_id="1", image_id=CIRROS
                    ),
                    metadata=ADMIN,
                    timeout=10,
                )
                instance = reply.instances[0]
                if instance.vm_state == types_pb2.VM_STATE_ERROR or not instance.cell_path:
                    return "the zone's hosts are not reported yet"
                placed_uuid.append(instance.uuid)
                return None

            placed_uuid: list[str] = []
            wait_until(placed, "a build the zone accepts", cells)

            def active() -> str | None:
                got = stub.GetInstance(
                    compute_pb2.GetInstanceRequest(uuid=placed_uuid[0]),
                    metadata=ADMIN,
                    timeout=10,
                ).instance
                if got.vm_state != types_pb2.VM_STATE_ACTIVE:
                    return f"vm_state {got.vm_state}, task {got.task_state}"
                assert got.addresses and got.addresses[0].address.startswith("10.30.0.")
                return None

            wait_until(active, "the instance to be ACTIVE at the top", cells)
        events = {e.get("event") for e in cells.running[2].events()}
        assert "link_up" not in events, "the compute-only process must not open links"
    finally:
        cells.cleanup()


def _python() -> list[str]:
    return [sys.executable, "-m", "cellplane.cli.main"]
