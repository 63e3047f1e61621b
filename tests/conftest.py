"""Shared fixtures: where the real services are, and whether a test may skip them.

RabbitMQ and PostgreSQL tests skip when the service is not reachable, unless
``CELLPLANE_REQUIRE_SERVICES=1`` (set by ``.ci/run``): then they must run.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RABBITMQ_URL = os.environ.get("CELLPLANE_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "CELLPLANE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("CELLPLANE_REQUIRE_SERVICES") == "1"


def _quiet_servers_of_closed_loops() -> None:
    """A grpc.aio server still running when its test's event loop closed asks, when
    it is garbage-collected, for a shutdown on that closed loop; gRPC then shuts its
    asyncio machinery down for the whole process, under whatever test runs at that
    moment (seen in CI: that test's links went down and never came back). Such a
    server is left to be freed without it."""
    import grpc.aio._server as aio_server

    collected = aio_server.Server.__del__

    def __del__(self: Any) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.is_closed():
            return
        collected(self)

    aio_server.Server.__del__ = __del__  # type: ignore[method-assign]


_quiet_servers_of_closed_loops()


def _hold_grpc_aio() -> None:
    """Keep gRPC's asyncio machinery up for the whole run. It is reference-counted:
    every grpc.aio server and channel holds it, and when the count falls to zero
    (as objects of finished tests are collected, at any moment) it is shut down
    for the whole process, under whatever test runs then (seen in CI: links that
    went down and never came back, servers that never stopped)."""
    import grpc.aio

    grpc.aio.init_grpc_aio()


_hold_grpc_aio()


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} is required (CELLPLANE_REQUIRE_SERVICES=1) but {host}:{port} is down")
    pytest.skip(f"{name} not reachable on {host}:{port}")


@pytest.fixture
def rabbitmq_url() -> str:
    """The RabbitMQ URL; skips (or fails under CELLPLANE_REQUIRE_SERVICES=1) when down."""
    _need("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL with an empty private schema for this test."""
    _need("PostgreSQL", "127.0.0.1", 5432)
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def cell_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty cell database: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cell.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["memory", "rabbitmq"])
def transport_url(request: pytest.FixtureRequest) -> str:
    """Each AMQP test runs twice: on kombu ``memory://`` and on RabbitMQ."""
    if request.param == "memory":
        return "memory://"
    _need("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL


def uuid_hex() -> str:
    """A short random name, for queues and virtual hosts private to one test."""
    import uuid

    return uuid.uuid4().hex[:12]


class PushLog:
    """The ``on_change`` hook of a test cell's InstanceChanges: (uuid, kind, version) of
    every push, in order, from any thread."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def record(self, session: object, instance: Any, kind: str, fault: object) -> None:
        with self._lock:
            self.pushes.append((instance.uuid, kind, instance.version))


@pytest.fixture
def push_log() -> PushLog:
    """A fresh PushLog."""
    return PushLog()
