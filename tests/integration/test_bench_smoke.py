"""``cellplane bench links`` end to end on tiny sizes: every row is there, every
broadcast round was answered by every cell, and no host process is left behind.
No timing thresholds: the figures depend on the machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cellplane.federation.bench import run_link_bench

CELLS = 5
ROUNDS = 3
N = 2000


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_link_bench_reports_every_measure_and_fully_answered_broadcasts() -> None:
    before = set(_children_of(os.getpid()))
    rows = run_link_bench(n=N, cells=CELLS, rounds=ROUNDS)

    json.dumps(rows)  # the CLI's --json must be able to print them
    by_measure = {row["measure"]: row for row in rows}
    assert len(by_measure) == len(rows)
    assert list(by_measure) == [
        "raw grpc stream, 1 msg/frame",
        "raw grpc stream, 100 msgs/frame",
        "raw grpc stream round trip",
        "targeted envelopes, 1 hop",
        "call round trip, 1 hop",
        "targeted envelopes, 2 hops",
        "call round trip, 2 hops",
        f"broadcast with response, {CELLS} cells",
        "machine",
    ]

    machine = by_measure["machine"]
    assert machine["cpus"] == os.cpu_count()
    assert machine["python"] and machine["grpc"]

    for name in ("raw grpc stream, 1 msg/frame", "raw grpc stream, 100 msgs/frame"):
        row = by_measure[name]
        assert row["msgs_per_s"] > 0 and row["count"] > 0 and row["reference"]
    for hops in ("1 hop", "2 hops"):
        sent = by_measure[f"targeted envelopes, {hops}"]
        assert sent["count"] == N and sent["envelopes_per_s"] > 0 and sent["aim"]
    for name in ("raw grpc stream round trip", "call round trip, 1 hop", "call round trip, 2 hops"):
        row = by_measure[name]
        assert row["count"] > 0
        assert 0 < row["p50_us"] <= row["p99_us"]

    broadcast = by_measure[f"broadcast with response, {CELLS} cells"]
    assert broadcast["count"] == ROUNDS
    assert broadcast["answered"] == f"{CELLS}/{CELLS}"
    assert broadcast["complete_rounds"] == f"{ROUNDS}/{ROUNDS}"
    assert 0 < broadcast["p50_ms"] <= broadcast["p99_ms"]

    assert set(_children_of(os.getpid())) <= before  # every host process was ended
