"""The compute role of a cell: one driver, manager and RPC server per configured host.

Everything runs on the role's own threads (kombu is synchronous), so an
asyncio application can start and stop it without blocking its event loop
for longer than the start-up handshake with the broker.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import structlog
from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient, RpcServer
from cellplane.amqp.messages import DEFAULT_EXCHANGE
from cellplane.compute.driver import FakeDriver
from cellplane.compute.manager import ComputeManager
from cellplane.compute.resources import ResourceTracker
from cellplane.config import CellConfig
from cellplane.db.instances import InstanceChanges
from cellplane.network.role import NetworkClient

TOPIC = "compute"
_JITTER = 0.1

log = structlog.get_logger()


class HeartbeatLoop:
    """Reports every tracker each ``interval`` seconds (with jitter) on one thread."""

    def __init__(self, trackers: Sequence[ResourceTracker], interval: float) -> None:
        self._trackers = list(trackers)
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compute-heartbeat", daemon=True)

    def start(self) -> None:
        """Start reporting (after a first interval: the caller reported once already)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread; idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval * random.uniform(1 - _JITTER, 1 + _JITTER)):
            for tracker in self._trackers:
                try:
                    tracker.report()
                except Exception as exc:  # a database hiccup must not end the heartbeats
                    log.warning("compute_heartbeat_failed", host=tracker.host.name, error=str(exc))


class ComputeRole:
    """The running compute role; :meth:`stop` is idempotent."""

    def __init__(
        self,
        drivers: dict[str, FakeDriver],
        managers: dict[str, ComputeManager],
        servers: list[RpcServer],
        heartbeat: HeartbeatLoop,
        rpc: RpcClient,
    ) -> None:
        self.drivers = drivers
        self.managers = managers
        self.servers = servers
        self._heartbeat = heartbeat
        self._rpc = rpc
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        """Stop heartbeats and RPC servers (running handlers finish first)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._heartbeat.stop()
        for server in self.servers:
            server.stop()
        self._rpc.close()
        log.info("compute_role_stopped", hosts=sorted(self.managers))

    def __enter__(self) -> ComputeRole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_compute_role(
    config: CellConfig,
    sessions: sessionmaker[Session],
    changes: InstanceChanges,
    transport_url: str,
    *,
    exchange: str = DEFAULT_EXCHANGE,
) -> ComputeRole:
    """Register the hosts of ``config.compute`` and serve them on ``compute.<host>``.

    The compute node rows exist (with zero usage) and have a first heartbeat
    before this returns, so the scheduler can place on them at once. Each
    host takes back its guests before it serves (ComputeManager.init_host);
    on ``memory://``, whose messages died with the previous process, it then
    carries on with the builds and actions that were under way. Cells that
    share one broker must each use their own ``exchange`` (the network role's
    too).
    """
    compute = config.compute
    rpc = RpcClient(transport_url, exchange)
    network = NetworkClient(rpc)
    drivers: dict[str, FakeDriver] = {}
    managers: dict[str, ComputeManager] = {}
    trackers: list[ResourceTracker] = []
    servers: list[RpcServer] = []
    heartbeat = HeartbeatLoop(trackers, compute.heartbeat_interval)
    role = ComputeRole(drivers, managers, servers, heartbeat, rpc)
    interrupted: dict[str, list] = {}
    try:
        for host in compute.hosts:
            driver = FakeDriver(
                host, spawn_latency=compute.spawn_latency, action_latency=compute.action_latency
            )
            tracker = ResourceTracker(host, sessions, compute)
            tracker.report()
            manager = ComputeManager(host, sessions, changes, driver, network, compute)
            interrupted[host.name] = manager.init_host()
            server = RpcServer(
                transport_url, TOPIC, server=host.name, exchange=exchange, endpoints=[manager]
            )
            server.start()
            drivers[host.name], managers[host.name] = driver, manager
            trackers.append(tracker)
            servers.append(server)
        heartbeat.start()
        if transport_url.startswith("memory"):
            # A broker keeps unacknowledged messages and hands them out again.
            for name, manager in managers.items():
                manager.resume(rpc, interrupted[name])
    except BaseException:
        role.stop()
        raise
    log.info("compute_role_started", cell=config.name, hosts=sorted(managers))
    return role
