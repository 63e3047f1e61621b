"""How this cell describes itself and its links (for GetTree, ListCells, capacities)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from cellplane.federation import paths
from cellplane.federation.channel import LinkState, PeerChannel
from cellplane.federation.reports import StateManager, capability_list
from cellplane.v1 import types_pb2

LINK_STATES = {
    LinkState.DOWN: types_pb2.LINK_STATE_DOWN,
    LinkState.CONNECTING: types_pb2.LINK_STATE_CONNECTING,
    LinkState.UP: types_pb2.LINK_STATE_UP,
}


def timestamp(seconds: float) -> Timestamp | None:
    """A protobuf timestamp, or None for "never"."""
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def child_node(path: str, channel: PeerChannel, state: StateManager) -> types_pb2.CellNode:
    """What this cell knows of one child: link state, mute, its last reports."""
    report = state.children.get(channel.peer)
    node = types_pb2.CellNode(
        name=channel.peer,
        path=paths.join(path, channel.peer),
        link_state=LINK_STATES[channel.state],
        mute=state.is_mute(channel.peer),
        last_seen=timestamp(max(channel.last_seen, report.received_at if report else 0.0)),
    )
    if report is not None:
        node.capabilities.extend(capability_list(report.capabilities))
        node.capacity.CopyFrom(report.capacity)
    return node


def own_node(path: str, children: list[PeerChannel], state: StateManager) -> types_pb2.CellNode:
    """This cell with its own capacity and capabilities and its direct children."""
    node = types_pb2.CellNode(
        name=paths.last(path),
        path=path,
        link_state=types_pb2.LINK_STATE_UP,
        capacity=state.subtree_capacity(),
    )
    node.capabilities.extend(capability_list(state.subtree_capabilities()))
    node.children.extend(child_node(path, channel, state) for channel in children)
    return node


def assemble_tree(
    root: types_pb2.CellNode, nodes: dict[str, types_pb2.CellNode]
) -> types_pb2.CellNode:
    """Replace each child stub of ``root`` by the node that cell sent about itself
    (recursively); a child that did not answer keeps its parent's view of it."""
    for child in root.children:
        own = nodes.get(child.path)
        if own is None:
            continue
        link_state, mute, last_seen = child.link_state, child.mute, child.last_seen
        child.CopyFrom(own)
        # The link state and mute flag are the parent's view of the link.
        child.link_state, child.mute = link_state, mute
        child.last_seen.CopyFrom(last_seen)
        assemble_tree(child, nodes)
    return root
