"""The one way an owning cell changes its instances.

Every change bumps the instance's ``version`` and calls ``on_change`` in the same
transaction, which is where the federation layer writes the outbox rows that
carry the change to every parent. Callers pass the session whose transaction
they commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from cellplane.db.models import (
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    utcnow,
)
from cellplane.errors import InstanceNotFound

# on_change(session, instance, kind, fault) with kind "update", "destroy" or "fault"
OnChange = Callable[[Session, Instance, str, InstanceFault | None], None]


def _no_push(session: Session, instance: Instance, kind: str, fault: InstanceFault | None) -> None:
    del session, instance, kind, fault


# Built once: these run for every change an owning cell makes.
_LIVE = select(Instance).where(Instance.uuid == bindparam("uuid"), Instance.deleted.is_(False))
_LIVE_FOR_UPDATE = _LIVE.with_for_update()
_TAKE_WRITE_LOCK = (
    update(Instance)
    .where(Instance.uuid == bindparam("b_uuid"))
    .values(version=Instance.version, updated_at=Instance.updated_at)
)


class InstanceChanges:
    """Versioned changes to instance rows in their owning cell."""

    def __init__(self, on_change: OnChange | None = None) -> None:
        self.on_change: OnChange = on_change or _no_push

    def get(self, session: Session, uuid: str, *, for_update: bool = False) -> Instance:
        """The live instance ``uuid`` (InstanceNotFound if missing or deleted)."""
        query = _LIVE
        if for_update:
            query = _LIVE_FOR_UPDATE
            if session.get_bind().dialect.name == "sqlite":
                # SQLite ignores FOR UPDATE and pysqlite reads outside the transaction
                # until its first write: a no-op write takes the write lock first, so no
                # concurrent change is lost (once per transaction: then the lock is held).
                connection = session.connection()
                if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                    connection.execute(_TAKE_WRITE_LOCK, {"b_uuid": uuid})
        instance = session.scalar(query, {"uuid": uuid})
        if instance is None:
            raise InstanceNotFound(f"instance {uuid} not found")
        return instance

    def create(self, session: Session, instance: Instance) -> Instance:
        """Add a new instance owned by this cell (version 1)."""
        instance.version = 1
        session.add(instance)
        session.flush()
        self.on_change(session, instance, "update", None)
        return instance

    def update(self, session: Session, uuid: str, **changes: Any) -> Instance:
        """Apply ``changes`` to instance ``uuid`` and push the new version."""
        instance = self.get(session, uuid, for_update=True)
        for key, value in changes.items():
            setattr(instance, key, value)
        instance.version += 1
        instance.updated_at = utcnow()
        session.flush()
        self.on_change(session, instance, "update", None)
        return instance

    def destroy(self, session: Session, uuid: str) -> Instance:
        """Soft-delete instance ``uuid`` and push its destruction."""
        instance = self.get(session, uuid, for_update=True)
        now = utcnow()
        instance.deleted, instance.deleted_at, instance.terminated_at = True, now, now
        instance.vm_state, instance.task_state = "deleted", None
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


def start_action(
    session: Session,
    instance: Instance,
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
    action = session.scalar(
        select(InstanceAction).where(
            InstanceAction.instance_uuid == instance_uuid, InstanceAction.request_id == request_id
        )
    )
    if action is None:
        return
    now = utcnow()
    session.add(
        InstanceActionEvent(
            action_id=action.id,
            event=event,
            start_time=action.start_time,
            finish_time=now,
            result=result,
            host=host,
            details=details,
        )
    )
    action.finish_time = now
