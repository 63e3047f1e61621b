"""State up: the durable outbox and the pushes it carries to every parent.

The owning cell writes one outbox row per parent in the same transaction as
the change (see :class:`cellplane.db.instances.InstanceChanges`). The sender
drains rows in order onto each parent's link and deletes them once the parent
acknowledged them, so a change survives a dead link or a dead process. A
parent applies a push only if it is newer than what it has, then (if it has
parents of its own) writes its own outbox rows in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
import zlib
from array import array
from collections.abc import Callable, Sequence
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, delete, event, select
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db import bulk
from cellplane.db.engine import driver_rows
from cellplane.db.models import Instance, InstanceChange, InstanceFault, OutboxEntry, utcnow
from cellplane.federation import codec, envelopes, paths, pushes
from cellplane.federation.channel import PeerChannel
from cellplane.federation.dispatch import Delivery
from cellplane.federation.neighbours import Neighbours
from cellplane.v1 import link_pb2

MAX_IN_FLIGHT = 20_000  # outbox rows sent to a parent and not yet acked, at most
BATCH_ROWS = 2_000
# Updates one envelope carries at most (by count, and by the bytes of their payloads).
UPDATES_PER_ENVELOPE = 500
ENVELOPE_BYTES = 256 * 1024
# Commits in this process wake the sender at once (see OutboxSender.watch); the
# poll finds rows written by the cell's other processes.
IDLE_POLL = 0.05
BUSY_POLL = 0.005
# The poll of a sender whose process writes every row of its cell's outbox: only a
# safety net behind the commit hook.
LONE_WRITER_POLL = 1.0
_WRITTEN = "cellplane_outbox_written"  # session.info flag: outbox rows in this transaction
_PAYLOAD_OF_KIND = {
    "update": "instance_update",
    "destroy": "instance_destroyed",
    "fault": "instance_fault",
}


def encode_push(instance: Any, kind: str, fault: InstanceFault | None) -> tuple[str, bytes]:
    """The payload field and bytes of a push about ``instance`` (an ORM row, or a Core
    row that :func:`codec.instance_to_proto` takes)."""
    message: Any
    if kind == "destroy":
        message = link_pb2.InstanceDestroyed(
            instance_uuid=instance.uuid, version=instance.version, cell_path=instance.cell_path
        )
    elif kind == "fault" and fault is not None:
        message = link_pb2.InstanceFaultReport(
            instance_uuid=instance.uuid,
            version=instance.version,
            fault=codec.fault_to_proto(fault),
        )
    else:
        message = link_pb2.InstanceUpdate(instance=codec.instance_to_proto(instance))
    return _PAYLOAD_OF_KIND[kind], message.SerializeToString()


# The columns of the rows below, in order (see cellplane.db.bulk).
OUTBOX_COLUMNS = ("peer", "kind", "instance_uuid", "version", "payload", "created_at")
CHANGE_COLUMNS = ("instance_uuid", "project_id", "kind", "version", "snapshot", "created_at")
_OUTBOX = cast(Table, OutboxEntry.__table__)
_CHANGES = cast(Table, InstanceChange.__table__)


def change_row(instance: Any, kind: str, snapshot: bytes | None = None) -> tuple:
    """The API cell's change log row (in CHANGE_COLUMNS order) for ``kind`` of
    ``instance`` as it is now (``snapshot``: the instance already serialized, if it is)."""
    if snapshot is None:
        snapshot = codec.instance_to_proto(instance).SerializeToString()
    return (instance.uuid, instance.project_id, kind, instance.version, snapshot, utcnow())


def log_changes(session: Session, rows: list[tuple]) -> None:
    """Add ``rows`` (see :func:`change_row`) to the API cell's change log."""
    bulk.insert_many(session, _CHANGES, CHANGE_COLUMNS, rows)


def log_change(session: Session, instance: Instance, kind: str) -> None:
    """Add a row to the API cell's change log, with the instance as it is now."""
    log_changes(session, [change_row(instance, kind)])


class Outbox:
    """Writes outbox rows: the ``on_change`` hook of InstanceChanges."""

    def __init__(self, parents: Callable[[], list[str]], *, change_log: bool = False) -> None:
        self.parents = parents
        self.change_log = change_log

    @staticmethod
    def written(session: Session) -> None:
        """Note that ``session``'s transaction wrote outbox rows (its commit wakes the
        sender)."""
        session.info[_WRITTEN] = True

    write_log = staticmethod(log_changes)

    def write(self, session: Session, rows: list[tuple]) -> None:
        """Add outbox ``rows`` (in OUTBOX_COLUMNS order)."""
        if rows:
            bulk.insert_many(session, _OUTBOX, OUTBOX_COLUMNS, rows)
            self.written(session)

    def record(
        self, session: Session, instance: Instance, kind: str, fault: InstanceFault | None
    ) -> None:
        """Queue ``kind`` of ``instance`` for every parent (and log it for watchers)."""
        if self.change_log:
            log_change(session, instance, kind)
        if kind == "fault":  # the state change that came with the fault goes first
            self.push(session, instance, "update", None)
        self.push(session, instance, kind, fault)

    def record_updates(self, session: Session, instances: Sequence[Any]) -> None:
        """``record(session, i, "update", None)`` for each of ``instances`` (ORM rows,
        or Core rows that :func:`codec.instance_to_proto` takes), in order, with one
        INSERT for all their outbox rows (and one for their change log rows)."""
        peers = self.parents()
        if not instances or not (peers or self.change_log):
            return
        now = utcnow()
        log: list[tuple] = []
        out: list[tuple] = []
        for instance in instances:
            proto = codec.instance_to_proto(instance)
            data = proto.SerializeToString()
            if self.change_log:
                log.append(change_row(instance, "update", data))
            if peers:
                payload = pushes.as_update(data)  # the InstanceUpdate around it, as bytes
                uuid, version = instance.uuid, instance.version
                out.extend((peer, "instance_update", uuid, version, payload, now) for peer in peers)
        if log:
            log_changes(session, log)
        self.write(session, out)

    def push(
        self,
        session: Session,
        instance: Instance,
        kind: str,
        fault: InstanceFault | None,
        *,
        peers: list[str] | None = None,
    ) -> None:
        """One outbox row per parent (or per one of ``peers``) for one push."""
        peers = self.parents() if peers is None else peers
        if not peers:
            return
        payload_field, payload = encode_push(instance, kind, fault)
        now = utcnow()
        self.write(
            session,
            [
                (peer, payload_field, instance.uuid, instance.version, payload, now)
                for peer in peers
            ],
        )


class OutboxSender:
    """Drains the outbox onto the parents' links and deletes what they acked."""

    def __init__(
        self,
        name: str,
        neighbours: Neighbours,
        sessions: sessionmaker[Session],
        *,
        envelope_bytes: int = ENVELOPE_BYTES,
        lone_writer: bool = False,
    ) -> None:
        """With ``lone_writer`` (no other process writes this cell's outbox), the
        sender relies on :meth:`watch` and looks by itself only once a second."""
        self.name = name
        self.neighbours = neighbours
        self.sessions = sessions
        self._queued_upto: dict[str, int] = {}  # parent -> highest outbox id put on its link
        self._in_flight: dict[str, set[int]] = {}  # parent -> outbox ids sent, not yet acked
        self._acked: list[int] = []
        # envelope id -> (parent, the outbox rows it carries)
        self._rows_of: dict[str, tuple[str, list[int]]] = {}
        self.envelope_bytes = envelope_bytes
        self._idle_poll = LONE_WRITER_POLL if lone_writer else IDLE_POLL
        self._busy_poll = LONE_WRITER_POLL if lone_writer else BUSY_POLL
        self._listening: weakref.WeakSet[PeerChannel] = weakref.WeakSet()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.log = structlog.get_logger().bind(cell=name)

    def pending(self) -> int:
        """Rows still in the outbox, for every parent."""
        with self.sessions() as session:
            return len(session.scalars(select(OutboxEntry.id)).all())

    def wake(self) -> None:
        """Look at the outbox now (call from the event loop)."""
        self._wake.set()

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Wake up whenever a transaction of ``sessions`` that wrote outbox rows commits
        (from any thread of this process)."""

        def committed(session: Session) -> None:
            if session.info.pop(_WRITTEN, False) and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    self._loop.call_soon_threadsafe(self._wake.set)

        event.listen(sessions, "after_commit", committed)

    async def run(self) -> None:
        """Send and delete until cancelled."""
        self._loop = asyncio.get_running_loop()
        idle, busy = self._idle_poll, self._busy_poll
        poll = idle
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            try:
                moved = await self._step()
            except Exception as exc:  # a database hiccup must not end state up for good
                self.log.warning("outbox_send_failed", error=f"{type(exc).__name__}: {exc}")
                poll = idle
                continue
            poll = busy if moved or self._acked else min(idle, poll * 2)

    async def _step(self) -> int:
        # Acked rows are deleted and every parent's next rows read in one thread hop
        # (a hop costs about as much as reading a few hundred rows).
        acked, self._acked = self._acked, []
        reads = [
            (channel, *read)
            for channel in self.neighbours.parents()
            if (read := self._next_read(channel)) is not None
        ]
        if not acked and not reads:
            return 0
        try:
            loaded = await asyncio.to_thread(
                self._delete_and_load, acked, [(c.peer, after, limit) for c, after, limit in reads]
            )
        except BaseException:
            self._acked = acked + self._acked  # delete them next time
            raise
        return sum(
            self._queue(channel, rows) for (channel, _, _), rows in zip(reads, loaded, strict=True)
        )

    def _next_read(self, channel: PeerChannel) -> tuple[int, int] | None:
        """Where the next read of ``channel``'s rows starts (after which id, how many
        rows); None if its link has no room."""
        if channel not in self._listening:
            channel.on_acked.append(self._on_acked)
            channel.on_dropped.append(self._on_dropped)
            self._listening.add(channel)
        peer = channel.peer
        in_flight = self._in_flight.setdefault(peer, set())
        room = MAX_IN_FLIGHT - len(in_flight)
        if room <= 0:
            return None
        if not in_flight:
            # Every row still here is unsent (acked ones are deleted before the read).
            # On a server database ids are handed out at insert but become visible at
            # commit, so a row may appear below what was queued already: with nothing
            # in flight, look from the start again.
            self._queued_upto[peer] = 0
        return self._queued_upto.get(peer, 0), min(room, BATCH_ROWS)

    def _delete_and_load(
        self, acked: list[int], reads: list[tuple[str, int, int]]
    ) -> list[list[tuple[int, str, bytes]]]:
        # One session: the delete commits, then the reads see the outbox as it is.
        with self.sessions() as session:
            if acked:
                self._delete(session, acked)
                session.commit()
            return [self._load(session, peer, after, limit) for peer, after, limit in reads]

    def _queue(self, channel: PeerChannel, loaded: list[tuple[int, str, bytes]]) -> int:
        """Put rows read for ``channel`` on its link; how many were read."""
        if not loaded:
            return 0
        peer = channel.peer
        in_flight = self._in_flight.setdefault(peer, set())
        self._queued_upto[peer] = loaded[-1][0]
        # Rows taken back from the link (see _on_dropped) are read again from below
        # what is still in flight: that part stays out.
        rows = [row for row in loaded if row[0] not in in_flight]
        if rows:
            join = "instance_updates" in channel.peer_features  # else an older parent
            budget = self.envelope_bytes
            if channel.max_message_bytes:  # a parent that takes less than this cell
                budget = min(budget, channel.max_message_bytes // 4)
            envs, sizes = self._envelopes(peer, rows, join=join, budget=budget)
            channel.send_many(envs, sizes)
            in_flight.update(row[0] for row in rows)
            self.sent += len(rows)
        return len(loaded)

    def forget(self, peer: str) -> None:
        """Drop what is known of parent ``peer``'s link (it is no longer a neighbour)."""
        self._in_flight.pop(peer, None)
        self._queued_upto.pop(peer, None)
        for env_id in [k for k, (p, _) in self._rows_of.items() if p == peer]:
            del self._rows_of[env_id]

    def _envelopes(
        self,
        peer: str,
        rows: list[tuple[int, str, bytes]],
        *,
        join: bool = True,
        budget: int | None = None,
    ) -> tuple[list[link_pb2.Envelope], list[int]]:
        """Envelopes carrying ``rows`` to ``peer`` in order, and their payloads' sizes.
        With ``join``, a run of updates shares one envelope (InstanceUpdates is their
        bytes joined, up to ``budget`` bytes, by default ``envelope_bytes``)."""
        budget = self.envelope_bytes if budget is None else budget
        target = paths.join(self.name, peer)
        envs: list[link_pb2.Envelope] = []
        sizes: list[int] = []
        start = 0
        while start < len(rows):
            end, size = start + 1, len(rows[start][2])
            if join and rows[start][1] == "instance_update":
                while (
                    end < len(rows)
                    and end - start < UPDATES_PER_ENVELOPE
                    and rows[end][1] == "instance_update"
                    and size + len(rows[end][2]) <= budget
                ):
                    size += len(rows[end][2])
                    end += 1
            run = rows[start:end]
            ids = [row[0] for row in run]
            if len(run) == 1:
                env_id = f"ob-{self.name}-{ids[0]}"
            else:
                # After a restart the same first row may lead a different run (rows
                # that became visible late): the id names exactly the run's rows.
                digest = zlib.crc32(array("q", ids).tobytes())
                env_id = f"ob-{self.name}-{ids[0]}-{ids[-1]}-{len(ids)}-{digest:08x}"
            env = link_pb2.Envelope(
                id=env_id,
                kind=envelopes.TARGETED,
                direction=envelopes.UP,
                routing_path=self.name,
                target_path=target,
                max_hops=2,
                hop_count=1,
            )
            if len(run) == 1:
                getattr(env, run[0][1]).MergeFromString(run[0][2])
            else:
                env.instance_updates.MergeFromString(b"".join([row[2] for row in run]))
            self._rows_of[env_id] = (peer, ids)
            envs.append(env)
            sizes.append(size)
            start = end
        return envs, sizes

    def _on_acked(self, done: list[link_pb2.Envelope]) -> None:
        for env in done:
            entry = self._rows_of.pop(env.id, None)
            if entry is None:
                continue  # not the outbox's
            peer, ids = entry
            self._acked.extend(ids)
            self._in_flight.get(peer, set()).difference_update(ids)
        if self._acked:
            self._wake.set()

    def _on_dropped(self, dropped: list[link_pb2.Envelope]) -> None:
        """The link took envelopes back unsent (the parent does not take their form):
        their rows are read again and sent anew."""
        for env in dropped:
            entry = self._rows_of.pop(env.id, None)
            if entry is None:
                continue
            peer, ids = entry
            self._in_flight.get(peer, set()).difference_update(ids)
            self._queued_upto[peer] = min(self._queued_upto.get(peer, 0), min(ids) - 1)
        self._wake.set()

    @staticmethod
    def _load(session: Session, peer: str, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        connection = session.connection()
        if connection.dialect.name != "sqlite":
            rows = connection.execute(_UNSENT, {"peer": peer, "after": after, "limit": limit}).all()
            return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]
        # Straight from the driver: its rows are already (int, str, bytes) tuples.
        return driver_rows(connection, _UNSENT_SQLITE, (peer, after, limit))

    @staticmethod
    def _delete(session: Session, ids: list[int]) -> None:
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql(_DELETE_SENT_SQLITE, [(i,) for i in ids])
            return
        for start in range(0, len(ids), 500):
            connection.execute(_DELETE_SENT, {"ids": ids[start : start + 500]})


# The sender's statements, built once: they run many times a second under load.
_UNSENT = (
    select(_OUTBOX.c.id, _OUTBOX.c.kind, _OUTBOX.c.payload)
    .where(_OUTBOX.c.peer == bindparam("peer"), _OUTBOX.c.id > bindparam("after"))
    .order_by(_OUTBOX.c.id)
    .limit(bindparam("limit"))
)
_UNSENT_SQLITE = (
    "SELECT id, kind, payload FROM outbox WHERE peer = ? AND id > ? ORDER BY id LIMIT ?"
)
_DELETE_SENT = delete(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
_DELETE_SENT_SQLITE = "DELETE FROM outbox WHERE id = ?"


class _PushBatch:
    """The pushes of one frame, applied together as one piece of database work."""

    __slots__ = ("pushes", "receiver")

    def __init__(self, receiver: PushReceiver) -> None:
        self.receiver = receiver
        self.pushes: list[pushes.Push] = []

    def __call__(self, session: Session) -> None:
        self.receiver.apply_many(session, self.pushes)

    def joined(self, other: object) -> _PushBatch | None:
        """This batch and then ``other`` as one (the cursor writer commits several
        frames at once: each instance row is then written once for all of them)."""
        if not isinstance(other, _PushBatch) or other.receiver is not self.receiver:
            return None
        both = _PushBatch(self.receiver)
        both.pushes = self.pushes + other.pushes
        return both


class PushReceiver:
    """A parent's side of state up: applies pushes from children if they are newer.

    The pushes of one frame share one piece of database work (see
    :mod:`cellplane.federation.pushes`), committed with the link cursor.
    """

    def __init__(
        self,
        name: str,
        outbox: Outbox,
        after_apply: pushes.AfterApply | None = None,
    ) -> None:
        self.name = name
        self.outbox = outbox
        self.after_apply = after_apply
        self.applied = 0
        self.stale = 0
        self._known: pushes.Known = {}

    def register(self, handlers: Any) -> None:
        """Handle the push payloads in line with the link."""
        handlers.register_inline("instance_update", self.on_update)
        handlers.register_inline("instance_updates", self.on_updates)
        handlers.register_inline("instance_destroyed", self.on_destroyed)
        handlers.register_inline("instance_fault", self.on_fault)

    def on_update(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        """A child's new copy of an instance."""
        self._queue(delivery, [(pushes.UPDATE, env.instance_update.instance)])

    def on_updates(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        """Several new copies, oldest first."""
        update = pushes.UPDATE
        self._queue(delivery, [(update, msg) for msg in env.instance_updates.instances])

    def on_destroyed(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        """An instance is gone below."""
        self._queue(delivery, [(pushes.DESTROY, env.instance_destroyed)])

    def on_fault(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        """A fault below."""
        self._queue(delivery, [(pushes.FAULT, env.instance_fault)])

    def _queue(self, delivery: Delivery, found: list[pushes.Push]) -> None:
        # Pushes next to each other in a frame join one batch (in their order).
        work = delivery.db_work
        last = work[-1] if work else None
        if isinstance(last, _PushBatch) and last.receiver is self:
            last.pushes.extend(found)
            return
        batch = _PushBatch(self)
        batch.pushes.extend(found)
        work.append(batch)

    def apply_many(self, session: Session, batch: list[pushes.Push]) -> None:
        """Apply ``batch`` (in order) in ``session``'s transaction."""
        counts = pushes.apply_pushes(
            session, self.name, self.outbox, batch, self.after_apply, self._known
        )
        self.applied += counts.applied
        self.stale += counts.stale

    def apply_update(self, session: Session, msg: Any) -> None:
        """Upsert ``msg`` (a types_pb2.Instance) if it is newer than our copy."""
        self.apply_many(session, [(pushes.UPDATE, msg)])

    def apply_destroyed(self, session: Session, msg: Any) -> None:
        """Mark the instance deleted if the push (an InstanceDestroyed) is newer."""
        self.apply_many(session, [(pushes.DESTROY, msg)])

    def apply_fault(self, session: Session, msg: Any) -> None:
        """Keep the fault (an InstanceFaultReport) once and pass it on."""
        self.apply_many(session, [(pushes.FAULT, msg)])
