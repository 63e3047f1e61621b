"""A cell started on an address already in use is refused, with the address named;
it never shares the port with the cell that holds it (gRPC would allow that)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellplane.config import CellConfig
from cellplane.errors import Unavailable
from cellplane.service import Cell


def _cell(tmp_path: Path, name: str, listen: str = "127.0.0.1:0") -> Cell:
    return Cell(
        CellConfig(name=name, database_url=f"sqlite:///{tmp_path / name}.db", listen=listen)
    )


def test_a_cell_on_an_address_in_use_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        first = _cell(tmp_path, "top")
        await first.start()
        try:
            second = _cell(tmp_path, "again", first.address)
            with pytest.raises(Unavailable, match=f"cannot listen on {first.address}"):
                await second.start()
            await second.stop(grace=0.1)
        finally:
            await first.stop(grace=0.2)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_cell_that_fails_to_stop_cleanly_still_gives_its_port_back(tmp_path: Path) -> None:
    async def main() -> None:
        first = _cell(tmp_path, "top")
        await first.start()

        async def broken() -> None:
            raise RuntimeError("router would not stop")

        first.router.stop = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="router would not stop"):
            await first.stop(grace=0.1)
        again = _cell(tmp_path, "top", first.address)
        await again.start()
        await again.stop(grace=0.1)

    asyncio.run(asyncio.wait_for(main(), 30))
