"""Many-row INSERTs and UPDATEs for the paths that write every change: state up.

A push is written two or three times on its way up (the owning cell's outbox,
each parent's instance row and outbox, the API cell's change log). SQLAlchemy's
executemany binds every value through its type's processors (JSON encoding,
datetime formatting, the UTC check), which cost several times the database
work itself. The statements here go to the driver's ``executemany`` as plain
SQL with values already in the form the driver stores:

- JSON columns take their text (the callers keep encodings they have made);
- timestamps are UTC-aware datetimes, written as SQLite's text form or handed
  to the PostgreSQL driver as they are;
- everything else as it is.

They fire the engine's cursor events, so SQLite's writer gate (see
:mod:`cellplane.db.engine`) holds for them as for any other write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from cellplane.db.models import UTCDateTime

_SQL: dict[tuple[str, str, str, tuple[str, ...], str], str] = {}
_TIMESTAMPS: dict[str, frozenset[str]] = {}  # table -> its timestamp columns


def insert_many(session: Session, table: Table, columns: Sequence[str], rows: list[Any]) -> None:
    """INSERT ``rows`` (tuples of values in the order of ``columns``) into ``table``."""
    if rows:
        _execute(session, table, "insert", tuple(columns), "", rows)


def update_many(
    session: Session, table: Table, columns: Sequence[str], key: str, rows: list[Any]
) -> None:
    """UPDATE ``table`` SET ``columns`` WHERE ``key`` = the last value of each row
    (a tuple of the new values in the order of ``columns``, then the key)."""
    if rows:
        _execute(session, table, "update", tuple(columns), key, rows)


def _execute(
    session: Session, table: Table, verb: str, columns: tuple[str, ...], key: str, rows: list[Any]
) -> None:
    connection = session.connection()
    dialect = connection.dialect
    sql = _sql(table, dialect.name, dialect.paramstyle, verb, columns, key)
    stamps = [i for i, c in enumerate(columns) if c in _timestamps(table)]
    if stamps and dialect.name == "sqlite":
        rows = [_sqlite_stamps(row, stamps) for row in rows]
    connection.exec_driver_sql(sql, rows)


def _sqlite_stamps(row: Any, where: list[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in where:
        value = values[i]
        if value is not None:
            values[i] = sqlite_timestamp(value)
    return tuple(values)


def sqlite_timestamp(value: datetime) -> str:
    """A UTC-aware datetime as SQLAlchemy stores it in SQLite (naive UTC text)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime; cellplane stores UTC-aware timestamps only")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _timestamps(table: Table) -> frozenset[str]:
    found = _TIMESTAMPS.get(table.name)
    if found is None:
        found = _TIMESTAMPS[table.name] = frozenset(
            c.name for c in table.columns if isinstance(c.type, UTCDateTime)
        )
    return found


def _sql(
    table: Table, dialect: str, paramstyle: str, verb: str, columns: tuple[str, ...], key: str
) -> str:
    cache_key = (table.name, dialect, verb, columns, key)
    sql = _SQL.get(cache_key)
    if sql is None:
        unknown = [c for c in (*columns, *([key] if key else [])) if c not in table.columns]
        if unknown:
            raise ValueError(f"table {table.name} has no column {unknown[0]!r}")
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[paramstyle]
        if verb == "insert":
            sql = (
                f"INSERT INTO {table.name} ({', '.join(columns)})"
                f" VALUES ({', '.join(mark for _ in columns)})"
            )
        else:
            sql = (
                f"UPDATE {table.name} SET {', '.join(f'{c} = {mark}' for c in columns)}"
                f" WHERE {key} = {mark}"
            )
        _SQL[cache_key] = sql
    return sql


__all__ = ["insert_many", "sqlite_timestamp", "update_many"]
