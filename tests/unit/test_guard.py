"""What a neighbour may send: each forbidden envelope is refused with the right error."""

from __future__ import annotations

from typing import Any

import pytest

from cellplane.errors import CellplaneError, InvalidArgument, PermissionDenied, ProtocolError
from cellplane.federation import envelopes, guard
from cellplane.federation.channel import Cursor, PeerChannel, Relation
from cellplane.v1 import link_pb2

ME = "eu"


def child() -> PeerChannel:
    return PeerChannel("eu-a", Relation.CHILD, "epoch", Cursor())


def parent() -> PeerChannel:
    return PeerChannel("api", Relation.PARENT, "epoch", Cursor())


def from_child(**fields: Any) -> link_pb2.Envelope:
    """A well-formed targeted envelope from child eu-a to this cell, then ``fields``."""
    env = link_pb2.Envelope(
        id="e1",
        kind=envelopes.TARGETED,
        direction=envelopes.UP,
        routing_path="eu-a",
        target_path="eu-a!eu",
        max_hops=16,
        echo=link_pb2.Echo(sequence=1),
    )
    for name, value in fields.items():
        if name == "no_payload":
            env.ClearField("echo")
        elif name == "response":
            env.response.CopyFrom(value)
        else:
            setattr(env, name, value)
    return env


def refused(channel: PeerChannel, env: link_pb2.Envelope) -> CellplaneError:
    with pytest.raises(CellplaneError) as excinfo:
        guard.check(channel, env, ME)
    return excinfo.value


def test_well_formed_envelopes_pass() -> None:
    guard.check(child(), from_child(), ME)
    guard.check(child(), from_child(routing_path="leaf!eu-a"), ME)  # from eu-a's subtree
    guard.check(child(), from_child(kind=envelopes.BROADCAST, target_path=""), ME)
    guard.check(child(), from_child(max_hops=guard.MAX_HOPS_LIMIT), ME)
    down = from_child(direction=envelopes.DOWN, routing_path="api", target_path="api!eu")
    guard.check(parent(), down, ME)
    answer = from_child(kind=envelopes.RESPONSE, response=link_pb2.Response())
    guard.check(child(), answer, ME)


def test_a_child_sending_downward_is_denied() -> None:
    exc = refused(child(), from_child(direction=envelopes.DOWN))
    assert type(exc) is PermissionDenied
    assert "child may only send upward" in str(exc)


def test_a_parent_sending_upward_is_denied() -> None:
    exc = refused(parent(), from_child(routing_path="api"))
    assert type(exc) is PermissionDenied
    assert "parent may only send downward" in str(exc)


@pytest.mark.parametrize("routing_path", ["us", "eu-a!us", "api"])
def test_a_routing_path_not_ending_at_the_sender_is_denied(routing_path: str) -> None:
    exc = refused(child(), from_child(routing_path=routing_path))
    assert type(exc) is PermissionDenied
    assert "does not end at the sending cell 'eu-a'" in str(exc)


def test_a_route_through_this_cell_is_a_loop() -> None:
    exc = refused(child(), from_child(routing_path="eu!x!eu-a"))
    assert type(exc) is PermissionDenied
    assert "loops" in str(exc)


def test_an_invalid_routing_path_is_refused() -> None:
    exc = refused(child(), from_child(routing_path="Bad!eu-a"))
    assert type(exc) is InvalidArgument
    assert "routing path" in str(exc)


@pytest.mark.parametrize("max_hops", [0, guard.MAX_HOPS_LIMIT + 1, 1000])
def test_max_hops_out_of_range_is_refused(max_hops: int) -> None:
    exc = refused(child(), from_child(max_hops=max_hops))
    assert type(exc) is InvalidArgument
    assert "max_hops" in str(exc)


def test_a_missing_payload_is_refused() -> None:
    exc = refused(child(), from_child(no_payload=True))
    assert type(exc) is InvalidArgument
    assert "no payload" in str(exc)


def test_a_response_payload_on_a_targeted_envelope_is_refused() -> None:
    exc = refused(child(), from_child(response=link_pb2.Response()))
    assert type(exc) is InvalidArgument
    assert "does not fit its kind" in str(exc)


def test_a_response_without_a_response_payload_is_refused() -> None:
    exc = refused(child(), from_child(kind=envelopes.RESPONSE))
    assert type(exc) is InvalidArgument


def test_an_unknown_kind_is_a_protocol_error() -> None:
    exc = refused(child(), from_child(kind=link_pb2.ENVELOPE_KIND_UNSPECIFIED))
    assert type(exc) is ProtocolError


def test_a_targeted_envelope_needs_a_valid_target() -> None:
    exc = refused(child(), from_child(target_path=""))
    assert type(exc) is InvalidArgument
    assert "target path" in str(exc)
