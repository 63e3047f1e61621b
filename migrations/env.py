"""Alembic environment for a cell database.

The connection comes from ``config.attributes["connection"]`` (how
``cellplane.db.migrate`` runs it) or else from ``sqlalchemy.url``. Only the
connection's default schema is looked at, so a PostgreSQL ``search_path``
decides where the tables and ``alembic_version`` live.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cellplane.db.engine import create_engine
from cellplane.db.migrate import context_options

config = context.config


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no sqlalchemy.url to generate SQL for")
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(dialect),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("set config.attributes['connection'] or sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
