"""Local RPC over kombu, on ``memory://`` and on the real RabbitMQ."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cellplane.amqp import RpcClient, RpcServer, connect
from cellplane.errors import CellplaneError, Code, InvalidArgument, Timeout, WrongState


class Compute:
    """An endpoint object, as a role would expose it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[Any] = []
        self.event = threading.Event()

    def echo(self, value: Any) -> Any:
        return value

    def whoami(self) -> str:
        return self.name

    def note(self, value: Any) -> None:
        self.seen.append(value)
        self.event.set()

    def add(self, a: int, b: int) -> int:
        return a + b

    def stop_instance(self, uuid: str) -> None:
        raise WrongState("instance is stopped")

    def explode(self) -> None:
        raise KeyError("boom")

    def _private(self) -> None:
        raise AssertionError("private methods are not served")


@pytest.fixture
def topic(transport_url: str) -> Iterator[str]:
    """A topic private to this test; its durable queues are deleted afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with connect(transport_url) as conn:
        channel = conn.default_channel
        for queue in (name, f"{name}.host1", f"{name}.host2"):
            channel.queue_delete(queue)
        if not transport_url.startswith("memory"):
            channel.exchange_delete(f"cellplane.{name}_fanout")


@pytest.fixture
def serve(transport_url: str, topic: str) -> Iterator[Callable[..., RpcServer]]:
    """Start servers on the test topic; all are stopped at the end."""
    servers: list[RpcServer] = []

    def start(endpoint: object, server: str | None = None, **kwargs: Any) -> RpcServer:
        rpc = RpcServer(transport_url, topic, server=server, endpoints=[endpoint], **kwargs)
        rpc.start()
        servers.append(rpc)
        return rpc

    yield start
    for rpc in servers:
        rpc.stop()


@pytest.fixture
def client(transport_url: str) -> Iterator[RpcClient]:
    with RpcClient(transport_url) as rpc:
        yield rpc


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_call_round_trip(serve: Any, client: RpcClient, topic: str) -> None:
    serve(Compute("host1"))
    assert client.call(topic, "echo", timeout=10, value={"a": [1, 2.5, "x", None]}) == {
        "a": [1, 2.5, "x", None]
    }
    assert client.call(topic, "add", timeout=10, a=2, b=3) == 5


def test_register_plain_function(transport_url: str, client: RpcClient, topic: str) -> None:
    server = RpcServer(transport_url, topic)
    server.register("double", lambda n: n * 2)
    with server:
        assert client.call(topic, "double", timeout=10, n=21) == 42


def test_cast_is_delivered(serve: Any, client: RpcClient, topic: str) -> None:
    compute = Compute("host1")
    serve(compute)
    client.cast(topic, "note", value="hello")
    assert compute.event.wait(10)
    assert compute.seen == ["hello"]


def test_fanout_reaches_every_server(serve: Any, client: RpcClient, topic: str) -> None:
    computes = [Compute("host1"), Compute("host2")]
    for compute in computes:
        serve(compute, server=compute.name)
    client.fanout(topic, "note", value="all")
    for compute in computes:
        assert compute.event.wait(10), compute.name
    assert wait_for(lambda: all(c.seen == ["all"] for c in computes))


def test_directed_call_reaches_only_that_server(serve: Any, client: RpcClient, topic: str) -> None:
    host1, host2 = Compute("host1"), Compute("host2")
    serve(host1, server="host1")
    serve(host2, server="host2")
    for _ in range(10):
        assert client.call(f"{topic}.host2", "whoami", timeout=10) == "host2"
    client.cast(f"{topic}.host1", "note", value=1)
    assert host1.event.wait(10)
    # A call on host2 after the cast proves host2 had its chance to (wrongly) get it.
    assert client.call(f"{topic}.host2", "whoami", timeout=10) == "host2"
    assert host2.seen == []


def test_call_without_server_times_out(client: RpcClient, topic: str) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout) as caught:
        client.call(f"{topic}_nobody", "echo", timeout=0.3, value=1)
    assert time.monotonic() - started < 30  # it returned, it did not hang
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    message = str(caught.value)
    assert f"{topic}_nobody" in message and "'echo'" in message and "0.3" in message


def test_handler_error_arrives_as_its_class(serve: Any, client: RpcClient, topic: str) -> None:
    serve(Compute("host1"))
    with pytest.raises(WrongState, match=r"^instance is stopped$"):
        client.call(topic, "stop_instance", timeout=10, uuid="abc")


def test_unexpected_error_is_internal(serve: Any, client: RpcClient, topic: str) -> None:
    serve(Compute("host1"))
    with pytest.raises(CellplaneError) as caught:
        client.call(topic, "explode", timeout=10)
    assert caught.value.code == Code.INTERNAL
    assert "KeyError" in str(caught.value) and "boom" in str(caught.value)


def test_unknown_method_is_unimplemented(serve: Any, client: RpcClient, topic: str) -> None:
    serve(Compute("host1"))
    with pytest.raises(CellplaneError) as caught:
        client.call(topic, "no_such_method", timeout=10)
    assert caught.value.code == Code.UNIMPLEMENTED
    assert "no_such_method" in str(caught.value)
    with pytest.raises(CellplaneError) as private:
        client.call(topic, "_private", timeout=10)
    assert private.value.code == Code.UNIMPLEMENTED


def test_bad_arguments_are_invalid_argument(serve: Any, client: RpcClient, topic: str) -> None:
    serve(Compute("host1"))
    with pytest.raises(InvalidArgument, match="unexpected"):
        client.call(topic, "add", timeout=10, a=1, b=2, c=3)
    with pytest.raises(InvalidArgument, match="missing"):
        client.call(topic, "add", timeout=10, a=1)
    with pytest.raises(InvalidArgument, match="'b' must be int"):
        client.call(topic, "add", timeout=10, a=1, b="2")


def test_concurrent_calls_get_their_own_answers(serve: Any, client: RpcClient, topic: str) -> None:
    serve(Compute("host1"), workers=4)
    serve(Compute("host2"), workers=4)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def caller(worker: int) -> None:
        try:
            for i in range(25):
                key = worker * 1000 + i
                results[key] = client.call(topic, "echo", timeout=30, value=key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 16 * 25
    assert all(key == value for key, value in results.items())


def test_start_and_stop_are_guarded(transport_url: str, client: RpcClient, topic: str) -> None:
    server = RpcServer(transport_url, topic, endpoints=[Compute("host1")])
    server.stop()  # before start: harmless
    server = RpcServer(transport_url, topic, endpoints=[Compute("host1")])
    server.start()
    with pytest.raises(RuntimeError):
        server.start()
    assert client.call(topic, "whoami", timeout=10) == "host1"
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        server.start()
    assert not [t for t in threading.enumerate() if t.name == f"rpc-server-{topic}"]


def test_cast_survives_a_restarting_server(
    transport_url: str, client: RpcClient, topic: str
) -> None:
    first = Compute("host1")
    with RpcServer(transport_url, topic, endpoints=[first]):
        assert client.call(topic, "whoami", timeout=10) == "host1"
    client.cast(topic, "note", value="while down")
    second = Compute("host1")
    with RpcServer(transport_url, topic, endpoints=[second]):
        assert second.event.wait(10)
    assert second.seen == ["while down"]


def test_closed_client_refuses_work(transport_url: str, topic: str) -> None:
    rpc = RpcClient(transport_url)
    rpc.close()
    rpc.close()
    with pytest.raises(CellplaneError):
        rpc.cast(topic, "note", value=1)


def test_dropped_rabbitmq_connections_are_reestablished(rabbitmq_url: str) -> None:
    topic = f"test_{uuid.uuid4().hex[:12]}"
    server = RpcServer(rabbitmq_url, topic, endpoints=[Compute("host1")])
    try:
        with server, RpcClient(rabbitmq_url) as rpc:
            assert rpc.call(topic, "echo", timeout=10, value=1) == 1
            # Cut the sockets under kombu, as a broker restart or a firewall would.
            rpc._publisher._conn.connection.transport.sock.shutdown(socket.SHUT_RDWR)
            assert rpc.call(topic, "echo", timeout=10, value=2) == 2
            server._conn.connection.transport.sock.shutdown(socket.SHUT_RDWR)
            assert rpc.call(topic, "echo", timeout=20, value=3) == 3
    finally:
        with connect(rabbitmq_url) as conn:
            conn.default_channel.queue_delete(topic)


def test_memory_server_polls_rarely_while_a_slow_handler_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On memory:// the consumer thread wakes every 10 ms while a handler runs, to ack
    it soon after it ends (it used to wake every 2 ms)."""
    from cellplane.amqp import memory

    drains = []
    real = memory.Transport.drain_events

    def counted(self: Any, connection: Any, timeout: float | None = None, **kw: Any) -> None:
        drains.append(timeout)
        real(self, connection, timeout=timeout, **kw)

    monkeypatch.setattr(memory.Transport, "drain_events", counted)
    topic = f"test_{uuid.uuid4().hex[:12]}"

    def slow(value: int) -> int:
        time.sleep(0.5)
        return value

    server = RpcServer("memory://", topic)
    server.register("slow", slow)
    server.start()
    try:
        with RpcClient("memory://") as client:
            drains.clear()
            assert client.call(topic, "slow", timeout=10, value=7) == 7
        assert wait_for(lambda: not server._inflight), "the finished call was never acked"
        assert len(drains) < 100, f"{len(drains)} wake-ups while one call ran"
    finally:
        server.stop()
        with connect("memory://") as conn:
            conn.default_channel.queue_delete(topic)


def test_memory_server_acks_a_burst_of_casts_as_they_pile_up() -> None:
    """Finished handlers wake the consumer thread once their acks fill half the prefetch
    window, so a burst larger than the window is all delivered and acked."""
    topic = f"test_{uuid.uuid4().hex[:12]}"
    seen: list[int] = []
    done = threading.Event()
    burst = 500

    def note(value: int) -> None:
        seen.append(value)
        if len(seen) == burst:
            done.set()

    server = RpcServer("memory://", topic, workers=1)
    server.register("note", note)
    server.start()
    try:
        with RpcClient("memory://") as client:
            for i in range(burst):
                client.cast(topic, "note", value=i)
            assert done.wait(30), f"{len(seen)} of {burst} casts handled"
        assert sorted(seen) == list(range(burst))
        assert wait_for(lambda: not server._inflight), "handled casts were never acked"
    finally:
        server.stop()
        with connect("memory://") as conn:
            conn.default_channel.queue_delete(topic)
