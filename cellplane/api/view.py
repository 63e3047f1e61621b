"""The API cell's own database view of every instance below it.

The owning cells are the truth; this view is what their pushes made of it,
plus what only the top knows: create requests (idempotency), the change log
that WatchInstances reads, user actions, and snapshots waiting to finish.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cellplane.compute import states
from cellplane.db.engine import lock_for_write
from cellplane.db.instances import (
    InstanceRow,
    finish_actions,
    insert_rows,
    snapshots,
    start_actions,
)
from cellplane.db.models import (
    CreateRequest,
    Image,
    Instance,
    InstanceAction,
    InstanceChange,
    InstanceFault,
    utcnow,
)
from cellplane.errors import InstanceNotFound
from cellplane.federation import codec
from cellplane.federation.outbox import change_row, log_change, log_changes
from cellplane.v1 import types_pb2


@dataclass(frozen=True)
class NewInstance:
    """What the API knows of an instance before any cell has it."""

    name: str
    project_id: str
    user_id: str
    flavor: dict[str, Any]
    image_id: str
    availability_zone: str | None
    metadata: dict[str, str]


# Run after every frame of pushes at the API cell: built once.
_ACTIONS = cast(Table, InstanceAction.__table__).c
_OPEN_ACTIONS = select(
    _ACTIONS.id, _ACTIONS.instance_uuid, _ACTIONS.action, _ACTIONS.start_time
).where(
    _ACTIONS.instance_uuid.in_(bindparam("uuids", expanding=True)), _ACTIONS.finish_time.is_(None)
)
_INSTANCES = cast(Table, Instance.__table__).c
_AFTER_ANSWER = (
    select(
        _INSTANCES.version,
        _INSTANCES.task_state,
        _INSTANCES.vm_state,
        _INSTANCES.deleted,
        _INSTANCES.host,
    )
    .where(_INSTANCES.uuid == bindparam("uuid"))
    .with_for_update()
)
_QUEUED_IMAGES = select(Image).where(Image.status == "queued")
_ANY_QUEUED_IMAGE = select(Image.id).where(Image.status == "queued").limit(1)


# An instance as the view gives it: an ORM row, or a Core row (see InstanceRow).
ViewRow: TypeAlias = Instance | InstanceRow


class ApiView:
    """Reads and writes of the API cell's view."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def create(
        self, project_id: str, key: str, request_id: str, new: Sequence[NewInstance]
    ) -> tuple[list[ViewRow], bool]:
        """Create rows for ``new`` (or, for a known idempotency key, return the first
        call's instances). Returns (instances, created)."""
        if key:
            existing = self.by_key(project_id, key)
            if existing is not None:
                return existing, False
        try:
            with self.sessions.begin() as session:
                return self._add_many(session, [(project_id, key, request_id, new)])[0], True
        except IntegrityError:
            # A concurrent retry with the same key won the race: return its instances.
            existing = self.by_key(project_id, key)
            if existing is None:
                raise
            return existing, False

    def create_many(
        self, creates: Sequence[tuple[str, str, str, Sequence[NewInstance]]]
    ) -> list[tuple[list[ViewRow], bool]]:
        """:meth:`create` for each ``(project_id, key, request_id, new)`` of ``creates``,
        in one transaction (or, if that one fails on a key, one at a time)."""
        out: dict[int, tuple[list[ViewRow], bool]] = {}
        for i, (project_id, key, _, _) in enumerate(creates):
            existing = self.by_key(project_id, key) if key else None
            if existing is not None:
                out[i] = (existing, False)
        keys = [(c[0], c[1]) for i, c in enumerate(creates) if c[1] and i not in out]
        if len(set(keys)) == len(keys):  # one key twice: let the one-at-a-time path sort it
            try:
                with self.sessions.begin() as session:
                    todo = [i for i in range(len(creates)) if i not in out]
                    made = self._add_many(session, [creates[i] for i in todo])
                    out.update((i, (rows, True)) for i, rows in zip(todo, made, strict=True))
                return [out[i] for i in range(len(creates))]
            except IntegrityError:
                out = {i: v for i, v in out.items() if not v[1]}
        for i, (project_id, key, request_id, new) in enumerate(creates):
            if i not in out:
                out[i] = self.create(project_id, key, request_id, new)
        return [out[i] for i in range(len(creates))]

    def _add_many(
        self, session: Session, creates: Sequence[tuple[str, str, str, Sequence[NewInstance]]]
    ) -> list[list[ViewRow]]:
        """Rows for each ``(project_id, key, request_id, new)``: plain multi-row INSERTs
        (instances, change log, actions) and one read back."""
        requests: dict[int, CreateRequest] = {}
        for i, (project_id, key, request_id, _) in enumerate(creates):
            if key:
                requests[i] = CreateRequest(
                    project_id=project_id,
                    idempotency_key=key,
                    request_id=request_id,
                    instance_uuids=[],
                )
        if requests:
            session.add_all(requests.values())
            session.flush()  # a duplicate key fails here, before anything else is written
        now = utcnow()
        values: list[dict[str, Any]] = []
        uuids_of: list[list[str]] = []
        for _, key, _, new in creates:
            uuids = []
            for item in new:
                uuid = str(uuidlib.uuid4())
                uuids.append(uuid)
                values.append(
                    {
                        "uuid": uuid,
                        "name": item.name,
                        "project_id": item.project_id,
                        "user_id": item.user_id,
                        "flavor_id": str(item.flavor.get("id", "")),
                        "flavor": item.flavor,
                        "image_id": item.image_id,
                        "vm_state": states.BUILDING,
                        "task_state": states.SCHEDULING,
                        "power_state": states.NOSTATE,
                        "cell_path": "",
                        "version": 0,
                        "availability_zone": item.availability_zone,
                        "metadata_": item.metadata,
                        "addresses": [],
                        "idempotency_key": key or None,
                        "deleted": False,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            uuids_of.append(uuids)
        if not values:
            return [[] for _ in creates]
        insert_rows(session, values)
        rows = snapshots(session, [v["uuid"] for v in values])
        for i, request in requests.items():
            request.instance_uuids = uuids_of[i]
        changes, actions = [], []
        for (_, _, request_id, _), uuids in zip(creates, uuids_of, strict=True):
            for uuid in uuids:
                row = rows[uuid]
                changes.append(change_row(row, "update"))
                actions.append((row, "create", request_id))
        log_changes(session, changes)
        start_actions(session, actions)
        return [[rows[u] for u in uuids] for uuids in uuids_of]

    def by_key(self, project_id: str, key: str) -> list[ViewRow] | None:
        """The instances of an earlier create with this idempotency key."""
        with self.sessions() as session:
            request = session.scalar(
                select(CreateRequest).where(
                    CreateRequest.project_id == project_id, CreateRequest.idempotency_key == key
                )
            )
            if request is None or not request.instance_uuids:
                return None
            rows = session.scalars(
                select(Instance)
                .where(Instance.uuid.in_(request.instance_uuids))
                .order_by(Instance.id)
            ).all()
            return list(rows)

    def placed(self, uuids: Sequence[str], cell_path: str) -> list[ViewRow]:
        """Remember where a build went, unless a push already said more; the instances
        as the view holds them then, in the given order."""
        rows = self.get_many(uuids)  # pushes usually come first: then no write
        unplaced = [row.uuid for row in rows if not row.cell_path]
        if not unplaced:
            return rows
        with self.sessions.begin() as session:
            session.connection().execute(
                update(Instance)
                .where(Instance.uuid.in_(unplaced), Instance.cell_path == "")
                .values(cell_path=cell_path)
            )
        return self.get_many(uuids)  # as written, or as pushes that came meanwhile left them

    def failed(self, uuids: Sequence[str], code: int, message: str) -> None:
        """Builds that no cell took: error state and a fault, here at the top."""
        with self.sessions.begin() as session:
            for row in session.scalars(select(Instance).where(Instance.uuid.in_(uuids))):
                if row.version > 0:
                    continue  # a cell owns it after all
                row.vm_state, row.task_state = states.ERROR, None
                session.add(
                    InstanceFault(
                        instance_uuid=row.uuid, code=code, message=message, details="", host=None
                    )
                )
                self._log(session, row, "fault")
                self._finish_actions(session, {row.uuid: ("Error", row.host)})

    def get(self, uuid: str, project_id: str | None) -> Instance:
        """One instance (InstanceNotFound if missing or in another project)."""
        with self.sessions() as session:
            row = session.scalar(select(Instance).where(Instance.uuid == uuid))
        if row is None or (project_id is not None and row.project_id != project_id):
            raise InstanceNotFound(f"instance {uuid} not found")
        return row

    def get_many(self, uuids: Sequence[str]) -> list[ViewRow]:
        """Instances by uuid (deleted ones too), in the given order."""
        with self.sessions() as session:
            rows = snapshots(session, uuids, deleted=True)
        return [rows[u] for u in uuids if u in rows]

    def delete_unplaced(self, uuid: str) -> Instance:
        """Delete an instance that never reached a cell."""
        with self.sessions.begin() as session:
            row = session.scalar(select(Instance).where(Instance.uuid == uuid))
            if row is None:
                raise InstanceNotFound(f"instance {uuid} not found")
            now = utcnow()
            row.deleted, row.deleted_at, row.terminated_at = True, now, now
            row.vm_state, row.task_state = states.DELETED, None
            self._log(session, row, "destroy")
            return row

    def record_action(
        self, row: Instance, action: str, request_id: str, user_id: str, answered: int = 0
    ) -> None:
        """A user action the owning cell accepted, answering with version ``answered`` of
        the instance. Pushes may have come first: if the instance here is already past
        that version with its task ended (or is gone), the action is finished at once, as
        those pushes would have finished it."""
        with self.sessions.begin() as session:
            lock_for_write(session)  # no push applies between the look and the insert
            session.add(
                InstanceAction(
                    request_id=request_id,
                    instance_uuid=row.uuid,
                    action=action,
                    project_id=row.project_id,
                    user_id=user_id,
                    start_time=utcnow(),
                )
            )
            session.flush()
            now = session.execute(_AFTER_ANSWER, {"uuid": row.uuid}).one_or_none()
            if now is None or now.version <= answered:
                return
            if now.deleted or now.task_state is None:
                result = "Error" if now.vm_state == states.ERROR else "Success"
                self._finish_actions(session, {row.uuid: (result, now.host)})

    def actions(self, uuid: str) -> list[InstanceAction]:
        """Actions of an instance, oldest first, with their events."""
        with self.sessions() as session:
            rows = session.scalars(
                select(InstanceAction)
                .where(InstanceAction.instance_uuid == uuid)
                .order_by(InstanceAction.id)
            ).all()
            for row in rows:
                _ = row.events  # load before the session closes
            return list(rows)

    def faults(self, uuid: str) -> list[InstanceFault]:
        """Faults of an instance, newest first."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(InstanceFault)
                    .where(InstanceFault.instance_uuid == uuid)
                    .order_by(InstanceFault.id.desc())
                )
            )

    def latest_faults(self, uuids: Sequence[str]) -> dict[str, InstanceFault]:
        """The newest fault of each of ``uuids`` that has one."""
        with self.sessions() as session:
            faults = session.scalars(
                select(InstanceFault)
                .where(InstanceFault.instance_uuid.in_(uuids))
                .order_by(InstanceFault.id)
            ).all()
        return {f.instance_uuid: f for f in faults}

    def create_snapshot_image(self, row: Instance, name: str) -> Image:
        """The image a snapshot will fill (queued until the instance's task ends)."""
        with self.sessions.begin() as session:
            image = Image(
                uuid=str(uuidlib.uuid4()),
                name=name,
                status="queued",
                size_bytes=0,
                min_ram_mb=0,
                min_disk_gb=int(row.flavor.get("root_gb", 0)),
                properties={"snapshot_of": row.uuid, "image_type": "snapshot"},
                owner=row.project_id,
            )
            session.add(image)
        return image

    def after_pushes(
        self,
        session: Session,
        instances: Sequence[types_pb2.Instance],
        destroyed: Sequence[str] = (),
    ) -> None:
        """Called with every applied update of a batch of pushes, in order, and the
        instances its destroys removed: finish the actions and snapshots of instances
        whose task ended, and the actions of those deleted (one query for each)."""
        ended: dict[str, tuple[str, str | None, int]] = {}
        for msg in instances:
            task = msg.task_state
            if task and codec.task_state_from_proto(task) is not None:
                continue
            if msg.uuid in ended:
                continue
            failed = codec.vm_state_from_proto(msg.vm_state) == states.ERROR
            result = "Error" if failed else "Success"
            ended[msg.uuid] = (result, msg.host or None, msg.flavor.root_gb)
        if ended:
            self._tasks_ended(session, ended)
        if destroyed:  # a delete ends with the destroy, not with an update
            self._finish_actions(session, dict.fromkeys(destroyed, ("Success", None)))

    @staticmethod
    def _tasks_ended(session: Session, ended: dict[str, tuple[str, str | None, int]]) -> None:
        """Finish the open actions, and activate the queued snapshots, of instances
        whose task ended (uuid -> (action result, host, root_gb))."""
        ApiView._finish_actions(session, {u: (r, h) for u, (r, h, _) in ended.items()})
        if session.connection().execute(_ANY_QUEUED_IMAGE).first() is None:
            return  # the usual case: no snapshot waiting
        for image in session.scalars(_QUEUED_IMAGES):
            of = (image.properties or {}).get("snapshot_of")
            if of in ended:
                image.status = "active"
                image.size_bytes = ended[of][2] * 1024**3

    @staticmethod
    def _finish_actions(session: Session, ended: dict[str, tuple[str, str | None]]) -> None:
        """Close the open actions of ``ended`` (uuid -> (result, host)) with an event."""
        uuids = list(ended)
        now = utcnow()
        for start in range(0, len(uuids), 500):
            open_actions = (
                session.connection()
                .execute(_OPEN_ACTIONS, {"uuids": uuids[start : start + 500]})
                .all()
            )
            finish_actions(
                session,
                [
                    (a.id, f"compute_{a.action}", a.start_time, *ended[a.instance_uuid], None)
                    for a in open_actions
                ],
                now,
            )

    def changes_after(
        self,
        revision: int,
        project_id: str | None,
        limit: int = 500,
        gaps: Sequence[int] = (),
    ) -> list[InstanceChange]:
        """Change log entries after ``revision`` (and any of the revisions in ``gaps``),
        each with the instance as it was then."""
        with self.sessions() as session:
            newer = InstanceChange.revision > revision
            query = select(InstanceChange).where(
                or_(newer, InstanceChange.revision.in_(gaps)) if gaps else newer
            )
            if project_id is not None:
                query = query.where(InstanceChange.project_id == project_id)
            return list(session.scalars(query.order_by(InstanceChange.revision).limit(limit)))

    def last_revision(self) -> int:
        """The newest change log revision (0 if none)."""
        with self.sessions() as session:
            last = session.scalar(
                select(InstanceChange.revision).order_by(InstanceChange.revision.desc()).limit(1)
            )
        return int(last or 0)

    @staticmethod
    def _log(session: Session, row: Instance, kind: str) -> None:
        session.flush()
        log_change(session, row, kind)
