"""The neighbours of a cell: one channel per parent and per child."""

from __future__ import annotations

from collections.abc import Callable

from cellplane.federation.channel import Cursor, PeerChannel, Relation


class Neighbours:
    """Channels to this cell's parents and children, changed at run time by the admin API."""

    def __init__(self, epoch: str, load_cursor: Callable[[str], Cursor]) -> None:
        self.epoch = epoch
        self._load_cursor = load_cursor
        self._channels: dict[Relation, dict[str, PeerChannel]] = {
            Relation.PARENT: {},
            Relation.CHILD: {},
        }
        self.disabled: set[str] = set()

    def add(self, name: str, relation: Relation) -> PeerChannel:
        """The channel to ``name`` (created, with its persisted cursor, on first use)."""
        group = self._channels[relation]
        channel = group.get(name)
        if channel is None:
            channel = PeerChannel(name, relation, self.epoch, self._load_cursor(name))
            group[name] = channel
        return channel

    def remove(self, name: str) -> PeerChannel | None:
        """Forget ``name``; returns its channel so the caller can close its stream."""
        for group in self._channels.values():
            if name in group:
                return group.pop(name)
        return None

    def get(self, name: str, relation: Relation) -> PeerChannel | None:
        """The channel to neighbour ``name`` in ``relation``, if configured."""
        return self._channels[relation].get(name)

    def parents(self) -> list[PeerChannel]:
        """Channels to every parent."""
        return list(self._channels[Relation.PARENT].values())

    def children(self) -> list[PeerChannel]:
        """Channels to every child."""
        return list(self._channels[Relation.CHILD].values())

    def all(self) -> list[PeerChannel]:
        """Every channel."""
        return self.parents() + self.children()
