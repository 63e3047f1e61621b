"""The roles of a cell that talk over local RPC (AMQP): scheduler, compute, network.

They run on their own threads (kombu is synchronous); the cell's event loop
reaches them through one thread-safe :class:`~cellplane.amqp.RpcClient`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient, RpcServer
from cellplane.config import CellConfig
from cellplane.db.instances import InstanceChanges

LOCAL_RPC_ROLES = frozenset({"scheduler", "compute", "network"})


def exchange_of(config: CellConfig) -> str:
    """The AMQP exchange of one cell: cells that share a broker never share topics."""
    return f"cellplane-{config.name}"


@dataclass
class LocalRoles:
    """What runs on local RPC in one cell, and the client the cell uses to reach it."""

    client: RpcClient | None = None
    _stops: list[Callable[[], Any]] = field(default_factory=list)

    @classmethod
    def start(
        cls, config: CellConfig, sessions: sessionmaker[Session], changes: InstanceChanges
    ) -> LocalRoles:
        """Start the scheduler, network and compute roles that ``config`` names."""
        roles = cls()
        if not LOCAL_RPC_ROLES & set(config.roles):
            return roles
        url = config.transport_url
        exchange = exchange_of(config)
        try:
            if "scheduler" in config.roles:
                from cellplane.scheduling.claims import ClaimSweeper, HostScheduler
                from cellplane.scheduling.rpc import TOPIC, SchedulerEndpoint

                host_scheduler = HostScheduler(sessions, config.scheduler)
                endpoint = SchedulerEndpoint(host_scheduler)
                server = RpcServer(
                    url, TOPIC, server=config.name, exchange=exchange, endpoints=[endpoint]
                )
                server.start()
                roles._stops.append(server.stop)
                sweeper = ClaimSweeper(host_scheduler)
                sweeper.start()
                roles._stops.append(sweeper.stop)
            if "network" in config.roles:
                from cellplane.network.role import start_network_role

                network = start_network_role(config, sessions, url, exchange=exchange)
                roles._stops.append(network.stop)
            if "compute" in config.roles and config.compute.hosts:
                from cellplane.compute.role import start_compute_role

                compute = start_compute_role(config, sessions, changes, url, exchange=exchange)
                roles._stops.append(compute.stop)
            roles.client = RpcClient(url, exchange=exchange)
            roles._stops.append(roles.client.close)
        except BaseException:
            roles.stop()
            raise
        return roles

    def stop(self) -> None:
        """Stop every role, newest first; safe to call twice."""
        while self._stops:
            self._stops.pop()()
