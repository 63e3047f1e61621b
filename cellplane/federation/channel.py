"""The state of the link to one neighbour, kept across reconnects.

Sending: every envelope gets the next sequence number of this process's epoch
and stays in ``unacked`` until the neighbour's cumulative ack covers it; after
a reconnect everything unacked is sent again, in order.

Receiving: an envelope is new if its seq is above the highest handled one of
the sender's epoch and its id was not seen recently; handled seqs are
persisted (with the batch's database work) before they are acked, so a
restarted receiver still drops what it handled before.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

from cellplane.v1 import link_pb2

Envelope = link_pb2.Envelope

# A frame holds envelopes up to a byte budget (FRAME_BYTES unless the link says): each
# counts its payload's bytes and ENVELOPE_OVERHEAD for its header (ids, paths, seq).
FRAME_BYTES = 1024 * 1024
ENVELOPE_OVERHEAD = 256
# Payloads a neighbour takes only if its Hello names them (see Hello.features).
OPTIONAL_PAYLOADS = frozenset({"instance_updates"})
RECENT_IDS = 65536  # how many envelope ids each channel remembers for duplicate checks


class Relation(enum.Enum):
    """How a neighbour relates to this cell."""

    PARENT = "parent"
    CHILD = "child"


class LinkState(enum.Enum):
    """Whether a stream to the neighbour is open."""

    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"


@dataclass
class Cursor:
    """How far this cell has handled what a neighbour sent."""

    epoch: str = ""
    last_seq: int = 0


class PeerChannel:
    """Send and receive state for one neighbour (parent or child)."""

    def __init__(self, peer: str, relation: Relation, epoch: str, cursor: Cursor) -> None:
        self.peer = peer
        self.relation = relation
        self.epoch = epoch
        self.state = LinkState.DOWN
        self.peer_path = ""  # the neighbour's path from the top, as it said in Hello
        self.peer_features: frozenset[str] = frozenset()  # optional payloads it takes
        self.max_message_bytes = 0  # the largest message both sides take (0: unknown)
        self.last_seen = 0.0  # time.time() of the last frame received
        self.on_acked: list[Callable[[list[Envelope]], None]] = []
        self.on_dropped: list[Callable[[list[Envelope]], None]] = []
        self._next_seq = 1
        self._unacked: OrderedDict[int, Envelope] = OrderedDict()
        self._queue: deque[Envelope] = deque()
        self._sizes: dict[int, int] = {}  # seq -> bytes of an unacked envelope
        self._work = asyncio.Event()
        self.cursor = cursor  # persisted receive position
        self._handled = Cursor(cursor.epoch, cursor.last_seq)  # handled, maybe not yet persisted
        self._ack_to_send: int | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.connection_count = 0

    # --- sending -------------------------------------------------------------------

    def send(self, env: Envelope, size: int | None = None) -> None:
        """Queue ``env`` for the neighbour; it is kept until acked (``size``: its
        payload's bytes, if the caller knows them)."""
        self._enqueue(env, env.ByteSize() if size is None else size)
        self._work.set()

    def send_many(self, envs: Iterable[Envelope], sizes: Iterable[int] | None = None) -> None:
        """Queue several envelopes at once (``sizes``: their payloads' bytes, in order,
        if the caller knows them), so that a frame stays under its byte budget."""
        envs = list(envs)
        measured = [env.ByteSize() for env in envs] if sizes is None else list(sizes)
        if len(measured) != len(envs):
            raise ValueError(f"{len(envs)} envelopes with {len(measured)} sizes")
        for env, size in zip(envs, measured, strict=True):
            self._enqueue(env, size)
        self._work.set()

    def _enqueue(self, env: Envelope, size: int) -> None:
        seq = env.seq = self._next_seq
        self._next_seq += 1
        self._unacked[seq] = env
        self._queue.append(env)
        self._sizes[seq] = size + ENVELOPE_OVERHEAD

    def drop_unacked(self, payloads: Container[str]) -> list[Envelope]:
        """Take back every unacked envelope whose payload is one of ``payloads`` (the
        neighbour said it does not take them) and tell the on_dropped listeners, whose
        job it is to send what they carried again in another form."""
        dropped = [env for env in self._unacked.values() if env.WhichOneof("payload") in payloads]
        if not dropped:
            return []
        for env in dropped:
            del self._unacked[env.seq]
            self._sizes.pop(env.seq, None)
        gone = {env.seq for env in dropped}
        self._queue = deque(env for env in self._queue if env.seq not in gone)
        for listener in self.on_dropped:
            listener(dropped)
        return dropped

    @property
    def unacked(self) -> int:
        """How many envelopes wait for the neighbour's ack."""
        return len(self._unacked)

    def apply_ack(self, ack: int) -> None:
        """Forget every envelope up to ``ack`` (cumulative) and tell the listeners."""
        if not self._unacked or ack < next(iter(self._unacked)):
            return
        done: list[Envelope] = []
        while self._unacked:
            seq = next(iter(self._unacked))
            if seq > ack:
                break
            done.append(self._unacked.pop(seq))
            self._sizes.pop(seq, None)
        for listener in self.on_acked:
            listener(done)

    def resume(self, peer_epoch: str, peer_last_seq: int) -> None:
        """Start a new connection: drop what the neighbour already had, re-queue the rest."""
        if peer_epoch == self.epoch:
            self.apply_ack(peer_last_seq)
        self._queue = deque(self._unacked.values())
        self._ack_to_send = self.cursor.last_seq if self.cursor.epoch else None
        self._work.set()

    async def next_frame(
        self, max_batch: int, max_bytes: int = FRAME_BYTES
    ) -> tuple[list[Envelope], int | None]:
        """Wait until there is something to send; return (envelopes, ack or None):
        at most ``max_batch`` envelopes, and no more than fit ``max_bytes`` (one always
        goes, whatever its size)."""
        while not self._queue and self._ack_to_send is None:
            self._work.clear()
            await self._work.wait()
        # Let producers that were woken with us add to this frame.
        await asyncio.sleep(0)
        batch: list[Envelope] = []
        queue, sizes, used = self._queue, self._sizes, 0
        while queue and len(batch) < max_batch:
            used += sizes.get(queue[0].seq, ENVELOPE_OVERHEAD)
            if batch and used > max_bytes:
                break
            batch.append(queue.popleft())
        ack, self._ack_to_send = self._ack_to_send, None
        return batch, ack

    # --- receiving -----------------------------------------------------------------

    def accept(self, peer_epoch: str, env: Envelope) -> bool:
        """True if ``env`` is new; False for a duplicate (by seq of this epoch, or by id)."""
        if peer_epoch == self._handled.epoch and env.seq <= self._handled.last_seq:
            return False
        recent = self._recent
        if env.id in recent:
            return False
        recent[env.id] = None
        if len(recent) > RECENT_IDS:
            recent.popitem(last=False)
        return True

    def handled(self, peer_epoch: str, seq: int) -> Cursor | None:
        """Record that everything up to ``seq`` was handled; return the cursor to persist."""
        if peer_epoch != self._handled.epoch:
            self._handled = Cursor(peer_epoch, 0)
        if seq <= self._handled.last_seq:
            return None
        self._handled.last_seq = seq
        self.last_seen = time.time()
        return Cursor(peer_epoch, seq)

    def persisted(self, cursor: Cursor) -> None:
        """The cursor is durable: ack it to the neighbour."""
        if cursor.epoch == self.cursor.epoch and cursor.last_seq <= self.cursor.last_seq:
            return
        self.cursor = cursor
        if cursor.epoch == self._handled.epoch:
            self._ack_to_send = cursor.last_seq
            self._work.set()

    def connected(
        self,
        peer_path: str,
        peer_features: Iterable[str] = (),
        *,
        max_message_bytes: int = 0,
    ) -> None:
        """A stream is open (``peer_features``: the optional payloads the neighbour's
        Hello says it takes; unacked envelopes with others are taken back;
        ``max_message_bytes``: the largest message both sides take, 0 if unknown)."""
        self.state = LinkState.UP
        self.peer_path = peer_path
        self.peer_features = frozenset(peer_features)
        self.max_message_bytes = max_message_bytes
        self.drop_unacked(OPTIONAL_PAYLOADS - self.peer_features)
        self.last_seen = time.time()
        self.connection_count += 1

    def disconnected(self) -> None:
        """The stream ended."""
        self.state = LinkState.DOWN
        self._work.set()
