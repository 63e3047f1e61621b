"""``cellplane certs create``: a CA and one certificate per cell, for mutual TLS links."""

from __future__ import annotations

import argparse
from pathlib import Path

from cellplane.federation.pki import CELL_SAN_SUFFIX, create_deployment_certs


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``certs``."""
    certs = sub.add_parser("certs", help="make TLS certificates for cells")
    verbs = certs.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="a CA (kept if present) and a cert per cell")
    create.add_argument("--out", type=Path, required=True)
    create.add_argument(
        "--host",
        action="append",
        default=[],
        help="extra DNS name or IP for every cert (default localhost,127.0.0.1)",
    )
    create.add_argument("cells", nargs="+")


def run(opts: argparse.Namespace) -> int:
    """Write the certificates."""
    hosts = tuple(opts.host) or ("localhost", "127.0.0.1")
    made = create_deployment_certs(opts.out, list(opts.cells), hosts=hosts)
    for name, (cert, key) in made.items():
        print(f"{name}: {cert} {key}")
    print(f"each cell certificate names its cell as DNS:<cell>{CELL_SAN_SUFFIX}")
    return 0
