"""Fixed-IP allocation from a cell's CIDR pools.

Addresses live in ``ip_allocations``, one row per address ever handed out,
held while ``instance_uuid`` is set (Nova's ``fixed_ips``). Allocation first
takes a released row back with a conditional UPDATE, then appends the next
address after the pool's newest row; only when that runs off the end of the
pool does it read the pool's whole allocated set to find a gap. The
``UNIQUE(pool, address)`` constraint is what makes two concurrent
allocations never hand out the same address: a loser's INSERT fails inside
a savepoint and it moves on to the next address. Allocations take turns
(``take_turns``: SQLite's one writer, a PostgreSQL advisory lock), so that
race is the exception: without turns, concurrent batches on PostgreSQL all
read the same newest address, and all but one fell back to an address at a
time, each INSERT waiting for the winner's commit before failing.

In every pool the network address, the gateway (the first host address) and,
for IPv4, the broadcast address are never handed out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cellplane.db.engine import take_turns
from cellplane.db.models import IpAllocation, utcnow
from cellplane.errors import PoolExhausted

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = dict[str, Any]

# Released rows another allocation may race us for before we stop trying them.
_MAX_REUSE_ATTEMPTS = 64
# Allocations of a cell's database take turns under this name (db.engine.take_turns).
_TURN = "ipam"


def usable_range(cidr: str) -> tuple[int, int]:
    """First and last address (as integers) that may go to an instance; first > last if none."""
    network = ipaddress.ip_network(cidr, strict=True)
    first = int(network.network_address) + 2  # skip the network address and the gateway
    last = int(network.broadcast_address)
    if network.version == 4:
        last -= 1  # the broadcast address
    return first, last


def allocate(
    session: Session, pools: Sequence[tuple[str, str]], instance_uuid: str
) -> list[Address]:
    """Give ``instance_uuid`` an address from the first of ``pools`` with room.

    Idempotent: an instance that already holds addresses gets them back. The
    caller commits. Raises PoolExhausted naming every pool when all are full.
    """
    take_turns(session, _TURN)
    held = addresses_of(session, instance_uuid)
    if held:
        return held
    for name, cidr in pools:
        network = ipaddress.ip_network(cidr, strict=True)
        address = _reuse(session, name, network, instance_uuid) or _append(
            session, name, network, instance_uuid
        )
        if address is not None:
            return [{"pool": name, "address": address, "version": network.version}]
    raise PoolExhausted(exhausted_message(pools))


def exhausted_message(pools: Sequence[tuple[str, str]]) -> str:
    """What an allocation that no pool had room for says, naming every pool."""
    described = ", ".join(f"{name} ({cidr})" for name, cidr in pools) or "none configured"
    return f"no free fixed IP address in pools: {described}"


def allocate_many(
    session: Session, pools: Sequence[tuple[str, str]], instance_uuids: Sequence[str]
) -> tuple[dict[str, list[Address]], list[str]]:
    """:func:`allocate` for many instances in a few statements.

    Returns the addresses of each instance that got (or already held) one, and
    the instances no pool had room for. The caller commits.
    """
    take_turns(session, _TURN)
    out = _held(session, instance_uuids)
    need = [u for u in dict.fromkeys(instance_uuids) if u not in out]
    for name, cidr in pools:
        if not need:
            break
        network = ipaddress.ip_network(cidr, strict=True)
        version = network.version
        reused = _reuse_many(session, name, network, need)
        for uuid, address in zip(need, reused, strict=False):
            out[uuid] = [{"pool": name, "address": address, "version": version}]
        left = need[len(reused) :]
        appended = _append_run(session, name, network, left)
        for uuid in left[len(appended) :]:  # past the end, or raced: one at a time
            one = _append(session, name, network, uuid)
            if one is None:
                break
            appended.append(one)
        for uuid, address in zip(left, appended, strict=False):
            out[uuid] = [{"pool": name, "address": address, "version": version}]
        need = left[len(appended) :]
    return out, need


def _reuse_many(
    session: Session, pool: str, network: Network, instance_uuids: Sequence[str]
) -> list[str]:
    """Take back released addresses of ``pool`` for the first of ``instance_uuids``
    (one read when there are none); the addresses taken, in order."""
    candidates = (
        session.connection().execute(_RELEASED, {"pool": pool, "limit": len(instance_uuids)}).all()
    )
    taken: list[str] = []
    for candidate in candidates:
        address = _take_released(session, candidate, network, instance_uuids[len(taken)])
        if address is not None:
            taken.append(address)
    if len(taken) == len(candidates) or len(taken) == len(instance_uuids):
        return taken
    # Raced for some: the usual one-at-a-time path for the rest.
    for uuid in instance_uuids[len(taken) :]:
        address = _reuse(session, pool, network, uuid)
        if address is None:
            break
        taken.append(address)
    return taken


# Built once: they run for every batch of builds.
_HELD = (
    sa.select(IpAllocation.instance_uuid, IpAllocation.pool, IpAllocation.address)
    .where(IpAllocation.instance_uuid.in_(sa.bindparam("uuids", expanding=True)))
    .order_by(IpAllocation.id)
)
_NEWEST = (
    sa.select(IpAllocation.address)
    .where(IpAllocation.pool == sa.bindparam("pool"))
    .order_by(IpAllocation.id.desc())
    .limit(1)
)
_RELEASED = (
    sa.select(IpAllocation.id, IpAllocation.address)
    .where(IpAllocation.pool == sa.bindparam("pool"), IpAllocation.instance_uuid.is_(None))
    .order_by(IpAllocation.id)
    .limit(sa.bindparam("limit"))
)


def _held(session: Session, instance_uuids: Sequence[str]) -> dict[str, list[Address]]:
    held: dict[str, list[Address]] = {}
    for start in range(0, len(instance_uuids), 500):
        rows = (
            session.connection()
            .execute(_HELD, {"uuids": list(instance_uuids[start : start + 500])})
            .all()
        )
        for uuid, pool, address in rows:
            address_of: Address = {"pool": pool, "address": address}
            address_of["version"] = ipaddress.ip_address(address).version
            held.setdefault(str(uuid), []).append(address_of)
    return held


def _append_run(
    session: Session, pool: str, network: Network, instance_uuids: Sequence[str]
) -> list[str]:
    """Insert consecutive addresses after the pool's newest for ``instance_uuids`` in one
    statement; the addresses, in order, or none if the run does not fit or was raced."""
    if not instance_uuids:
        return []
    first, last = usable_range(str(network))
    start = _after_newest(session, pool, network, first)
    if start + len(instance_uuids) - 1 > last:
        return []
    addresses = [str(ipaddress.ip_address(start + i)) for i in range(len(instance_uuids))]
    now = utcnow()
    try:
        with session.begin_nested():
            session.connection().execute(
                sa.insert(IpAllocation),
                [
                    {"pool": pool, "address": a, "instance_uuid": u, "allocated_at": now}
                    for a, u in zip(addresses, instance_uuids, strict=True)
                ],
            )
    except IntegrityError:
        return []
    return addresses


def _after_newest(session: Session, pool: str, network: Network, first: int) -> int:
    """The address after the pool's newest row (``first`` if none lies in ``network``)."""
    newest = session.connection().execute(_NEWEST, {"pool": pool}).scalar()
    if newest is not None and ipaddress.ip_address(newest) in network:
        return max(first, int(ipaddress.ip_address(newest)) + 1)
    return first


def release(session: Session, instance_uuid: str) -> int:
    """Free every address ``instance_uuid`` holds; returns how many. The caller commits."""
    result = session.connection().execute(
        sa.update(IpAllocation)
        .where(IpAllocation.instance_uuid == instance_uuid)
        .values(instance_uuid=None, allocated_at=None)
    )
    return int(result.rowcount)


def addresses_of(session: Session, instance_uuid: str) -> list[Address]:
    """The addresses ``instance_uuid`` holds, in allocation order."""
    rows = session.execute(
        sa.select(IpAllocation.pool, IpAllocation.address)
        .where(IpAllocation.instance_uuid == instance_uuid)
        .order_by(IpAllocation.id)
    ).all()
    return [
        {"pool": pool, "address": address, "version": ipaddress.ip_address(address).version}
        for pool, address in rows
    ]


def _reuse(session: Session, pool: str, network: Network, instance_uuid: str) -> str | None:
    """Take back a released address of ``pool``; None if there is none."""
    row = IpAllocation
    for _ in range(_MAX_REUSE_ATTEMPTS):
        candidate = session.execute(
            sa.select(row.id, row.address)
            .where(row.pool == pool, row.instance_uuid.is_(None))
            .order_by(row.id)
            .limit(1)
        ).first()
        if candidate is None:
            return None
        address = _take_released(session, candidate, network, instance_uuid)
        if address is not None:
            return address
    return None


def _take_released(
    session: Session, candidate: Any, network: Network, instance_uuid: str
) -> str | None:
    """Give the released row ``candidate`` (id, address) to ``instance_uuid``; None if
    a concurrent allocation took it first, or if it lies outside ``network`` (the
    pool's CIDR changed since: the stray row is retired for good)."""
    row = IpAllocation
    taken = session.connection().execute(
        sa.update(row)
        .where(row.id == candidate.id, row.instance_uuid.is_(None))
        .values(instance_uuid=instance_uuid, allocated_at=utcnow())
    )
    if taken.rowcount != 1:
        return None
    if ipaddress.ip_address(candidate.address) in network:
        return str(candidate.address)
    session.connection().execute(sa.delete(row).where(row.id == candidate.id))
    return None


def _append(session: Session, pool: str, network: Network, instance_uuid: str) -> str | None:
    """Insert the first free address of ``pool``; None if the pool is full."""
    first, last = usable_range(str(network))
    start = _after_newest(session, pool, network, first)
    taken: set[int] = set()
    candidate = start
    scanned = False
    while True:
        if candidate > last:
            if scanned:
                return None
            # Ran off the end: look for gaps below, once, with the whole allocated set.
            taken |= _allocated(session, pool)
            scanned, candidate = True, first
            continue
        if candidate in taken:
            candidate += 1
            continue
        address = str(ipaddress.ip_address(candidate))
        if _insert(session, pool, address, instance_uuid):
            return address
        taken.add(candidate)
        candidate += 1


def _allocated(session: Session, pool: str) -> set[int]:
    addresses = session.scalars(sa.select(IpAllocation.address).where(IpAllocation.pool == pool))
    return {int(ipaddress.ip_address(a)) for a in addresses}


def _insert(session: Session, pool: str, address: str, instance_uuid: str) -> bool:
    """Insert one allocation; False if a concurrent allocation holds the address."""
    try:
        with session.begin_nested():
            session.connection().execute(
                sa.insert(IpAllocation).values(
                    pool=pool, address=address, instance_uuid=instance_uuid, allocated_at=utcnow()
                )
            )
    except IntegrityError:
        return False
    return True
