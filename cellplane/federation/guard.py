"""What a neighbour may send: checks at the link edge, before anything is routed.

A child may only send upward envelopes whose route ends at that child (so they
come from its subtree); a parent may only send downward ones that end at that
parent. Anything else is refused here and never reaches the router.
"""

from __future__ import annotations

from cellplane.errors import InvalidArgument, PermissionDenied, ProtocolError
from cellplane.federation import envelopes, paths
from cellplane.federation.channel import PeerChannel, Relation
from cellplane.v1 import link_pb2

MAX_HOPS_LIMIT = 64
_KINDS = {envelopes.TARGETED, envelopes.BROADCAST, envelopes.RESPONSE}


def check(channel: PeerChannel, env: link_pb2.Envelope, my_name: str) -> None:
    """Raise if ``env`` may not arrive from ``channel``'s neighbour."""
    if env.kind not in _KINDS:
        raise ProtocolError(f"envelope {env.id}: unknown kind {env.kind}")
    expected = envelopes.UP if channel.relation is Relation.CHILD else envelopes.DOWN
    if env.direction != expected:
        raise PermissionDenied(
            f"envelope {env.id}: a {channel.relation.value} may only send "
            f"{'up' if expected == envelopes.UP else 'down'}ward"
        )
    paths.validate(env.routing_path, "routing path")
    if paths.last(env.routing_path) != channel.peer:
        raise PermissionDenied(
            f"envelope {env.id}: routing path {env.routing_path!r} does not end at the "
            f"sending cell {channel.peer!r}"
        )
    if my_name in paths.hops(env.routing_path):
        raise PermissionDenied(f"envelope {env.id}: routing path {env.routing_path!r} loops")
    if not 0 < env.max_hops <= MAX_HOPS_LIMIT:
        raise InvalidArgument(f"envelope {env.id}: max_hops must be in 1..{MAX_HOPS_LIMIT}")
    payload = env.WhichOneof("payload")
    if payload is None:
        raise InvalidArgument(f"envelope {env.id}: no payload")
    if (payload == "response") != (env.kind == envelopes.RESPONSE):
        raise InvalidArgument(f"envelope {env.id}: payload {payload} does not fit its kind")
    if env.kind != envelopes.BROADCAST:
        paths.validate(env.target_path, "target path")
