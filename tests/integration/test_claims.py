"""Concurrent builds never over-commit a host, on SQLite and PostgreSQL; the
scheduler role answers over local RPC."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from cellplane.amqp import RpcClient, connect
from cellplane.config import SchedulerConfig
from cellplane.db import (
    ComputeNode,
    PendingClaim,
    Service,
    create_engine,
    make_session_factory,
    upgrade,
    utcnow,
)
from cellplane.errors import Code, InvalidArgument, NoValidHost, ResourceExhausted
from cellplane.scheduling.claims import (
    ClaimSweeper,
    HostScheduler,
    claim,
    release_pending,
    take_pending,
)
from cellplane.scheduling.rpc import SchedulerClient, scheduler_server
from cellplane.scheduling.spec import FlavorSpec, RequestSpec

THREADS = 8
ATTEMPTS = 20
FLAVOR = FlavorSpec("small", vcpus=1, memory_mb=512, root_gb=1)
SIZE_ZERO = FlavorSpec("zero", vcpus=0, memory_mb=0, root_gb=0)  # fits any number of times
# 2048 MB x 1.5 = 3072 MB: six of FLAVOR; 1024 MB x 1.5: three.
HOSTS = {"big": 2048, "small": 1024}
FITS = {"big": 6, "small": 3}


def migrated_cell(url: str) -> tuple[sa.Engine, sessionmaker[Session]]:
    """A migrated cell database at ``url`` with two small compute hosts."""
    upgrade(url)
    engine = create_engine(url)
    factory = make_session_factory(engine)
    with factory.begin() as s:
        for name, memory in HOSTS.items():
            s.add(
                ComputeNode(
                    host=name,
                    hypervisor_type="kvm",
                    availability_zone="nova",
                    vcpus=4,
                    memory_mb=memory,
                    local_gb=100,
                    ram_allocation_ratio=1.5,
                    cpu_allocation_ratio=16.0,
                    disk_allocation_ratio=1.0,
                )
            )
            s.add(Service(host=name, role="compute", last_heartbeat=utcnow()))
    return engine, factory


@pytest.fixture
def sessions(cell_database_url: str) -> Iterator[sessionmaker[Session]]:
    """The cell database on a SQLite file, then on PostgreSQL."""
    engine, factory = migrated_cell(cell_database_url)
    yield factory
    engine.dispose()


def race(work: Callable[[], bool]) -> int:
    """Run ``work`` ATTEMPTS times in each of THREADS threads at once; count the wins."""
    start = threading.Barrier(THREADS)
    wins: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            wins.append(sum(work() for _ in range(ATTEMPTS)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sum(wins)


def usage(sessions: sessionmaker[Session]) -> dict[str, ComputeNode]:
    with sessions() as s:
        return {n.host: n for n in s.scalars(sa.select(ComputeNode))}


def assert_within_limits(nodes: dict[str, ComputeNode]) -> None:
    for n in nodes.values():
        assert n.memory_mb_used <= n.memory_mb * n.ram_allocation_ratio
        assert n.vcpus_used <= n.vcpus * n.cpu_allocation_ratio
        assert n.local_gb_used <= n.local_gb * n.disk_allocation_ratio
        assert n.memory_mb_used == n.running_vms * FLAVOR.memory_mb


def test_concurrent_claims_on_one_host_never_over_commit(
    sessions: sessionmaker[Session],
) -> None:
    def attempt() -> bool:
        with sessions.begin() as s:
            return claim(s, "big", FLAVOR)

    assert race(attempt) == FITS["big"]
    nodes = usage(sessions)
    assert_within_limits(nodes)
    assert nodes["big"].running_vms == FITS["big"]


def test_concurrent_place_fills_the_cell_exactly(sessions: sessionmaker[Session]) -> None:
    scheduler = HostScheduler(sessions, SchedulerConfig())
    refused: list[str] = []

    def attempt() -> bool:
        try:
            scheduler.place(RequestSpec(flavor=FLAVOR), 1)
        except NoValidHost as exc:
            refused.append(exc.message)
            return False
        return True

    assert race(attempt) == sum(FITS.values())
    nodes = usage(sessions)
    assert_within_limits(nodes)
    assert {h: n.running_vms for h, n in nodes.items()} == FITS
    assert len(refused) == THREADS * ATTEMPTS - sum(FITS.values())
    assert all("RamFilter" in m or "lost to concurrent builds" in m for m in refused)


def test_concurrent_requests_of_several_instances_never_over_commit(
    sessions: sessionmaker[Session],
) -> None:
    """Requests of 2 and 3 instances, planned on one read and claimed per host, racing:
    each takes all its instances or none, and the cell never holds more than fits."""
    scheduler = HostScheduler(sessions, SchedulerConfig())
    taken: list[int] = []

    def attempt() -> bool:
        count = 2 + len(taken) % 2
        try:
            hosts = scheduler.place(RequestSpec(flavor=FLAVOR), count)
        except NoValidHost:
            return False
        assert len(hosts) == count
        taken.append(count)
        return True

    race(attempt)
    nodes = usage(sessions)
    assert_within_limits(nodes)
    assert sum(n.running_vms for n in nodes.values()) == sum(taken)
    assert sum(taken) >= sum(FITS.values()) - 2  # what is left fits no request of 3


@pytest.fixture
def topic() -> Iterator[str]:
    name = f"scheduler_{uuid.uuid4().hex[:12]}"
    yield name
    with connect("memory://") as conn:
        conn.default_channel.queue_delete(name)


def test_scheduler_endpoint_over_amqp(tmp_path: Path, topic: str) -> None:
    engine, sessions = migrated_cell(f"sqlite:///{tmp_path / 'cell.db'}")
    scheduler = HostScheduler(sessions, SchedulerConfig())
    try:
        with (
            scheduler_server("memory://", scheduler, topic=topic),
            RpcClient("memory://") as rpc,
        ):
            client = SchedulerClient(rpc, topic=topic, timeout=10)
            assert client.select_and_claim(RequestSpec(flavor=FLAVOR), 3) == ["big"] * 3
            huge = RequestSpec(flavor=FlavorSpec("huge", 1, 99999, 1))
            with pytest.raises(ResourceExhausted, match="RamFilter") as caught:
                client.select_and_claim(huge, 1)
            assert caught.value.code == Code.RESOURCE_EXHAUSTED
            with pytest.raises(InvalidArgument, match="flavor is required"):
                rpc.call(topic, "select_and_claim", timeout=10, spec={"x": 1}, count=1)
            spec = RequestSpec(flavor=FLAVOR).to_dict()
            for bad in ({"claim_id": "x" * 65}, {"claim_id": 7}, {"expires_at": "soon"}):
                with pytest.raises(InvalidArgument, match=r"claim_id|expires_at"):
                    rpc.call(topic, "select_and_claim", timeout=10, spec=spec, count=1, **bad)
            later = time.time() + 60
            hosts = rpc.call(
                topic,
                "select_and_claim",
                timeout=10,
                spec=spec,
                count=1,
                claim_id="over-amqp",
                expires_at=later,
            )
            assert hosts == ["big"]
        assert {h: n.running_vms for h, n in usage(sessions).items()} == {"big": 4, "small": 0}
        assert [(c.claim_id, c.host, c.count) for c in pending(sessions)] == [
            ("over-amqp", "big", 1)
        ]
        (row,) = pending(sessions)
        assert abs(row.expires_at.timestamp() - later) < 0.01
    finally:
        engine.dispose()


# --- pending claims: taken by the create, or given back ----------------------------------


def pending(sessions: sessionmaker[Session]) -> list[PendingClaim]:
    with sessions() as s:
        return list(s.scalars(sa.select(PendingClaim).order_by(PendingClaim.id)))


def running(sessions: sessionmaker[Session]) -> dict[str, int]:
    return {h: n.running_vms for h, n in usage(sessions).items()}


def test_a_create_takes_its_pending_claims_and_a_refusal_gives_them_back(
    sessions: sessionmaker[Session],
) -> None:
    scheduler = HostScheduler(sessions, SchedulerConfig())
    later = utcnow() + timedelta(minutes=5)
    spec = RequestSpec(flavor=FLAVOR)
    kept = scheduler.place(spec, 4, claim_id="kept", expires_at=later)
    assert sorted({(c.host, c.count) for c in pending(sessions)}) == sorted(Counter(kept).items())
    with sessions.begin() as s:
        assert take_pending(s, "kept") == 4
    assert pending(sessions) == []
    assert sum(running(sessions).values()) == 4  # the instances' now

    scheduler.place(spec, 2, claim_id="refused", expires_at=later)
    assert sum(running(sessions).values()) == 6
    with sessions.begin() as s:
        given = release_pending(s, "refused")
    assert sum(c.instances for c in given) == 2
    assert sum(running(sessions).values()) == 4
    assert_within_limits(usage(sessions))
    with sessions.begin() as s:  # given back: nothing left to take, or to give twice
        assert take_pending(s, "refused") == 0
        assert release_pending(s, "refused") == []
    assert sum(running(sessions).values()) == 4

    scheduler.place(spec, 1)  # no claim id: the caller keeps the claim, nothing pending
    assert pending(sessions) == []
    assert sum(running(sessions).values()) == 5


def test_expired_pending_claims_are_given_back_and_cannot_be_taken_after(
    sessions: sessionmaker[Session],
) -> None:
    """The claim of a build whose caller gave up (or died) before creating it comes
    back once expired; a create that comes after that is refused, so the usage never
    counts less than the instances take."""
    scheduler = HostScheduler(sessions, SchedulerConfig())
    spec = RequestSpec(flavor=FLAVOR)
    scheduler.place(spec, 3, claim_id="lost", expires_at=utcnow() - timedelta(seconds=1))
    scheduler.place(spec, 2, claim_id="live", expires_at=utcnow() + timedelta(minutes=5))
    assert sum(running(sessions).values()) == 5

    expired = scheduler.sweep()
    assert {c.claim_id for c in expired} == {"lost"}
    assert sum(c.instances for c in expired) == 3
    assert sum(running(sessions).values()) == 2
    assert {c.claim_id for c in pending(sessions)} == {"live"}
    with sessions.begin() as s:
        assert take_pending(s, "lost") == 0
    assert scheduler.sweep() == []
    assert sum(running(sessions).values()) == 2
    nodes = usage(sessions)
    assert_within_limits(nodes)
    assert sum(n.memory_mb_used for n in nodes.values()) == 2 * FLAVOR.memory_mb


def test_a_claim_without_an_expiry_expires_a_build_timeout_from_now(
    sessions: sessionmaker[Session],
) -> None:
    scheduler = HostScheduler(sessions, SchedulerConfig(build_timeout=0.2))
    scheduler.place(RequestSpec(flavor=FLAVOR), 1, claim_id="default")
    assert scheduler.sweep() == []
    time.sleep(0.3)
    assert [c.claim_id for c in scheduler.sweep()] == ["default"]
    assert sum(running(sessions).values()) == 0


def test_the_sweeper_gives_back_expired_claims_by_itself(sessions: sessionmaker[Session]) -> None:
    scheduler = HostScheduler(sessions, SchedulerConfig())
    scheduler.place(RequestSpec(flavor=FLAVOR), 2, claim_id="x", expires_at=utcnow())
    sweeper = ClaimSweeper(scheduler, interval=0.05)
    for _ in range(2):  # and again after a stop
        sweeper.start()
        try:
            deadline = time.monotonic() + 10
            while pending(sessions) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            sweeper.stop()
        assert pending(sessions) == []
        assert sum(running(sessions).values()) == 0
        scheduler.place(RequestSpec(flavor=FLAVOR), 1, claim_id="y", expires_at=utcnow())


def test_a_create_racing_the_sweep_either_takes_its_claims_or_is_refused(
    sessions: sessionmaker[Session],
) -> None:
    """Many claims expire while their creates run: each is counted exactly once, by its
    instances or not at all."""
    scheduler = HostScheduler(sessions, SchedulerConfig())
    spec = RequestSpec(flavor=FLAVOR)
    ids = [f"c{i}" for i in range(sum(FITS.values()))]
    for claim_id in ids:
        scheduler.place(spec, 1, claim_id=claim_id, expires_at=utcnow())
    taken: list[str] = []
    start = threading.Barrier(2)

    def create() -> None:
        start.wait()
        for claim_id in ids:
            with sessions.begin() as s:
                if take_pending(s, claim_id):
                    taken.append(claim_id)

    def sweep() -> None:
        start.wait()
        for _ in ids:
            scheduler.sweep()

    threads = [threading.Thread(target=create), threading.Thread(target=sweep)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.sweep()
    assert pending(sessions) == []
    assert sum(running(sessions).values()) == len(taken)


def test_a_sweep_that_finds_nothing_expired_writes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    """It runs every few seconds in every cell with a scheduler: with nothing to give
    back it only reads (no write lock, nothing for other writers to wait for)."""
    scheduler = HostScheduler(sessions, SchedulerConfig())
    scheduler.place(
        RequestSpec(flavor=FLAVOR), 1, claim_id="live", expires_at=utcnow() + timedelta(minutes=5)
    )
    engine = sessions.kw["bind"]
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lstrip().split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        assert scheduler.sweep() == []
        with sessions.begin() as s:
            assert release_pending(s, "no-such-claim") == []
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert statements and set(statements) == {"SELECT"}, statements
    assert [c.claim_id for c in pending(sessions)] == ["live"]


def test_a_request_delivered_twice_claims_once(sessions: sessionmaker[Session]) -> None:
    """The broker may hand a request out again (its first delivery unacknowledged when
    a channel went): the second answers with what the first claimed."""
    scheduler = HostScheduler(sessions, SchedulerConfig())
    later = utcnow() + timedelta(minutes=5)
    first = scheduler.place(RequestSpec(flavor=FLAVOR), 4, claim_id="twice", expires_at=later)
    again = scheduler.place(RequestSpec(flavor=FLAVOR), 4, claim_id="twice", expires_at=later)
    assert sorted(again) == sorted(first)
    assert sum(running(sessions).values()) == 4
    with sessions.begin() as s:
        assert take_pending(s, "twice") == 4
    assert sum(running(sessions).values()) == 4


def test_expired_claims_of_many_requests_go_back_in_one_sweep(
    sessions: sessionmaker[Session],
) -> None:
    """Thousands of expired claims (deleted 500 at a time) go back in one sweep, summed
    per host."""
    scheduler = HostScheduler(sessions, SchedulerConfig())
    many, now = 5_000, utcnow()
    with sessions.begin() as s:
        for host in ("big", "small"):
            assert claim(s, host, SIZE_ZERO, many // 2)
        s.execute(
            sa.insert(PendingClaim),
            [
                {"claim_id": f"c{i}", "host": "big" if i % 2 else "small", "count": 1,
                 "vcpus": 0, "memory_mb": 0, "disk_gb": 0, "expires_at": now, "created_at": now}
                for i in range(many)
            ],
        )  # fmt: skip
    assert running(sessions) == {"big": many // 2, "small": many // 2}
    assert sum(c.instances for c in scheduler.sweep()) == many
    assert running(sessions) == {"big": 0, "small": 0}
    assert pending(sessions) == []
