"""Anti-entropy: a parent and a child compare digests of (uuid, version) per hash
bucket, and the child re-sends only the buckets that differ.

A partition, a lost push, or a lost database at the top heals without
re-sending everything. Re-sent instances travel as ordinary pushes through the
outbox, so versions keep duplicates harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Iterable
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db.instances import pushed
from cellplane.db.models import Instance, utcnow
from cellplane.errors import Code, InvalidArgument, from_status
from cellplane.federation import envelopes, paths
from cellplane.federation.channel import LinkState
from cellplane.federation.dispatch import Delivery
from cellplane.federation.outbox import Outbox, encode_push
from cellplane.federation.router import Router
from cellplane.v1 import link_pb2

DEFAULT_BUCKETS = 64
MAX_BUCKETS = 4096
RESEND_ROWS = 2000  # instances whose outbox rows one transaction of a resend writes


def bucket_of(uuid: str, count: int) -> int:
    """The hash bucket of an instance."""
    return int(uuid.replace("-", "")[:8], 16) % count


def digests(rows: Iterable[tuple[str, int]], count: int) -> dict[int, tuple[bytes, int]]:
    """bucket -> (sha256 of its sorted (uuid, version) pairs, how many)."""
    grouped: dict[int, list[tuple[str, int]]] = {}
    for uuid, version in rows:
        grouped.setdefault(bucket_of(uuid, count), []).append((uuid, version))
    out = {}
    for bucket, items in grouped.items():
        digest = hashlib.sha256()
        for uuid, version in sorted(items):
            digest.update(f"{uuid}:{version};".encode())
        out[bucket] = (digest.digest(), len(items))
    return out


class Synchronizer:
    """Both sides of anti-entropy for one cell."""

    def __init__(
        self,
        name: str,
        router: Router,
        sessions: sessionmaker[Session],
        outbox: Outbox,
        *,
        interval: float = 300.0,
        bucket_count: int = DEFAULT_BUCKETS,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.router = router
        self.sessions = sessions
        self.outbox = outbox
        self.interval = interval
        self.bucket_count = bucket_count
        self.timeout = timeout
        self.log = structlog.get_logger().bind(cell=name)

    def register(self, handlers: object) -> None:
        """Answer a parent's sync requests."""
        handlers.register("sync_request", self.on_sync_request)  # type: ignore[attr-defined]

    # --- parent side ---------------------------------------------------------------

    async def sync_child(self, child: str, *, full: bool = False) -> link_pb2.SyncResult:
        """Compare with ``child`` and have it re-send what differs (everything if ``full``)."""
        target = paths.join(self.name, child)
        count = self.bucket_count
        differing: list[int] = []
        compared = 0
        if not full:
            result = await self.router.call(
                target,
                envelopes.DOWN,
                timeout=self.timeout,
                sync_request=link_pb2.SyncRequest(bucket_count=count),
            )
            _raise_for(result)
            theirs = {b.bucket: (b.digest, b.count) for b in result.digest.buckets}
            ours = await asyncio.to_thread(self._subtree_digests, child, count)
            compared = len(set(theirs) | set(ours))
            differing = sorted(b for b in set(theirs) | set(ours) if theirs.get(b) != ours.get(b))
            if not differing:
                return link_pb2.SyncResult(buckets_compared=compared)
        result = await self.router.call(
            target,
            envelopes.DOWN,
            timeout=self.timeout,
            sync_request=link_pb2.SyncRequest(bucket_count=count, buckets=differing, full=full),
        )
        _raise_for(result)
        sync = result.sync
        sync.buckets_compared = compared
        self.log.info(
            "sync_done",
            child=child,
            buckets=len(differing) if not full else count,
            resent=sync.instances_resent,
        )
        return sync

    def _subtree_digests(self, child: str, count: int) -> dict[int, tuple[bytes, int]]:
        prefix = paths.join(self.name, child)
        with self.sessions() as session:
            rows = session.execute(
                select(Instance.uuid, Instance.version).where(
                    or_(
                        Instance.cell_path == prefix,
                        Instance.cell_path.startswith(prefix + paths.SEP),
                    ),
                    Instance.version > 0,
                )
            ).all()
        return digests(((str(u), int(v)) for u, v in rows), count)

    async def run(self) -> None:
        """Sync with every child now and then (with jitter) until cancelled."""
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.0))
            for channel in self.router.neighbours.children():
                if channel.state is not LinkState.UP:
                    continue
                with contextlib.suppress(Exception):
                    await self.sync_child(channel.peer)

    # --- child side ----------------------------------------------------------------

    async def on_sync_request(
        self, env: link_pb2.Envelope, delivery: Delivery
    ) -> link_pb2.CellResult | None:
        """A parent's digest request, or its request to re-send buckets."""
        request = env.sync_request
        count = request.bucket_count
        if not 0 < count <= MAX_BUCKETS:
            raise InvalidArgument(f"bucket_count must be in 1..{MAX_BUCKETS}, got {count}")
        if not request.buckets and not request.full:
            found = await asyncio.to_thread(self._all_digests, count)
            digest = link_pb2.SyncDigest(cell_path=self.name, bucket_count=count)
            digest.buckets.extend(
                link_pb2.BucketDigest(bucket=b, digest=d, count=n)
                for b, (d, n) in sorted(found.items())
            )
            return delivery.ok(digest=digest)
        parent = paths.hops(env.routing_path)[-2]
        wanted = None if request.full else set(request.buckets)
        resent = await asyncio.to_thread(self._resend, parent, count, wanted)
        return delivery.ok(
            sync=link_pb2.SyncResult(
                buckets_resent=count if wanted is None else len(wanted),
                instances_resent=resent,
            )
        )

    def _all_digests(self, count: int) -> dict[int, tuple[bytes, int]]:
        with self.sessions() as session:
            rows = session.execute(
                select(Instance.uuid, Instance.version).where(Instance.version > 0)
            ).all()
        return digests(((str(u), int(v)) for u, v in rows), count)

    def _resend(self, parent: str, count: int, wanted: set[int] | None) -> int:
        """Queue every instance of the ``wanted`` buckets (all, if None) for ``parent``
        again: its update, then its destroy if deleted.

        The instances are read first, without the write lock, and their outbox rows
        written RESEND_ROWS per transaction, so that resending a large cell holds up its
        other writers only briefly. An instance that changes meanwhile is pushed again
        by that change, and the parent keeps the newer version.
        """
        with self.sessions() as session:
            rows = [
                row
                for row in pushed(session)
                if wanted is None or bucket_of(row.uuid, count) in wanted
            ]
        now = utcnow()
        for start in range(0, len(rows), RESEND_ROWS):
            out: list[tuple[Any, ...]] = []
            for row in rows[start : start + RESEND_ROWS]:
                for kind in ("update", "destroy") if row.deleted else ("update",):
                    payload_field, payload = encode_push(row, kind, None)
                    out.append((parent, payload_field, row.uuid, row.version, payload, now))
            with self.sessions.begin() as session:
                self.outbox.write(session, out)
        return len(rows)


def _raise_for(result: link_pb2.CellResult) -> None:
    if result.status.code != Code.OK:
        raise from_status(result.status.code, result.status.message)
