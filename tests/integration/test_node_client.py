"""A Node.js client (tests/node/client.js, @grpc/grpc-js + proto-loader on the
repo's .proto files) creates an instance in the demo federation and sees it ACTIVE.

Skips when ``node`` or ``tests/node/node_modules`` is missing, unless
``CELLPLANE_REQUIRE_SERVICES=1`` (CI runs ``npm install`` in tests/node first):
then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_multiprocess import free_port

from cellplane.v1 import compute_pb2, compute_pb2_grpc, types_pb2

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "node"
CIRROS = "5f6a1c0e-0000-4000-8000-000000000001"
REQUIRE = os.environ.get("CELLPLANE_REQUIRE_SERVICES") == "1"
WAIT = 30.0
CLIENT_TIMEOUT = 30  # seconds the client polls for ACTIVE (the demo spawns in 1 s)


@pytest.fixture
def node() -> str:
    """The node binary, once the client's packages are installed; else skip (or fail)."""
    node = shutil.which("node")
    if node is not None and (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return node
    missing = (
        "node is not installed"
        if node is None
        else "tests/node/node_modules is missing (run npm install in tests/node)"
    )
    if REQUIRE:
        pytest.fail(f"{missing}, and CELLPLANE_REQUIRE_SERVICES=1")
    pytest.skip(missing)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    """The demo federation in a subprocess; yields the API cell's address."""
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLPLANE_")}
    argv = [sys.executable, "-m", "cellplane.cli.main", "serve", "--listen", address]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + WAIT
        while "demo federation is up" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not come up:\n{log.read_text()}")
            time.sleep(0.2)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_node_client_creates_an_instance_and_sees_it_active(node: str, demo: str) -> None:
    done = subprocess.run(
        [node, str(NODE_DIR / "client.js"), demo, "demo-token", str(CLIENT_TIMEOUT)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT + 30,
        check=False,
    )
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    out = json.loads(lines[0])
    assert out["vm_state"] == "VM_STATE_ACTIVE"
    assert {"1", "2", "3", "4", "5"} <= set(out["flavors"])

    # The instance as the Python stub reads it back is the one the client made.
    with grpc.insecure_channel(demo) as channel:
        stub = compute_pb2_grpc.ComputeServiceStub(channel)
        got = stub.GetInstance(
            compute_pb2.GetInstanceRequest(uuid=out["uuid"]),
            metadata=[("authorization", "Bearer demo-token")],
            timeout=5,
        ).instance
    assert got.uuid == out["uuid"]
    assert got.name == out["name"]
    assert got.vm_state == types_pb2.VM_STATE_ACTIVE
    assert got.project_id == "demo"
    assert got.image_id == CIRROS
    assert got.flavor.id == "1"
    assert got.cell_path == out["cell_path"]
    assert got.cell_path.startswith("api!")
    assert got.host and got.addresses

    # A token the API does not know gets nothing, and the client says so.
    refused = subprocess.run(
        [node, str(NODE_DIR / "client.js"), demo, "no-such-token", "5"],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stderr
    assert refused.stdout == ""
