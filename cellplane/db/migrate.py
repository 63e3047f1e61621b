"""Bring a cell database to the schema of this release, with alembic run in-process.

The alembic scripts live in the repository's ``migrations/`` directory; no
``alembic.ini`` is needed, the configuration is built here.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import make_url, text

import cellplane
from cellplane.db.engine import create_engine
from cellplane.db.models import Base

# Any fixed number: the PostgreSQL advisory lock that one migrating process holds.
MIGRATION_LOCK_KEY = 0x63656C6C706C616E  # 'cellplan'

MIGRATIONS_DIR = Path(cellplane.__file__).resolve().parent.parent / "migrations"


def context_options(dialect_name: str) -> dict[str, Any]:
    """Options shared by ``migrations/env.py`` and :func:`check`, so both compare alike."""
    return {
        "target_metadata": Base.metadata,
        "compare_type": True,
        # SQLite can barely ALTER a table; batch mode copies it instead.
        "render_as_batch": dialect_name == "sqlite",
    }


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    _with_config(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    _with_config(url, lambda config: command.downgrade(config, revision))


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None before the first migration."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def check(url: str) -> list[Any]:
    """How the database at ``url`` differs from the models; empty when they match.

    Run it on a database at head: a difference means a model changed without a
    migration (or the other way round).
    """
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts=context_options(connection.dialect.name)
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _with_config(url: str, run: Callable[[Config], None]) -> None:
    engine = create_engine(url)
    try:
        with _one_migrator(url), engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch mode rebuilds a table by dropping it; with foreign keys on, that
                # drop would cascade into the rows of child tables.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    # Processes of one cell may start together: one migrates, the
                    # others wait here and then find the schema at head.
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                config = _config(url)
                config.attributes["connection"] = connection
                run(config)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _one_migrator(url: str) -> Iterator[None]:
    """For a SQLite file, hold an exclusive lock on ``<file>.migrate-lock`` while
    migrating, so that processes sharing the file never migrate at once."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Config values go through ConfigParser interpolation: escape the URL's '%'.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
