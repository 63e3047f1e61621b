"""Instances end to end with one process per cell, on RabbitMQ and PostgreSQL.

The tree is ``api -> region -> zone`` plus ``api -> other``; every cell is
``python -m cellplane.cli.main serve --config FILE`` with its own PostgreSQL
database and its own exchange on one RabbitMQ broker. Cell names carry a
random tag so that runs sharing the broker never share a queue; the
databases, queues and exchanges are dropped at the end.

- An instance forced into the deepest cell goes through its whole lifecycle,
  every state reaching the API cell.
- The zone's parent is SIGKILLed while the zone finishes a build: the changes
  wait in the zone's outbox and reach the top once the parent is back.
- The zone is SIGKILLed with outbox rows its (frozen) parent never
  acknowledged: restarted, it sends them again and the top ends at exactly the
  zone's newest version, having applied no version twice.

Waits poll up to a bound and fail early, with the cells' logs, when a cell dies.
"""

from __future__ import annotations

import os
import signal
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from test_multiprocess import CellProcess, Launcher, free_port, tree_missing
from test_multiprocess import wait_until as _wait_until

from cellplane.amqp import connect
from cellplane.v1 import (
    cells_pb2,
    cells_pb2_grpc,
    compute_pb2,
    compute_pb2_grpc,
    link_pb2,
    types_pb2,
)

CIRROS = "5f6a1c0e-0000-4000-8000-000000000001"
UBUNTU = "5f6a1c0e-0000-4000-8000-000000000002"
ADMIN = "admin-secret"
RPC_TIMEOUT = 10.0
HOST_RAM_MB = 8192
ZONE_SPAWN = 2.0  # long enough for the test to take the zone's parent away mid-build

# kind -> (parent kind, number of hosts)
TREE: dict[str, tuple[str | None, int]] = {
    "api": (None, 0),
    "region": ("api", 2),
    "zone": ("region", 2),
    "other": ("api", 1),
}
VM = types_pb2.VmState
TASK_NONE = types_pb2.TASK_STATE_UNSPECIFIED


# --- the tree ------------------------------------------------------------------------


@dataclass
class Tree:
    """Four cell processes with their databases; ``names`` maps kind -> cell name."""

    launcher: Launcher
    names: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    db_urls: dict[str, str] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, CellProcess] = field(default_factory=dict)
    engines: dict[str, sa.Engine] = field(default_factory=dict)
    runs: int = 0

    @property
    def api_address(self) -> str:
        return f"127.0.0.1:{self.ports['api']}"

    def path(self, *kinds: str) -> str:
        return "!".join(self.names[k] for k in kinds)

    def start(self, kind: str) -> CellProcess:
        self.runs += 1
        proc = self.launcher.serve(f"{kind}-{self.runs}", self.configs[kind])
        self.procs[kind] = proc
        return proc

    def db(self, kind: str) -> sa.Engine:
        if kind not in self.engines:
            self.engines[kind] = sa.create_engine(self.db_urls[kind], poolclass=sa.NullPool)
        return self.engines[kind]

    def rows(self, kind: str, query: str, **params: Any) -> list[Any]:
        with self.db(kind).connect() as conn:
            return list(conn.execute(sa.text(query), params))

    def wait(self, check: Callable[[], str | None], what: str) -> None:
        _wait_until(check, what, self.launcher)


def _config(tree: Tree, kind: str, transport_url: str) -> str:
    parent, hosts = TREE[kind]
    name = tree.names[kind]
    children = [k for k, (p, _) in TREE.items() if p == kind]
    roles = '["cells", "api"]' if parent is None else '["cells", "scheduler", "compute", "network"]'
    lines = [
        "[cell]",
        f'name = "{name}"',
        f'listen = "127.0.0.1:{tree.ports[kind]}"',
        f'database_url = "{tree.db_urls[kind]}"',
        f'transport_url = "{transport_url}"',
        f"roles = {roles}",
        "",
        "[links]",
        "report_interval = 0.5",
        "mute_interval = 5.0",
        "response_timeout = 5.0",
        "",
        "[scheduler]",
        "build_timeout = 15.0",
    ]
    if parent is not None:
        index = list(TREE).index(kind)
        spawn = ZONE_SPAWN if kind == "zone" else 0.1
        lines += [
            "",
            "[compute]",
            f"spawn_latency = {spawn}",
            "action_latency = 0.05",
            "heartbeat_interval = 1.0",
            "ram_allocation_ratio = 1.0",
            "hosts = [",
            *(
                f'  {{ name = "{name}-h{i + 1}", memory_mb = {HOST_RAM_MB}, local_gb = 100 }},'
                for i in range(hosts)
            ),
            "]",
            "",
            "[network]",
            f'pools = {{ private = "10.{index}.0.0/16" }}',
            "",
            "[[parents]]",
            f'name = "{tree.names[parent]}"',
            f'address = "127.0.0.1:{tree.ports[parent]}"',
        ]
    else:
        tokens = f'{{ "{ADMIN}" = "ops:admin", "member-secret" = "team:member" }}'
        lines += ["", "[api]", f"tokens = {tokens}"]
    for child in children:
        lines += ["", "[[children]]", f'name = "{tree.names[child]}"']
    return "\n".join(lines) + "\n"


def _drop_amqp(transport_url: str, tree: Tree) -> None:
    """Delete the durable queues and exchanges the cells declared."""
    with connect(transport_url) as conn:
        channel = conn.default_channel
        for kind, (parent, hosts) in TREE.items():
            if parent is None:  # the API cell runs nothing on AMQP
                continue
            name = tree.names[kind]
            exchange = f"cellplane-{name}"
            servers = {
                "scheduler": [name],
                "network": [name],
                "compute": [f"{name}-h{i + 1}" for i in range(hosts)],
            }
            for topic, names in servers.items():
                for queue in [f"{exchange}.{topic}", *(f"{exchange}.{topic}.{s}" for s in names)]:
                    channel.queue_delete(queue)
                channel.exchange_delete(f"{exchange}.{topic}_fanout")
            channel.exchange_delete(exchange)


@pytest.fixture
def tree(tmp_path: Path, rabbitmq_url: str, postgres_url: str) -> Iterator[Tree]:
    """The running tree, every link up and every cell's capacity reported to the top."""
    # postgres_url decides whether PostgreSQL is there (skip or fail); each cell
    # gets a database of its own on the same server.
    server_url = postgres_url.partition("?")[0]
    launcher = Launcher(tmp_path)
    tag = uuidlib.uuid4().hex[:8]
    made = Tree(launcher)
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    base = server_url.rpartition("/")[0]
    created: list[str] = []
    try:
        for kind in TREE:
            made.names[kind] = f"{kind}-{tag}"
            made.ports[kind] = free_port()
            database = f"cp_{tag}_{kind}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
            created.append(database)
            made.db_urls[kind] = f"{base}/{database}"
        for kind in TREE:
            made.configs[kind] = tmp_path / f"{kind}.toml"
            made.configs[kind].write_text(_config(made, kind, rabbitmq_url))
        for kind in TREE:  # parents first: children find them listening
            made.start(kind)
        wait_for_tree(made)
        yield made
    finally:
        launcher.cleanup()
        for engine in made.engines.values():
            engine.dispose()
        with admin.connect() as conn:
            for database in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
        if made.names:
            _drop_amqp(rabbitmq_url, made)


def get_tree(address: str) -> types_pb2.CellNode:
    """GetTree at the API cell, as the admin (its API asks for a token)."""
    with grpc.insecure_channel(address) as channel:
        stub = cells_pb2_grpc.CellsServiceStub(channel)
        return stub.GetTree(
            cells_pb2.GetTreeRequest(),
            metadata=[("authorization", f"Bearer {ADMIN}")],
            timeout=RPC_TIMEOUT,
        ).root


def wait_for_tree(tree: Tree) -> None:
    """Every link up, and each compute cell's capacity known at the top."""
    expected = {
        tree.path("api", "region"),
        tree.path("api", "region", "zone"),
        tree.path("api", "other"),
    }
    tree.wait(lambda: tree_missing(get_tree(tree.api_address), expected), "the tree at api")

    # The schedulers place from the reports each parent holds (GetTree asks the
    # cells themselves), so wait for the reports: each subtree's whole RAM.
    def reports_arrived() -> str | None:
        for parent, child in (("api", "region"), ("api", "other"), ("region", "zone")):
            hosts = sum(TREE[k][1] for k in TREE if k == child or TREE[k][0] == child)
            rows = tree.rows(
                parent, "SELECT capacities FROM cells WHERE name = :n", n=tree.names[child]
            )
            total = int((rows[0][0] or {}).get("ram_total_mb", 0)) if rows else 0
            if total != hosts * HOST_RAM_MB:
                return f"{parent} holds {total} MB for {child}, want {hosts * HOST_RAM_MB}"
        return None

    tree.wait(reports_arrived, "capacity reports at every parent")


# --- the API ---------------------------------------------------------------------------


class Api:
    """ComputeService at the API cell, as the admin."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = compute_pb2_grpc.ComputeServiceStub(self.channel)

    def __call__(self, method: str, **request: Any) -> Any:
        rpc = getattr(self.stub, method)
        message = getattr(compute_pb2, f"{method}Request")(**request)
        return rpc(message, metadata=[("authorization", f"Bearer {ADMIN}")], timeout=RPC_TIMEOUT)

    def get(self, uuid: str) -> types_pb2.Instance:
        return self("GetInstance", uuid=uuid).instance

    def create_in(self, target: str, name: str, count: int = 1) -> list[types_pb2.Instance]:
        response = self(
            "CreateInstances",
            name=name,
            flavor_id="1",
            image_id=CIRROS,
            count=count,
            scheduler_hints=link_pb2.SchedulerHints(target_cell=target),
        )
        placed = list(response.instances)
        for instance in placed:
            assert instance.cell_path == target, self.get(instance.uuid).fault.message
        return placed

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def api(tree: Tree) -> Iterator[Api]:
    client = Api(tree.api_address)
    try:
        yield client
    finally:
        client.close()


def settled(api: Api, uuid: str, vm_state: int, tree: Tree, what: str) -> types_pb2.Instance:
    """Wait until the API shows ``uuid`` in ``vm_state`` with no task; return it."""
    seen: list[types_pb2.Instance] = []

    def check() -> str | None:
        got = api.get(uuid)
        seen[:] = [got]
        if got.vm_state == vm_state and got.task_state == TASK_NONE:
            return None
        return f"{VM.Name(got.vm_state)}/{types_pb2.TaskState.Name(got.task_state)} v{got.version}"

    tree.wait(check, f"{what}: {VM.Name(vm_state)} at the top")
    return seen[0]


# --- a: the whole lifecycle, in the deepest cell ------------------------------------


def test_instance_lifecycle_in_the_deepest_cell_reaches_the_top(tree: Tree, api: Api) -> None:
    zone_path = tree.path("api", "region", "zone")
    [created] = api.create_in(zone_path, "deep")
    uuid = created.uuid
    assert created.cell_path == zone_path
    assert created.vm_state == VM.Value("VM_STATE_BUILDING")

    active = settled(api, uuid, VM.Value("VM_STATE_ACTIVE"), tree, "build")
    assert active.host.startswith(f"{tree.names['zone']}-h")
    assert [a.address[:5] for a in active.addresses] == ["10.2."]
    versions = [created.version, active.version]

    steps = [
        ("StopInstance", {}, "VM_STATE_STOPPED"),
        ("StartInstance", {}, "VM_STATE_ACTIVE"),
        ("PauseInstance", {}, "VM_STATE_PAUSED"),
        ("UnpauseInstance", {}, "VM_STATE_ACTIVE"),
        ("SuspendInstance", {}, "VM_STATE_SUSPENDED"),
        ("ResumeInstance", {}, "VM_STATE_ACTIVE"),
        ("RebootInstance", {"hard": False}, "VM_STATE_ACTIVE"),
        ("RebootInstance", {"hard": True}, "VM_STATE_ACTIVE"),
        ("ResizeInstance", {"flavor_id": "2"}, "VM_STATE_RESIZED"),
        ("ConfirmResize", {}, "VM_STATE_ACTIVE"),
        ("RebuildInstance", {"image_id": UBUNTU}, "VM_STATE_ACTIVE"),
    ]
    for method, extra, final in steps:
        answer = api(method, uuid=uuid, **extra)
        assert answer.request_id, method
        assert answer.instance.task_state != TASK_NONE, f"{method} started no task"
        got = settled(api, uuid, VM.Value(final), tree, method)
        assert got.version > versions[-1], f"{method} did not bump the version"
        versions.append(got.version)

    got = api.get(uuid)
    assert got.flavor.id == "2"
    assert got.image_id == UBUNTU
    assert got.power_state == types_pb2.POWER_STATE_RUNNING

    snap = api("SnapshotInstance", uuid=uuid, image_name="deep-snap")
    assert snap.image.status == "queued"
    settled(api, uuid, VM.Value("VM_STATE_ACTIVE"), tree, "snapshot")

    def image_active() -> str | None:
        images = {i.id: i for i in api("ListImages").images}
        image = images.get(snap.image.id)
        return None if image is not None and image.status == "active" else str(image)

    tree.wait(image_active, "the snapshot image to become active")

    # The top recorded every action, each finished.
    actions = api("ListInstanceActions", uuid=uuid).actions
    names = sorted(a.action for a in actions)
    expected = [
        "create", "snapshot", "confirm_resize", "pause", "reboot", "reboot", "rebuild",
        "resize", "resume", "start", "stop", "suspend", "unpause",
    ]  # fmt: skip
    assert names == sorted(expected)

    api("DeleteInstance", uuid=uuid)
    gone = settled(api, uuid, VM.Value("VM_STATE_DELETED"), tree, "delete")
    assert gone.deleted
    delete = [a for a in api("ListInstanceActions", uuid=uuid).actions if a.action == "delete"]
    assert len(delete) == 1 and delete[0].HasField("finish_time"), delete

    # The owning cell agrees with the top, and nothing waits in any outbox.
    [(vm_state, deleted, version)] = tree.rows(
        "zone", "SELECT vm_state, deleted, version FROM instances WHERE uuid = :u", u=uuid
    )
    assert (vm_state, deleted, version) == ("deleted", True, gone.version)

    def outboxes_empty() -> str | None:
        left = {k: tree.rows(k, "SELECT count(*) FROM outbox")[0][0] for k in ("zone", "region")}
        return None if not any(left.values()) else f"outbox rows left: {left}"

    tree.wait(outboxes_empty, "the outboxes to drain")
    # The region and other cells own nothing.
    assert tree.rows("region", "SELECT uuid, cell_path FROM instances") == [
        (uuid, tree.path("region", "zone"))
    ]
    assert tree.rows("other", "SELECT count(*) FROM instances") == [(0,)]


# --- b: the zone's parent dies while the zone keeps working ---------------------------


def zone_instances(tree: Tree, uuids: list[str]) -> dict[str, tuple[str, int]]:
    """uuid -> (vm_state, version) in the zone's own database."""
    rows = tree.rows("zone", "SELECT uuid, vm_state, version FROM instances")
    return {u: (s, v) for u, s, v in rows if u in uuids}


def pending_versions(tree: Tree, kind: str, uuids: list[str]) -> dict[str, int]:
    """uuid -> the newest version waiting in ``kind``'s outbox."""
    rows = tree.rows(kind, "SELECT instance_uuid, max(version) FROM outbox GROUP BY instance_uuid")
    return {u: v for u, v in rows if u in uuids}


def outboxes_drained(tree: Tree) -> str | None:
    left = {k: tree.rows(k, "SELECT count(*) FROM outbox")[0][0] for k in ("zone", "region")}
    return None if not any(left.values()) else f"outbox rows left: {left}"


def test_changes_made_while_the_zones_parent_is_dead_wait_in_its_outbox_then_arrive(
    tree: Tree, api: Api
) -> None:
    [created] = api.create_in(tree.path("api", "region", "zone"), "orphaned")
    uuid = created.uuid
    # The build is accepted and spawning (for ZONE_SPAWN seconds) in the zone.
    tree.procs["region"].kill()

    def built_below() -> str | None:
        state = zone_instances(tree, [uuid]).get(uuid)
        return None if state and state[0] == "active" else f"zone has {state}"

    tree.wait(built_below, "the zone to finish the build on its own")
    [(_, zone_version)] = zone_instances(tree, [uuid]).values()
    assert pending_versions(tree, "zone", [uuid]) == {uuid: zone_version}, (
        "the ACTIVE change is not waiting in the zone's outbox"
    )
    # The top has not heard, and says its copy may be stale.
    top = api.get(uuid)
    assert top.vm_state == VM.Value("VM_STATE_BUILDING")
    assert top.version < zone_version
    tree.wait(lambda: None if api.get(uuid).stale else "not stale", "the copy to be stale")

    tree.start("region")
    done = settled(api, uuid, VM.Value("VM_STATE_ACTIVE"), tree, "the build, after the restart")
    assert done.version == zone_version
    tree.wait(lambda: None if not api.get(uuid).stale else "stale", "the copy to be current")
    tree.wait(lambda: outboxes_drained(tree), "the outboxes to drain")
    assert zone_instances(tree, [uuid]) == {uuid: ("active", zone_version)}

    # The tree is whole again: an action goes down and its result comes back up.
    api("StopInstance", uuid=uuid)
    settled(api, uuid, VM.Value("VM_STATE_STOPPED"), tree, "stop after the restart")


# --- c: the zone dies with outbox rows its parent never acknowledged ------------------


def test_zone_killed_with_unacknowledged_outbox_rows_sends_them_again_after_restart(
    tree: Tree, api: Api
) -> None:
    created = api.create_in(tree.path("api", "region", "zone"), "unacked", count=3)
    uuids = [i.uuid for i in created]
    assert len(uuids) == 3
    region = tree.procs["region"]
    # A frozen parent takes nothing off the link and acknowledges nothing.
    os.kill(region.proc.pid, signal.SIGSTOP)
    try:

        def all_built() -> str | None:
            states = zone_instances(tree, uuids)
            done = [u for u, (s, _) in states.items() if s == "active"]
            return None if len(done) == len(uuids) else f"zone has {states}"

        tree.wait(all_built, "the zone to build all three")
        zone = {u: v for u, (_, v) in zone_instances(tree, uuids).items()}
        assert pending_versions(tree, "zone", uuids) == zone, "newest changes not in the outbox"
        tree.procs["zone"].kill()
    finally:
        os.kill(region.proc.pid, signal.SIGCONT)
    tree.start("zone")

    def all_arrived() -> str | None:
        top = {u: api.get(u) for u in uuids}
        behind = {
            u: f"{VM.Name(i.vm_state)} v{i.version}/{zone[u]}"
            for u, i in top.items()
            if i.vm_state != VM.Value("VM_STATE_ACTIVE") or i.version != zone[u]
        }
        return f"behind at the top: {behind}" if behind else None

    tree.wait(all_arrived, "every change to reach the top")
    tree.wait(lambda: outboxes_drained(tree), "the outboxes to drain")

    # Exactly once: the top applied each version at most once, and the newest last.
    log = tree.rows(
        "api",
        "SELECT instance_uuid, version FROM instance_changes"
        " WHERE kind = 'update' AND version > 0 ORDER BY revision",
    )
    for uuid in uuids:
        versions = [v for u, v in log if u == uuid]
        assert versions == sorted(set(versions)), f"{uuid} applied {versions}"
        assert versions[-1] == zone[uuid]
    assert {u: api.get(u).version for u in uuids} == zone
