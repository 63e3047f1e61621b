"""The network role of a cell: fixed-IP allocation served over local RPC on topic ``network``.

Other roles reach it through :class:`NetworkClient`; the allocations live in
the cell database (see :mod:`cellplane.network.ipam`).
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient, RpcServer
from cellplane.amqp.messages import DEFAULT_EXCHANGE
from cellplane.config import CellConfig
from cellplane.db.models import Instance
from cellplane.errors import InstanceNotFound
from cellplane.network import ipam

TOPIC = "network"
DEFAULT_NETWORK_TIMEOUT = 30.0

log = structlog.get_logger()


_LIVE = sa.select(Instance.uuid).where(
    Instance.uuid.in_(sa.bindparam("uuids", expanding=True)), Instance.deleted.is_(False)
)


class NetworkEndpoint:
    """The RPC methods of the network role (every public method is served)."""

    def __init__(self, sessions: sessionmaker[Session], pools: tuple[tuple[str, str], ...]) -> None:
        self._sessions = sessions
        self._pools = pools

    def allocate_for_instance(self, instance_uuid: str) -> list[dict[str, Any]]:
        """Give a live instance of this cell a fixed IP; returns [{pool, address, version}]."""
        with self._sessions.begin() as session:
            exists = session.scalar(
                sa.select(Instance.id).where(
                    Instance.uuid == instance_uuid, Instance.deleted.is_(False)
                )
            )
            if exists is None:
                raise InstanceNotFound(f"instance {instance_uuid} not found")
            addresses = ipam.allocate(session, self._pools, instance_uuid)
        log.info("fixed_ip_allocated", instance=instance_uuid, addresses=addresses)
        return addresses

    def allocate_for_instances(self, instance_uuids: list[str]) -> dict[str, Any]:
        """:meth:`allocate_for_instance` for many instances in one transaction.

        Returns ``{"addresses": {uuid: [...]}, "failed": {uuid: message}}``: an
        instance fails alone when it is missing or no pool has room for it.
        """
        uuids = list(dict.fromkeys(instance_uuids))
        failed: dict[str, str] = {}
        with self._sessions.begin() as session:
            live = set(session.connection().execute(_LIVE, {"uuids": uuids}).scalars())
            for uuid in uuids:
                if uuid not in live:
                    failed[uuid] = f"instance {uuid} not found"
            addresses, left = ipam.allocate_many(
                session, self._pools, [u for u in uuids if u in live]
            )
        for uuid in left:
            failed[uuid] = ipam.exhausted_message(self._pools)
        log.info("fixed_ips_allocated", count=len(addresses), failed=len(failed))
        return {"addresses": addresses, "failed": failed}

    def deallocate_for_instance(self, instance_uuid: str) -> int:
        """Free every fixed IP of ``instance_uuid``; returns how many were freed."""
        with self._sessions.begin() as session:
            freed = ipam.release(session, instance_uuid)
        log.info("fixed_ip_released", instance=instance_uuid, count=freed)
        return freed


class NetworkClient:
    """What the other roles of the cell call the network role through."""

    def __init__(self, rpc: RpcClient, *, timeout: float = DEFAULT_NETWORK_TIMEOUT) -> None:
        self._rpc = rpc
        self._timeout = timeout

    def allocate_for_instance(self, instance_uuid: str) -> list[dict[str, Any]]:
        """Allocate (or return the already held) fixed IPs of ``instance_uuid``."""
        result = self._rpc.call(
            TOPIC, "allocate_for_instance", timeout=self._timeout, instance_uuid=instance_uuid
        )
        return list(result)

    def allocate_for_instances(
        self, instance_uuids: list[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
        """Allocate for many instances in one call: (addresses by uuid, failures by uuid)."""
        result = self._rpc.call(
            TOPIC, "allocate_for_instances", timeout=self._timeout, instance_uuids=instance_uuids
        )
        return dict(result["addresses"]), dict(result["failed"])

    def deallocate_for_instance(self, instance_uuid: str) -> int:
        """Free the fixed IPs of ``instance_uuid``; returns how many."""
        result = self._rpc.call(
            TOPIC, "deallocate_for_instance", timeout=self._timeout, instance_uuid=instance_uuid
        )
        return int(result)


class NetworkRole:
    """The running network role: one RPC server on topic ``network``."""

    def __init__(self, server: RpcServer, endpoint: NetworkEndpoint) -> None:
        self.server = server
        self.endpoint = endpoint
        self._stopped = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Stop serving; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.server.stop()

    def __enter__(self) -> NetworkRole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_network_role(
    config: CellConfig,
    sessions: sessionmaker[Session],
    transport_url: str,
    *,
    exchange: str = DEFAULT_EXCHANGE,
) -> NetworkRole:
    """Serve the network role of ``config``'s cell on ``transport_url``.

    Cells that share one broker must each use their own ``exchange``: the
    ``network`` queue is per exchange.
    """
    endpoint = NetworkEndpoint(sessions, config.network.pools)
    server = RpcServer(
        transport_url, TOPIC, server=config.name, exchange=exchange, endpoints=[endpoint]
    )
    server.start()
    log.info("network_role_started", cell=config.name, pools=[n for n, _ in config.network.pools])
    return NetworkRole(server, endpoint)
