"""``cellplane instance|flavor|image ...``: the ComputeService from a terminal."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import grpc

from cellplane.cli.tables import table
from cellplane.federation import codec
from cellplane.v1 import compute_pb2, compute_pb2_grpc, link_pb2, types_pb2

ACTIONS = {
    # command: (rpc, request class, response state that ends --wait)
    "reboot": "RebootInstance",
    "rebuild": "RebuildInstance",
    "resize": "ResizeInstance",
    "confirm-resize": "ConfirmResize",
    "revert-resize": "RevertResize",
    "snapshot": "SnapshotInstance",
    "start": "StartInstance",
    "stop": "StopInstance",
    "pause": "PauseInstance",
    "unpause": "UnpauseInstance",
    "suspend": "SuspendInstance",
    "resume": "ResumeInstance",
}
POWER = {0: "-", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``instance``, ``flavor`` and ``image``."""
    inst = sub.add_parser("instance", help="create instances and drive their lifecycle")
    verbs = inst.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create instances")
    create.add_argument("name")
    create.add_argument("--flavor", required=True, help="flavor id")
    create.add_argument("--image", required=True, help="image id")
    create.add_argument("--count", type=int, default=1)
    create.add_argument("--idempotency-key", default="")
    create.add_argument("--availability-zone", default="")
    create.add_argument("--target-cell", default="", help="admin only: a cell path")
    create.add_argument("--group", default="")
    create.add_argument("--group-policy", choices=["affinity", "anti-affinity"], default="")
    create.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--wait", action="store_true", help="show progress until settled")
    listing = verbs.add_parser("list", help="list instances")
    listing.add_argument("--project", default="")
    listing.add_argument("--state", default="", help="vm state, e.g. active")
    listing.add_argument("--cell", default="", help="cell path prefix")
    listing.add_argument("--name", default="")
    listing.add_argument("--all", action="store_true", help="follow every page")
    listing.add_argument("--deleted", action="store_true", help="include deleted instances")
    for verb in ("show", "delete", "actions", "faults"):
        p = verbs.add_parser(verb, help=f"{verb} an instance")
        p.add_argument("uuid")
        if verb == "delete":
            p.add_argument("--wait", action="store_true")
    for verb in ACTIONS:
        p = verbs.add_parser(verb, help=f"{verb.replace('-', ' ')} an instance")
        p.add_argument("uuid")
        p.add_argument("--wait", action="store_true", help="show progress until settled")
        if verb == "reboot":
            p.add_argument("--hard", action="store_true")
        if verb == "rebuild":
            p.add_argument("--image", default="")
        if verb == "resize":
            p.add_argument("--flavor", required=True)
        if verb == "snapshot":
            p.add_argument("--image-name", default="")
    watch = verbs.add_parser("watch", help="stream instance changes")
    watch.add_argument("--from-revision", type=int, default=0)
    watch.add_argument("--count", type=int, default=0, help="stop after this many changes")
    flavor = sub.add_parser("flavor", help="flavors")
    flavor.add_subparsers(dest="verb", required=True).add_parser("list")
    image = sub.add_parser("image", help="images")
    image.add_subparsers(dest="verb", required=True).add_parser("list")


def run(opts: argparse.Namespace, channel: grpc.Channel) -> int:
    """Run one instance, flavor or image command."""
    stub = compute_pb2_grpc.ComputeServiceStub(channel)
    call = _Caller(stub, opts.timeout)
    if opts.command == "flavor":
        flavors = call("ListFlavors", compute_pb2.ListFlavorsRequest()).flavors
        print(
            table(
                ["id", "name", "vcpus", "ram MB", "disk GB"],
                [(f.id, f.name, f.vcpus, f.memory_mb, f.root_gb) for f in flavors],
            )
        )
        return 0
    if opts.command == "image":
        images = call("ListImages", compute_pb2.ListImagesRequest()).images
        print(
            table(
                ["id", "name", "status", "min disk GB", "properties"],
                [
                    (
                        i.id,
                        i.name,
                        i.status,
                        i.min_disk_gb,
                        " ".join(f"{k}={v}" for k, v in sorted(i.properties.items())),
                    )
                    for i in images
                ],
            )
        )
        return 0
    verb = opts.verb
    if verb == "create":
        return _create(call, opts)
    if verb == "list":
        return _list(call, opts)
    if verb == "show":
        instance = call("GetInstance", compute_pb2.GetInstanceRequest(uuid=opts.uuid)).instance
        print(_detail(instance))
        return 0
    if verb == "actions":
        reply = call("ListInstanceActions", compute_pb2.ListInstanceActionsRequest(uuid=opts.uuid))
        rows = [
            (
                a.action,
                a.request_id,
                _time(a.start_time),
                _time(a.finish_time),
                ", ".join(f"{e.event}:{e.result}" for e in a.events) or "-",
            )
            for a in reply.actions
        ]
        print(table(["action", "request", "started", "finished", "events"], rows))
        return 0
    if verb == "faults":
        reply = call("ListInstanceFaults", compute_pb2.ListInstanceFaultsRequest(uuid=opts.uuid))
        print(
            table(
                ["code", "message", "host", "at"],
                [(f.code, f.message, f.host or "-", _time(f.created_at)) for f in reply.faults],
            )
        )
        return 0
    if verb == "watch":
        return _watch(stub, opts)
    if verb == "delete":
        reply = call("DeleteInstance", compute_pb2.DeleteInstanceRequest(uuid=opts.uuid))
        print(_row_line(reply.instance))
        if opts.wait:
            _wait(call, [opts.uuid], deleted=True)
        return 0
    rpc_name = ACTIONS[verb]
    request = getattr(compute_pb2, f"{rpc_name}Request")(uuid=opts.uuid)
    if verb == "reboot":
        request.hard = opts.hard
    elif verb == "rebuild":
        request.image_id = opts.image
    elif verb == "resize":
        request.flavor_id = opts.flavor
    elif verb == "snapshot":
        request.image_name = opts.image_name
    reply = call(rpc_name, request)
    print(_row_line(reply.instance))
    if verb == "snapshot":
        print(f"image {reply.image.id} ({reply.image.name}) {reply.image.status}")
    if opts.wait:
        _wait(call, [opts.uuid])
    return 0


class _Caller:
    def __init__(self, stub: Any, timeout: float) -> None:
        self.stub, self.timeout = stub, timeout

    def __call__(self, name: str, request: Any) -> Any:
        return getattr(self.stub, name)(request, timeout=self.timeout)


def _create(call: _Caller, opts: argparse.Namespace) -> int:
    metadata = {}
    for item in opts.meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--meta {item!r}: expected KEY=VALUE")
        metadata[key] = value
    request = compute_pb2.CreateInstancesRequest(
        name=opts.name,
        flavor_id=opts.flavor,
        image_id=opts.image,
        count=opts.count,
        idempotency_key=opts.idempotency_key,
        availability_zone=opts.availability_zone,
        metadata=metadata,
        scheduler_hints=link_pb2.SchedulerHints(
            target_cell=opts.target_cell, group=opts.group, group_policy=opts.group_policy
        ),
    )
    reply = call("CreateInstances", request)
    print(_table(reply.instances))
    if opts.wait:
        _wait(call, [i.uuid for i in reply.instances])
    return 0


def _list(call: _Caller, opts: argparse.Namespace) -> int:
    state = 0
    if opts.state:
        state = codec.vm_state_to_proto(opts.state)
        if not state:
            raise SystemExit(f"unknown state {opts.state!r}")
    request = compute_pb2.ListInstancesRequest(
        project_id=opts.project,
        vm_state=state,  # type: ignore[arg-type]
        cell_path=opts.cell,
        name=opts.name,
        include_deleted=opts.deleted,
    )
    instances: list[types_pb2.Instance] = []
    while True:
        reply = call("ListInstances", request)
        instances.extend(reply.instances)
        if not (opts.all and reply.next_page_token):
            break
        request.page_token = reply.next_page_token
    print(_table(instances))
    down = [c for c in reply.cells if not c.reachable]
    for cell in down:
        print(
            f"warning: cell {cell.cell_path} is {'mute' if cell.mute else 'unreachable'}: "
            "its instances may be stale",
            file=sys.stderr,
        )
    if reply.next_page_token and not opts.all:
        print(f"(more: --all, or page token {reply.next_page_token})")
    return 0


def _watch(stub: Any, opts: argparse.Namespace) -> int:
    stream = stub.WatchInstances(
        compute_pb2.WatchInstancesRequest(from_revision=opts.from_revision)
    )
    for seen, change in enumerate(stream, start=1):
        kind = compute_pb2.ChangeKind.Name(change.kind).removeprefix("CHANGE_KIND_").lower()
        print(f"{change.revision:>8} {kind:<8} {_row_line(change.instance)}", flush=True)
        if opts.count and seen >= opts.count:
            stream.cancel()
            break
    return 0


def _wait(call: _Caller, uuids: list[str], *, deleted: bool = False, limit: float = 300) -> None:
    """Print each change of state until every instance has no task (or is deleted)."""
    last: dict[str, str] = {}
    deadline = time.monotonic() + limit
    pending = set(uuids)
    while pending and time.monotonic() < deadline:
        for uuid in sorted(pending):
            instance = call("GetInstance", compute_pb2.GetInstanceRequest(uuid=uuid)).instance
            line = _row_line(instance)
            if last.get(uuid) != line:
                print(line, flush=True)
                last[uuid] = line
            settled = (
                instance.deleted
                if deleted
                else (
                    (instance.task_state == 0 and instance.vm_state != types_pb2.VM_STATE_BUILDING)
                    or instance.vm_state == types_pb2.VM_STATE_ERROR
                )
            )
            if settled:
                pending.discard(uuid)
        time.sleep(0.2)
    if pending:
        raise SystemExit(f"still busy after {limit:.0f}s: {', '.join(sorted(pending))}")


def _states(i: types_pb2.Instance) -> tuple[str, str, str]:
    return (
        codec.vm_state_from_proto(i.vm_state) or "-",
        codec.task_state_from_proto(i.task_state) or "-",
        POWER.get(i.power_state, str(i.power_state)),
    )


def _row_line(i: types_pb2.Instance) -> str:
    vm, task, power = _states(i)
    stale = " (stale)" if i.stale else ""
    return f"{i.uuid} {i.name} {vm}/{task}/{power} v{i.version} {i.cell_path or '-'}{stale}"


def _table(instances: Any) -> str:
    rows = []
    for i in instances:
        vm, task, power = _states(i)
        rows.append(
            (
                i.uuid,
                i.name,
                vm,
                task,
                power,
                i.flavor.name or i.flavor.id,
                i.cell_path or "-",
                i.host or "-",
                ",".join(a.address for a in i.addresses) or "-",
                i.version,
                "yes" if i.stale else "",
            )
        )
    return table(
        [
            "uuid",
            "name",
            "state",
            "task",
            "power",
            "flavor",
            "cell",
            "host",
            "addresses",
            "version",
            "stale",
        ],
        rows,
    )


def _detail(i: types_pb2.Instance) -> str:
    vm, task, power = _states(i)
    lines = [
        ("uuid", i.uuid),
        ("name", i.name),
        ("project", i.project_id),
        ("state", vm),
        ("task", task),
        ("power", power),
        ("flavor", f"{i.flavor.name} ({i.flavor.id})"),
        ("image", i.image_id),
        ("cell", i.cell_path or "-"),
        ("host", i.host or "-"),
        ("addresses", ", ".join(f"{a.pool}={a.address}" for a in i.addresses) or "-"),
        ("version", i.version),
        ("created", _time(i.created_at)),
        ("launched", _time(i.launched_at)),
        ("stale", "yes" if i.stale else "no"),
    ]
    if i.HasField("fault"):
        lines.append(("fault", f"{i.fault.code}: {i.fault.message}"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def _time(stamp: Any) -> str:
    if not stamp.seconds:
        return "-"
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
