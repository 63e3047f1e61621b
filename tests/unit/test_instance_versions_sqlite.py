"""Regression: concurrent changes to one instance on SQLite lost version bumps.

SQLite ignores ``FOR UPDATE`` and pysqlite runs a SELECT outside the
transaction, so two writers could both read version N and both write N+1.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cellplane.db import Base, Instance, create_engine, make_session_factory
from cellplane.db.instances import InstanceChanges


def test_concurrent_updates_on_sqlite_lose_no_version(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'cell.db'}")
    Base.metadata.create_all(engine)
    sessions = make_session_factory(engine)
    changes = InstanceChanges()
    with sessions.begin() as session:
        changes.create(
            session,
            Instance(
                uuid="u1", name="vm", project_id="p", user_id="u", flavor_id="f",
                image_id="i", vm_state="active", cell_path="c",
            ),
        )  # fmt: skip
    threads, updates = 4, 40
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        for n in range(updates):
            with sessions.begin() as session:
                changes.update(session, "u1", name=f"vm-{t}-{n}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with sessions() as session:
        assert changes.get(session, "u1").version == 1 + threads * updates
    engine.dispose()
