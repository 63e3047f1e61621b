"""The one way an owning cell changes its instances.

Every change bumps the instance's ``version`` and calls ``on_change`` in the same
transaction, which is where the federation layer writes the outbox rows that
carry the change to every parent. Callers pass the session whose transaction
they commit. :meth:`InstanceChanges.update_many` makes several changes in a few
statements (one UPDATE per run of alike changes, one read back, one INSERT of
outbox rows), for callers that change several instances in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Row, Table, Text, bindparam, inspect, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from cellplane.db import bulk
from cellplane.db.engine import lock_for_write
from cellplane.db.models import (
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    utcnow,
)
from cellplane.errors import InstanceNotFound

# on_change(session, instance, kind, fault) with kind "update", "destroy" or "fault";
# ``instance`` is an ORM instance, or an InstanceRow after an update.
OnChange = Callable[[Session, Any, str, InstanceFault | None], None]
# on_updates(session, instances): the same as on_change(session, i, "update", None) for
# each of ``instances`` in order, in one go (see InstanceChanges.update_many).
OnUpdates = Callable[[Session, list[Any]], None]


def _no_push(session: Session, instance: Any, kind: str, fault: InstanceFault | None) -> None:
    del session, instance, kind, fault


# Built once: these run for every change an owning cell makes.
_LIVE = select(Instance).where(Instance.uuid == bindparam("uuid"), Instance.deleted.is_(False))
_LIVE_FOR_UPDATE = _LIVE.with_for_update()
_INSTANCES = cast(Table, Instance.__table__)
_COLUMN_OF = {attr.key: attr.columns[0].name for attr in Instance.__mapper__.column_attrs}
# JSON columns by attribute: written as their text (see cellplane.db.bulk).
_JSON_KEYS = frozenset(
    attr.key for attr in Instance.__mapper__.column_attrs if isinstance(attr.columns[0].type, JSON)
)
_IN_CHUNK = 500  # uuids per ``IN (...)`` look-up
_LIVE_IN = select(Instance).where(
    Instance.uuid.in_(bindparam("uuids", expanding=True)), Instance.deleted.is_(False)
)
# Read back after an UPDATE: every column as a Core row with the ORM's attribute names,
# JSON columns as their stored text (encoded as they are, see codec.instance_to_proto).
_SNAPSHOT_COLUMNS = [
    (sql_cast(column, Text) if isinstance(column.type, JSON) else column).label(key)
    for key, column in ((attr.key, attr.columns[0]) for attr in Instance.__mapper__.column_attrs)
]
_SNAPSHOT_IN = select(*_SNAPSHOT_COLUMNS).where(
    _INSTANCES.c.uuid.in_(bindparam("uuids", expanding=True))
)
_SNAPSHOT_LIVE_IN = _SNAPSHOT_IN.where(_INSTANCES.c.deleted.is_(False))
# One instance (the read-back of a single update): an IN list of one costs SQLAlchemy
# its expansion on every call, about a third of the read.
_SNAPSHOT_ONE = select(*_SNAPSHOT_COLUMNS).where(_INSTANCES.c.uuid == bindparam("uuid"))
_SNAPSHOT_LIVE_ONE = _SNAPSHOT_ONE.where(_INSTANCES.c.deleted.is_(False))
# What the ORM's column defaults would give a new instance (see create_many), apart
# from the version and timestamps; absent nullable columns are NULL.
_CREATE_DEFAULTS: dict[str, Any] = {
    "power_state": 0,
    "flavor": {},
    "metadata_": {},
    "addresses": [],
    "deleted": False,
}
# An instance as update_many gives it back: a Core row with the ORM's attribute names,
# whose JSON columns (flavor, metadata_, addresses) are their stored text.
InstanceRow = Row[Any]


def _runs(
    items: Iterable[tuple[str, dict[str, Any]]],
) -> list[tuple[tuple[str, ...], list[tuple[str, dict[str, Any]]]]]:
    """Consecutive changes with the same attributes, no instance twice in one run (so
    each run is one executemany, and changes to one instance keep their order)."""
    runs: list[tuple[tuple[str, ...], list[tuple[str, dict[str, Any]]]]] = []
    seen: set[str] = set()
    for uuid, changes in items:
        unknown = [key for key in changes if key not in _COLUMN_OF]
        if unknown:
            raise TypeError(f"instances have no column {unknown[0]!r}")
        keys = tuple(sorted(k for k in changes if k not in ("version", "updated_at")))
        if "version" in changes:  # as setting it and then adding one did
            keys += ("version",)
        if not runs or runs[-1][0] != keys or uuid in seen:
            runs.append((keys, []))
            seen = set()
        runs[-1][1].append((uuid, changes))
        seen.add(uuid)
    return runs


class InstanceChanges:
    """Versioned changes to instance rows in their owning cell."""

    def __init__(
        self, on_change: OnChange | None = None, *, on_updates: OnUpdates | None = None
    ) -> None:
        self.on_change: OnChange = on_change or _no_push
        if on_updates is None and on_change is not None:
            # The bound ``record`` of an Outbox also writes many updates at once.
            on_updates = getattr(getattr(on_change, "__self__", None), "record_updates", None)
        self.on_updates: OnUpdates | None = on_updates

    def get(self, session: Session, uuid: str, *, for_update: bool = False) -> Instance:
        """The live instance ``uuid`` (InstanceNotFound if missing or deleted)."""
        query = _LIVE
        if for_update:
            query = _LIVE_FOR_UPDATE
            lock_for_write(session)
        instance = session.scalar(query, {"uuid": uuid})
        if instance is None:
            raise InstanceNotFound(f"instance {uuid} not found")
        return instance

    def get_many(self, session: Session, uuids: Sequence[str]) -> list[Instance]:
        """The live instances among ``uuids`` (missing or deleted ones are left out)."""
        found: list[Instance] = []
        for start in range(0, len(uuids), _IN_CHUNK):
            found.extend(
                session.scalars(_LIVE_IN, {"uuids": list(uuids[start : start + _IN_CHUNK])})
            )
        return found

    def create(self, session: Session, instance: Instance) -> Instance:
        """Add a new instance owned by this cell (version 1)."""
        instance.version = 1
        session.add(instance)
        session.flush()
        self.on_change(session, instance, "update", None)
        return instance

    def create_many(
        self, session: Session, instances: Sequence[dict[str, Any]]
    ) -> list[InstanceRow]:
        """:meth:`create` for many instances, given as their attribute values (ORM
        names, JSON decoded; what is left out gets the column's default): one INSERT
        straight to the driver, one read back, one go at the pushes; the rows in the
        given order."""
        if not instances:
            return []
        now = utcnow()
        keys = list(dict.fromkeys(key for values in instances for key in values))
        keys += [key for key in _CREATE_DEFAULTS if key not in keys]
        insert_rows(
            session,
            [
                {
                    **{key: values.get(key, _CREATE_DEFAULTS.get(key)) for key in keys},
                    "version": 1,
                    "created_at": values.get("created_at") or now,
                    "updated_at": values.get("updated_at") or now,
                }
                for values in instances
            ],
        )
        uuids = [values["uuid"] for values in instances]
        loaded = snapshots(session, uuids)
        rows = [loaded[uuid] for uuid in uuids]
        if self.on_updates is not None:
            self.on_updates(session, rows)
        else:
            for row in rows:
                self.on_change(session, row, "update", None)
        return rows

    def update(self, session: Session, uuid: str, **changes: Any) -> InstanceRow:
        """Apply ``changes`` to instance ``uuid`` and push the new version; the instance
        as it is now (see InstanceRow; ORM instances loaded before read it again)."""
        return self.update_many(session, [(uuid, changes)])[0]

    def update_many(
        self, session: Session, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[InstanceRow]:
        """Apply each ``(uuid, changes)`` of ``items`` in order, as :meth:`update` would
        one by one (a version and a push per item), in a few statements.

        InstanceNotFound if one is missing or deleted (the caller rolls back).
        """
        if not items:
            return []
        session.flush()  # changes made to loaded instances go first, as autoflush did
        out: list[InstanceRow] = []
        for keys, run in _runs(items):
            now = utcnow()
            explicit = "version" in keys  # an explicit version replaces version + 1
            rows = []
            for uuid, changes in run:
                values = [_encoded(key, changes[key]) for key in keys]
                if explicit:
                    values[-1] += 1
                rows.append((*values, now, uuid))
            # The UPDATE comes first: it takes the write lock (SQLite) or the row locks
            # before anything is read, so no concurrent change is lost.
            bulk.update_many(
                session,
                _INSTANCES,
                (*(_COLUMN_OF[key] for key in keys), "updated_at"),
                "uuid",
                rows,
                increment="" if explicit else "version",
                unless="deleted",
            )
            uuids = [uuid for uuid, _ in run]
            loaded = snapshots(session, uuids)
            for uuid in uuids:
                if uuid not in loaded:
                    raise InstanceNotFound(f"instance {uuid} not found")
            _expire_loaded(session, loaded)
            changed = [loaded[uuid] for uuid in uuids]
            if self.on_updates is not None:
                self.on_updates(session, changed)
            else:
                for instance in changed:
                    self.on_change(session, instance, "update", None)
            out.extend(changed)
        return out

    def destroy(self, session: Session, uuid: str) -> Instance:
        """Soft-delete instance ``uuid`` and push its destruction."""
        instance = self.get(session, uuid, for_update=True)
        now = utcnow()
        instance.deleted, instance.deleted_at, instance.terminated_at = True, now, now
        instance.vm_state, instance.task_state = "deleted", None
        instance.power_state = 0  # NOSTATE: nothing runs any more
        instance.version += 1
        session.flush()
        self.on_change(session, instance, "destroy", None)
        return instance

    def fault(
        self,
        session: Session,
        uuid: str,
        code: int,
        message: str,
        *,
        details: str = "",
        host: str | None = None,
        vm_state: str | None = "error",
    ) -> InstanceFault:
        """Record a fault (and, by default, put the instance in ``error``)."""
        instance = self.get(session, uuid, for_update=True)
        fault = InstanceFault(
            instance_uuid=uuid, code=code, message=message, details=details, host=host
        )
        session.add(fault)
        if vm_state is not None:
            instance.vm_state, instance.task_state = vm_state, None
        instance.version += 1
        instance.updated_at = utcnow()
        session.flush()
        self.on_change(session, instance, "fault", fault)
        return fault


def _encoded(key: str, value: Any) -> Any:
    """``value`` of instance attribute ``key`` as cellplane.db.bulk takes it."""
    return json.dumps(value) if key in _JSON_KEYS else value


def insert_rows(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT instances given as attribute values, every row with the same attributes
    and every column without a default among them: one bulk INSERT."""
    if not rows:
        return
    keys = list(rows[0])
    bulk.insert_many(
        session,
        _INSTANCES,
        [_COLUMN_OF[key] for key in keys],
        [tuple(_encoded(key, row[key]) for key in keys) for row in rows],
    )


def snapshots(
    session: Session, uuids: Sequence[str], *, deleted: bool = False
) -> dict[str, InstanceRow]:
    """The live instances of ``uuids`` (and the deleted ones too, with ``deleted``) by
    uuid, as the database has them now (Core rows, see InstanceRow)."""
    # On the session's connection: the ORM's execute would only flush first (done here)
    # and cost a fifth more.
    session.flush()
    connection = session.connection()
    if len(uuids) == 1:
        one = _SNAPSHOT_ONE if deleted else _SNAPSHOT_LIVE_ONE
        row = connection.execute(one, {"uuid": uuids[0]}).first()
        return {} if row is None else {row.uuid: row}
    query = _SNAPSHOT_IN if deleted else _SNAPSHOT_LIVE_IN
    found: dict[str, InstanceRow] = {}
    for start in range(0, len(uuids), _IN_CHUNK):
        for row in connection.execute(query, {"uuids": list(uuids[start : start + _IN_CHUNK])}):
            found[row.uuid] = row
    return found


_PUSHED = select(*_SNAPSHOT_COLUMNS).where(_INSTANCES.c.version > 0).order_by(_INSTANCES.c.id)


def pushed(session: Session) -> list[InstanceRow]:
    """Every instance this cell has pushed up (version > 0, deleted ones too), as Core
    rows (see InstanceRow), oldest first."""
    return list(session.execute(_PUSHED))


def _expire_loaded(session: Session, uuids: Container[str]) -> None:
    """Let ORM instances of ``uuids`` loaded in ``session`` read their new values."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Instance) and inspect(obj).dict.get("uuid") in uuids:
            session.expire(obj)


def start_action(
    session: Session,
    instance: Instance | InstanceRow,
    action: str,
    request_id: str,
    *,
    user_id: str = "",
    message: str = "",
) -> InstanceAction:
    """Record that ``action`` was asked of ``instance``."""
    row = InstanceAction(
        request_id=request_id,
        instance_uuid=instance.uuid,
        action=action,
        project_id=instance.project_id,
        user_id=user_id or instance.user_id,
        start_time=utcnow(),
        message=message,
    )
    session.add(row)
    return row


def start_actions(session: Session, actions: Sequence[tuple[Any, str, str]]) -> None:
    """:func:`start_action` of each ``(instance, action, request_id)``: one INSERT."""
    now = utcnow()
    rows = [
        (request_id, instance.uuid, action, instance.project_id, instance.user_id, now, "")
        for instance, action, request_id in actions
    ]
    bulk.insert_many(session, _ACTIONS, _ACTION_COLUMNS, rows)


_ACTIONS = cast(Table, InstanceAction.__table__)
_ACTION_COLUMNS = (
    "request_id",
    "instance_uuid",
    "action",
    "project_id",
    "user_id",
    "start_time",
    "message",
)


def record_event(
    session: Session,
    instance_uuid: str,
    request_id: str,
    event: str,
    result: str,
    *,
    host: str | None = None,
    details: str = "",
) -> None:
    """Record one finished step of an action (and finish the action with it)."""
    record_events(session, [(instance_uuid, request_id)], event, result, host=host, details=details)


def record_events(
    session: Session,
    events: Sequence[tuple[str, str]],
    event: str,
    result: str,
    *,
    host: str | None = None,
    details: str = "",
) -> None:
    """Record one finished step of the action ``request_id`` of each
    ``(instance_uuid, request_id)`` (and finish the action with it), in one read."""
    if not events:
        return
    wanted = set(events)
    now = utcnow()
    pairs = sorted(wanted)
    done: list[FinishedAction] = []
    session.flush()  # actions started in this transaction are read too
    for start in range(0, len(pairs), _IN_CHUNK):
        chunk = pairs[start : start + _IN_CHUNK]
        found = session.connection().execute(
            _ACTIONS_OF,
            {
                "uuids": list({uuid for uuid, _ in chunk}),
                "request_ids": list({request_id for _, request_id in chunk}),
            },
        )
        for action_id, uuid, request_id, started in found:
            if (uuid, request_id) not in wanted:
                continue
            wanted.discard((uuid, request_id))  # one action each
            done.append((action_id, event, started, result, host, details))
    finish_actions(session, done, now)


# An action closed with its last event: (action id, event, the event's start time,
# result, host, details).
FinishedAction = tuple[int, str, datetime, str, str | None, str | None]


def finish_actions(session: Session, done: Sequence[FinishedAction], now: datetime) -> None:
    """An event row for each of ``done``, and its action finished at ``now``: one INSERT
    and one UPDATE for all."""
    if not done:
        return
    bulk.insert_many(
        session,
        _EVENTS,
        _EVENT_COLUMNS,
        [
            (a, event, started, now, result, host, details)
            for a, event, started, result, host, details in done
        ],
    )
    bulk.update_many(session, _ACTIONS, ("finish_time",), "id", [(now, d[0]) for d in done])


_EVENTS = cast(Table, InstanceActionEvent.__table__)
_EVENT_COLUMNS = ("action_id", "event", "start_time", "finish_time", "result", "host", "details")


# Built once: it runs for every batch of builds and every action.
_ACTIONS_OF = select(
    InstanceAction.id, InstanceAction.instance_uuid, InstanceAction.request_id,
    InstanceAction.start_time,
).where(
    InstanceAction.instance_uuid.in_(bindparam("uuids", expanding=True)),
    InstanceAction.request_id.in_(bindparam("request_ids", expanding=True)),
)  # fmt: skip
