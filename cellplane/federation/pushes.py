"""A parent applying its children's pushes, a frame at a time.

One frame of a link may carry thousands of pushes; they are applied in a few
statements instead of one ORM round trip each: one look-up of the versions
held here, bulk writes of the instance rows, and bulk inserts of the outbox rows
(what this cell passes on to its own parents) and of the change log rows (at
the API cell). The end state, the outbox and the change log are the ones applying the pushes
one by one in their order would leave; each instance row is written once, with
the newest state the frame left it in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, String, Table, bindparam, select, type_coerce
from sqlalchemy.orm import Session

from cellplane.db import bulk
from cellplane.db.engine import driver_rows, lock_for_write
from cellplane.db.models import (
    FAULT_MESSAGE_LENGTH,
    Instance,
    InstanceFault,
    utcnow,
)
from cellplane.federation import codec, paths
from cellplane.v1 import link_pb2, types_pb2

if TYPE_CHECKING:
    from cellplane.federation.outbox import Outbox

IN_CHUNK = 500  # uuids per ``IN (...)`` look-up
UPDATE, DESTROY, FAULT = "update", "destroy", "fault"
_PAYLOAD_OF_KIND = {
    UPDATE: "instance_update",
    DESTROY: "instance_destroyed",
    FAULT: "instance_fault",
}

# One push: its kind and its message (types_pb2.Instance for an update,
# InstanceDestroyed or InstanceFaultReport).
Push = tuple[str, Any]
# Told every instance an applied update left here, in order, and the uuids of the
# instances an applied destroy removed (the API view).
AfterApply = Callable[[Session, list[types_pb2.Instance], list[str]], None]


@dataclass
class _Held:
    """What this cell holds of one instance while a frame is applied."""

    id: int | None  # None: not in the database before this frame
    version: int
    values: dict[str, Any] = field(default_factory=dict)  # columns to write
    # The update the row holds now (known rows only; see Known), and its updated_at.
    row: types_pb2.Instance | None = None
    updated_at: datetime | None = None


# Rows this cell wrote from updates, by uuid: the update (this cell's own copy) and the
# updated_at written with it. A push to a row that still holds its known version and
# updated_at writes only the columns that changed (see codec.advance). Rows are
# written here only (and at the API cell, by its own hand, at version 0 only).
Known = dict[str, tuple[types_pb2.Instance, datetime]]
KNOWN_LIMIT = 50_000


@dataclass
class _Effect:
    """One applied push, to be passed on (and logged at the API cell)."""

    kind: str
    uuid: str
    version: int
    msg: Any = None  # update: the Instance; fault: the Fault as stored
    cell_path: str = ""
    fixes: dict[str, Any] | None = None  # update: timestamps the push lacked


@dataclass
class Applied:
    """How many pushes of a frame applied, and how many were older than ours."""

    applied: int = 0
    stale: int = 0


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


def _uuid(kind: str, msg: Any) -> str:
    return str(msg.uuid if kind == UPDATE else msg.instance_uuid)


def apply_pushes(
    session: Session,
    name: str,
    outbox: Outbox,
    pushes: Sequence[Push],
    after_apply: AfterApply | None = None,
    known: Known | None = None,
) -> Applied:
    """Apply ``pushes`` (in order) in ``session``'s transaction (``known``: the rows
    this cell knows it wrote, kept up to date here).

    An update or destroy applies only if newer than the copy held here; a fault is
    kept once, and only for an instance held here. What applied goes on to every
    parent through outbox rows (and into the change log if ``outbox.change_log``).
    """
    now = utcnow()
    counts = Applied()
    uuids = list(dict.fromkeys(_uuid(kind, msg) for kind, msg in pushes))
    held: dict[str, _Held] = {}
    # The versions read here decide what is written: no other transaction may
    # change these rows in between (a push and the API's own copy of an answer).
    lock_for_write(session)
    session.flush()  # ORM changes of this transaction first: the read below is Core
    connection = session.connection()
    for chunk in _chunks(uuids):
        for uuid, row_id, version, updated_at in _held_rows(connection, chunk):
            h = held[uuid] = _Held(row_id, version)
            if known is not None and uuid in known:
                row, written = known.pop(uuid)
                if row.version == version and _same_time(updated_at, written):
                    h.row, h.updated_at = row, written  # else written by another hand
    faults_known = _faults_known(session, [m.instance_uuid for k, m in pushes if k == FAULT])

    effects: list[_Effect] = []
    paths_here: dict[str, str] = {}  # a push's cell_path -> the path from this cell
    fault_rows: list[dict[str, Any]] = []
    updated: list[types_pb2.Instance] = []
    destroyed: list[str] = []
    for kind, msg in pushes:
        if kind == UPDATE:
            uuid, version = msg.uuid, msg.version
            copy = held.get(uuid)
            if copy is not None and copy.version >= version:
                counts.stale += 1
                continue
            path = msg.cell_path
            cell_path = paths_here.get(path)
            if cell_path is None:
                cell_path = paths_here[path] = paths.join(name, path)
            if copy is not None and copy.row is not None:
                moved = copy.row.cell_path != path
                fields = codec.advance(copy.row, msg)
                if moved:
                    fields["cell_path"] = cell_path
            else:
                fields = codec.instance_columns(msg)
                fields["cell_path"] = cell_path
            fixes = {}
            if not msg.HasField("updated_at"):  # as the ORM's onupdate would
                fixes["updated_at"] = fields["updated_at"] = now
            if copy is None:
                if "created_at" not in fields:  # as the ORM's default would
                    fixes["created_at"] = fields["created_at"] = now
                copy = held[uuid] = _Held(None, version, {"uuid": uuid})
            if copy.row is None and known is not None:
                copy.row = types_pb2.Instance()
                copy.row.CopyFrom(msg)
            copy.version = version
            copy.values.update(fields)
            copy.updated_at = fields.get("updated_at", copy.updated_at)
            counts.applied += 1
            updated.append(msg)
            effects.append(_Effect(UPDATE, uuid, version, msg, cell_path, fixes))
        elif kind == DESTROY:
            copy = held.get(msg.instance_uuid)
            if copy is None or copy.version >= msg.version:
                counts.stale += 1
                continue
            copy.version = msg.version
            copy.row = None
            copy.values.update(
                deleted=True,
                deleted_at=now,
                terminated_at=now,
                vm_state="deleted",
                task_state=None,
                power_state=0,  # NOSTATE, as the owning cell's destroy leaves it
                version=msg.version,
                updated_at=now,
            )
            counts.applied += 1
            destroyed.append(msg.instance_uuid)
            effects.append(_Effect(DESTROY, msg.instance_uuid, msg.version))
        else:
            uuid, fault = msg.instance_uuid, msg.fault
            copy = held.get(uuid)
            if (uuid, fault.message, fault.code) in faults_known or copy is None:
                counts.stale += 1
                continue
            message = fault.message[:FAULT_MESSAGE_LENGTH] if fault.message else fault.message
            faults_known.add((uuid, message, fault.code))
            fault_rows.append(
                {
                    "instance_uuid": uuid,
                    "code": fault.code,
                    "message": message,
                    "details": fault.details,
                    "host": fault.host or None,
                    "created_at": now,
                }
            )
            stored = types_pb2.Fault(
                code=fault.code, message=message, details=fault.details, host=fault.host
            )
            stored.created_at.FromDatetime(now)
            counts.applied += 1
            effects.append(_Effect(FAULT, uuid, copy.version, stored))

    _write_instances(session, held)
    if known is not None:
        _remember(known, held)
    if fault_rows:
        session.execute(cast(Table, InstanceFault.__table__).insert(), fault_rows)
    _pass_on(session, outbox, effects)
    if after_apply is not None and (updated or destroyed):
        after_apply(session, updated, destroyed)
    return counts


# updated_at as the driver gives it: SQLite's text is compared without parsing it.
_RAW_UPDATED_AT = type_coerce(Instance.updated_at, String)
# What a frame's pushes need of the rows held here (locked on a server database).
_HELD = (
    select(Instance.uuid, Instance.id, Instance.version, _RAW_UPDATED_AT)
    .where(Instance.uuid.in_(bindparam("uuids", expanding=True)))
    .with_for_update()
)
_HELD_SQLITE: dict[int, str] = {}  # uuids -> the same for SQLite, in the driver's own SQL


def _held_rows(connection: Connection, uuids: Sequence[str]) -> Iterable[Sequence[Any]]:
    if connection.dialect.name != "sqlite":
        return connection.execute(_HELD, {"uuids": list(uuids)}).all()
    sql = _HELD_SQLITE.get(len(uuids))
    if sql is None:
        marks = ", ".join("?" * len(uuids))
        sql = _HELD_SQLITE[len(uuids)] = (
            f"SELECT uuid, id, version, updated_at FROM instances WHERE uuid IN ({marks})"
        )
    return driver_rows(connection, sql, tuple(uuids))


def _same_time(stored: Any, written: datetime | None) -> bool:
    if written is None or stored is None:
        return False
    if isinstance(stored, str):
        return stored == bulk.sqlite_timestamp(written)
    return bool(stored == written)


def _remember(known: Known, held: dict[str, _Held]) -> None:
    for uuid, h in held.items():
        if h.row is not None and h.updated_at is not None:
            known[uuid] = (h.row, h.updated_at)
    while len(known) > KNOWN_LIMIT:  # the oldest go first
        del known[next(iter(known))]


def _faults_known(session: Session, uuids: list[str]) -> set[tuple[str, str, int]]:
    known: set[tuple[str, str, int]] = set()
    for chunk in _chunks(list(dict.fromkeys(uuids))):
        query = select(InstanceFault.instance_uuid, InstanceFault.message, InstanceFault.code)
        for uuid, message, code in session.execute(
            query.where(InstanceFault.instance_uuid.in_(chunk))
        ):
            known.add((uuid, message, code))
    return known


def _write_instances(session: Session, held: dict[str, _Held]) -> None:
    # One executemany per set of columns, bound as they are (see cellplane.db.bulk).
    by_columns: dict[tuple[bool, tuple[str, ...]], list[tuple[Any, ...]]] = {}
    for h in held.values():
        if not h.values:
            continue
        names = tuple(sorted(h.values))
        row = tuple(h.values[n] for n in names)
        by_columns.setdefault((h.id is None, names), []).append(
            row if h.id is None else (*row, h.id)
        )
    for (new, names), rows in by_columns.items():
        if new:
            bulk.insert_many(session, _INSTANCES, names, rows)
        else:
            bulk.update_many(session, _INSTANCES, names, "id", rows)


_INSTANCES = cast(Table, Instance.__table__)


def _pass_on(session: Session, outbox: Outbox, effects: list[_Effect]) -> None:
    """Outbox rows for every parent (and change log rows) of ``effects``, in order."""
    peers = outbox.parents()
    if not effects or not (peers or outbox.change_log):
        return
    destroyed = _rows(session, [e.uuid for e in effects if e.kind == DESTROY])
    now = utcnow()
    out: list[tuple[Any, ...]] = []
    log: list[tuple[Any, ...]] = []
    for effect in effects:
        snapshot: bytes | None = None
        if effect.kind == UPDATE:
            payload, snapshot = _update_bytes(effect, outbox.change_log)
            project_id = effect.msg.project_id
        elif effect.kind == DESTROY:
            row = destroyed[effect.uuid]
            message: Any = link_pb2.InstanceDestroyed(
                instance_uuid=effect.uuid, version=effect.version, cell_path=row.cell_path
            )
            payload = message.SerializeToString()
            if outbox.change_log:
                snapshot = codec.instance_to_proto(row).SerializeToString()
            project_id = row.project_id
        else:
            message = link_pb2.InstanceFaultReport(
                instance_uuid=effect.uuid, version=effect.version, fault=effect.msg
            )
            payload = message.SerializeToString()
        if snapshot is not None:
            log.append((effect.uuid, project_id, effect.kind, effect.version, snapshot, now))
        kind = _PAYLOAD_OF_KIND[effect.kind]
        out.extend((peer, kind, effect.uuid, effect.version, payload, now) for peer in peers)
    if log:
        outbox.write_log(session, log)
    outbox.write(session, out)


def _update_bytes(effect: _Effect, snapshot: bool) -> tuple[bytes, bytes | None]:
    """The InstanceUpdate passed on, and the snapshot logged, of an applied update:
    the incoming message with this cell's path (and the timestamps it got here)."""
    msg = effect.msg
    if not effect.fixes:
        # Serialize the incoming message with the path swapped for a moment.
        original = msg.cell_path
        msg.cell_path = effect.cell_path
        try:
            data = msg.SerializeToString()
        finally:
            msg.cell_path = original
    else:
        copy = types_pb2.Instance()
        copy.CopyFrom(msg)
        copy.cell_path = effect.cell_path
        for name, value in effect.fixes.items():
            getattr(copy, name).FromDatetime(value)
        data = copy.SerializeToString()
    return as_update(data), data if snapshot else None


def as_update(instance: bytes) -> bytes:
    """An InstanceUpdate's bytes around a serialized Instance (field 1, length-delimited)."""
    size, prefix = len(instance), bytearray(b"\x0a")
    while size > 0x7F:
        prefix.append(0x80 | (size & 0x7F))
        size >>= 7
    prefix.append(size)
    return bytes(prefix) + instance


def _rows(session: Session, uuids: list[str]) -> dict[str, Instance]:
    rows: dict[str, Instance] = {}
    for chunk in _chunks(list(dict.fromkeys(uuids))):
        query = select(Instance).where(Instance.uuid.in_(chunk))
        for row in session.scalars(query.execution_options(populate_existing=True)):
            rows[row.uuid] = row
    return rows


__all__ = ["AfterApply", "Applied", "Known", "Push", "apply_pushes", "as_update"]
