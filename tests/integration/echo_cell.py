"""Test-only launcher: one cell, as its own process, that records the Echoes it handles.

``python echo_cell.py CONFIG [--send-up COUNT --first N --parent NAME]``

Every Echo that arrives is recorded in the table ``echo_log(seq)`` of the cell's
own SQLite database by an inline handler whose insert is committed in the same
transaction as the link cursor: a duplicate delivery would show up as a second
row. With ``--send-up``, once the link to ``--parent`` is up the cell sends
Echoes ``first .. first+count-1`` up, a few at a time, and writes each sequence
the parent acknowledged to ``up_acked(seq)``. SIGTERM stops the cell gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from cellplane.cli.logs import configure_logging
from cellplane.config import load_config
from cellplane.federation import envelopes
from cellplane.federation.channel import LinkState, Relation
from cellplane.federation.dispatch import Delivery
from cellplane.service import Cell
from cellplane.v1 import link_pb2

SEND_BATCH = 5
SEND_PAUSE = 0.005


def create_tables(database_url: str) -> None:
    """The tables the test reads; no unique key, so duplicates would be visible."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS echo_log (seq INTEGER NOT NULL)"))
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS up_acked (seq INTEGER NOT NULL)"))
    engine.dispose()


def record_echo(env: link_pb2.Envelope, delivery: Delivery) -> None:
    """Inline handler: insert the Echo's sequence with the batch's cursor commit."""
    seq = env.echo.sequence

    def insert(session: Session) -> None:
        session.execute(sa.text("INSERT INTO echo_log (seq) VALUES (:seq)"), {"seq": seq})

    delivery.db_work.append(insert)


async def send_up(cell: Cell, parent: str, first: int, count: int) -> None:
    """Send Echoes up to ``parent`` and persist each acknowledged sequence."""
    channel = cell.neighbours.get(parent, Relation.PARENT)
    assert channel is not None, f"{parent} is not a parent of {cell.name}"

    def on_acked(done: list[link_pb2.Envelope]) -> None:
        seqs = [{"seq": e.echo.sequence} for e in done if e.WhichOneof("payload") == "echo"]
        if seqs:
            with cell.sessions.begin() as session:
                session.execute(sa.text("INSERT INTO up_acked (seq) VALUES (:seq)"), seqs)

    channel.on_acked.append(on_acked)
    while channel.state is not LinkState.UP:
        await asyncio.sleep(0.01)
    target = f"{cell.name}!{parent}"
    for start in range(first, first + count, SEND_BATCH):
        for seq in range(start, min(start + SEND_BATCH, first + count)):
            cell.router.send(target, envelopes.UP, echo=link_pb2.Echo(sequence=seq))
        await asyncio.sleep(SEND_PAUSE)
    structlog.get_logger().info("echo_sent_up", first=first, count=count)


async def run(config: Path, parent: str, first: int, count: int) -> None:
    cfg = load_config(config, {})
    await asyncio.to_thread(create_tables, cfg.database_url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    cell = Cell(cfg)
    await cell.start()
    # No await since start() returned: the dialers have not run yet, so no Echo
    # can reach the default (non-recording) handler before this one replaces it.
    cell.handlers.register_inline("echo", record_echo)
    sender = asyncio.create_task(send_up(cell, parent, first, count)) if count else None
    try:
        await stop.wait()
    finally:
        if sender is not None:
            sender.cancel()
        await cell.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--parent", default="parent")
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--send-up", type=int, default=0)
    opts = parser.parse_args()
    configure_logging("json", "info")
    asyncio.run(run(opts.config, opts.parent, opts.first, opts.send_up))


if __name__ == "__main__":
    main()
