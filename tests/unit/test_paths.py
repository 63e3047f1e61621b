"""Cell paths: next hops down and up the tree, and paths refused as invalid."""

from __future__ import annotations

import pytest

from cellplane.errors import InvalidArgument
from cellplane.federation import paths


@pytest.mark.parametrize(
    ("routing_path", "target_path", "hop"),
    [
        # Down from the top: the routing path is where the envelope is now.
        ("api", "api!eu!eu-a", "eu"),
        ("api!eu", "api!eu!eu-a", "eu-a"),
        ("api", "api!us", "us"),
        # Up from a leaf, written bottom-up.
        ("eu-a", "eu-a!eu!api", "eu"),
        ("eu-a!eu", "eu-a!eu!api", "api"),
        ("edge", "edge!us", "us"),
    ],
)
def test_next_hop_is_the_following_cell_of_the_target(
    routing_path: str, target_path: str, hop: str
) -> None:
    assert paths.next_hop(routing_path, target_path) == hop


@pytest.mark.parametrize("path", ["api", "api!eu!eu-a", "eu-a!eu!api"])
def test_next_hop_is_none_at_the_target(path: str) -> None:
    assert paths.next_hop(path, path) is None


@pytest.mark.parametrize(
    ("routing_path", "target_path"),
    [
        ("api!us", "api!eu!eu-a"),  # went down the wrong branch
        ("api!eu!eu-a", "api!eu"),  # already past the target
        ("api!eu", "api!eu-a"),  # a prefix of a name is not a hop
        ("eu", "api!eu"),  # the target does not start where the envelope started
    ],
)
def test_next_hop_refuses_a_target_off_the_route(routing_path: str, target_path: str) -> None:
    with pytest.raises(InvalidArgument, match="not reachable"):
        paths.next_hop(routing_path, target_path)


@pytest.mark.parametrize("path", ["api", "api!eu!eu-a", "a", "cell_1!cell-2", "0" * 63])
def test_validate_accepts_paths_of_valid_cell_names(path: str) -> None:
    assert paths.validate(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "api!!eu",  # empty hop
        "!api",
        "api!",
        "API!eu",  # upper case
        "api!eu.west",  # dots are for hosts
        "api!eu@west",
        "-api",  # must start with a letter or digit
        "api!" + "a" * 64,  # too long
        "api eu",
    ],
)
def test_validate_refuses_invalid_paths(path: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        paths.validate(path, "target path")
    assert type(excinfo.value) is InvalidArgument
    assert "target path" in str(excinfo.value)


def test_join_hops_reverse_and_last_agree() -> None:
    path = paths.join("api", "", "eu", "eu-a")
    assert path == "api!eu!eu-a"
    assert paths.hops(path) == ["api", "eu", "eu-a"]
    assert paths.hops("") == []
    assert paths.reverse(path) == "eu-a!eu!api"
    assert paths.last(path) == "eu-a"
    assert paths.last("api") == "api"
