"""The wire format of local RPC, and the names of exchanges and queues.

Every body is JSON (kombu's ``json`` serializer; consumers accept nothing
else, so pickle never crosses the broker)::

    request  {"method": str, "args": {...},
              "reply_to"?: str, "correlation_id"?: str, "trace_id"?: str}
    reply    {"ok": true, "result": ...}
          or {"error": {"code": int, "message": str}}

A reply travels to the caller's reply queue through the default exchange; its
AMQP ``correlation_id`` property names the call it answers. ``code`` is a
:class:`cellplane.errors.Code`; Python exceptions never cross the wire.
"""

from __future__ import annotations

from typing import Any

import kombu

from cellplane.errors import Code, InvalidArgument

SERIALIZER = "json"
ACCEPT = ["json"]
DEFAULT_EXCHANGE = "cellplane"

Body = dict[str, Any]


def control_exchange(name: str = DEFAULT_EXCHANGE) -> kombu.Exchange:
    """The direct exchange that carries call/cast to ``topic`` and ``topic.server``."""
    return kombu.Exchange(name, type="direct", durable=True, auto_delete=False)


def fanout_exchange(topic: str, exchange: str = DEFAULT_EXCHANGE) -> kombu.Exchange:
    """The fanout exchange that reaches every server on ``topic``."""
    return kombu.Exchange(
        f"{exchange}.{topic}_fanout", type="fanout", durable=True, auto_delete=False
    )


def server_routing_key(topic: str, server: str) -> str:
    """The routing key (and queue name) of one server on a topic."""
    return f"{topic}.{server}"


def topic_queue_name(exchange: str, routing_key: str) -> str:
    """Name of the durable queue that holds ``routing_key`` on ``exchange``."""
    if exchange == DEFAULT_EXCHANGE:
        return routing_key
    return f"{exchange}.{routing_key}"


def request(
    method: str,
    args: dict[str, Any],
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    trace_id: str | None = None,
) -> Body:
    """Build a request body."""
    body: Body = {"method": method, "args": args}
    if reply_to is not None:
        body["reply_to"] = reply_to
        body["correlation_id"] = correlation_id
    if trace_id is not None:
        body["trace_id"] = trace_id
    return body


def parse_request(body: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(method, args)`` of a request body or raise :class:`InvalidArgument`."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"request must be a JSON object, got {type(body).__name__}")
    method = body.get("method")
    args = body.get("args", {})
    if not isinstance(method, str) or not method:
        raise InvalidArgument("request has no method name")
    if not isinstance(args, dict):
        raise InvalidArgument(f"args of {method!r} must be a JSON object")
    return method, args


def ok_reply(result: Any) -> Body:
    """Build a success reply."""
    return {"ok": True, "result": result}


def error_reply(code: Code, message: str) -> Body:
    """Build an error reply."""
    return {"error": {"code": int(code), "message": message}}
