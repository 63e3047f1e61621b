"""Many-row INSERTs and UPDATEs for the paths that write every change: state up.

A push is written two or three times on its way up (the owning cell's outbox,
each parent's instance row and outbox, the API cell's change log). SQLAlchemy's
executemany binds every value through its type's processors (JSON encoding,
datetime formatting, the UTC check), which cost several times the database
work itself. The statements here go to the driver as plain SQL with values
already in the form the driver stores:

- JSON columns take their text (the callers keep encodings they have made);
- timestamps are UTC-aware datetimes, written as SQLite's text form or handed
  to the PostgreSQL driver as they are;
- everything else as it is.

On SQLite the rows go to the driver's ``executemany`` (one prepared statement).
On PostgreSQL (psycopg2) an INSERT is a ``COPY ... FROM STDIN`` in text form
(measured on outbox rows: half the CPU of a many-row INSERT in this process, and
about half in the server, which then parses no literals); an UPDATE, or an INSERT
through another driver, sends up to PG_ROWS rows in one statement with one VALUES
list, so the server plans one statement instead of one per row.

On SQLite they fire the engine's cursor events, so the writer gate (see
:mod:`cellplane.db.engine`) holds for them as for any other write; a COPY goes
to the driver's cursor directly.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Dialect, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cellplane.db.models import UTCDateTime

PG_ROWS = 500  # rows per statement on PostgreSQL
PG_PARAMETERS = 65_535  # the most one PostgreSQL statement may carry


@dataclass(frozen=True)
class _Shape:
    """What one statement writes: the table, its verb and columns, for an UPDATE the
    key column (each row's last value), a column to increase by one and a boolean
    column that leaves a row alone when true."""

    table: Table
    verb: str
    columns: tuple[str, ...]
    key: str = ""
    increment: str = ""
    unless: str = ""


def insert_many(session: Session, table: Table, columns: Sequence[str], rows: list[Any]) -> None:
    """INSERT ``rows`` (tuples of values in the order of ``columns``) into ``table``."""
    if rows:
        _execute(session, _Shape(table, "insert", tuple(columns)), rows)


def update_many(
    session: Session,
    table: Table,
    columns: Sequence[str],
    key: str,
    rows: list[Any],
    *,
    increment: str = "",
    unless: str = "",
) -> None:
    """UPDATE ``table`` SET ``columns`` WHERE ``key`` = the last value of each row
    (a tuple of the new values in the order of ``columns``, then the key); also
    ``increment`` + 1, and only where ``unless`` is false, if given.

    Each key may appear once: one statement updates a row once (PostgreSQL would
    take any one of two values for it).
    """
    if len({row[-1] for row in rows}) != len(rows):
        raise ValueError(f"update of {table.name}: a {key} appears twice")
    if rows:
        shape = _Shape(table, "update", tuple(columns), key, increment, unless)
        _execute(session, shape, rows)


def sqlite_timestamp(value: datetime) -> str:
    """A UTC-aware datetime as SQLAlchemy stores it in SQLite (naive UTC text)."""
    zone = value.tzinfo
    if zone is None:
        raise ValueError("naive datetime; cellplane stores UTC-aware timestamps only")
    return _utc_text(value if zone is UTC else value.astimezone(UTC))


@lru_cache(maxsize=4096)
def _utc_text(value: datetime) -> str:
    # Kept: the rows of a transaction share their updated_at, and a parent checks every
    # pushed row's against what it wrote. UTC values only: times of another zone that
    # differ in ``fold`` alone compare equal, yet are different instants.
    return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"


def _execute(session: Session, shape: _Shape, rows: list[Any]) -> None:
    connection = session.connection()
    stamps = [i for i, c in enumerate(shape.columns) if c in _timestamps(shape.table)]
    if connection.dialect.name == "postgresql":
        for row in rows:
            for i in stamps:
                if row[i] is not None and row[i].tzinfo is None:
                    raise ValueError("naive datetime; cellplane stores UTC-aware timestamps only")
        if shape.verb == "insert" and connection.dialect.driver == "psycopg2":
            _copy(connection, shape, rows)
        else:
            _execute_values(connection, shape, rows)
        return
    if stamps and connection.dialect.name == "sqlite":
        rows = [_sqlite_stamps(row, stamps) for row in rows]
    connection.exec_driver_sql(_sql(connection.dialect, shape), rows)


def _execute_values(connection: Connection, shape: _Shape, rows: list[Any]) -> None:
    width = len(shape.columns) + (1 if shape.key else 0)
    per = max(1, min(PG_ROWS, PG_PARAMETERS // width))
    head, group = _values_sql(connection.dialect, shape)
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        sql = head.format(values=", ".join([group] * len(chunk)))
        connection.exec_driver_sql(sql, tuple(v for row in chunk for v in row))


def _copy(connection: Connection, shape: _Shape, rows: list[Any]) -> None:
    sql = _COPY_SQL.get(shape)
    if sql is None:
        _check(shape)
        quote = connection.dialect.identifier_preparer.quote
        names = ", ".join(quote(c) for c in shape.columns)
        sql = _COPY_SQL[shape] = f"COPY {quote(shape.table.name)} ({names}) FROM STDIN"
    form = _COPY_FORMS.get
    text = "".join(
        ["\t".join([(form(v.__class__) or _copy_form(v))(v) for v in row]) + "\n" for row in rows]
    )
    dbapi = connection.dialect.loaded_dbapi
    raw = connection.connection.dbapi_connection
    cursor = connection.connection.cursor()
    try:
        cursor.copy_expert(sql, io.StringIO(text))
    except dbapi.Error as exc:
        # As SQLAlchemy does for any other statement: its exception (IntegrityError,
        # say), and a connection that was lost is not given out again.
        lost = connection.dialect.is_disconnect(exc, raw, cursor)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, connection_invalidated=lost) from exc
    finally:
        with contextlib.suppress(dbapi.Error):
            cursor.close()


def _copy_form(value: Any) -> Any:
    """How a value of a subclass (an IntEnum, say) becomes a field of COPY's text form."""
    kind = next((k for k in _COPY_FORMS if isinstance(value, k)), None)
    if kind is None:
        raise TypeError(f"no COPY text form for {type(value).__name__}")
    return _COPY_FORMS[kind]


def _copy_str(value: str) -> str:
    # COPY's text format: a backslash starts an escape; tab, newline and carriage
    # return end a field or a row.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_bytea(value: bytes | bytearray | memoryview) -> str:
    return "\\\\x" + value.hex()  # bytea's hex form, its backslash escaped


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# A value's field in COPY's text form, by the value's exact class (a bool is not
# taken for an int).
_COPY_FORMS: dict[type, Any] = {
    str: _copy_str,
    type(None): lambda _: "\\N",
    bool: lambda value: "t" if value else "f",
    int: lambda value: str(int(value)),  # an IntEnum's number, not its name
    float: repr,
    bytes: _copy_bytea,
    bytearray: _copy_bytea,
    memoryview: _copy_bytea,
    datetime: datetime.isoformat,
}


def _sqlite_stamps(row: Any, where: list[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in where:
        value = values[i]
        if value is not None:
            values[i] = sqlite_timestamp(value)
    return tuple(values)


_TIMESTAMPS: dict[str, frozenset[str]] = {}  # table -> its timestamp columns
_SQL: dict[tuple[str, _Shape], str] = {}
_VALUES_SQL: dict[_Shape, tuple[str, str]] = {}
_COPY_SQL: dict[_Shape, str] = {}


def _timestamps(table: Table) -> frozenset[str]:
    found = _TIMESTAMPS.get(table.name)
    if found is None:
        found = _TIMESTAMPS[table.name] = frozenset(
            c.name for c in table.columns if isinstance(c.type, UTCDateTime)
        )
    return found


def _check(shape: _Shape) -> None:
    named = (*shape.columns, shape.key, shape.increment, shape.unless)
    unknown = [c for c in named if c and c not in shape.table.columns]
    if unknown:
        raise ValueError(f"table {shape.table.name} has no column {unknown[0]!r}")


def _sql(dialect: Dialect, shape: _Shape) -> str:
    """One row's statement, for executemany."""
    sql = _SQL.get((dialect.name, shape))
    if sql is None:
        _check(shape)
        quote = dialect.identifier_preparer.quote
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[dialect.paramstyle]
        names = [quote(c) for c in shape.columns]
        table = quote(shape.table.name)
        if shape.verb == "insert":
            marks = ", ".join([mark] * len(names))
            sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})"
        else:
            sets = [f"{n} = {mark}" for n in names]
            where = f"{quote(shape.key)} = {mark}"
            if shape.increment:
                sets.append(f"{quote(shape.increment)} = {quote(shape.increment)} + 1")
            if shape.unless:
                where += f" AND NOT {quote(shape.unless)}"
            sql = f"UPDATE {table} SET {', '.join(sets)} WHERE {where}"
        _SQL[(dialect.name, shape)] = sql
    return sql


def _values_sql(dialect: Dialect, shape: _Shape) -> tuple[str, str]:
    """PostgreSQL: the statement around ``{values}``, and one row's placeholders."""
    found = _VALUES_SQL.get(shape)
    if found is None:
        _check(shape)
        quote = dialect.identifier_preparer.quote
        names = [quote(c) for c in shape.columns]
        table = quote(shape.table.name)
        width = len(names) + (1 if shape.key else 0)
        group = "(" + ", ".join(["%s"] * width) + ")"
        if shape.verb == "insert":
            head = f"INSERT INTO {table} ({', '.join(names)}) VALUES {{values}}"
        else:
            # VALUES in FROM takes its types from the values: cast each to its column's.
            columns = shape.table.c
            sets = [
                f"{n} = v.{n}::{columns[c].type.compile(dialect=dialect)}"
                for n, c in zip(names, shape.columns, strict=True)
            ]
            key = quote(shape.key)
            where = f"t.{key} = v.{key}"
            if shape.increment:
                sets.append(f"{quote(shape.increment)} = t.{quote(shape.increment)} + 1")
            if shape.unless:
                where += f" AND NOT t.{quote(shape.unless)}"
            head = (
                f"UPDATE {table} AS t SET {', '.join(sets)}"
                f" FROM (VALUES {{values}}) AS v ({', '.join(names)}, {key}) WHERE {where}"
            )
        found = _VALUES_SQL[shape] = (head, group)
    return found


__all__ = ["PG_PARAMETERS", "PG_ROWS", "insert_many", "sqlite_timestamp", "update_many"]
