"""The interpreter settings a cellplane process starts with."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellplane.cli import main as cli_main
from cellplane.cli.runtime import GC_YOUNG_THRESHOLD, configure_runtime


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_the_young_generation_grows_and_the_ratios_stay() -> None:
    configure_runtime()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.isenabled()


def test_a_cli_command_runs_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Logging set-up is global (and cached by structlog): other tests capture logs.
    monkeypatch.setattr(cli_main, "configure_logging", lambda *args: None)
    assert cli_main.main(["certs", "create", "--out", str(tmp_path), "api"]) == 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
