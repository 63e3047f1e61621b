"""``cellplane bench``: our figures next to the raw primitives, measured in the same run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cellplane.cli.tables import table

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bench``."""
    bench = sub.add_parser("bench", help="measure throughput and latency")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    what = bench.add_subparsers(dest="what", required=True)
    amqp = what.add_parser("amqp", help="local RPC call round trips and casts over kombu")
    amqp.add_argument(
        "--url",
        action="append",
        help=f"transport URL (repeatable; default memory:// and {RABBITMQ_URL})",
    )
    amqp.add_argument("-n", type=int, default=2000, help="sequential calls per transport")
    links = what.add_parser("links", help="envelopes over CellLink streams and broadcasts")
    links.add_argument("-n", type=int, default=200_000, help="envelopes to send")
    links.add_argument("--cells", type=int, default=50, help="cells for the broadcast test")
    links.add_argument("--rounds", type=int, default=50, help="broadcast round trips")


def run(opts: argparse.Namespace) -> int:
    """Run one benchmark and print its figures."""
    if opts.what == "amqp":
        rows = _amqp(opts)
    else:
        from cellplane.federation.bench import run_link_bench

        rows = run_link_bench(n=opts.n, cells=opts.cells, rounds=opts.rounds)
    if opts.json:
        print(json.dumps(rows, indent=2))
    else:
        headers = sorted({key for row in rows for key in row}, key=_column_order(rows))
        print(table(headers, [[row.get(h) for h in headers] for row in rows]))
    return 0


def _amqp(opts: argparse.Namespace) -> list[dict[str, Any]]:
    from cellplane.amqp.bench import measure_call_round_trip, measure_cast

    rows = []
    for url in opts.url or ["memory://", RABBITMQ_URL]:
        call = measure_call_round_trip(url, opts.n)
        cast = measure_cast(url, opts.n * 5)
        rows.append({"measure": "amqp call round trip", **call})
        rows.append({"measure": "amqp cast", **cast})
    return rows


def _column_order(rows: list[dict[str, Any]]) -> Any:
    order: dict[str, int] = {}
    for row in rows:
        for key in row:
            order.setdefault(key, len(order))
    return lambda key: order[key]
