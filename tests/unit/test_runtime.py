"""The interpreter settings a cellplane process starts with."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellplane.cli import main as cli_main
from cellplane.cli.runtime import GC_YOUNG_THRESHOLD, configure_runtime, event_loop_name


@pytest.fixture(autouse=True)
def defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Python's own settings before each test, and whatever was set put back after."""
    before = gc.get_threshold()
    policy = asyncio.get_event_loop_policy()
    gc.set_threshold(700, 10, 10)
    asyncio.set_event_loop_policy(None)
    monkeypatch.delenv("CELLPLANE_EVENT_LOOP", raising=False)
    # Logging set-up is global (and cached by structlog): other tests capture logs.
    monkeypatch.setattr(cli_main, "configure_logging", lambda *args: None)
    yield
    gc.set_threshold(*before)
    asyncio.set_event_loop_policy(policy)


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_the_young_generation_grows_and_the_ratios_stay() -> None:
    configure_runtime()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.isenabled()


def test_cells_run_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    assert configure_runtime() == "uvloop"
    assert event_loop_name() == "uvloop"
    assert asyncio.run(_loop_module()) == "uvloop"


def test_asyncio_s_own_loop_on_request() -> None:
    assert configure_runtime("asyncio") == "asyncio"
    assert event_loop_name() == "asyncio"
    assert asyncio.run(_loop_module()) == "asyncio"


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="uvloop, asyncio"):
        configure_runtime("trio")


def test_a_cli_command_runs_with_it(tmp_path: Path) -> None:
    assert cli_main.main(["certs", "create", "--out", str(tmp_path), "api"]) == 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert event_loop_name() == "uvloop"


def test_the_cli_takes_the_loop_from_its_option_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        cli_main.main(["--event-loop", "asyncio", "certs", "create", "--out", str(tmp_path), "a"])
        == 0
    )
    assert event_loop_name() == "asyncio"
    monkeypatch.setenv("CELLPLANE_EVENT_LOOP", "uvloop")
    assert cli_main.main(["certs", "create", "--out", str(tmp_path), "b"]) == 0
    assert event_loop_name() == "uvloop"
    monkeypatch.setenv("CELLPLANE_EVENT_LOOP", "asyncio")
    assert cli_main.main(["certs", "create", "--out", str(tmp_path), "c"]) == 0
    assert event_loop_name() == "asyncio"
