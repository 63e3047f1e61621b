"""The far ends of the link benchmark, each in a process of its own.

:mod:`cellplane.federation.bench` starts a few host processes (fresh
interpreters, so each has its own GIL and can have its own core) and sends them
commands over a socket: serve a raw CellLink stream, run some cells, stop them.
A host exits when told to or as soon as its socket closes, so it never outlives
the benchmark.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from cellplane.config import CellConfig, ChildConfig, ParentConfig
from cellplane.federation import dispatch
from cellplane.federation.channel import LinkState, PeerChannel
from cellplane.federation.link import server_options
from cellplane.v1 import link_pb2, link_pb2_grpc

# Raw stream control codes, carried in EnvelopeBatch.ack (the raw server is no
# cellplane link: it only counts, echoes or reports).
RAW_COUNT = 0
RAW_ECHO = 1
RAW_REPORT = 2

COUNT_QUERY = "bench_count"  # ServiceQuery.what answered by a counting cell
REPORT_INTERVAL = 60.0  # keep periodic reports out of the measurements
LINK_UP_TIMEOUT = 20.0
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


@dataclass(frozen=True)
class CellSpec:
    """One cell for a host to run.

    ``parent_address`` is empty when the parent runs in the same host (started
    earlier in the same command). ``count_echo`` swaps the Echo handler for an
    inline counter whose count the ``bench_count`` service query answers.
    """

    name: str
    parent: str | None = None
    parent_address: str = ""
    children: tuple[str, ...] = ()
    count_echo: bool = False


def cell_config(spec: CellSpec, data_dir: Path, parent_address: str = "") -> CellConfig:
    """The config of a benchmark cell: SQLite in ``data_dir``, memory://, port 0."""
    parents = (ParentConfig(spec.parent, parent_address),) if spec.parent else ()
    return CellConfig(
        name=spec.name,
        database_url=f"sqlite:///{data_dir / (spec.name + '.db')}",
        listen="127.0.0.1:0",
        transport_url="memory://",
        roles=("cells",),  # the federation service only: nothing else runs while we measure
        parents=parents,
        children=tuple(ChildConfig(c) for c in spec.children),
        report_interval=REPORT_INTERVAL,
        mute_interval=REPORT_INTERVAL * 10,
    )


class EchoCounter:
    """Counts Echo envelopes in line with the link and answers how many it saw."""

    def __init__(self, fallback: dispatch.Handler | None) -> None:
        self.count = 0
        self._fallback = fallback

    def on_echo(self, env: link_pb2.Envelope, delivery: dispatch.Delivery) -> None:
        """Inline Echo handler: one more."""
        self.count += 1

    async def on_query(
        self, env: link_pb2.Envelope, delivery: dispatch.Delivery
    ) -> link_pb2.CellResult | None:
        """Answer ``bench_count`` with the count in ``echo.sequence``; pass on the rest."""
        if env.service_query.what == COUNT_QUERY:
            return delivery.ok(echo=link_pb2.Echo(sequence=self.count))
        if self._fallback is None:
            return None
        return await self._fallback(env, delivery)


def install_counter(cell: Any) -> EchoCounter:
    """Make ``cell`` (a started :class:`~cellplane.service.Cell`) count Echo envelopes."""
    registration = cell.handlers.get("service_query")
    counter = EchoCounter(registration.handler if registration else None)
    cell.handlers.register_inline("echo", counter.on_echo)
    cell.handlers.register("service_query", counter.on_query)
    return counter


async def wait_links_up(channels: list[PeerChannel], timeout: float = LINK_UP_TIMEOUT) -> None:
    """Wait until the link of every channel in ``channels`` is up."""
    deadline = time.monotonic() + timeout
    while True:
        down = [ch.peer for ch in channels if ch.state is not LinkState.UP]
        if not down:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"links still down after {timeout:.0f}s: {', '.join(down)}")
        await asyncio.sleep(0.01)


class RawStreamServicer(link_pb2_grpc.CellLinkServicer):
    """A bare CellLink stream: counts envelopes, echoes or reports as each frame asks."""

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        count = 0
        while True:
            frame = await context.read()
            if frame is _EOF:
                return
            batch = frame.batch
            if batch.ack == RAW_ECHO:
                await context.write(link_pb2.ConnectResponse(batch=batch))
            elif batch.ack == RAW_REPORT:
                await context.write(
                    link_pb2.ConnectResponse(batch=link_pb2.EnvelopeBatch(ack=count))
                )
                count = 0
            else:
                count += len(batch.envelopes)


async def recv(conn: Connection) -> Any:
    """Receive one object from ``conn`` without blocking the event loop."""
    if not conn.poll():
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = conn.fileno()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
    return conn.recv()


class _Host:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cells: list[Any] = []
        self.raw_server: grpc.aio.Server | None = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    command, arg = await recv(self.conn)
                except (EOFError, OSError):
                    return
                if command == "exit":
                    return
                try:
                    answer = ("ok", await self._do(command, arg))
                except Exception as exc:  # report every failure to the benchmark
                    answer = ("error", f"{command}: {type(exc).__name__}: {exc}")
                try:
                    self.conn.send(answer)
                except OSError:  # the benchmark is gone
                    return
        finally:
            await self._stop()

    async def _do(self, command: str, arg: Any) -> Any:
        if command == "raw":
            server = grpc.aio.server(options=server_options(4 * 1024 * 1024))
            link_pb2_grpc.add_CellLinkServicer_to_server(RawStreamServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.raw_server = server
            return f"127.0.0.1:{port}"
        if command == "cells":
            specs, data_dir = arg
            return await self._start_cells(specs, Path(data_dir))
        if command == "stop":
            await self._stop()
            return None
        raise ValueError(f"unknown command {command!r}")

    async def _start_cells(self, specs: list[CellSpec], data_dir: Path) -> dict[str, str]:
        from cellplane.service import Cell

        addresses: dict[str, str] = {}
        started = []
        for spec in specs:
            parent_address = spec.parent_address or addresses.get(spec.parent or "", "")
            cell = Cell(cell_config(spec, data_dir, parent_address))
            self.cells.append(cell)
            await cell.start()
            if spec.count_echo:
                install_counter(cell)
            addresses[spec.name] = cell.address
            started.append(cell)
        # Children in other processes dial later: only this host's upward links must be up.
        await wait_links_up([ch for cell in started for ch in cell.neighbours.parents()])
        return addresses

    async def _stop(self) -> None:
        cells, self.cells = self.cells, []
        for cell in reversed(cells):  # children first, so parents see clean ends
            await cell.stop(grace=0.2)
        if self.raw_server is not None:
            server, self.raw_server = self.raw_server, None
            await server.stop(0.2)


def main(fd: int, event_loop: str = "uvloop") -> None:
    """Entry point of a host process: obey commands on socket ``fd`` until told to exit,
    on ``event_loop`` (the benchmark's own)."""
    from cellplane.cli.logs import configure_logging
    from cellplane.cli.runtime import configure_runtime

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark decides when hosts stop
    configure_logging("console", "warning")
    configure_runtime(event_loop)
    conn = Connection(fd)
    try:
        asyncio.run(_Host(conn).run())
    finally:
        conn.close()


__all__ = ["CellSpec", "EchoCounter", "install_counter", "main", "wait_links_up"]
