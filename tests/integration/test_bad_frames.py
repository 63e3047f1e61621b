"""A raw CellLink client against a running parent cell: refused Hellos, envelopes
a child may not send, and frames over the size limit.

The client speaks the protocol by hand through the generated stub, so it can send
what a real child never would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cellplane.config import CellConfig, ChildConfig
from cellplane.errors import Code
from cellplane.federation import envelopes
from cellplane.federation.dispatch import Delivery
from cellplane.federation.link import PROTOCOL_VERSION
from cellplane.service import Cell
from cellplane.v1 import link_pb2, link_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024
WAIT = 10.0
EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

Call = Any  # grpc.aio.StreamStreamCall[ConnectRequest, ConnectResponse]


class Parent:
    """A running parent cell with one configured child, ``kid``, that counts the
    echoes its handler saw."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.echoes: list[int] = []

        async def echo(env: link_pb2.Envelope, delivery: Delivery) -> link_pb2.CellResult | None:
            self.echoes.append(env.echo.sequence)
            return delivery.ok(echo=env.echo) if env.need_response else None

        cell.handlers.register("echo", echo)


def run(tmp: Path, scenario: Callable[[Parent], Awaitable[None]]) -> None:
    async def main() -> None:
        config = CellConfig(
            name="parent",
            database_url=f"sqlite:///{tmp / 'parent.db'}",
            listen="127.0.0.1:0",
            children=(ChildConfig("kid"),),
            max_message_bytes=MAX_MESSAGE_BYTES,
            report_interval=0.2,
            response_timeout=2.0,
        )
        cell = Cell(config)
        await cell.start()
        try:
            await asyncio.wait_for(scenario(Parent(cell)), 60)
        finally:
            await cell.stop(grace=0.2)

    asyncio.run(main())


@asynccontextmanager
async def raw_link(cell: Cell) -> AsyncIterator[Call]:
    """A Connect stream on a connection of its own."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(cell.address, options=options) as channel:
        call = link_pb2_grpc.CellLinkStub(channel).Connect(timeout=WAIT)
        try:
            yield call
        finally:
            call.cancel()


def hello(cell: str = "kid", **fields: Any) -> link_pb2.ConnectRequest:
    values: dict[str, Any] = {
        "cell": cell,
        "protocol_version": PROTOCOL_VERSION,
        "epoch": "raw-epoch",
        "path": cell,
    }
    values.update(fields)
    return link_pb2.ConnectRequest(hello=link_pb2.Hello(**values))


def batch(*envs: link_pb2.Envelope) -> link_pb2.ConnectRequest:
    return link_pb2.ConnectRequest(batch=link_pb2.EnvelopeBatch(envelopes=envs))


def up(seq: int, **fields: Any) -> link_pb2.Envelope:
    """A well-formed targeted echo from kid to parent (number ``seq``), then ``fields``."""
    env = link_pb2.Envelope(
        id=f"raw-{seq:04d}",
        seq=seq,
        kind=envelopes.TARGETED,
        direction=envelopes.UP,
        routing_path="kid",
        target_path="kid!parent",
        max_hops=16,
        trace_id="raw",
        echo=link_pb2.Echo(sequence=seq),
    )
    for name, value in fields.items():
        if name == "no_payload":
            env.ClearField("echo")
        else:
            setattr(env, name, value)
    return env


async def refused(call: Call) -> grpc.aio.AioRpcError:
    """Read until the stream ends with an error; return it."""
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        while True:
            frame = await call.read()
            assert frame is not EOF, "the stream ended without an error status"
    return excinfo.value


async def open_as_kid(call: Call) -> link_pb2.Hello:
    await call.write(hello())
    first = await call.read()
    assert first.WhichOneof("frame") == "hello", first
    return first.hello


async def responses(call: Call, ids: set[str]) -> dict[str, link_pb2.Envelope]:
    """Read frames until a response to each of ``ids`` arrived."""
    found: dict[str, link_pb2.Envelope] = {}

    async def collect() -> None:
        while not ids <= set(found):
            frame = await call.read()
            assert frame is not EOF, f"stream ended; still waiting for {ids - set(found)}"
            for env in frame.batch.envelopes:
                if env.kind == envelopes.RESPONSE:
                    found[env.response_to] = env

    await asyncio.wait_for(collect(), WAIT)
    return found


# --- Hellos ----------------------------------------------------------------------------


def test_hello_from_an_unconfigured_cell_is_permission_denied(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await call.write(hello("stranger"))
            error = await refused(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'stranger' is not a configured child of 'parent'" in (error.details() or "")

    run(tmp_path, scenario)


def test_first_frame_not_a_hello_is_invalid_argument(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await call.write(batch(up(1)))
            error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first frame must be a Hello" in (error.details() or "")
        assert parent.echoes == []

    run(tmp_path, scenario)


def test_wrong_protocol_version_is_failed_precondition(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await call.write(hello(protocol_version=PROTOCOL_VERSION + 1))
            error = await refused(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"protocol version {PROTOCOL_VERSION + 1} is not supported" in (
            error.details() or ""
        )

    run(tmp_path, scenario)


def test_hello_with_an_invalid_cell_name_is_invalid_argument(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await call.write(hello("Not A Cell"))
            error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid cell name" in (error.details() or "")

    run(tmp_path, scenario)


def test_a_second_hello_on_an_open_link_is_invalid_argument(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await open_as_kid(call)
            await call.write(hello())
            error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "only batches may follow the Hello" in (error.details() or "")

    run(tmp_path, scenario)


# --- envelopes a child may not send ----------------------------------------------------


def test_forbidden_envelopes_get_an_error_response_and_change_nothing(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        bad = {
            # (envelope, code, words of the message)
            "spoofed": (
                up(1, routing_path="someone-else"),
                Code.PERMISSION_DENIED,
                "does not end at the sending cell 'kid'",
            ),
            "malformed": (up(2, no_payload=True), Code.INVALID_ARGUMENT, "no payload"),
            "hop limit": (
                up(3, hop_count=17, max_hops=16),
                Code.INVALID_ARGUMENT,
                "hop limit 16 exceeded at parent",
            ),
            "downward": (
                up(4, direction=envelopes.DOWN),
                Code.PERMISSION_DENIED,
                "child may only send upward",
            ),
        }
        async with raw_link(parent.cell) as call:
            parent_hello = await open_as_kid(call)
            assert parent_hello.cell == "parent"
            await call.write(batch(*(env for env, _, _ in bad.values())))
            answers = await responses(call, {env.id for env, _, _ in bad.values()})
            for what, (env, code, words) in bad.items():
                answer = answers[env.id]
                assert answer.direction == envelopes.DOWN, what
                assert len(answer.response.results) == 1, what
                status = answer.response.results[0].status
                assert status.code == code, (what, status)
                assert words in status.message, (what, status.message)
            assert parent.echoes == []
            assert parent.cell.router.rejected == len(bad)

            # The link still works: a good envelope after the bad ones is handled.
            good = up(5, need_response=True)
            await call.write(batch(good))
            answer = (await responses(call, {good.id}))[good.id]
            result = answer.response.results[0]
            assert (result.status.code, result.echo.sequence) == (Code.OK, 5)
            assert parent.echoes == [5]

    run(tmp_path, scenario)


def test_a_forbidden_response_is_dropped_without_an_answer(tmp_path: Path) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await open_as_kid(call)
            spoofed = link_pb2.Envelope(
                id="raw-resp",
                seq=1,
                kind=envelopes.RESPONSE,
                direction=envelopes.UP,
                routing_path="impostor",
                target_path="impostor!parent",
                max_hops=16,
                response_to="nothing",
                response=link_pb2.Response(),
            )
            probe = up(2, need_response=True)
            await call.write(batch(spoofed, probe))
            # Frames come in order: once the probe is answered, the spoofed
            # response has been dealt with; it must not have been answered.
            answers = await responses(call, {probe.id})
            assert "raw-resp" not in answers
            assert parent.cell.router.rejected == 1
            assert parent.echoes == [2]

    run(tmp_path, scenario)


# --- frame size ------------------------------------------------------------------------


def test_an_oversized_frame_ends_the_stream_and_the_parent_keeps_serving(
    tmp_path: Path,
) -> None:
    async def scenario(parent: Parent) -> None:
        async with raw_link(parent.cell) as call:
            await open_as_kid(call)
            huge = up(1)
            huge.echo.data = b"x" * (MAX_MESSAGE_BYTES + 1024)
            await call.write(batch(huge))
            error = await refused(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert parent.echoes == []

        # Others are still served, and the same child may come back.
        async with grpc.aio.insecure_channel(parent.cell.address) as channel:
            check = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=WAIT
            )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        async with raw_link(parent.cell) as call:
            await open_as_kid(call)
            good = up(2, need_response=True)
            await call.write(batch(good))
            answer = (await responses(call, {good.id}))[good.id]
            assert answer.response.results[0].status.code == Code.OK
        assert parent.echoes == [2]

    run(tmp_path, scenario)
