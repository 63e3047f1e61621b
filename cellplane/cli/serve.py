"""``cellplane serve``: one cell from a config file, or the whole demo federation."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog

from cellplane.catalog import DEFAULT_IMAGES
from cellplane.config import CellConfig
from cellplane.demo import default_data_dir, demo_configs, with_parent
from cellplane.service import Cell

NEXT_STEPS = """
cellplane demo federation is up: API cell at {address} (data in {data_dir})
API tokens: demo-token (project demo), admin-token (admin)

  export CELLPLANE_TOKEN=admin-token
  cellplane --server {address} tree
  cellplane --server {address} instance create web --flavor 1 --image {image} --wait
  cellplane --server {address} instance list

  grpcurl -plaintext {address} list
  grpcurl -plaintext -H 'authorization: Bearer demo-token' \\
      -d '{{"name": "web", "flavor_id": "1", "image_id": "{image}"}}' \\
      {address} cellplane.v1.ComputeService/CreateInstances

Ctrl-C stops it.
"""


async def run_cells(cells: list[Cell], stop: asyncio.Event) -> None:
    """Start ``cells`` in order, wait for ``stop``, then stop them children first."""
    started: list[Cell] = []
    try:
        for cell in cells:
            await cell.start()
            started.append(cell)
        await stop.wait()
    finally:
        for cell in reversed(started):
            await cell.stop()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_one(config: CellConfig) -> None:
    """Run one cell until SIGINT or SIGTERM."""
    stop = _stop_event()
    await run_cells([Cell(config)], stop)


async def serve_demo(data_dir: Path | None, listen: str, report_interval: float = 5.0) -> None:
    """Run the demo federation until SIGINT or SIGTERM."""
    data_dir = data_dir or default_data_dir()
    stop = _stop_event()
    log = structlog.get_logger()
    cells: dict[str, Cell] = {}
    try:
        for demo in demo_configs(data_dir, listen, report_interval):
            config = demo.config
            if demo.parent is not None:
                config = with_parent(demo, cells[demo.parent].address)
            cell = Cell(config)
            await cell.start()
            cells[demo.name] = cell
        await _wait_links_up(list(cells.values()))
        api = cells["api"]
        image = DEFAULT_IMAGES[0][0]
        print(NEXT_STEPS.format(address=api.address, data_dir=data_dir, image=image), flush=True)
        log.info("demo_ready", address=api.address)
        await stop.wait()
    finally:
        for cell in reversed(list(cells.values())):
            await cell.stop()


async def _wait_links_up(cells: list[Cell], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(ch.state.value == "up" for c in cells for ch in c.neighbours.all()):
            return
        await asyncio.sleep(0.05)
