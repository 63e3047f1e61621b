"""``cellplane bench links``: envelopes over CellLink next to raw gRPC streams, in one run.

Measured, in this order (DESIGN section 7):

1. the raw primitive: a CellLink bidi stream to another process that only
   counts, with one small envelope per frame and with 100 per frame (each frame
   built from envelope objects, as a link's writer must), and a one-envelope
   ping-pong;
2. targeted Echo envelopes from an API cell in this process to a cell in
   another process, one hop (``api!leaf``) and two (``api!mid!leaf``, three
   processes): envelopes/s sent fire-and-forget and counted by an inline
   handler at the target, and sequential call round trips (p50/p99);
3. broadcasts with response from the API cell over a tree of ``cells`` cells
   (children and grandchildren, each child's subtree in one host process).

The far ends run in host processes (:mod:`.bench_hosts`, each a fresh
interpreter with its own GIL), which are always ended, whatever happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from cellplane.cli.runtime import event_loop_name
from cellplane.errors import CellplaneError
from cellplane.federation import envelopes
from cellplane.federation.bench_hosts import (
    COUNT_QUERY,
    RAW_ECHO,
    RAW_REPORT,
    CellSpec,
    cell_config,
    recv,
    wait_links_up,
)
from cellplane.federation.link import client_options
from cellplane.v1 import link_pb2, link_pb2_grpc

HOSTS = 2  # host processes besides this one (the machine has 2 cores)
PAYLOAD = b"0123456789abcdef"  # a small Echo body
CHUNK = 512  # envelopes queued before the writer gets a turn
WINDOW = 32_768  # most envelopes waiting for the first hop's ack
REQUEST_TIMEOUT = 60.0  # seconds for a host to obey a command (its first includes imports)
CALL_TIMEOUT = 30.0
BROADCAST_TIMEOUT = 5.0
WARMUP = 1000


class BenchError(CellplaneError):
    """The benchmark could not measure what it meant to (a host failed, a count is off)."""


Row = dict[str, Any]


def run_link_bench(n: int = 200_000, cells: int = 50, rounds: int = 50) -> list[Row]:
    """Measure links with ``n`` envelopes, broadcasts over ``cells`` cells ``rounds`` times."""
    if n < 1 or cells < 1 or rounds < 1:
        raise ValueError("n, cells and rounds must be at least 1")
    hosts: list[_HostProcess] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cellplane-bench-") as tmp:
            hosts = [_HostProcess(i) for i in range(HOSTS)]
            return asyncio.run(_run(hosts, Path(tmp), n, cells, rounds))
    finally:
        _close(hosts)


async def _run(hosts: list[_HostProcess], tmp: Path, n: int, cells: int, rounds: int) -> list[Row]:
    calls = max(200, min(2000, n // 100))
    rows = await _raw_stream(hosts[0], n, calls)
    rows += await _targeted(hosts, tmp / "one-hop", ["leaf"], n, calls)
    rows += await _targeted(hosts, tmp / "two-hops", ["mid", "leaf"], n, calls)
    rows.append(await _broadcast(hosts, tmp / "tree", cells, rounds))
    rows.append(
        {
            "measure": "machine",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpc": grpc.__version__,
            "loop": event_loop_name(),
        }
    )
    return rows


# --- 1. raw gRPC stream ---------------------------------------------------------------


async def _raw_stream(host: _HostProcess, n: int, calls: int) -> list[Row]:
    address = await host.request("raw")
    env = envelopes.make(
        origin="api", kind=envelopes.TARGETED, direction=envelopes.DOWN, target_path="api!leaf"
    )
    env.echo.data, env.seq = PAYLOAD, 1
    single, batched = max(1000, n // 10), max(10_000, n * 5)
    try:
        async with grpc.aio.insecure_channel(address, options=client_options(1 << 22)) as ch:
            call = link_pb2_grpc.CellLinkStub(ch).Connect()
            await _stream(call, env, 1, 200)  # warm up
            one = await _stream(call, env, 1, single)
            hundred = await _stream(call, env, 100, batched // 100)
            ping = link_pb2.ConnectRequest(
                batch=link_pb2.EnvelopeBatch(envelopes=[env], ack=RAW_ECHO)
            )
            latencies = []
            for _ in range(calls):
                started = time.perf_counter()
                await call.write(ping)
                await call.read()
                latencies.append(time.perf_counter() - started)
            await call.done_writing()
    finally:
        await host.request("stop")
    return [
        {
            "measure": "raw grpc stream, 1 msg/frame",
            "count": single,
            "msgs_per_s": round(one),
            "reference": "~15,000",
        },
        {
            "measure": "raw grpc stream, 100 msgs/frame",
            "count": batched // 100 * 100,
            "msgs_per_s": round(hundred),
            "reference": "~550,000",
        },
        {"measure": "raw grpc stream round trip", "count": calls, **_percentiles_us(latencies)},
    ]


async def _stream(call: Any, env: link_pb2.Envelope, per_frame: int, frames: int) -> float:
    """Write ``frames`` frames of ``per_frame`` envelopes; messages/s until the server counted.

    Each frame is built from envelope objects, as a link's writer has to.
    """
    envs = [env] * per_frame
    started = time.perf_counter()
    for _ in range(frames):
        frame = link_pb2.ConnectRequest()
        frame.batch.envelopes.extend(envs)
        await call.write(frame)
    await call.write(link_pb2.ConnectRequest(batch=link_pb2.EnvelopeBatch(ack=RAW_REPORT)))
    reply = await call.read()
    elapsed = time.perf_counter() - started
    if reply.batch.ack != frames * per_frame:
        raise BenchError(f"raw server counted {reply.batch.ack} of {frames * per_frame}")
    return frames * per_frame / elapsed


# --- 2. targeted envelopes and call round trips ---------------------------------------


async def _targeted(
    hosts: list[_HostProcess], data_dir: Path, chain: list[str], n: int, calls: int
) -> list[Row]:
    from cellplane.service import Cell

    data_dir.mkdir(parents=True)
    api = Cell(cell_config(CellSpec("api", children=(chain[0],)), data_dir))
    used = hosts[: len(chain)]
    try:
        await api.start()
        parent, address = "api", api.address
        for i, name in enumerate(chain):
            below = tuple(chain[i + 1 : i + 2])
            spec = CellSpec(name, parent, address, below, count_echo=name == chain[-1])
            addresses = await used[i % len(used)].request("cells", ([spec], str(data_dir)))
            parent, address = name, addresses[name]
        await wait_links_up(api.neighbours.children())
        target = "!".join(["api", *chain])
        hops = f"{len(chain)} hop{'s' if len(chain) > 1 else ''}"
        await _send_rate(api, target, WARMUP)
        rate = await _send_rate(api, target, n)
        latencies = await _call_latencies(api, target, calls)
    finally:
        await _stop_all(used)
        await api.stop(grace=0.2)
    return [
        {
            "measure": f"targeted envelopes, {hops}",
            "count": n,
            "envelopes_per_s": round(rate),
            "aim": ">= 100,000",
        },
        {"measure": f"call round trip, {hops}", "count": calls, **_percentiles_us(latencies)},
    ]


async def _send_rate(api: Any, target: str, n: int) -> float:
    """Send ``n`` Echo envelopes fire-and-forget; envelopes/s until the target counted them."""
    router, first_hop = api.router, api.neighbours.children()[0]
    echo = link_pb2.Echo(data=PAYLOAD)
    progress = asyncio.Event()

    def on_acked(_acked: list[link_pb2.Envelope]) -> None:
        progress.set()

    first_hop.on_acked.append(on_acked)
    try:
        before = await _count(router, target)
        started = time.perf_counter()
        sent = 0
        while sent < n:
            chunk = min(CHUNK, n - sent)
            for _ in range(chunk):
                router.send(target, envelopes.DOWN, echo=echo)
            sent += chunk
            await asyncio.sleep(0)
            while first_hop.unacked > WINDOW:  # flow control: never run far ahead of acks
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), CALL_TIMEOUT)
                except TimeoutError:
                    raise BenchError(
                        f"no ack from {first_hop.peer} for {CALL_TIMEOUT:.0f}s"
                    ) from None
        # Links keep order, so the answer to this query comes after every envelope above.
        counted = await _count(router, target) - before
        elapsed = time.perf_counter() - started
    finally:
        first_hop.on_acked.remove(on_acked)
    if counted != n:
        raise BenchError(f"{target} counted {counted} of {n} envelopes")
    return n / elapsed


async def _count(router: Any, target: str) -> int:
    query = link_pb2.ServiceQuery(what=COUNT_QUERY)
    result = await router.call(target, envelopes.DOWN, timeout=CALL_TIMEOUT, service_query=query)
    if not result.answered or result.status.code:
        raise BenchError(f"{target} did not count: {result.status.message}")
    return int(result.echo.sequence)


async def _call_latencies(api: Any, target: str, calls: int) -> list[float]:
    echo = link_pb2.Echo(data=PAYLOAD)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await api.router.call(target, envelopes.DOWN, timeout=CALL_TIMEOUT, echo=echo)
        latencies.append(time.perf_counter() - started)
        if result.status.code:
            raise BenchError(f"call to {target} failed: {result.status.message}")
    return latencies


# --- 3. broadcast with response -------------------------------------------------------


def tree_shape(cells: int) -> list[tuple[str, list[str]]]:
    """Children of ``api`` and their children, ``cells`` cells in all counting ``api``."""
    below = cells - 1
    if below <= 0:
        return []
    count = max(1, round(math.sqrt(below)))
    grandchildren = below - count
    shape = []
    for i in range(count):
        name = f"c{i + 1}"
        mine = grandchildren // count + (1 if i < grandchildren % count else 0)
        shape.append((name, [f"{name}-{j + 1}" for j in range(mine)]))
    return shape


async def _broadcast(hosts: list[_HostProcess], data_dir: Path, cells: int, rounds: int) -> Row:
    from cellplane.service import Cell

    data_dir.mkdir(parents=True)
    shape = tree_shape(cells)
    api = Cell(cell_config(CellSpec("api", children=tuple(c for c, _ in shape)), data_dir))
    try:
        await api.start()
        per_host: list[list[CellSpec]] = [[] for _ in hosts]
        for i, (child, grandchildren) in enumerate(shape):
            per_host[i % len(hosts)] += [
                CellSpec(child, "api", api.address, tuple(grandchildren)),
                *[CellSpec(g, child) for g in grandchildren],
            ]
        await asyncio.gather(
            *[
                h.request("cells", (s, str(data_dir)))
                for h, s in zip(hosts, per_host, strict=True)
                if s
            ]
        )
        await wait_links_up(api.neighbours.children())
        latencies, answered = [], []
        for i in range(3 + rounds):  # three rounds to warm up
            echo = link_pb2.Echo(data=PAYLOAD, sequence=i)
            started = time.perf_counter()
            results = await api.router.broadcast(
                envelopes.DOWN, timeout=BROADCAST_TIMEOUT, echo=echo
            )
            elapsed = time.perf_counter() - started
            if i >= 3:
                latencies.append(elapsed)
                answered.append(
                    len({r.cell_path for r in results if r.answered and not r.status.code})
                )
    finally:
        await _stop_all(hosts)
        await api.stop(grace=0.2)
    return {
        "measure": f"broadcast with response, {cells} cells",
        "count": rounds,
        **_percentiles_ms(latencies),
        "answered": f"{min(answered)}/{cells}",
        "complete_rounds": f"{sum(a == cells for a in answered)}/{rounds}",
        "aim": "< 100 ms",
    }


# --- host processes and figures -------------------------------------------------------


class _HostProcess:
    """One host process (a fresh interpreter) and the socket that commands it."""

    def __init__(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _HOST_MAIN, str(theirs.fileno()), event_loop_name()],
                pass_fds=(theirs.fileno(),),
                # Ctrl-C is for this process: it stops the hosts itself (and a host
                # whose socket closes stops on its own).
                start_new_session=True,
            )
        self.name = f"bench host {index} (pid {self.process.pid})"
        self._conn = Connection(ours.detach())

    async def request(self, command: str, arg: Any = None) -> Any:
        try:
            self._conn.send((command, arg))
            status, value = await asyncio.wait_for(recv(self._conn), REQUEST_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"{self.name} did not answer {command!r} in time") from None
        except (EOFError, OSError) as exc:
            raise BenchError(f"{self.name} exited ({exc!r})") from None
        if status != "ok":
            raise BenchError(f"{self.name}: {value}")
        return value

    def ask_to_exit(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(("exit", None))

    def end(self) -> None:
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self._conn.close()


_HOST_MAIN = (
    "import sys; from cellplane.federation.bench_hosts import main; "
    "main(int(sys.argv[1]), sys.argv[2])"
)


def _close(hosts: list[_HostProcess]) -> None:
    for host in hosts:
        host.ask_to_exit()
    for host in hosts:
        host.end()


async def _stop_all(hosts: list[_HostProcess]) -> None:
    await asyncio.gather(*[_quiet(h.request("stop")) for h in hosts])


async def _quiet(step: Awaitable[Any]) -> None:
    with contextlib.suppress(BenchError, TimeoutError):
        await step


def _percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _percentiles_us(latencies: list[float]) -> Row:
    ordered = sorted(latencies)
    return {f"p{p}_us": round(_percentile(ordered, p) * 1e6, 1) for p in (50, 99)}


def _percentiles_ms(latencies: list[float]) -> Row:
    ordered = sorted(latencies)
    return {f"p{p}_ms": round(_percentile(ordered, p) * 1e3, 2) for p in (50, 99)}
