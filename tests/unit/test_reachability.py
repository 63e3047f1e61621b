"""Which cells below can be reached, as a cell knows it: its own links and mute
children, and what each reachable child reports of its subtree
(``CapacityReport.unreachable``), passed on level by level."""

from __future__ import annotations

from typing import Any

from cellplane.federation.channel import Cursor, LinkState, Relation
from cellplane.federation.dispatch import Delivery
from cellplane.federation.neighbours import Neighbours
from cellplane.federation.reports import ChildReport, StateManager
from cellplane.v1 import link_pb2


def _cell(name: str, children: list[str]) -> StateManager:
    neighbours = Neighbours("epoch-1", lambda peer: Cursor())
    for child in children:
        neighbours.add(child, Relation.CHILD).state = LinkState.UP
    sessions: Any = None  # nothing here touches the database
    return StateManager(name, neighbours, sessions, lambda target, body: None)


def _report(parent: StateManager, child: str, unreachable: list[str]) -> None:
    """``child`` reports to ``parent`` the cells it cannot reach below it."""
    env = link_pb2.Envelope(
        routing_path=f"{child}!{parent.name}",
        capacity_report=link_pb2.CapacityReport(cell_path=child, unreachable=unreachable),
    )
    parent.on_capacity_report(env, Delivery(env, parent.name))


def test_a_cell_down_two_levels_below_is_unreachable_at_the_top_and_only_it() -> None:
    mid = _cell("eu-west", ["eu-west-a", "eu-west-b"])
    api = _cell("api", ["eu-west", "us-east"])
    assert mid.unreachable_below() == []

    mid.neighbours.get("eu-west-a", Relation.CHILD).state = LinkState.DOWN  # type: ignore[union-attr]
    assert mid.unreachable_below() == ["eu-west-a"]
    _report(api, "eu-west", mid.unreachable_below())

    assert api.unreachable_below() == ["eu-west!eu-west-a"]
    assert not api.reachable("api!eu-west!eu-west-a")
    assert not api.reachable("api!eu-west!eu-west-a!rack1")  # and everything under it
    assert api.reachable("api!eu-west!eu-west-b")
    assert api.reachable("api!eu-west")
    assert api.reachable("api!us-east")
    assert api.reachable("api")

    # It comes back: the next report says so.
    mid.neighbours.get("eu-west-a", Relation.CHILD).state = LinkState.UP  # type: ignore[union-attr]
    _report(api, "eu-west", mid.unreachable_below())
    assert api.unreachable_below() == []
    assert api.reachable("api!eu-west!eu-west-a")


def test_three_levels_pass_on_what_they_hear() -> None:
    leaf = _cell("eu-west-a", ["rack1", "rack2"])
    mid = _cell("eu-west", ["eu-west-a"])
    api = _cell("api", ["eu-west"])
    leaf.children["rack2"] = ChildReport(mute=True)  # silent past the mute interval
    assert leaf.unreachable_below() == ["rack2"]  # mute counts as unreachable
    _report(mid, "eu-west-a", leaf.unreachable_below())
    _report(api, "eu-west", mid.unreachable_below())

    assert api.unreachable_below() == ["eu-west!eu-west-a!rack2"]
    assert not api.reachable("api!eu-west!eu-west-a!rack2")
    assert api.reachable("api!eu-west!eu-west-a!rack1")
    assert api.reachable("api!eu-west!eu-west-a")


def test_a_child_that_cannot_be_reached_hides_what_it_said_before() -> None:
    mid = _cell("eu-west", ["eu-west-a"])
    api = _cell("api", ["eu-west"])
    mid.neighbours.get("eu-west-a", Relation.CHILD).state = LinkState.DOWN  # type: ignore[union-attr]
    _report(api, "eu-west", mid.unreachable_below())
    api.neighbours.get("eu-west", Relation.CHILD).state = LinkState.DOWN  # type: ignore[union-attr]

    # The whole branch is unreachable; it is named once, by the child the API cell lost.
    assert api.unreachable_below() == ["eu-west"]
    assert not api.reachable("api!eu-west")
    assert not api.reachable("api!eu-west!eu-west-a")
