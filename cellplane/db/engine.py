"""Engines and sessions for a cell database."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 5000


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; on SQLite, connections get WAL, foreign keys and a busy timeout."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _configure_sqlite)
    return engine


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


def make_session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    """A session factory whose rows stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
