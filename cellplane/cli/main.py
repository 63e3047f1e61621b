"""``cellplane``: run cells, inspect and change the tree, measure."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc

from cellplane.cli import admin, instances
from cellplane.cli.logs import configure_logging
from cellplane.cli.runtime import EVENT_LOOPS, configure_runtime
from cellplane.config import ROLES, load_config
from cellplane.errors import CellplaneError

DEFAULT_SERVER = "127.0.0.1:50051"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="cellplane", description=__doc__)
    parser.add_argument("--log-format", choices=["console", "json"], default="console")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="address of a cell's gRPC server")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per request")
    parser.add_argument(
        "--ca", type=Path, help="CA certificate (PEM) to verify the server with: talk TLS"
    )
    parser.add_argument(
        "--cert", type=Path, help="client certificate (PEM) for a server that requires mTLS"
    )
    parser.add_argument("--key", type=Path, help="private key (PEM) of --cert")
    parser.add_argument(
        "--token",
        default=os.environ.get("CELLPLANE_TOKEN", ""),
        help="bearer token for the API (default: $CELLPLANE_TOKEN)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=os.environ.get("CELLPLANE_EVENT_LOOP", "uvloop"),
        help="asyncio event loop of this process (default: $CELLPLANE_EVENT_LOOP or uvloop)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one cell, or with no --config the demo federation")
    serve.add_argument("--config", type=Path, help="TOML config of one cell")
    serve.add_argument("--roles", help=f"comma-separated subset of {','.join(ROLES)}")
    serve.add_argument("--listen", help="host:port to serve on (demo: the API cell's)")
    serve.add_argument("--data-dir", type=Path, help="demo only: where the SQLite files go")

    dbp = sub.add_parser("db", help="database schema")
    dbverbs = dbp.add_subparsers(dest="verb", required=True)
    upgrade = dbverbs.add_parser("upgrade", help="migrate the cell's database to the newest schema")
    upgrade.add_argument("--config", type=Path)
    upgrade.add_argument("--revision", default="head")

    admin.add_parsers(sub)
    instances.add_parsers(sub)

    from cellplane.cli import bench, certs

    bench.add_parser(sub)
    certs.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellplane`` console script."""
    opts = build_parser().parse_args(argv)
    configure_logging(opts.log_format, opts.log_level)
    configure_runtime(opts.event_loop)
    try:
        return _dispatch(opts)
    except CellplaneError as exc:
        print(f"cellplane: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "?"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"cellplane: {code}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(opts: argparse.Namespace) -> int:
    if opts.command == "serve":
        return _serve(opts)
    if opts.command == "db":
        cfg = load_config(opts.config, os.environ)
        from cellplane import db

        db.upgrade(cfg.database_url, opts.revision)
        print(f"{cfg.name}: database at {db.current(cfg.database_url)}")
        return 0
    if opts.command in {"instance", "flavor", "image"}:
        with admin.open_channel(opts) as channel:
            return instances.run(opts, channel)
    if opts.command in {"cells", "tree"}:
        return admin.run(opts)
    if opts.command == "bench":
        from cellplane.cli import bench

        return bench.run(opts)
    if opts.command == "certs":
        from cellplane.cli import certs

        return certs.run(opts)
    raise SystemExit(f"unknown command {opts.command}")


def _serve(opts: argparse.Namespace) -> int:
    from cellplane.cli.serve import serve_demo, serve_one

    if opts.config is None and "CELLPLANE_NAME" not in os.environ:
        asyncio.run(serve_demo(opts.data_dir, opts.listen or DEFAULT_SERVER))
        return 0
    cfg = load_config(opts.config, os.environ)
    if opts.roles:
        cfg = cfg.with_roles(tuple(r.strip() for r in opts.roles.split(",")))
    if opts.listen:
        from dataclasses import replace

        cfg = replace(cfg, listen=opts.listen)
    asyncio.run(serve_one(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
