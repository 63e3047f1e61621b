"""``cellplane bench builds`` and ``bench pushes`` with tiny counts on the embedded
backend: the rows have their shape, every build ends active, every push arrives."""

from __future__ import annotations

from cellplane.federation.bench_instances import run_instance_bench

FIGURES = {"measure", "backend", "layout", "n", "per_s", "p50_ms", "p99_ms", "cpu_us", "aim"}


def _check_rows(rows: list[dict[str, object]], what: str) -> dict[str, object]:
    assert rows[0]["measure"] == "machine" and rows[0]["cpus"]
    assert len(rows) == 2
    row = rows[1]
    assert set(row) >= FIGURES, row
    assert row["measure"] == what and row["backend"] == "embedded"
    assert isinstance(row["per_s"], int) and row["per_s"] > 0
    assert 0 <= row["p50_ms"] <= row["p99_ms"]  # type: ignore[operator]
    assert isinstance(row["cpu_us"], int) and row["cpu_us"] > 0  # CPU per build or push
    assert str(row["cpu_us_by_process"]).startswith("api+bench ")
    return row


def test_bench_builds_every_build_becomes_active() -> None:
    rows = run_instance_bench("builds", 6, ["embedded"], ["one-process"], batch=2, concurrency=2)
    row = _check_rows(rows, "builds")
    assert row["n"] == 6 and row["active"] == 6 and row["failed"] == 0
    assert row["layout"] == "one-process" and row["batch"] == 2


def test_bench_pushes_every_push_arrives_from_leaf_processes() -> None:
    rows = run_instance_bench("pushes", 40, ["embedded"], ["multi-process"])
    row = _check_rows(rows, "pushes")
    assert row["n"] == 40  # counted only once every change was seen at the top
    assert row["layout"] == "multi-process"
