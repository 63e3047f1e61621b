"""PeerChannel: sequence numbers, cumulative acks, resume after a reconnect,
and duplicate refusal on the receiving side."""

from __future__ import annotations

import asyncio

from cellplane.federation.channel import Cursor, LinkState, PeerChannel, Relation
from cellplane.v1 import link_pb2

Envelope = link_pb2.Envelope


def envelope(n: int, *, seq: int = 0) -> Envelope:
    return Envelope(id=f"env-{n}", seq=seq, echo=link_pb2.Echo(sequence=n))


def channel(cursor: Cursor | None = None) -> PeerChannel:
    return PeerChannel("eu", Relation.PARENT, "my-epoch", cursor or Cursor())


def next_frame(ch: PeerChannel, max_batch: int = 100) -> tuple[list[int], int | None]:
    """The seqs and ack of the next frame the channel would write."""

    async def take() -> tuple[list[Envelope], int | None]:
        return await asyncio.wait_for(ch.next_frame(max_batch), 5)

    envs, ack = asyncio.run(take())
    return [env.seq for env in envs], ack


# --- sending ---------------------------------------------------------------------------


def test_send_numbers_envelopes_from_one_in_order() -> None:
    ch = channel()
    sent = [envelope(n) for n in range(1, 4)]
    for env in sent:
        ch.send(env)
    ch.send_many([envelope(4), envelope(5)])
    assert [env.seq for env in sent] == [1, 2, 3]
    assert ch.unacked == 5
    assert next_frame(ch) == ([1, 2, 3, 4, 5], None)


def test_next_frame_takes_at_most_max_batch_in_order() -> None:
    ch = channel()
    ch.send_many(envelope(n) for n in range(1, 6))
    assert next_frame(ch, max_batch=2) == ([1, 2], None)
    assert next_frame(ch, max_batch=2) == ([3, 4], None)
    assert next_frame(ch, max_batch=2) == ([5], None)
    assert ch.unacked == 5  # written is not acked


def test_cumulative_ack_drops_exactly_the_acked_ones() -> None:
    ch = channel()
    acked: list[list[int]] = []
    ch.on_acked.append(lambda envs: acked.append([env.echo.sequence for env in envs]))
    ch.send_many(envelope(n) for n in range(1, 6))

    ch.apply_ack(3)
    assert acked == [[1, 2, 3]]
    assert ch.unacked == 2

    ch.apply_ack(2)  # an old ack changes nothing
    assert acked == [[1, 2, 3]]
    assert ch.unacked == 2

    ch.apply_ack(5)
    assert acked == [[1, 2, 3], [4, 5]]
    assert ch.unacked == 0
    ch.apply_ack(9)  # nothing left: no listener call
    assert len(acked) == 2


def test_resume_requeues_every_unacked_envelope_in_order() -> None:
    ch = channel()
    ch.send_many(envelope(n) for n in range(1, 6))
    assert next_frame(ch) == ([1, 2, 3, 4, 5], None)  # written on the first connection
    ch.apply_ack(2)
    ch.disconnected()
    assert ch.state is LinkState.DOWN

    # The peer's Hello speaks of another epoch of ours: it proves nothing.
    ch.resume("an-older-epoch", 5)
    assert ch.unacked == 3
    assert next_frame(ch) == ([3, 4, 5], None)


def test_resume_drops_what_the_peer_hello_says_it_handled() -> None:
    ch = channel()
    acked: list[int] = []
    ch.on_acked.append(lambda envs: acked.extend(env.seq for env in envs))
    ch.send_many(envelope(n) for n in range(1, 6))
    next_frame(ch)
    ch.disconnected()

    ch.resume("my-epoch", 3)
    assert acked == [1, 2, 3]
    assert next_frame(ch) == ([4, 5], None)
    ch.send(envelope(6))
    assert next_frame(ch) == ([6], None)  # numbering goes on after a reconnect


def test_resume_acks_the_persisted_cursor_of_the_peer() -> None:
    ch = channel(Cursor("peer-epoch", 7))
    ch.resume("", 0)
    assert next_frame(ch) == ([], 7)


def test_resume_without_a_cursor_sends_no_ack() -> None:
    ch = channel()
    ch.resume("", 0)
    ch.send(envelope(1))
    assert next_frame(ch) == ([1], None)


def test_connected_counts_connections_and_keeps_the_peer_path() -> None:
    ch = channel()
    ch.connected("api!eu")
    ch.disconnected()
    ch.connected("api!eu")
    assert (ch.state, ch.peer_path, ch.connection_count) == (LinkState.UP, "api!eu", 2)


# --- receiving -------------------------------------------------------------------------


def test_duplicates_by_seq_and_by_id_are_refused() -> None:
    ch = channel()
    assert ch.accept("p1", envelope(1, seq=1))
    assert ch.handled("p1", 1) == Cursor("p1", 1)

    assert not ch.accept("p1", Envelope(id="other-id", seq=1))  # seq already handled
    assert not ch.accept("p1", Envelope(id="env-1", seq=2))  # id already seen
    assert ch.accept("p1", envelope(2, seq=2))
    assert ch.handled("p1", 2) == Cursor("p1", 2)
    assert ch.handled("p1", 1) is None  # going back is not progress


def test_a_new_peer_epoch_is_accepted_from_seq_one() -> None:
    ch = channel()
    for n in range(1, 6):
        assert ch.accept("p1", envelope(n, seq=n))
    ch.handled("p1", 5)

    # The peer restarted: its numbering starts again under a new epoch.
    assert ch.accept("p2", envelope(100, seq=1))
    assert ch.handled("p2", 1) == Cursor("p2", 1)
    assert not ch.accept("p2", envelope(101, seq=1))


def test_persisted_cursor_refuses_what_was_handled_before_a_restart() -> None:
    ch = channel(Cursor("p1", 5))
    assert not ch.accept("p1", envelope(3, seq=3))
    assert not ch.accept("p1", envelope(5, seq=5))
    assert ch.accept("p1", envelope(6, seq=6))


def test_persisted_cursor_is_acked_once_and_never_backwards() -> None:
    ch = channel()
    ch.accept("p1", envelope(1, seq=1))
    ch.accept("p1", envelope(2, seq=2))
    first = ch.handled("p1", 1)
    second = ch.handled("p1", 2)
    assert first is not None and second is not None
    ch.persisted(second)
    assert next_frame(ch) == ([], 2)
    ch.persisted(first)  # an older commit finishing late must not ack less
    ch.send(envelope(9))
    assert next_frame(ch) == ([1], None)
    assert ch.cursor == Cursor("p1", 2)


def test_large_envelopes_keep_a_frame_under_its_byte_budget() -> None:
    ch = channel()
    ch.send_many([envelope(n) for n in range(1, 5)], [600_000, 600_000, 100, 3_000_000])

    async def frames() -> list[list[int]]:
        taken = []
        for _ in range(3):
            envs, _ = await asyncio.wait_for(ch.next_frame(100, max_bytes=1_000_000), 5)
            taken.append([env.seq for env in envs])
        return taken

    # One large envelope always goes, even alone over the budget.
    assert asyncio.run(frames()) == [[1], [2, 3], [4]]
    ch.apply_ack(4)
    assert ch._sizes == {}  # sizes are forgotten with what was acked


def test_many_small_envelopes_keep_to_the_byte_budget_too() -> None:
    ch = channel()
    ch.send_many(Envelope(id=f"e{n}", echo=link_pb2.Echo(data=b"x" * 4000)) for n in range(512))

    async def frame() -> list[Envelope]:
        envs, _ = await asyncio.wait_for(ch.next_frame(512, max_bytes=512 * 1024), 5)
        return envs

    taken = asyncio.run(frame())
    assert 100 < len(taken) < 512
    assert sum(env.ByteSize() for env in taken) <= 512 * 1024


def test_unacked_envelopes_of_a_payload_the_peer_does_not_take_are_dropped() -> None:
    ch = channel()
    dropped: list[Envelope] = []
    ch.on_dropped.append(dropped.extend)
    joined = Envelope(id="joined")
    joined.instance_updates.instances.add(uuid="u1")
    ch.send_many([envelope(1), joined, envelope(3)])
    ch.connected("api!eu", ["instance_updates"])
    assert dropped == [] and ch.unacked == 3
    ch.resume("peer-epoch", 0)
    ch.connected("api!eu", [])  # an older release: no features
    assert [env.id for env in dropped] == ["joined"]
    assert next_frame(ch) == ([1, 3], None)
    ch.apply_ack(3)
    assert ch.unacked == 0
