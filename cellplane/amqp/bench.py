"""Benchmarks of local RPC, for ``cellplane bench`` (DESIGN section 7).

Each function starts its own server on a private topic, measures, stops it and
deletes the durable queue it left on the broker.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from cellplane.amqp.client import RpcClient
from cellplane.amqp.server import RpcServer
from cellplane.amqp.transport import connect
from cellplane.errors import Timeout

_WARMUP_CALLS = 50


def measure_call_round_trip(url: str, n: int = 2000) -> dict[str, Any]:
    """Time ``n`` sequential calls to a trivial echo handler.

    Returns ``transport``, ``calls``, ``seconds``, ``calls_per_s``, ``p50_us``,
    ``p99_us`` and ``mean_us``.
    """
    topic = f"bench_{uuid.uuid4().hex[:12]}"
    server = RpcServer(url, topic, workers=1)
    server.register("echo", _echo)
    latencies: list[float] = []
    try:
        with server, RpcClient(url) as client:
            for i in range(_WARMUP_CALLS):
                client.call(topic, "echo", timeout=10.0, value=i)
            clock = time.perf_counter
            started = clock()
            for i in range(n):
                t0 = clock()
                client.call(topic, "echo", timeout=10.0, value=i)
                latencies.append(clock() - t0)
            elapsed = clock() - started
    finally:
        _delete_queues(url, server.queue_names[:1])
    latencies.sort()
    return {
        "transport": _scheme(url),
        "calls": n,
        "seconds": round(elapsed, 4),
        "calls_per_s": round(n / elapsed, 1),
        "p50_us": round(_percentile(latencies, 50) * 1e6, 1),
        "p99_us": round(_percentile(latencies, 99) * 1e6, 1),
        "mean_us": round(statistics.fmean(latencies) * 1e6, 1),
    }


def measure_cast(url: str, n: int = 10000) -> dict[str, Any]:
    """Cast ``n`` messages to one server and time publishing and handling them.

    Returns ``transport``, ``casts``, ``publish_per_s`` (how fast the client
    sends) and ``delivered_per_s`` (first publish to last handler run).
    """
    topic = f"bench_{uuid.uuid4().hex[:12]}"
    handled = threading.Event()
    count = [0]
    lock = threading.Lock()

    def count_one(value: int) -> None:
        with lock:
            count[0] += 1
            if count[0] == n:
                handled.set()

    server = RpcServer(url, topic, workers=2)
    server.register("count", count_one)
    try:
        with server, RpcClient(url) as client:
            started = time.perf_counter()
            for i in range(n):
                client.cast(topic, "count", value=i)
            published = time.perf_counter() - started
            if not handled.wait(max(30.0, n / 100)):
                raise Timeout(f"only {count[0]} of {n} casts were handled")
            delivered = time.perf_counter() - started
    finally:
        _delete_queues(url, server.queue_names[:1])
    return {
        "transport": _scheme(url),
        "casts": n,
        "publish_per_s": round(n / published, 1),
        "delivered_per_s": round(n / delivered, 1),
    }


def _echo(value: Any) -> Any:
    return value


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


def _scheme(url: str) -> str:
    return url.split(":", 1)[0]


def _delete_queues(url: str, names: Iterable[str]) -> None:
    with connect(url) as conn:
        channel = conn.default_channel
        for name in names:
            channel.queue_delete(name)
