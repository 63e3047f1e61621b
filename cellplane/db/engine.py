"""Engines and sessions for a cell database."""

from __future__ import annotations

import threading
import weakref
import zlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 5000


# A cell process runs up to this many threads that use the database at once (see
# cellplane.service); a pool smaller than that makes them open and close server
# connections (one server process each on PostgreSQL) under load.
POOL_SIZE = 16
POOL_OVERFLOW = 16


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; on SQLite, connections get WAL, foreign keys and a busy
    timeout; server databases get a pool as large as a cell's threads."""
    options: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        options.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_pre_ping=False)
    if url.startswith("postgresql+psycopg2") or url.startswith("postgresql:"):
        # executemany of UPDATE/DELETE in pages, not one round trip per row.
        options["executemany_mode"] = "values_plus_batch"
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _configure_sqlite)
        _WriterGate(DEFAULT_SQLITE_BUSY_TIMEOUT_MS / 1000).install(engine)
    return engine


def writer_busy(engine: sa.Engine) -> bool:
    """Whether a transaction of this process holds ``engine``'s SQLite writer gate."""
    gate = _GATES.get(engine)
    return gate is not None and gate.busy


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")
_HOLDS_GATE = "cellplane_holds_writer_gate"
_GATES: weakref.WeakKeyDictionary[sa.Engine, _WriterGate] = weakref.WeakKeyDictionary()


class _WriterGate:
    """One writing transaction at a time per SQLite engine in this process.

    SQLite has one writer; the others retry in its busy handler, which sleeps
    and wakes with no order, so under load a thread can lose every retry until
    its busy timeout ends in "database is locked" (seen with the outbox sender
    beside busy compute threads). Threads of one process queue on a lock
    instead, taken at a transaction's first write and given back at its end.
    After the busy timeout a writer goes ahead without it, as it would have.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def install(self, engine: sa.Engine) -> None:
        _GATES[engine] = self
        sa.event.listen(engine, "before_cursor_execute", self._before_execute)
        sa.event.listen(engine, "commit", self._release)
        sa.event.listen(engine, "rollback", self._release)
        # A connection going back to the pool never keeps the gate (e.g. invalidated).
        sa.event.listen(engine.pool, "checkin", self._checkin)

    def _before_execute(self, conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        info = conn.info
        if _HOLDS_GATE in info or statement.lstrip()[:6].upper() not in _WRITES:
            return
        info[_HOLDS_GATE] = self._lock.acquire(timeout=self._timeout)

    def _release(self, conn: sa.Connection) -> None:
        if conn.info.pop(_HOLDS_GATE, False):
            self._lock.release()

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        if record is not None and record.info.pop(_HOLDS_GATE, False):
            self._lock.release()


def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run beside the one writer; NORMAL is durable enough under WAL.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={DEFAULT_SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def lock_for_write(session: Session) -> None:
    """Hold the database's write lock before reading what will be written back.

    PostgreSQL callers lock rows with ``SELECT ... FOR UPDATE``. SQLite ignores
    that, and pysqlite reads outside any transaction until the first write: a
    write that changes nothing takes SQLite's lock first, once per transaction,
    so two read-check-write transactions cannot both act on the same old row.
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("UPDATE link_cursors SET peer = peer WHERE 0")


def take_turns(session: Session, what: str) -> None:
    """Make transactions that call this with the same ``what`` run one after another
    from here to their end, in every process using the database.

    For work that reads what the last one wrote and appends after it (the next
    free address of a pool): done side by side, all but one would collide on a
    unique key and start again. PostgreSQL takes a transaction-scoped advisory
    lock named by ``what``; SQLite has one writer, taken here (lock_for_write).
    Other databases take nothing: their unique keys still keep the work correct.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        key = zlib.crc32(f"cellplane:{what}".encode())
        connection.execute(_ADVISORY_LOCK, {"key": key})
    else:
        lock_for_write(session)


_ADVISORY_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")


def driver_rows(connection: sa.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """The rows of ``sql`` (in the driver's own parameter style) as the driver gives
    them, tuples without SQLAlchemy's rows around them: for reads of thousands of rows
    a second. Runs in ``connection``'s transaction."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def make_session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    """A session factory whose rows stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
