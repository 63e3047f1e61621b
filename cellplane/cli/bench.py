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
    builds = what.add_parser("builds", help="instance builds through a three-level tree")
    builds.add_argument("-n", type=int, default=2000, help="instances to build")
    builds.add_argument("--batch", type=int, default=1, help="instances per CreateInstances call")
    builds.add_argument("--concurrency", type=int, default=64, help="create calls in flight")
    pushes = what.add_parser("pushes", help="instance state changes from leaf cells to the top")
    pushes.add_argument("-n", type=int, default=100_000, help="changes to write in the leaves")
    pushes.add_argument(
        "--batch",
        type=int,
        default=1,
        help="changes per InstanceChanges call in the leaves (1: one update() each)",
    )
    for parser in (builds, pushes):
        parser.add_argument(
            "--backend",
            choices=["embedded", "rabbitmq-postgres", "both"],
            default="both",
            help="SQLite + memory://, RabbitMQ + PostgreSQL, or both (default)",
        )
        parser.add_argument(
            "--layout",
            choices=["one-process", "multi-process", "both"],
            default="multi-process",
            help="cells in this process, or each cell below the API cell in its own process",
        )


def run(opts: argparse.Namespace) -> int:
    """Run one benchmark and print its figures."""
    if opts.what == "amqp":
        rows = _amqp(opts)
    elif opts.what in ("builds", "pushes"):
        from cellplane.cli.logs import configure_logging
        from cellplane.federation.bench_instances import BACKENDS, LAYOUTS, run_instance_bench

        if getattr(opts, "log_level", "info") == "info":
            # A line per build step would swamp the figures (and cost CPU in the run).
            configure_logging(getattr(opts, "log_format", "console"), "warning")

        rows = run_instance_bench(
            opts.what,
            opts.n,
            list(BACKENDS) if opts.backend == "both" else [opts.backend],
            list(LAYOUTS) if opts.layout == "both" else [opts.layout],
            batch=getattr(opts, "batch", 1),
            concurrency=getattr(opts, "concurrency", 64),
        )
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
