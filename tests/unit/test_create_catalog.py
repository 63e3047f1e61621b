"""Creates take their flavor and image from a short-lived copy of what was read: one
read serves the creates of USABLE_FOR seconds; what was refused is read every time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cellplane import catalog, db
from cellplane.api import compute
from cellplane.api.compute import ComputeServicer
from cellplane.errors import InvalidArgument
from cellplane.v1 import compute_pb2

FLAVOR_ID = catalog.DEFAULT_FLAVORS[0][0]
IMAGE_ID = catalog.DEFAULT_IMAGES[0][0]


@pytest.fixture
def servicer(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    db.upgrade(url)
    engine = db.create_engine(url)
    sessions = db.make_session_factory(engine)
    catalog.seed(sessions, images=True)
    servicer = ComputeServicer(SimpleNamespace(sessions=sessions), auth=None, view=None)  # type: ignore[arg-type]
    reads: list[tuple[str, str]] = []
    read = servicer._flavor_and_image

    def counted(request: compute_pb2.CreateInstancesRequest) -> Any:
        reads.append((request.flavor_id, request.image_id))
        return read(request)

    servicer._flavor_and_image = counted  # type: ignore[method-assign]
    servicer.reads = reads
    yield servicer
    engine.dispose()


def usable(servicer: Any, flavor_id: str, image_id: str) -> Any:
    request = compute_pb2.CreateInstancesRequest(name="x", flavor_id=flavor_id, image_id=image_id)
    return servicer._usable_pair((flavor_id, image_id), request)


def test_one_read_serves_the_creates_that_follow(servicer: Any) -> None:
    first = usable(servicer, FLAVOR_ID, IMAGE_ID)
    again = usable(servicer, FLAVOR_ID, IMAGE_ID)
    assert again == first
    assert first[0].flavor_id == FLAVOR_ID and first[1].uuid == IMAGE_ID
    assert servicer.reads == [(FLAVOR_ID, IMAGE_ID)]


def test_the_copy_is_read_again_once_old(servicer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute, "USABLE_FOR", 0.0)
    usable(servicer, FLAVOR_ID, IMAGE_ID)
    usable(servicer, FLAVOR_ID, IMAGE_ID)
    assert servicer.reads == [(FLAVOR_ID, IMAGE_ID)] * 2


def test_what_was_refused_is_read_every_time(servicer: Any) -> None:
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="does not exist"):
            usable(servicer, "no-such-flavor", IMAGE_ID)
    assert servicer.reads == [("no-such-flavor", IMAGE_ID)] * 2
