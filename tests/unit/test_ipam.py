"""Fixed-IP allocation on a SQLite file database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db import Base, IpAllocation, create_engine, make_session_factory
from cellplane.errors import PoolExhausted
from cellplane.network import ipam

POOLS = (("tiny", "10.0.0.0/29"), ("big", "10.1.0.0/24"))


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cell.db'}")
    Base.metadata.create_all(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _allocate(
    sessions: sessionmaker[Session], uuid: str, pools: tuple[tuple[str, str], ...] = POOLS
) -> list[dict[str, Any]]:
    with sessions.begin() as session:
        return ipam.allocate(session, pools, uuid)


def test_first_pool_is_used_first_skipping_network_gateway_and_broadcast(
    sessions: sessionmaker[Session],
) -> None:
    got = [_allocate(sessions, f"i{n}")[0]["address"] for n in range(6)]
    # 10.0.0.0/29: .0 network, .1 gateway, .7 broadcast -> .2-.6, then the next pool.
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.1.0.2"]
    assert _allocate(sessions, "i0") == [{"pool": "tiny", "address": "10.0.0.2", "version": 4}]


def test_release_frees_the_address_for_the_next_instance(
    sessions: sessionmaker[Session],
) -> None:
    for n in range(3):
        _allocate(sessions, f"i{n}")
    with sessions.begin() as session:
        assert ipam.release(session, "i1") == 1
        assert ipam.release(session, "i1") == 0
    assert _allocate(sessions, "new")[0]["address"] == "10.0.0.3"
    with sessions() as session:
        assert ipam.addresses_of(session, "i1") == []


def test_an_exhausted_pool_error_names_the_pools(sessions: sessionmaker[Session]) -> None:
    pools = (("only", "192.168.5.0/30"),)  # one usable address: .2
    assert _allocate(sessions, "a", pools)[0]["address"] == "192.168.5.2"
    with pytest.raises(PoolExhausted, match=r"only \(192\.168\.5\.0/30\)"):
        _allocate(sessions, "b", pools)
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(IpAllocation)) == 1


def test_a_gap_below_the_newest_address_is_found(sessions: sessionmaker[Session]) -> None:
    pools = (("p", "10.9.0.0/29"),)
    with sessions.begin() as session:  # someone else holds .6 (the last usable address)
        session.add(IpAllocation(pool="p", address="10.9.0.6", instance_uuid="x"))
    got = [_allocate(sessions, f"i{n}", pools)[0]["address"] for n in range(4)]
    assert got == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"]
    with pytest.raises(PoolExhausted):
        _allocate(sessions, "full", pools)


def test_ipv6_pool(sessions: sessionmaker[Session]) -> None:
    got = _allocate(sessions, "a", (("v6", "fd00::/120"),))
    assert got == [{"pool": "v6", "address": "fd00::2", "version": 6}]


def test_concurrent_allocations_never_share_an_address(
    sessions: sessionmaker[Session],
) -> None:
    threads, per_thread = 4, 15
    pools = (("p", "10.20.0.0/26"), ("q", "10.30.0.0/26"))  # 61 + 61 usable
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        for n in range(per_thread):
            uuid = f"t{t}-{n}"
            try:
                address = _allocate(sessions, uuid, pools)[0]
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                results[uuid] = f"{address['pool']}/{address['address']}"
            if n % 5 == 4:  # releases make allocations race for reused rows too
                with sessions.begin() as session:
                    ipam.release(session, uuid)
                with lock:
                    del results[uuid]

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(results) == threads * (per_thread - per_thread // 5)
    assert len(set(results.values())) == len(results)
    with sessions() as session:
        held = session.execute(
            sa.select(IpAllocation.instance_uuid, IpAllocation.pool, IpAllocation.address).where(
                IpAllocation.instance_uuid.is_not(None)
            )
        ).all()
    assert {u: f"{p}/{a}" for u, p, a in held} == results
