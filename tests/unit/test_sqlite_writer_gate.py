"""SQLite writers of one process queue on a gate instead of racing in the busy
handler (where one could starve into "database is locked"); the gate is given
back however a transaction ends."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from cellplane import db
from cellplane.db.engine import writer_busy
from cellplane.db.models import Flavor


def _sessions(tmp_path: Path) -> tuple[sa.Engine, sa.orm.sessionmaker[sa.orm.Session]]:
    url = f"sqlite:///{tmp_path / 'cell.db'}"
    db.upgrade(url)
    engine = db.create_engine(url)
    return engine, db.make_session_factory(engine)


def _flavor(flavor_id: str) -> Flavor:
    return Flavor(
        flavor_id=flavor_id, name=f"f{flavor_id}", vcpus=1, memory_mb=1, root_gb=1,
        ephemeral_gb=0, disabled=False, is_public=True, extra_specs={},
    )  # fmt: skip


def test_the_gate_is_held_from_the_first_write_to_the_end(tmp_path: Path) -> None:
    engine, sessions = _sessions(tmp_path)
    with sessions.begin() as session:
        session.scalars(sa.select(Flavor)).all()
        assert not writer_busy(engine)  # reading takes no gate
        session.add(_flavor("a"))
        session.flush()
        assert writer_busy(engine)
    assert not writer_busy(engine)
    session = sessions()
    session.add(_flavor("b"))
    session.flush()
    assert writer_busy(engine)
    session.close()  # rolled back
    assert not writer_busy(engine)


def test_a_second_writer_waits_for_the_first_and_both_commit(tmp_path: Path) -> None:
    _engine, sessions = _sessions(tmp_path)
    first_wrote, second_done = threading.Event(), threading.Event()

    def second() -> None:
        first_wrote.wait()
        with sessions.begin() as session:
            session.add(_flavor("second"))
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with sessions.begin() as session:
        session.add(_flavor("first"))
        session.flush()
        first_wrote.set()
        assert not second_done.wait(0.2)  # queued behind this transaction
    thread.join(10)
    with sessions() as session:
        names = set(session.scalars(sa.select(Flavor.flavor_id)))
    assert {"first", "second"} <= names
