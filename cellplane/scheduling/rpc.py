"""The scheduler role on local RPC: ``select_and_claim`` on the ``scheduler`` topic.

Arguments and results are JSON: the request spec travels as
:meth:`RequestSpec.to_dict`. A NoValidHost raised by the handler reaches the
caller as ``RESOURCE_EXHAUSTED`` (rebuilt there as ResourceExhausted) through
the RPC error mapping; a malformed spec as ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cellplane.amqp import RpcClient, RpcServer
from cellplane.amqp.server import DEFAULT_WORKERS
from cellplane.errors import InvalidArgument
from cellplane.scheduling.claims import HostScheduler
from cellplane.scheduling.spec import RequestSpec

TOPIC = "scheduler"
DEFAULT_SELECT_TIMEOUT = 30.0
CLAIM_ID_LENGTH = 64  # as pending_claims.claim_id holds


class SchedulerEndpoint:
    """What the scheduler role serves. Every public method is an RPC method."""

    def __init__(self, host_scheduler: HostScheduler) -> None:
        self._scheduler = host_scheduler

    def select_and_claim(
        self, spec: dict[str, Any], count: int, claim_id: str = "", expires_at: float = 0.0
    ) -> list[str]:
        """Claim hosts for ``count`` instances of ``spec``; the hosts, in instance order.

        With ``claim_id`` the claims stay pending until the caller's transaction that
        creates the instances takes them (:func:`take_pending`); by ``expires_at``
        (seconds since the epoch; 0: the scheduler's build timeout from now) they are
        given back if it has not.
        """
        if count < 1:
            raise InvalidArgument(f"select_and_claim: count must be >= 1, got {count}")
        if not isinstance(claim_id, str) or len(claim_id) > CLAIM_ID_LENGTH:
            raise InvalidArgument(
                f"select_and_claim: claim_id must be a string of at most {CLAIM_ID_LENGTH}"
                " characters"
            )
        if not isinstance(expires_at, int | float) or expires_at < 0:
            raise InvalidArgument(
                f"select_and_claim: expires_at must be seconds since the epoch, got {expires_at!r}"
            )
        expires = datetime.fromtimestamp(expires_at, UTC) if expires_at else None
        return self._scheduler.place(
            RequestSpec.from_dict(spec), count, claim_id=claim_id, expires_at=expires
        )


def scheduler_server(
    url: str,
    host_scheduler: HostScheduler,
    *,
    topic: str = TOPIC,
    server: str | None = None,
    workers: int = DEFAULT_WORKERS,
) -> RpcServer:
    """An (unstarted) RpcServer serving :class:`SchedulerEndpoint` on ``topic``."""
    return RpcServer(
        url, topic, server=server, workers=workers, endpoints=[SchedulerEndpoint(host_scheduler)]
    )


class SchedulerClient:
    """The caller's side: asks the scheduler role of this cell for hosts."""

    def __init__(
        self, client: RpcClient, *, topic: str = TOPIC, timeout: float = DEFAULT_SELECT_TIMEOUT
    ) -> None:
        self._client = client
        self._topic = topic
        self._timeout = timeout

    def select_and_claim(self, spec: RequestSpec, count: int) -> list[str]:
        """Claimed hosts for ``count`` instances; ResourceExhausted when they do not fit."""
        hosts = self._client.call(
            self._topic,
            "select_and_claim",
            timeout=self._timeout,
            spec=spec.to_dict(),
            count=count,
        )
        return [str(h) for h in hosts]
