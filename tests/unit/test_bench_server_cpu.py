"""The instance benchmarks count the CPU of the local servers' processes too
(``server_cpu_us`` on RabbitMQ + PostgreSQL), read from /proc by command name."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from cellplane.federation import bench_instances
from cellplane.federation.bench_instances import _CpuMeter, commands_cpu

BUSY = 0.3  # seconds of CPU to burn


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _own_command() -> str:
    return Path("/proc/self/comm").read_text().strip()


def test_the_cpu_of_processes_is_read_by_command_name() -> None:
    mine = _own_command()
    before = commands_cpu((mine,))
    _burn(BUSY)
    after = commands_cpu((mine,))
    assert os.getpid() in before and os.getpid() in after
    # /proc counts in clock ticks (10 ms here): allow two of them.
    assert after[os.getpid()] - before[os.getpid()] >= BUSY - 0.02
    assert commands_cpu(("no-such-command",)) == {}


def test_the_meter_reports_the_servers_cpu_per_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench_instances, "SERVERS", {"this": (_own_command(),)})

    async def measure() -> dict[str, object]:
        meter = _CpuMeter({}, None, servers=True)
        await meter.start()
        _burn(BUSY)
        return await meter.per_op(1000)

    row = asyncio.run(measure())
    label, per_op = str(row["server_cpu_us"]).split()
    assert label == "this"
    assert int(per_op) >= (BUSY - 0.02) * 1e6 / 1000  # µs of the servers per operation


def test_a_server_with_no_process_here_has_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_instances, "SERVERS", {"elsewhere": ("no-such-command",)})

    async def measure() -> dict[str, object]:
        meter = _CpuMeter({}, None, servers=True)
        await meter.start()
        return await meter.per_op(1)

    assert asyncio.run(measure())["server_cpu_us"] == "elsewhere -"


def test_without_servers_there_is_no_server_figure() -> None:
    async def measure() -> dict[str, object]:
        meter = _CpuMeter({}, None)
        await meter.start()
        return await meter.per_op(1)

    assert "server_cpu_us" not in asyncio.run(measure())
