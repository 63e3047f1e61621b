"""Where the cells of the instance benchmarks run: here, or in host processes.

:class:`CellsHere` starts cells in this process and does what the benchmark
asks of them (create instances, change them); :class:`HostProcess` does the
same in a fresh interpreter (its own GIL), driven over a socket. A host exits
when told to or as soon as its socket closes, so it never outlives the
benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from multiprocessing.connection import Connection
from typing import Any

from cellplane.cli.runtime import event_loop_name
from cellplane.config import CellConfig
from cellplane.errors import CellplaneError
from cellplane.federation.bench_hosts import recv, wait_links_up

IMAGE = "5f6a1c0e-0000-4000-8000-000000000001"  # cirros (kvm)
FLAVOR = "1"
HOSTS_PER_LEAF = 4
REQUEST_TIMEOUT = 120.0


class BenchError(CellplaneError):
    """The benchmark could not measure what it meant to."""


class CellsHere:
    """The cells of one process and what the benchmark asks of them."""

    def __init__(self) -> None:
        self.cells: dict[str, Any] = {}  # name -> started cellplane.service.Cell

    async def start(self, config: CellConfig) -> str:
        from cellplane.service import Cell

        cell = Cell(config)
        self.cells[config.name] = cell
        await cell.start()
        await wait_links_up(cell.neighbours.parents())
        return str(cell.address)

    async def create(self, name: str, count: int) -> list[str]:
        """Create ``count`` active instances owned by cell ``name``."""
        from cellplane.db.models import Instance

        cell = self.cells[name]

        def write() -> list[str]:
            uuids = [str(uuidlib.uuid4()) for _ in range(count)]
            with cell.sessions.begin() as session:
                for i, uuid in enumerate(uuids):
                    host = f"{name}-h{i % HOSTS_PER_LEAF}"
                    cell.changes.create(session, Instance(
                        uuid=uuid, name=f"push-{i}", project_id="bench", user_id="bench",
                        flavor_id=FLAVOR, flavor={"id": FLAVOR}, image_id=IMAGE,
                        vm_state="active", task_state=None, power_state=1, host=host,
                        node=host, availability_zone="nova", cell_path=name,
                    ))  # fmt: skip
            return uuids

        return await asyncio.to_thread(write)

    async def update(self, name: str, uuids: list[str], rounds: int, batch: int = 1) -> list[float]:
        """Change every instance ``rounds`` times, one transaction per round; commit times.

        ``batch`` 1 calls ``InstanceChanges.update`` once per change; more calls
        ``InstanceChanges.update_many`` with up to ``batch`` changes at a time.
        """
        cell = self.cells[name]

        def write() -> list[float]:
            committed = []
            for r in range(rounds):
                with cell.sessions.begin() as session:
                    if batch > 1:
                        for start in range(0, len(uuids), batch):
                            cell.changes.update_many(
                                session,
                                [
                                    (u, {"power_state": 1 + r % 2})
                                    for u in uuids[start : start + batch]
                                ],
                            )
                    else:
                        for uuid in uuids:
                            cell.changes.update(session, uuid, power_state=1 + r % 2)
                committed.append(time.time())
            return committed

        return await asyncio.to_thread(write)

    async def cpu(self) -> float:
        """CPU seconds this process has used (every thread, user and system)."""
        return time.process_time()

    async def stop(self) -> None:
        cells, self.cells = self.cells, {}
        for cell in reversed(list(cells.values())):
            await cell.stop(grace=0.2)


class HostProcess:
    """A fresh interpreter running some cells, driven over a socket (same calls as CellsHere)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _HOST_MAIN, str(theirs.fileno()), event_loop_name()],
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        self._conn = Connection(ours.detach())

    async def _ask(self, command: str, *args: Any) -> Any:
        try:
            self._conn.send((command, args))
            status, value = await asyncio.wait_for(recv(self._conn), REQUEST_TIMEOUT)
        except (EOFError, OSError) as exc:
            raise BenchError(f"bench host {self.process.pid} exited ({exc!r})") from None
        if status != "ok":
            raise BenchError(f"bench host {self.process.pid}: {value}")
        return value

    async def start(self, config: CellConfig) -> str:
        return str(await self._ask("start", config))

    async def create(self, name: str, count: int) -> list[str]:
        return list(await self._ask("create", name, count))

    async def update(self, name: str, uuids: list[str], rounds: int, batch: int = 1) -> list[float]:
        return list(await self._ask("update", name, uuids, rounds, batch))

    async def cpu(self) -> float:
        return float(await self._ask("cpu"))

    async def stop(self) -> None:
        with contextlib.suppress(BenchError, TimeoutError):
            await self._ask("stop")

    def end(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(("exit", ()))
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self._conn.close()


_HOST_MAIN = (
    "import sys; from cellplane.federation.bench_instance_hosts import host_main; "
    "host_main(int(sys.argv[1]), sys.argv[2])"
)


def host_main(fd: int, event_loop: str = "uvloop") -> None:
    """Entry point of a host process: obey commands on socket ``fd`` until told to exit,
    on ``event_loop`` (the benchmark's own)."""
    import signal

    from cellplane.cli.logs import configure_logging
    from cellplane.cli.runtime import configure_runtime

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging("console", "warning")
    configure_runtime(event_loop)
    conn = Connection(fd)

    async def serve() -> None:
        cells = CellsHere()
        try:
            while True:
                try:
                    command, args = await recv(conn)
                except (EOFError, OSError):
                    return
                if command == "exit":
                    return
                try:
                    reply = await getattr(cells, command)(*args)
                except Exception as exc:  # every failure goes back to the benchmark
                    conn.send(("error", f"{command}: {type(exc).__name__}: {exc}"))
                else:
                    conn.send(("ok", reply))
        finally:
            await cells.stop()

    try:
        asyncio.run(serve())
    finally:
        conn.close()


__all__ = ["BenchError", "CellsHere", "HostProcess", "host_main"]
