"""``ipam.allocate_many``: fixed IPs for many instances at once, on a migrated SQLite
file and on PostgreSQL."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db import IpAllocation, create_engine, make_session_factory, migrate
from cellplane.network import ipam

Pools = Sequence[tuple[str, str]]
TINY = (("tiny", "10.0.0.0/29"),)  # .2-.6: five usable addresses
TWO = (("tiny", "10.0.0.0/29"), ("big", "10.1.0.0/24"))


@pytest.fixture
def sessions(cell_database_url: str) -> Iterator[sessionmaker[Session]]:
    migrate.upgrade(cell_database_url)
    engine = create_engine(cell_database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _many(
    sessions: sessionmaker[Session], pools: Pools, uuids: Sequence[str]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    with sessions.begin() as session:
        return ipam.allocate_many(session, pools, list(uuids))


def _one(sessions: sessionmaker[Session], pools: Pools, uuid: str) -> str:
    with sessions.begin() as session:
        return str(ipam.allocate(session, pools, uuid)[0]["address"])


def _held(sessions: sessionmaker[Session]) -> dict[str, str]:
    """``{instance_uuid: "pool/address"}`` of every held row; fails on any instance holding two."""
    with sessions() as session:
        rows = session.execute(
            sa.select(IpAllocation.instance_uuid, IpAllocation.pool, IpAllocation.address).where(
                IpAllocation.instance_uuid.is_not(None)
            )
        ).all()
    held: dict[str, str] = {}
    for uuid, pool, address in rows:
        assert uuid not in held, f"{uuid} holds two addresses"
        held[uuid] = f"{pool}/{address}"
    return held


def _addr(out: dict[str, list[dict[str, Any]]], uuid: str) -> str:
    [one] = out[uuid]
    return f"{one['pool']}/{one['address']}"


def test_many_instances_get_distinct_consecutive_addresses_in_one_call(
    sessions: sessionmaker[Session],
) -> None:
    uuids = [f"i{n}" for n in range(40)]
    out, left = _many(sessions, (("big", "10.1.0.0/24"),), uuids)
    assert left == []
    assert set(out) == set(uuids)
    assert [out[u] for u in uuids] == [
        [{"pool": "big", "address": f"10.1.0.{n + 2}", "version": 4}] for n in range(40)
    ]
    assert _held(sessions) == {u: _addr(out, u) for u in uuids}


def test_duplicate_uuids_in_one_call_get_one_address(sessions: sessionmaker[Session]) -> None:
    out, left = _many(sessions, TINY, ["a", "b", "a", "b", "c"])
    assert left == []
    assert {u: _addr(out, u) for u in out} == {
        "a": "tiny/10.0.0.2",
        "b": "tiny/10.0.0.3",
        "c": "tiny/10.0.0.4",
    }
    assert len(_held(sessions)) == 3


def test_instances_already_holding_addresses_get_them_back(
    sessions: sessionmaker[Session],
) -> None:
    first, _ = _many(sessions, TWO, ["a", "b"])
    assert _one(sessions, TWO, "c") == "10.0.0.4"
    out, left = _many(sessions, TWO, ["c", "new", "a", "b"])
    assert left == []
    assert _addr(out, "a") == _addr(first, "a") == "tiny/10.0.0.2"
    assert _addr(out, "b") == _addr(first, "b") == "tiny/10.0.0.3"
    assert _addr(out, "c") == "tiny/10.0.0.4"
    assert out["c"][0]["version"] == 4
    assert _addr(out, "new") == "tiny/10.0.0.5"  # the next free one, not a held one
    assert len(_held(sessions)) == 4
    # A repeat of the same call changes nothing.
    again, left = _many(sessions, TWO, ["c", "new", "a", "b"])
    assert (again, left) == (out, [])
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(IpAllocation)) == 4


def test_released_addresses_are_reused_first(sessions: sessionmaker[Session]) -> None:
    pools = (("big", "10.1.0.0/24"),)
    _many(sessions, pools, [f"i{n}" for n in range(6)])  # .2-.7
    with sessions.begin() as session:
        for uuid in ("i1", "i4"):  # .3 and .6
            assert ipam.release(session, uuid) == 1
    out, left = _many(sessions, pools, ["x", "y", "z"])
    assert left == []
    assert _addr(out, "x") == "big/10.1.0.3"
    assert _addr(out, "y") == "big/10.1.0.6"
    assert _addr(out, "z") == "big/10.1.0.8"  # then after the newest
    with sessions() as session:  # reused rows, not new ones
        assert session.scalar(sa.select(sa.func.count()).select_from(IpAllocation)) == 7
    held = _held(sessions)
    assert len(held) == 7 and len(set(held.values())) == 7


def test_a_released_address_outside_a_changed_pool_is_retired_not_reused(
    sessions: sessionmaker[Session],
) -> None:
    _many(sessions, (("p", "10.5.0.0/24"),), ["old1", "old2"])  # .2, .3
    with sessions.begin() as session:
        ipam.release(session, "old1")
        ipam.release(session, "old2")
    # The pool was renumbered: its released rows lie outside the new CIDR.
    out, left = _many(sessions, (("p", "10.6.0.0/29"),), ["a", "b", "c"])
    assert left == []
    assert [_addr(out, u) for u in "abc"] == ["p/10.6.0.2", "p/10.6.0.3", "p/10.6.0.4"]
    with sessions() as session:
        addresses = set(session.scalars(sa.select(IpAllocation.address)))
    assert not any(
        ipaddress.ip_address(a) in ipaddress.ip_network("10.5.0.0/24") for a in addresses
    )


def test_when_the_pool_runs_out_the_rest_are_left_and_nothing_is_double_allocated(
    sessions: sessionmaker[Session],
) -> None:
    assert _one(sessions, TINY, "early") == "10.0.0.2"
    uuids = [f"i{n}" for n in range(7)]
    out, left = _many(sessions, TINY, uuids)
    assert set(out) == {"i0", "i1", "i2", "i3"}
    assert left == ["i4", "i5", "i6"]
    assert sorted(_addr(out, u) for u in out) == [f"tiny/10.0.0.{n}" for n in (3, 4, 5, 6)]
    held = _held(sessions)
    assert len(held) == 5 and len(set(held.values())) == 5
    assert set(held) == {"early", "i0", "i1", "i2", "i3"}
    # A full pool: everyone is left, nothing is written.
    out, left = _many(sessions, TINY, ["late1", "late2"])
    assert (out, left) == ({}, ["late1", "late2"])
    assert len(_held(sessions)) == 5


def test_a_gap_below_the_newest_address_is_found(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:  # someone else holds .5, the newest row
        session.add(IpAllocation(pool="tiny", address="10.0.0.5", instance_uuid="x"))
    out, left = _many(sessions, TINY, ["a", "b", "c", "d", "e"])
    assert sorted(_addr(out, u) for u in out) == [f"tiny/10.0.0.{n}" for n in (2, 3, 4, 6)]
    assert len(left) == 1
    held = _held(sessions)
    assert len(set(held.values())) == len(held) == 5


def test_spills_into_the_second_pool(sessions: sessionmaker[Session]) -> None:
    uuids = [f"i{n}" for n in range(8)]
    out, left = _many(sessions, TWO, uuids)
    assert left == []
    assert [_addr(out, u) for u in uuids] == [
        "tiny/10.0.0.2",
        "tiny/10.0.0.3",
        "tiny/10.0.0.4",
        "tiny/10.0.0.5",
        "tiny/10.0.0.6",
        "big/10.1.0.2",
        "big/10.1.0.3",
        "big/10.1.0.4",
    ]
    # Once both are partly used, a release in the first pool is taken before the second.
    with sessions.begin() as session:
        ipam.release(session, "i2")
    out, left = _many(sessions, TWO, ["x", "y"])
    assert (_addr(out, "x"), _addr(out, "y"), left) == ("tiny/10.0.0.4", "big/10.1.0.5", [])
    held = _held(sessions)
    assert len(held) == 9 and len(set(held.values())) == 9


def test_ipv6_pool_after_a_full_ipv4_pool(sessions: sessionmaker[Session]) -> None:
    pools = (("v4", "192.168.9.0/30"), ("v6", "fd00::/120"))  # one usable IPv4 address
    out, left = _many(sessions, pools, ["a", "b", "c"])
    assert left == []
    assert out == {
        "a": [{"pool": "v4", "address": "192.168.9.2", "version": 4}],
        "b": [{"pool": "v6", "address": "fd00::2", "version": 6}],
        "c": [{"pool": "v6", "address": "fd00::3", "version": 6}],
    }
    again, _ = _many(sessions, pools, ["c"])
    assert again == {"c": [{"pool": "v6", "address": "fd00::3", "version": 6}]}


def test_no_pools_leaves_everyone(sessions: sessionmaker[Session]) -> None:
    assert _many(sessions, (), ["a", "b"]) == ({}, ["a", "b"])


def test_concurrent_calls_never_share_an_address(sessions: sessionmaker[Session]) -> None:
    threads, calls, per_call = 4, 5, 7  # 140 instances for 122 addresses
    pools = (("p", "10.20.0.0/26"), ("q", "10.30.0.0/26"))  # 61 + 61 usable
    got: dict[str, str] = {}
    left_over: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        try:
            for c in range(calls):
                uuids = [f"t{t}-{c}-{n}" for n in range(per_call)]
                out, left = _many(sessions, pools, uuids)
                assert set(out) | set(left) == set(uuids) and not set(out) & set(left)
                with lock:
                    got.update({u: _addr(out, u) for u in out})
                    left_over.extend(left)
                if c == 1:  # releases make later calls race for reused rows too
                    with sessions.begin() as session:
                        ipam.release(session, uuids[0])
                    with lock:
                        del got[uuids[0]]
        except BaseException as exc:
            errors.append(exc)

    engine = sessions.kw["bind"]
    collisions: list[str] = []

    def collided(conn: Any, name: str, context: Any) -> None:
        collisions.append(name)

    sa.event.listen(engine, "rollback_savepoint", collided)
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sa.event.remove(engine, "rollback_savepoint", collided)
    assert errors == []
    # Calls took turns: none inserted an address another had just taken.
    assert collisions == []
    assert len(set(got.values())) == len(got)
    assert _held(sessions) == got
    assert len(got) == 122  # every address went to someone
    assert len(got) + len(left_over) == threads * calls * per_call - threads
