"""``cellplane bench builds`` and ``cellplane bench pushes``: instances through a real tree.

The tree is ``api -> mid -> {leaf-a, leaf-b}``; the leaves run the scheduler,
network and compute roles with fake hosts that spawn at once. The API cell
always runs in this process, next to the client; the others run here too
(``one-process``) or each in a host process of its own (``multi-process``: a
fresh interpreter, so its own GIL). On ``memory://`` a cell's roles share its
process, as they must.

- builds: concurrent ``CreateInstances`` calls (``batch`` instances each);
  an instance counts when the API cell's database shows it ``active``; its
  latency runs from the start of its create call to then.
- pushes: each leaf changes each of its instances once per transaction, with
  ``InstanceChanges.update`` per change (``batch`` 1) or ``update_many`` with
  ``batch`` changes per call; a change counts when the API cell's database
  holds its version; its latency runs from the leaf's commit.

Both also report the CPU time every process of the tree used over the measured
part, per build or per change (``cpu_us``, and each process's share): a figure
that varies far less than throughput on a busy or throttled machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa

from cellplane.cli.runtime import event_loop_name
from cellplane.config import (
    API_CELL_ROLES,
    COMPUTE_CELL_ROLES,
    CellConfig,
    ChildConfig,
    ComputeConfig,
    HostConfig,
    NetworkConfig,
    ParentConfig,
)
from cellplane.federation.bench_hosts import wait_links_up
from cellplane.federation.bench_instance_hosts import (
    FLAVOR,
    HOSTS_PER_LEAF,
    IMAGE,
    REQUEST_TIMEOUT,
    BenchError,
    CellsHere,
    HostProcess,
)

Row = dict[str, Any]
BACKENDS = ("embedded", "rabbitmq-postgres")
LAYOUTS = ("one-process", "multi-process")
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
LEAVES = ("leaf-a", "leaf-b")
# Seconds between looks at the API cell's database. The watcher shares the API
# cell's process (and interpreter lock): looking more often costs the API more.
POLL = 0.01
LATE_COMMIT = 60.0  # seconds a change log row may commit after higher revisions
PUSH_INSTANCES = 100  # instances per leaf changed by the push benchmark


def machine_row() -> Row:
    """Where the figures were measured."""
    return {
        "measure": "machine",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "sqlalchemy": sa.__version__,
        "loop": event_loop_name(),
    }


def run_instance_bench(
    what: str,
    n: int,
    backends: list[str],
    layouts: list[str],
    batch: int = 1,
    concurrency: int = 64,
) -> list[Row]:
    """Measure ``what`` ("builds" or "pushes") on each backend and process layout."""
    if n < 1 or batch < 1 or concurrency < 1:
        raise ValueError("n, batch and concurrency must be at least 1")
    rows = [machine_row()]
    for backend in backends:
        if backend == "rabbitmq-postgres" and not _services_up():
            rows.append(
                {"measure": what, "backend": backend, "skipped": "RabbitMQ or PostgreSQL down"}
            )
            continue
        for layout in layouts:
            with _databases(backend) as urls:
                rows.append(asyncio.run(_bench(what, n, backend, layout, urls, batch, concurrency)))
    return rows


# --- the tree --------------------------------------------------------------------------


def tree_configs(database_url: Any, transport_url: str) -> list[CellConfig]:
    """Configs of api, mid and the leaves (parents first; addresses filled in at start)."""
    pools = {"leaf-a": "10.1.0.0/16", "leaf-b": "10.2.0.0/16"}

    def cell(name: str, roles: tuple[str, ...], children: tuple[str, ...], **extra: Any) -> Any:
        return CellConfig(
            name=name,
            database_url=database_url(name),
            listen="127.0.0.1:0",
            transport_url=transport_url,
            roles=roles,
            children=tuple(ChildConfig(c) for c in children),
            report_interval=5.0,
            mute_interval=600.0,
            **extra,
        )

    leaves = [
        cell(
            leaf,
            COMPUTE_CELL_ROLES,
            (),
            capabilities=(("hypervisor", ("kvm",)),),
            compute=ComputeConfig(
                hosts=tuple(
                    HostConfig(
                        f"{leaf}-h{i}", vcpus=100_000, memory_mb=100_000_000, local_gb=10_000_000
                    )
                    for i in range(HOSTS_PER_LEAF)
                ),
                spawn_latency=0.0,
                action_latency=0.0,
            ),
            network=NetworkConfig(pools=(("private", pools[leaf]),)),
        )
        for leaf in LEAVES
    ]
    return [cell("api", API_CELL_ROLES, ("mid",)), cell("mid", ("cells",), LEAVES), *leaves]


async def _bench(
    what: str, n: int, backend: str, layout: str, urls: dict[str, str], batch: int, conc: int
) -> Row:
    transport = "memory://" if backend == "embedded" else RABBITMQ_URL
    configs = tree_configs(urls.__getitem__, transport)
    local = CellsHere()
    hosts = [HostProcess() for _ in configs[1:]] if layout == "multi-process" else []
    where: dict[str, Any] = {c.name: local for c in configs}
    for config, host in zip(configs[1:], hosts, strict=False):
        where[config.name] = host
    addresses: dict[str, str] = {}
    try:
        for config in configs:
            parent = next((c.name for c in configs if ChildConfig(config.name) in c.children), None)
            if parent is not None:
                config = replace(config, parents=(ParentConfig(parent, addresses[parent]),))
            addresses[config.name] = await where[config.name].start(config)
        api = local.cells["api"]
        await wait_links_up(api.neighbours.children())
        row: Row = {"measure": what, "backend": backend, "layout": layout}
        meter = _CpuMeter(where, local, servers=backend == "rabbitmq-postgres")
        if what == "builds":
            row.update(await _builds(api, meter, n, batch, conc))
        else:
            row.update(await _pushes(api, meter, where, n, batch))
        return row
    finally:
        await asyncio.gather(*[h.stop() for h in hosts])
        await local.stop()
        for host in hosts:
            host.end()


class _CpuMeter:
    """CPU time of every process of the tree over the measured part of a run, and with
    ``servers`` that of the local database and broker servers' processes too."""

    def __init__(self, where: dict[str, Any], local: Any, servers: bool = False) -> None:
        self.processes: dict[str, Any] = {}  # label -> CellsHere or HostProcess
        for name, host in where.items():
            label = "api+bench" if host is local else name
            if host is local and label in self.processes:
                continue
            self.processes[label] = host
        self.servers = servers
        self._start: dict[str, float] = {}
        self._servers_start: dict[str, dict[int, float]] = {}

    async def start(self) -> None:
        self._start = {label: await p.cpu() for label, p in self.processes.items()}
        if self.servers:
            self._servers_start = {label: commands_cpu(c) for label, c in SERVERS.items()}

    async def per_op(self, ops: int) -> Row:
        """Total CPU µs per operation, and each process's share (and the servers')."""
        used = {label: await p.cpu() - self._start[label] for label, p in self.processes.items()}
        ops = max(ops, 1)
        row: Row = {
            "cpu_us": round(sum(used.values()) * 1e6 / ops),
            "cpu_us_by_process": ", ".join(
                f"{label} {round(seconds * 1e6 / ops)}" for label, seconds in used.items()
            ),
        }
        if self.servers:
            # A server process that ended meanwhile is missed; one that started counts
            # from zero (PostgreSQL starts one per connection, kept by the pools).
            figures = []
            for label, commands in SERVERS.items():
                before, now = self._servers_start[label], commands_cpu(commands)
                seconds = sum(t - before.get(pid, 0.0) for pid, t in now.items())
                # No such process here (elsewhere, or no /proc): no figure, not a zero.
                figures.append(f"{label} {round(seconds * 1e6 / ops) if now else '-'}")
            row["server_cpu_us"] = ", ".join(figures)
        return row


# The local servers of the rabbitmq-postgres backend, by the command names of their
# processes (RabbitMQ runs in Erlang's VM).
SERVERS = {"postgresql": ("postgres",), "rabbitmq": ("beam.smp",)}


def commands_cpu(commands: tuple[str, ...]) -> dict[int, float]:
    """CPU seconds (user and system) of each process of this machine running one of
    ``commands``, by pid; empty where /proc cannot tell."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm in commands:
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


# --- watching the top ------------------------------------------------------------------


_CHANGED_SINCE = sa.text(
    "SELECT c.revision, i.uuid, i.vm_state FROM instance_changes c"
    " JOIN instances i ON i.uuid = c.instance_uuid"
    " WHERE c.revision > :low ORDER BY c.revision"
)


class _TopWatcher:
    """Polls the API cell's database on a thread of its own and notes when things appear."""

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url)
        self.seen: dict[str, float] = {}  # builds: uuid -> when first seen active
        self.failed: set[str] = set()  # builds: uuids seen in error
        self.versions: dict[str, list[tuple[int, float]]] = {}  # pushes: uuid -> (version, when)
        self.revision = 0  # builds: the change log revision read up to
        self._gaps: dict[int, float] = {}  # revisions not seen yet -> since when
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, look: Any) -> None:
        def loop() -> None:
            with self.engine.connect() as conn:
                while not self._stop.is_set():
                    look(conn, time.time())
                    conn.rollback()
                    self._stop.wait(POLL)

        self._thread = threading.Thread(target=loop, name="bench-top-watcher", daemon=True)
        self._thread.start()

    def active(self, conn: Any, now: float) -> None:
        # Read only what is new in the change log. On PostgreSQL a revision is taken
        # at insert and seen at commit (a batch of pushes may take seconds), so the
        # revisions skipped so far are read again until they appear or grow old.
        for revision, since in list(self._gaps.items()):
            if since < now - LATE_COMMIT:
                del self._gaps[revision]
        low = min(self._gaps, default=self.revision + 1) - 1
        rows = conn.execute(
            _CHANGED_SINCE,
            {"low": low},
        ).all()
        for revision, uuid, vm_state in rows:
            if revision <= self.revision and self._gaps.pop(revision, None) is None:
                continue  # read before
            for skipped in range(self.revision + 1, revision):
                self._gaps[skipped] = now
            self.revision = max(self.revision, revision)
            if vm_state == "active":
                self.seen.setdefault(uuid, now)
            elif vm_state == "error":
                self.failed.add(uuid)

    def version(self, conn: Any, now: float) -> None:
        for uuid, version in conn.execute(sa.text("SELECT uuid, version FROM instances")).all():
            history = self.versions.setdefault(uuid, [])
            if not history or history[-1][0] < version:
                history.append((int(version), now))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.engine.dispose()


async def _wait(done: Any, timeout: float, what: Any) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(POLL)


# --- builds ----------------------------------------------------------------------------


async def _builds(api: Any, meter: _CpuMeter, n: int, batch: int, concurrency: int) -> Row:
    from cellplane.v1 import compute_pb2, compute_pb2_grpc

    watcher = _TopWatcher(api.config.database_url)
    started: dict[str, float] = {}
    calls = [min(batch, n - i) for i in range(0, n, batch)]
    try:
        async with grpc.aio.insecure_channel(api.address) as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)

            async def create(count: int) -> list[str]:
                request = compute_pb2.CreateInstancesRequest(
                    name="bench", flavor_id=FLAVOR, image_id=IMAGE, count=count
                )
                reply = await stub.CreateInstances(request, timeout=REQUEST_TIMEOUT)
                return [i.uuid for i in reply.instances]

            # Warm up (and wait for capacity reports): retry until one build goes through.
            await _warm_up(api, create)
            watcher.revision = api.api_view.last_revision()
            watcher.watch(watcher.active)
            queue = list(reversed(calls))

            async def worker() -> None:
                while queue:
                    count = queue.pop()
                    began = time.time()
                    for uuid in await create(count):
                        started[uuid] = began

            await meter.start()
            first = time.time()
            await asyncio.gather(*[worker() for _ in range(min(concurrency, len(calls)))])
            await _wait(
                lambda: len(watcher.seen) + len(watcher.failed) >= n,
                max(120.0, n / 5),
                lambda: (
                    f"{n} builds to end active or in error "
                    f"({len(watcher.seen)} active, {len(watcher.failed)} failed)"
                ),
            )
            cpu = await meter.per_op(len(watcher.seen))
    finally:
        watcher.close()
    latencies = [watcher.seen[u] - started[u] for u in started if u in watcher.seen]
    fault: Row = {}
    if watcher.failed:
        with api.sessions() as session:
            query = sa.text("SELECT message FROM instance_faults ORDER BY id DESC LIMIT 1")
            fault = {"last_fault": str(session.scalar(query))[:200]}
    elapsed = max(watcher.seen.values()) - first
    return {
        "n": n,
        "batch": batch,
        "concurrency": concurrency,
        "per_s": round(len(latencies) / elapsed),
        **_percentiles_ms(latencies),
        "active": len(latencies),
        "failed": len(watcher.failed),
        **cpu,
        "aim": ">= 500/s",
        **fault,
    }


async def _warm_up(api: Any, create: Any) -> None:
    """Build one instance, again until one goes through (capacity reports come first)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            uuid = (await create(1))[0]
            state = None
            while state not in ("active", "error") and time.monotonic() < deadline:
                await asyncio.sleep(POLL)
                with api.sessions() as session:
                    query = sa.text("SELECT vm_state FROM instances WHERE uuid = :u")
                    state = session.scalar(query, {"u": uuid})
            if state == "active":
                return
        await asyncio.sleep(0.2)
    raise BenchError("no build went through within 60s")


# --- pushes ----------------------------------------------------------------------------


async def _pushes(api: Any, meter: _CpuMeter, where: dict[str, Any], n: int, batch: int) -> Row:
    per_leaf = -(-n // len(LEAVES))
    count = min(PUSH_INSTANCES, per_leaf)
    rounds = -(-per_leaf // count)
    owned = {leaf: await where[leaf].create(leaf, count) for leaf in LEAVES}
    expected = sum(len(u) for u in owned.values())
    watcher = _TopWatcher(api.config.database_url)
    try:
        watcher.watch(watcher.version)
        await _wait(lambda: len(watcher.versions) >= expected, 60, "the instances at the top")
        await meter.start()
        first = time.time()
        commits = await asyncio.gather(
            *[where[leaf].update(leaf, owned[leaf], rounds, batch) for leaf in LEAVES]
        )
        final = 1 + rounds  # created at version 1, then one change per round

        def arrived() -> int:
            return sum(watcher.versions[u][-1][0] - 1 for us in owned.values() for u in us)

        await _wait(
            lambda: all(watcher.versions[u][-1][0] >= final for us in owned.values() for u in us),
            max(120.0, n / 20),
            lambda: f"every change at the top ({arrived()} of {rounds * expected} arrived)",
        )
        cpu = await meter.per_op(rounds * expected)
    finally:
        watcher.close()
    latencies, last = [], 0.0
    for leaf, committed in zip(LEAVES, commits, strict=True):
        for uuid in owned[leaf]:
            history = watcher.versions[uuid]
            for r, when in enumerate(committed):
                version = 2 + r
                seen_at = next(t for v, t in history if v >= version)
                latencies.append(seen_at - when)
                last = max(last, seen_at)
    total = len(latencies)
    return {
        "n": total,
        "batch": batch,
        "per_s": round(total / (last - first)),
        **_percentiles_ms(latencies),
        "written_per_s": round(total / (max(c[-1] for c in commits) - first)),
        **cpu,
        "aim": ">= 20,000/s",
    }


# --- backends and figures --------------------------------------------------------------


def _services_up() -> bool:
    for port in (5672, 5432):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _databases(backend: str) -> Any:
    """cell -> database URL: SQLite files in a temporary directory, or one PostgreSQL
    database per cell, created here and dropped afterwards."""
    names = ["api", "mid", *LEAVES]
    if backend == "embedded":
        with tempfile.TemporaryDirectory(prefix="cellplane-bench-") as tmp:
            yield {c: f"sqlite:///{Path(tmp) / (c + '.db')}" for c in names}
        return
    run = uuidlib.uuid4().hex[:8]
    databases = {c: f"cpbench_{run}_{c.replace('-', '_')}" for c in names}
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for db in databases.values():
                conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
        base = POSTGRES_URL.rsplit("/", 1)[0]
        yield {c: f"{base}/{db}" for c, db in databases.items()}
    finally:
        with admin.connect() as conn:
            for db in databases.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def _percentiles_ms(latencies: list[float]) -> Row:
    ordered = sorted(latencies)
    pick = lambda p: ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]  # noqa: E731
    return {f"p{p}_ms": round(pick(p) * 1e3, 1) for p in (50, 99)}


__all__ = ["BACKENDS", "LAYOUTS", "machine_row", "run_instance_bench", "tree_configs"]
