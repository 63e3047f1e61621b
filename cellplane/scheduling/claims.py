"""Resource claims on compute nodes, and the host scheduler that makes them.

A claim is one conditional UPDATE: the usage grows only if the result still
fits under ``total * allocation_ratio``, checked by the database in the same
statement. Two builds racing for the last room, in any number of processes
or connections, cannot both win: the loser's UPDATE matches no row. That is
what lets the host scheduler filter on a snapshot and still never over-commit.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from cellplane.config import SchedulerConfig
from cellplane.db.engine import lock_for_write
from cellplane.db.models import ComputeNode, PendingClaim, utcnow
from cellplane.errors import NoValidHost
from cellplane.scheduling.framework import Filter, Weigher, select_or_raise
from cellplane.scheduling.hosts import (
    HostCandidate,
    default_host_filters,
    default_host_weighers,
    load_hosts,
    with_pending,
)
from cellplane.scheduling.spec import FlavorSpec, RequestSpec

# Rounds of load-select-claim for one instance before giving up on a busy cell.
MAX_CLAIM_ROUNDS = 3
DEADLOCK_RETRIES = 3  # times a request whose claims deadlocked starts again

_Column = InstrumentedAttribute[int]


def _minus(column: _Column, amount: int) -> Any:
    """``column - amount``, floored at 0 (usage never goes negative)."""
    return sa.case((column - amount < 0, 0), else_=column - amount)


def _execute(session: Session, stmt: sa.Update) -> bool:
    result = session.connection().execute(stmt)
    return result.rowcount == 1


def claim(session: Session, host: str, flavor: FlavorSpec, count: int = 1) -> bool:
    """Take ``count`` times ``flavor``'s resources on ``host`` if they all still fit;
    False if not (or no host): then nothing is taken.

    The caller commits; the check and the update are one statement.
    """
    result = session.connection().execute(
        _CLAIM,
        {
            "b_host": host,
            "b_vcpus": flavor.vcpus * count,
            "b_memory_mb": flavor.memory_mb * count,
            "b_disk_gb": flavor.disk_gb * count,
            "b_count": count,
        },
    )
    return result.rowcount == 1


def _claim_statement() -> sa.Update:
    node = ComputeNode
    vcpus = sa.bindparam("b_vcpus", type_=sa.Integer)
    memory = sa.bindparam("b_memory_mb", type_=sa.Integer)
    disk = sa.bindparam("b_disk_gb", type_=sa.Integer)
    count = sa.bindparam("b_count", type_=sa.Integer)
    return (
        sa.update(node)
        .where(
            node.host == sa.bindparam("b_host"),
            node.memory_mb_used + memory <= node.memory_mb * node.ram_allocation_ratio,
            node.local_gb_used + disk <= node.local_gb * node.disk_allocation_ratio,
            node.vcpus_used + vcpus <= node.vcpus * node.cpu_allocation_ratio,
        )
        .values(
            vcpus_used=node.vcpus_used + vcpus,
            memory_mb_used=node.memory_mb_used + memory,
            local_gb_used=node.local_gb_used + disk,
            running_vms=node.running_vms + count,
        )
    )


_CLAIM = _claim_statement()  # built once: it runs for every instance placed


def release(session: Session, host: str, flavor: FlavorSpec) -> None:
    """Give back what a claim of ``flavor`` took on ``host`` (never below zero)."""
    _release_usage(session, host, flavor.vcpus, flavor.memory_mb, flavor.disk_gb, 1)


def _release_usage(
    session: Session, host: str, vcpus: int, memory_mb: int, disk_gb: int, instances: int
) -> None:
    node = ComputeNode
    session.connection().execute(
        sa.update(node)
        .where(node.host == host)
        .values(
            vcpus_used=_minus(node.vcpus_used, vcpus),
            memory_mb_used=_minus(node.memory_mb_used, memory_mb),
            local_gb_used=_minus(node.local_gb_used, disk_gb),
            running_vms=_minus(node.running_vms, instances),
        )
    )


# --- pending claims ----------------------------------------------------------------------
#
# A build claims its hosts in one transaction (the scheduler's) and creates its
# instances in another (the cell's build coordinator). A claim whose instances never
# come, because the coordinator stopped waiting for the scheduler's answer or died in
# between, would stay counted for good. So a claim made under a claim id leaves
# PendingClaim rows; the transaction that creates the instances takes them (and
# fails if they are gone), and rows still there after their expiry are given back.


# A pending claim as read back: a Core row of claim_id, host, instances (the
# ``count`` column: a row's own ``count`` is tuple's), vcpus, memory_mb, disk_gb.
Pending = sa.Row[Any]
_PENDING = cast(sa.Table, PendingClaim.__table__)
_PENDING_READ = sa.select(
    _PENDING.c.id,
    _PENDING.c.claim_id,
    _PENDING.c.host,
    _PENDING.c.count.label("instances"),
    _PENDING.c.vcpus,
    _PENDING.c.memory_mb,
    _PENDING.c.disk_gb,
)

_PENDING_ANY = sa.select(_PENDING.c.id)
_DELETE_CHUNK = 500  # ids per DELETE: statements of bounded size however many expired


def record_pending(
    session: Session, claim_id: str, hosts: Sequence[str], flavor: FlavorSpec, expires_at: datetime
) -> None:
    """Note the claims of ``hosts`` (one instance of ``flavor`` per entry) under ``claim_id``."""
    now = utcnow()
    session.execute(
        _PENDING.insert(),
        [
            {
                "claim_id": claim_id,
                "host": host,
                "count": count,
                "vcpus": flavor.vcpus,
                "memory_mb": flavor.memory_mb,
                "disk_gb": flavor.disk_gb,
                "expires_at": expires_at,
                "created_at": now,
            }
            for host, count in Counter(hosts).items()
        ],
    )


def claimed_hosts(session: Session, claim_id: str) -> list[str]:
    """The hosts still pending under ``claim_id``, one entry per instance."""
    rows = session.execute(
        _PENDING_READ.where(_PENDING.c.claim_id == claim_id).order_by(_PENDING.c.id)
    )
    return [row.host for row in rows for _ in range(row.instances)]


def _pending(session: Session, where: Any, *, look_first: bool = False) -> list[Pending]:
    """Delete the pending claims ``where`` says and return them. With ``look_first``,
    write nothing (and take no write lock) when a plain read finds none."""
    if look_first and session.execute(_PENDING_ANY.where(where).limit(1)).first() is None:
        return []
    lock_for_write(session)  # SQLite: no other writer between this read and the delete
    rows: list[Pending] = list(
        session.execute(_PENDING_READ.where(where).order_by(_PENDING.c.id).with_for_update())
    )
    ids = [r.id for r in rows]
    for start in range(0, len(ids), _DELETE_CHUNK):
        session.execute(
            _PENDING.delete().where(_PENDING.c.id.in_(ids[start : start + _DELETE_CHUNK]))
        )
    return rows


def take_pending(session: Session, claim_id: str) -> int:
    """The instances now own the claims made under ``claim_id``: forget them as pending.
    How many instances they were claimed for (0: none left, they expired)."""
    return sum(row.instances for row in _pending(session, _PENDING.c.claim_id == claim_id))


def _give_back(session: Session, rows: Iterable[Pending]) -> None:
    # One UPDATE per host, in host order: fewer chances of a deadlock with a request
    # claiming the same hosts on PostgreSQL (it would start again; this would wait for
    # the next sweep).
    taken: dict[str, list[int]] = {}
    for row in rows:
        used = taken.setdefault(row.host, [0, 0, 0, 0])
        used[0] += row.vcpus * row.instances
        used[1] += row.memory_mb * row.instances
        used[2] += row.disk_gb * row.instances
        used[3] += row.instances
    for host in sorted(taken):
        _release_usage(session, host, *taken[host])


def release_pending(session: Session, claim_id: str) -> list[Pending]:
    """Give back the claims made under ``claim_id`` that no instance took; what they were.
    Nothing is written (no write lock taken) when there are none."""
    rows = _pending(session, _PENDING.c.claim_id == claim_id, look_first=True)
    _give_back(session, rows)
    return rows


def sweep_expired(session: Session, now: datetime) -> list[Pending]:
    """Give back every pending claim that expired by ``now``; what they were (nothing is
    written when there are none)."""
    rows = _pending(session, _PENDING.c.expires_at <= now, look_first=True)
    _give_back(session, rows)
    return rows


def resize_claim(
    session: Session, host: str, old_flavor: FlavorSpec, new_flavor: FlavorSpec
) -> bool:
    """Move ``host``'s usage from ``old_flavor`` to ``new_flavor``.

    Only growth is checked against the limits: shrinking always succeeds.
    """
    node = ComputeNode
    resources: list[tuple[_Column, int, Any]] = [
        (
            node.vcpus_used,
            new_flavor.vcpus - old_flavor.vcpus,
            node.vcpus * node.cpu_allocation_ratio,
        ),
        (
            node.memory_mb_used,
            new_flavor.memory_mb - old_flavor.memory_mb,
            node.memory_mb * node.ram_allocation_ratio,
        ),
        (
            node.local_gb_used,
            new_flavor.disk_gb - old_flavor.disk_gb,
            node.local_gb * node.disk_allocation_ratio,
        ),
    ]
    conditions: list[Any] = [node.host == host]
    values: dict[str, Any] = {}
    for column, delta, limit in resources:
        if delta > 0:
            conditions.append(column + delta <= limit)
            values[column.key] = column + delta
        elif delta < 0:
            values[column.key] = _minus(column, -delta)
    if not values:  # same size: nothing to take, but the host must exist
        values["running_vms"] = node.running_vms
    return _execute(session, sa.update(node).where(*conditions).values(**values))


def _claimed(candidate: HostCandidate, flavor: FlavorSpec, count: int) -> HostCandidate:
    """``candidate`` with ``count`` more claims of ``flavor`` on it."""
    if not count:
        return candidate
    return replace(
        candidate,
        vcpus_used=candidate.vcpus_used + flavor.vcpus * count,
        memory_mb_used=candidate.memory_mb_used + flavor.memory_mb * count,
        disk_gb_used=candidate.disk_gb_used + flavor.disk_gb * count,
    )


def _is_deadlock(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "pgcode", None)
    return code in ("40P01", "40001")  # deadlock_detected, serialization_failure


class HostScheduler:
    """Chooses hosts of this cell and claims them, one instance at a time.

    The claims of one request commit in one transaction. The candidates are
    read once per request and each claim is added to them, so the weighers see
    the new usage (spread really spreads); a claim lost to a concurrent build
    moves on to the next best host, and the candidates are read again.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: SchedulerConfig,
        *,
        filters: Sequence[Filter[HostCandidate]] | None = None,
        weighers: Sequence[Weigher[HostCandidate]] | None = None,
        log: Any = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.filters = list(filters) if filters is not None else default_host_filters()
        self.weighers = (
            list(weighers)
            if weighers is not None
            else default_host_weighers(config.ram_weight_multiplier)
        )
        self.log = log or structlog.get_logger()

    def candidates(self, spec: RequestSpec, session: Session | None = None) -> list[HostCandidate]:
        """The hosts of this cell as they are now (as ``session``'s transaction sees
        them, its own claims included, if given)."""
        if session is not None:
            return load_hosts(session, spec, self.config.service_down_time)
        with self.sessions() as own:
            return load_hosts(own, spec, self.config.service_down_time)

    def place(
        self,
        spec: RequestSpec,
        count: int | None = None,
        *,
        claim_id: str = "",
        expires_at: datetime | None = None,
    ) -> list[str]:
        """Claim a host for each of ``count`` instances (default ``spec.num_instances``).

        Returns the hosts in instance order (a host may repeat). Raises
        NoValidHost, naming the filter that left nothing, when fewer than
        ``count`` fit; the claims already made are released first.

        With ``claim_id``, the claims are also noted as pending (see
        :func:`record_pending`) until the instances take them; if they have not
        by ``expires_at`` (default: ``build_timeout`` from now), they are given back.
        """
        count = spec.num_instances if count is None else count
        for attempt in range(DEADLOCK_RETRIES + 1):
            placed: list[str] = []
            known: list[HostCandidate] = []  # the hosts as last read, plus our own claims
            try:
                # All claims of a request commit together: if one instance fits
                # nowhere, the rollback gives back what the others took.
                with self.sessions.begin() as session:
                    if claim_id:
                        # The same request again (a message delivered twice): what the
                        # first one claimed, not a second claim.
                        lock_for_write(session)
                        earlier = claimed_hosts(session, claim_id)
                        if earlier:
                            return earlier
                    if count > 1:
                        placed = self._place_planned(session, spec, count, known)
                    for index in range(len(placed), count):
                        try:
                            placed.append(self._place_one(session, spec, placed, known))
                        except NoValidHost as exc:
                            raise NoValidHost(
                                f"{exc.message} (placing instance {index + 1} of {count})"
                            ) from exc
                    if claim_id:
                        if expires_at is None:
                            expires_at = utcnow() + timedelta(seconds=self.config.build_timeout)
                        record_pending(session, claim_id, placed, spec.flavor, expires_at)
                return placed
            except OperationalError as exc:
                # Two requests locking hosts in opposite orders (PostgreSQL): the
                # server aborts one; it starts again.
                if attempt == DEADLOCK_RETRIES or not _is_deadlock(exc):
                    raise
                self.log.info("host_claims_retried", reason="deadlock")
        raise AssertionError("unreachable")

    def sweep(self) -> list[Pending]:
        """Give back the pending claims that expired (see :func:`sweep_expired`)."""
        with self.sessions.begin() as session:
            expired = sweep_expired(session, utcnow())
        for row in expired:
            self.log.warning(
                "pending_claim_expired",
                claim_id=row.claim_id,
                host=row.host,
                count=row.instances,
                memory_mb=row.memory_mb * row.instances,
            )
        return expired

    def release_all(self, flavor: FlavorSpec, hosts: Iterable[str]) -> None:
        """Release one claim of ``flavor`` per entry of ``hosts``."""
        for host in hosts:
            with self.sessions.begin() as session:
                release(session, host, flavor)
            self.log.info("host_claim_released", host=host, flavor=flavor.flavor_id)

    def _place_planned(
        self, session: Session, spec: RequestSpec, count: int, known: list[HostCandidate]
    ) -> list[str]:
        """Choose a host for each of ``count`` instances on one read of the hosts, as
        :meth:`_place_one` would one after another, then claim each chosen host once
        for all its instances. What a host no longer has room for (a concurrent build
        took it) is left to :meth:`_place_one`: the hosts claimed, in instance order.
        """
        known[:] = self.candidates(spec, session)
        plan: list[str] = []
        for _ in range(count):
            candidates = with_pending(known, spec, plan)
            try:
                weighed = select_or_raise(candidates, spec, self.filters, self.weighers)
            except NoValidHost:
                break  # the instance by instance path says why
            host = weighed[0].candidate.host
            plan.append(host)
            known[:] = [_claimed(c, spec.flavor, c.host == host) for c in known]
        placed: list[str] = []
        lost = False
        for host, n in Counter(plan).items():
            if claim(session, host, spec.flavor, n):
                placed += [host] * n
                self.log.info("host_claimed", host=host, flavor=spec.flavor.flavor_id, count=n)
            else:
                lost = True
                self.log.info("host_claim_lost", host=host, flavor=spec.flavor.flavor_id)
        if lost or len(placed) < count:
            known.clear()  # read again, with what was claimed here added
        # Instance order among the claimed: the plan's, for those claimed.
        claimed = Counter(placed)
        ordered = []
        for host in plan:
            if claimed[host]:
                ordered.append(host)
                claimed[host] -= 1
        return ordered

    def _place_one(
        self, session: Session, spec: RequestSpec, placed: list[str], known: list[HostCandidate]
    ) -> str:
        """Claim one host. ``known`` holds the hosts read for an earlier instance of the
        request with this request's claims added (what a read now would show, but for
        concurrent builds, whose claims the conditional UPDATE still respects); it is
        read again when empty or after a lost claim."""
        for _ in range(MAX_CLAIM_ROUNDS):
            if not known:
                # Read in the request's own transaction: it sees the claims made so far,
                # and needs no second connection while it holds the write lock (on
                # SQLite, threads waiting for that lock may hold every other one).
                known[:] = self.candidates(spec, session)
            candidates = with_pending(known, spec, placed)
            weighed = select_or_raise(candidates, spec, self.filters, self.weighers, log=self.log)
            for choice in weighed:
                host = choice.candidate.host
                won = claim(session, host, spec.flavor)  # no row changes if it loses
                if won:
                    self.log.info("host_claimed", host=host, flavor=spec.flavor.flavor_id)
                    known[:] = [_claimed(c, spec.flavor, c.host == host) for c in known]
                    return host
                known.clear()  # someone else claimed: read the hosts again next time
                self.log.info("host_claim_lost", host=host, flavor=spec.flavor.flavor_id)
        raise NoValidHost(
            f"no valid host: claims lost to concurrent builds {MAX_CLAIM_ROUNDS} rounds in a row"
        )


SWEEP_INTERVAL = 10.0  # seconds between looks for expired pending claims
STOP_WAIT = 10.0  # seconds a stopping sweeper waits for a sweep under way


class ClaimSweeper:
    """Gives back expired pending claims (:meth:`HostScheduler.sweep`): once at start,
    which finds those of a process that died between claim and create, then every
    ``interval`` seconds, in a thread of its own."""

    def __init__(self, scheduler: HostScheduler, interval: float = SWEEP_INTERVAL) -> None:
        self._scheduler = scheduler
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="claim-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Stop looking; wait up to ``timeout`` seconds for a sweep under way (a daemon
        thread: one held up by a lock does not keep the process from ending)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self._scheduler.sweep()
            except Exception as exc:  # a database hiccup: try again next time
                self._scheduler.log.warning("pending_claim_sweep_failed", error=str(exc))
            if self._stop.wait(self._interval):
                return
