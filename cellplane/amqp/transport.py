"""Broker connections, the shared thread-safe publisher, and event draining.

``memory://`` URLs get :mod:`cellplane.amqp.memory`, kombu's in-process
transport woken by each put instead of polling its queues; RabbitMQ
connections block on the socket. Either way a consumer sleeps until a message
arrives or its timeout ends.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import kombu
from kombu.exceptions import OperationalError

from cellplane.amqp import memory
from cellplane.errors import Unavailable

DEFAULT_URL = "memory://"
#: How publishing retries a dropped broker connection before giving up.
PUBLISH_RETRY_POLICY: Mapping[str, Any] = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 2.0,
}
#: Seconds a connect attempt may take before the broker counts as down.
CONNECT_TIMEOUT = 5.0


def is_memory(url: str) -> bool:
    """Whether ``url`` names kombu's in-process ``memory://`` transport."""
    return url.startswith("memory:")


def connect(url: str) -> kombu.Connection:
    """Return a (lazily connecting) kombu Connection for ``url``.

    ``memory://`` gets the event-driven transport; everything else keeps
    kombu's defaults plus a bounded connect timeout.
    """
    if is_memory(url):
        return kombu.Connection(url, transport=memory.Transport)
    return kombu.Connection(url, connect_timeout=CONNECT_TIMEOUT)


class Publisher:
    """One connection and producer shared by many threads behind a lock.

    kombu connections are not thread-safe; a publish takes tens of
    microseconds, so serialising them costs less than a connection per thread.
    A dropped connection is re-established by ``Producer.publish(retry=True)``;
    when the broker stays away the failure surfaces as :class:`Unavailable`.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn = connect(url)
        self._producer = kombu.Producer(self._conn, serializer="json", auto_declare=False)
        self._lock = threading.Lock()
        self._declared: set[str] = set()
        self._errors: tuple[type[BaseException], ...] = (
            OperationalError,
            *self._conn.connection_errors,
        )

    def publish(
        self,
        body: Mapping[str, Any],
        *,
        exchange: kombu.Exchange | str,
        routing_key: str,
        declare: Sequence[kombu.Exchange] = (),
        **properties: Any,
    ) -> None:
        """Publish ``body`` as JSON; declare ``declare`` first (once per connection)."""
        try:
            with self._lock:
                if declare and not self._declared.issuperset(e.name for e in declare):
                    self._publish_retrying(body, exchange, routing_key, declare, properties)
                    self._declared.update(e.name for e in declare)
                    return
                try:
                    # The fast path: kombu's retry wrapper costs a third of a publish.
                    self._producer.publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        delivery_mode=1,
                        **properties,
                    )
                except self._conn.recoverable_connection_errors:
                    self._publish_retrying(body, exchange, routing_key, declare, properties)
        except self._errors as exc:
            raise Unavailable(f"cannot publish to broker {self._safe_url()}: {exc}") from exc

    def _publish_retrying(
        self,
        body: Mapping[str, Any],
        exchange: kombu.Exchange | str,
        routing_key: str,
        declare: Sequence[kombu.Exchange],
        properties: Mapping[str, Any],
    ) -> None:
        # Reconnects, re-declares and retries per PUBLISH_RETRY_POLICY.
        self._producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            declare=list(declare),
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            delivery_mode=1,
            **properties,
        )

    def _safe_url(self) -> str:
        return str(self._conn.as_uri())

    def close(self) -> None:
        """Close the connection; later publishes fail."""
        with self._lock:
            self._conn.release()
