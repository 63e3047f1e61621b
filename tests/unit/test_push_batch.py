"""Pushes of one frame are applied together, with the end state, outbox rows and change
log rows that applying them one at a time leaves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from cellplane import db
from cellplane.api.view import ApiView
from cellplane.db.models import (
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceChange,
    InstanceFault,
    OutboxEntry,
)
from cellplane.federation.dispatch import Delivery
from cellplane.federation.outbox import Outbox, PushReceiver
from cellplane.v1 import link_pb2, types_pb2

U1, U2, U3, U4 = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))
PARENTS = ["top", "other"]
STAMP = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _receiver(tmp_path: Path, name: str) -> tuple[PushReceiver, Any]:
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    db.upgrade(url)
    sessions = db.make_session_factory(db.create_engine(url))
    outbox = Outbox(lambda: list(PARENTS), change_log=True)
    return PushReceiver("api", outbox, ApiView(sessions).after_pushes), sessions


def _instance(uuid: str, version: int, *, task: int = 0) -> types_pb2.Instance:
    msg = types_pb2.Instance(
        uuid=uuid,
        name=f"{uuid[-1]}-v{version}",
        project_id="p",
        user_id="u",
        image_id="img",
        vm_state=types_pb2.VM_STATE_ACTIVE,
        task_state=task,  # type: ignore[arg-type]
        version=version,
        cell_path="mid!leaf",
        host=f"h{version}",
        flavor=types_pb2.Flavor(id="1", name="m1.tiny", vcpus=1, memory_mb=512, root_gb=2),
        metadata={"v": str(version)},
    )
    msg.addresses.add(pool="private", address=f"10.0.0.{version}", version=4)
    for name in ("created_at", "updated_at", "launched_at"):
        getattr(msg, name).FromDatetime(STAMP)
    return msg


def _frame() -> list[link_pb2.Envelope]:
    def update(uuid: str, version: int, task: int = 0) -> link_pb2.Envelope:
        return link_pb2.Envelope(
            instance_update=link_pb2.InstanceUpdate(instance=_instance(uuid, version, task=task))
        )

    def destroy(uuid: str, version: int) -> link_pb2.Envelope:
        gone = link_pb2.InstanceDestroyed(instance_uuid=uuid, version=version, cell_path="x")
        return link_pb2.Envelope(instance_destroyed=gone)

    def fault(uuid: str, message: str) -> link_pb2.Envelope:
        report = link_pb2.InstanceFaultReport(
            instance_uuid=uuid, version=9, fault=types_pb2.Fault(code=500, message=message)
        )
        return link_pb2.Envelope(instance_fault=report)

    rebooting = types_pb2.TASK_STATE_REBOOTING
    return [
        update(U1, 5),  # applies (U1 is held at 2): its task ended
        update(U1, 3),  # older
        update(U2, 2, rebooting),  # new here
        update(U2, 4, rebooting),
        update(U2, 4),  # a duplicate
        update(U3, 1),
        update(U1, 5),  # a duplicate
        destroy(U3, 2),
        destroy(U2, 3),  # older than U2's 4
        fault(U2, "boom"),
        fault(U2, "boom"),  # kept once
        fault(U4, "unknown"),  # no such instance here
        update(U2, 6, rebooting),
    ]


def _handle(receiver: PushReceiver, env: link_pb2.Envelope, work: list[Any]) -> None:
    handler = {
        "instance_update": receiver.on_update,
        "instance_updates": receiver.on_updates,
        "instance_destroyed": receiver.on_destroyed,
        "instance_fault": receiver.on_fault,
    }[env.WhichOneof("payload") or ""]
    handler(env, Delivery(env, "mid!api", work))


def _prepare(receiver: PushReceiver, sessions: Any) -> None:
    with sessions.begin() as session:
        receiver.apply_update(session, _instance(U1, 2, task=types_pb2.TASK_STATE_REBOOTING))
        for of in (U1, U2):
            session.add(
                InstanceAction(
                    request_id=f"r-{of}",
                    instance_uuid=of,
                    action="reboot",
                    project_id="p",
                    user_id="u",
                )
            )
            session.add(
                Image(uuid=f"snap-{of}", name="s", status="queued", properties={"snapshot_of": of})
            )


def _state(sessions: Any) -> dict[str, Any]:
    def push(kind: str, payload: bytes) -> Any:
        message = getattr(link_pb2.Envelope(), kind).__class__.FromString(payload)
        if kind == "instance_fault":
            message.fault.ClearField("created_at")
        return message

    def snapshot(raw: bytes) -> types_pb2.Instance:
        instance = types_pb2.Instance.FromString(raw)
        instance.ClearField("updated_at")  # a destroy takes the time it applies
        return instance

    with sessions() as session:
        instances = {
            row.uuid: (
                row.version,
                row.name,
                row.host,
                row.cell_path,
                row.vm_state,
                row.task_state,
                row.deleted,
                row.deleted_at is not None,
                row.metadata_,
                row.addresses,
                row.launched_at,
            )
            for row in session.scalars(select(Instance))
        }
        faults = [
            (f.instance_uuid, f.code, f.message)
            for f in session.scalars(select(InstanceFault).order_by(InstanceFault.id))
        ]
        outbox = [
            (o.peer, o.kind, o.instance_uuid, o.version, push(o.kind, o.payload))
            for o in session.scalars(select(OutboxEntry).order_by(OutboxEntry.id))
        ]
        changes = [
            (c.instance_uuid, c.kind, c.version, c.project_id, snapshot(c.snapshot))
            for c in session.scalars(select(InstanceChange).order_by(InstanceChange.revision))
        ]
        actions = {
            a.instance_uuid: a.finish_time is not None
            for a in session.scalars(select(InstanceAction))
        }
        events = [(e.result, e.host) for e in session.scalars(select(InstanceActionEvent))]
        images = {i.uuid: (i.status, i.size_bytes) for i in session.scalars(select(Image))}
    return {
        "instances": instances,
        "faults": faults,
        "outbox": outbox,
        "changes": changes,
        "actions": actions,
        "events": events,
        "images": images,
    }


def test_a_frame_of_pushes_is_one_piece_of_work_with_the_one_by_one_end_state(
    tmp_path: Path,
) -> None:
    batched, batched_db = _receiver(tmp_path, "batched")
    single, single_db = _receiver(tmp_path, "single")
    for receiver, sessions in ((batched, batched_db), (single, single_db)):
        _prepare(receiver, sessions)
        with sessions.begin() as session:
            session.execute(delete(OutboxEntry))
            session.execute(delete(InstanceChange))

    work: list[Any] = []
    frame = _frame()
    for env in frame:
        _handle(batched, env, work)
    assert len(work) == 1  # the whole frame shares one piece of database work
    with batched_db.begin() as session:
        work[0](session)

    apply = {
        "instance_update": lambda s, e: single.apply_update(s, e.instance_update.instance),
        "instance_destroyed": lambda s, e: single.apply_destroyed(s, e.instance_destroyed),
        "instance_fault": lambda s, e: single.apply_fault(s, e.instance_fault),
    }
    for env in _frame():
        with single_db.begin() as session:
            apply[env.WhichOneof("payload") or ""](session, env)

    got, want = _state(batched_db), _state(single_db)
    assert got == want
    assert (batched.applied, batched.stale) == (single.applied, single.stale) == (1 + 7, 6)

    instances = got["instances"]
    assert instances[U1][:4] == (5, "1-v5", "h5", "api!mid!leaf")
    assert instances[U2][:6] == (6, "2-v6", "h6", "api!mid!leaf", "active", "rebooting")
    assert instances[U3][0] == 2 and instances[U3][6:8] == (True, True)
    assert instances[U2][10] == STAMP
    assert U4 not in instances
    assert got["faults"] == [(U2, 500, "boom")]
    # Every applied push goes on to every parent, in order, with this cell's path.
    applied = [
        ("instance_update", U1, 5),
        ("instance_update", U2, 2),
        ("instance_update", U2, 4),
        ("instance_update", U3, 1),
        ("instance_destroyed", U3, 2),
        ("instance_fault", U2, 4),
        ("instance_update", U2, 6),
    ]
    expected_outbox = [(p, k, u, v) for k, u, v in applied for p in PARENTS]
    assert [row[:4] for row in got["outbox"]] == expected_outbox
    first = got["outbox"][0][4]
    assert first.instance.cell_path == "api!mid!leaf" and first.instance.name == "1-v5"
    destroyed = got["outbox"][8][4]
    assert (destroyed.instance_uuid, destroyed.cell_path) == (U3, "api!mid!leaf")
    assert got["outbox"][10][4].fault.message == "boom"
    # The change log holds each applied update and destroy, with the instance as it was.
    assert [c[:3] for c in got["changes"]] == [
        (U1, "update", 5),
        (U2, "update", 2),
        (U2, "update", 4),
        (U3, "update", 1),
        (U3, "destroy", 2),
        (U2, "update", 6),
    ]
    assert (
        got["changes"][4][4].deleted and got["changes"][4][4].vm_state == types_pb2.VM_STATE_DELETED
    )
    assert got["changes"][0][4].cell_path == "api!mid!leaf"
    # U1's task ended: its action finished and its snapshot is active; U2 is still busy.
    assert got["actions"] == {U1: True, U2: False}
    assert got["events"] == [("Success", "h5")]
    assert got["images"] == {f"snap-{U1}": ("active", 2 * 1024**3), f"snap-{U2}": ("queued", 0)}


def test_the_messages_handed_in_are_left_as_they_were(tmp_path: Path) -> None:
    receiver, sessions = _receiver(tmp_path, "api")
    env = link_pb2.Envelope(instance_update=link_pb2.InstanceUpdate(instance=_instance(U1, 1)))
    work: list[Any] = []
    _handle(receiver, env, work)
    with sessions.begin() as session:
        work[0](session)
    assert env.instance_update.instance.cell_path == "mid!leaf"
    with sessions() as session:
        row = session.scalar(select(OutboxEntry).order_by(OutboxEntry.id))
        assert row is not None
    pushed = link_pb2.InstanceUpdate.FromString(row.payload).instance
    assert pushed.cell_path == "api!mid!leaf"
    pushed.cell_path = "mid!leaf"
    assert pushed == env.instance_update.instance


def _joined(frame: list[link_pb2.Envelope]) -> list[link_pb2.Envelope]:
    """``frame`` as a sender sends it: each run of updates in one envelope, its
    InstanceUpdate bytes joined."""
    out: list[link_pb2.Envelope] = []
    run: list[bytes] = []

    def flush() -> None:
        if run:
            env = link_pb2.Envelope()
            env.instance_updates.MergeFromString(b"".join(run))
            out.append(env)
            run.clear()

    for env in frame:
        if env.WhichOneof("payload") == "instance_update":
            run.append(env.instance_update.SerializeToString())
        else:
            flush()
            out.append(env)
    flush()
    return out


def test_updates_joined_in_one_envelope_leave_what_single_envelopes_leave(
    tmp_path: Path,
) -> None:
    joined, joined_db = _receiver(tmp_path, "joined")
    single, single_db = _receiver(tmp_path, "single")
    for receiver, sessions, frame in (
        (joined, joined_db, _joined(_frame())),
        (single, single_db, _frame()),
    ):
        _prepare(receiver, sessions)
        work: list[Any] = []
        for env in frame:
            _handle(receiver, env, work)
        assert len(work) == 1
        with sessions.begin() as session:
            work[0](session)
    assert len(_joined(_frame())) == 7  # 13 envelopes: 7 updates in a row, and 1 at the end
    assert _state(joined_db) == _state(single_db)
    assert (joined.applied, joined.stale) == (single.applied, single.stale)


def test_a_destroy_finishes_the_delete_action_at_the_top(tmp_path: Path) -> None:
    receiver, sessions = _receiver(tmp_path, "api")
    with sessions.begin() as session:
        receiver.apply_update(session, _instance(U1, 2, task=types_pb2.TASK_STATE_DELETING))
        session.add(
            InstanceAction(
                request_id="r-delete",
                instance_uuid=U1,
                action="delete",
                project_id="p",
                user_id="u",
            )
        )
    with sessions.begin() as session:
        gone = link_pb2.InstanceDestroyed(instance_uuid=U1, version=3, cell_path="mid!leaf")
        receiver.apply_destroyed(session, gone)
    state = _state(sessions)
    assert state["instances"][U1][6] is True  # deleted
    assert state["actions"] == {U1: True}
    assert state["events"] == [("Success", None)]


def test_an_action_recorded_after_the_pushes_that_ended_it_is_finished(tmp_path: Path) -> None:
    receiver, sessions = _receiver(tmp_path, "api")
    view = ApiView(sessions)
    rebooting = types_pb2.TASK_STATE_REBOOTING
    with sessions.begin() as session:
        receiver.apply_update(session, _instance(U1, 1))
        receiver.apply_update(session, _instance(U2, 1))
    # U1: the owning cell answered the reboot with version 2; its push of version 3
    # (task ended) reached the top before the API recorded the action.
    with sessions.begin() as session:
        receiver.apply_update(session, _instance(U1, 3))
    with sessions() as session:
        row1 = session.scalars(select(Instance).where(Instance.uuid == U1)).one()
        row2 = session.scalars(select(Instance).where(Instance.uuid == U2)).one()
    view.record_action(row1, "reboot", "r-late", "u", answered=2)
    # U2: the usual order, the action first, then the push that ends it.
    view.record_action(row2, "reboot", "r-usual", "u", answered=2)
    with sessions.begin() as session:
        receiver.apply_update(session, _instance(U2, 2, task=rebooting))
    assert _state(sessions)["actions"] == {U1: True, U2: False}
    with sessions.begin() as session:
        receiver.apply_update(session, _instance(U2, 3))
    assert _state(sessions)["actions"] == {U1: True, U2: True}


def test_a_build_answer_places_only_what_no_push_placed_yet(tmp_path: Path) -> None:
    from cellplane.api.view import NewInstance

    receiver, sessions = _receiver(tmp_path, "api")
    view = ApiView(sessions)
    new = NewInstance(
        name="vm", project_id="p", user_id="u", flavor={"id": "1"}, image_id="img",
        availability_zone=None, metadata={},
    )  # fmt: skip
    made, _ = view.create("p", "", "req-1", [new, new, new])
    first, second, third = (row.uuid for row in made)
    # A push from the owning cell reached the top before the build's answer.
    pushed = _instance(first, 1)
    with sessions.begin() as session:
        receiver.apply_update(session, pushed)
    rows = view.placed([third, "00000000-0000-4000-8000-0000000000ff", first, second], "mid")
    assert [row.uuid for row in rows] == [third, first, second]  # given order, no unknown
    assert [row.cell_path for row in rows] == ["mid", f"api!{pushed.cell_path}", "mid"]
    assert rows[1].version == 1 and rows[0].version == 0
