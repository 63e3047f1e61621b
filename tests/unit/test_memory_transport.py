"""``memory://`` consumers sleep until a put wakes them (cellplane.amqp.memory).

Publishes come from another thread while the consumer is blocked in
``drain_events``: the publisher first waits until the consumer has registered
itself as waiting on its queue, so the wake-up (not an early message) is what
is tested. A consumer that is never woken would end in TimeoutError after its
timeout instead of returning the message.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest

from cellplane.amqp import memory
from cellplane.amqp.transport import connect

WAIT = 5.0


@pytest.fixture
def name() -> Iterator[str]:
    """A queue/exchange name private to this test; its queues are dropped afterwards."""
    base = f"test_mem_{uuid.uuid4().hex[:12]}"
    yield base
    with connect("memory://") as conn:
        for suffix in ("", ".a", ".b"):
            conn.default_channel.queue_delete(base + suffix)


class Received:
    def __init__(self) -> None:
        self.bodies: list[Any] = []

    def __call__(self, body: Any, message: kombu.Message) -> None:
        self.bodies.append(body)
        message.ack()


def _waiting_on(queue: str) -> bool:
    with memory._waiting_lock:
        return bool(memory._waiting.get(queue))


def _when_waiting(queues: list[str], act: Callable[[], None]):
    """A thread that calls ``act`` once a consumer waits on every one of ``queues``."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            ready = threading.Event()
            for _ in range(int(WAIT / 0.005)):
                if all(_waiting_on(q) for q in queues):
                    ready.set()
                    break
                ready.wait(0.005)
            assert ready.is_set(), f"no consumer started waiting on {queues}"
            act()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def _publish_when_waiting(queues: list[str], exchange: kombu.Exchange, routing_key: str, body: Any):
    """A thread that publishes ``body`` once a consumer waits on every one of ``queues``."""

    def publish() -> None:
        with connect("memory://") as conn:
            kombu.Producer(conn.default_channel).publish(
                body, exchange=exchange, routing_key=routing_key, declare=[exchange]
            )

    return _when_waiting(queues, publish)


def test_connect_memory_uses_the_event_driven_transport() -> None:
    with connect("memory://") as conn:
        assert isinstance(conn.transport, memory.Transport)
        assert isinstance(conn.default_channel, memory.Channel)


def test_a_blocked_consumer_is_woken_by_a_publish_from_another_thread(name: str) -> None:
    exchange = kombu.Exchange(f"{name}_x", type="direct", durable=False)
    queue = kombu.Queue(name, exchange, routing_key=name, durable=False)
    got = Received()
    with (
        connect("memory://") as conn,
        kombu.Consumer(conn.default_channel, queues=[queue], callbacks=[got]),
    ):
        thread, failures = _publish_when_waiting([name], exchange, name, {"n": 1})
        conn.drain_events(timeout=WAIT)  # raises TimeoutError if never woken
        thread.join(WAIT)
    assert failures == []
    assert got.bodies == [{"n": 1}]
    assert not _waiting_on(name)  # the consumer took its wake-up event back


def test_drain_without_a_message_times_out(name: str) -> None:
    queue = kombu.Queue(name, kombu.Exchange(f"{name}_x", durable=False), durable=False)
    got = Received()
    with (
        connect("memory://") as conn,
        kombu.Consumer(conn.default_channel, queues=[queue], callbacks=[got]),
    ):
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.05)
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0)
    assert got.bodies == []
    assert not _waiting_on(name)


def test_a_message_put_before_the_drain_is_delivered_at_once_in_order(name: str) -> None:
    exchange = kombu.Exchange(f"{name}_x", type="direct", durable=False)
    queue = kombu.Queue(name, exchange, routing_key=name, durable=False)
    got = Received()
    with (
        connect("memory://") as conn,
        kombu.Consumer(conn.default_channel, queues=[queue], callbacks=[got]),
    ):
        producer = kombu.Producer(conn.default_channel)
        for n in range(3):
            producer.publish(n, exchange=exchange, routing_key=name, declare=[exchange])
        for _ in range(3):
            conn.drain_events(timeout=WAIT)
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.05)
    assert got.bodies == [0, 1, 2]


def test_a_publish_to_another_queue_does_not_deliver_here(name: str) -> None:
    exchange = kombu.Exchange(f"{name}_x", type="direct", durable=False)
    mine = kombu.Queue(f"{name}.a", exchange, routing_key="a", durable=False)
    other = kombu.Queue(f"{name}.b", exchange, routing_key="b", durable=False)
    got = Received()
    with connect("memory://") as conn:
        other(conn.default_channel).declare()
        with kombu.Consumer(conn.default_channel, queues=[mine], callbacks=[got]):
            kombu.Producer(conn.default_channel).publish(
                "not yours", exchange=exchange, routing_key="b", declare=[exchange]
            )
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.05)
    assert got.bodies == []


def test_a_fanout_publish_wakes_consumers_of_every_bound_queue(name: str) -> None:
    fanout = kombu.Exchange(f"{name}_fanout", type="fanout", durable=False)
    queues = [f"{name}.a", f"{name}.b"]
    received = {q: Received() for q in queues}
    errors: list[BaseException] = []
    consumers_done = threading.Barrier(len(queues) + 1)

    def consume(queue_name: str) -> None:
        try:
            with connect("memory://") as conn:
                queue = kombu.Queue(queue_name, fanout, durable=False)
                with kombu.Consumer(
                    conn.default_channel, queues=[queue], callbacks=[received[queue_name]]
                ):
                    conn.drain_events(timeout=WAIT)
        except BaseException as exc:
            errors.append(exc)
        finally:
            consumers_done.wait(WAIT)

    threads = [threading.Thread(target=consume, args=(q,), daemon=True) for q in queues]
    for t in threads:
        t.start()
    publisher, failures = _publish_when_waiting(queues, fanout, "", "to all")
    consumers_done.wait(2 * WAIT)
    publisher.join(WAIT)
    for t in threads:
        t.join(WAIT)
    assert failures == [] and errors == []
    assert {q: r.bodies for q, r in received.items()} == {q: ["to all"] for q in queues}


def test_many_publishes_from_a_thread_all_reach_a_draining_consumer(name: str) -> None:
    exchange = kombu.Exchange(f"{name}_x", type="direct", durable=False)
    queue = kombu.Queue(name, exchange, routing_key=name, durable=False)
    got = Received()
    count = 50
    with (
        connect("memory://") as conn,
        kombu.Consumer(conn.default_channel, queues=[queue], callbacks=[got]),
    ):

        def publish_all() -> None:
            with connect("memory://") as pub:
                producer = kombu.Producer(pub.default_channel)
                for n in range(count):
                    producer.publish(n, exchange=exchange, routing_key=name, declare=[exchange])

        thread = threading.Thread(target=publish_all, daemon=True)
        thread.start()
        for _ in range(count):
            conn.drain_events(timeout=WAIT)
        thread.join(WAIT)
    assert got.bodies == list(range(count))


def test_interrupt_ends_a_waiting_drain_and_one_that_starts_later(name: str) -> None:
    queue = kombu.Queue(name, kombu.Exchange(f"{name}_x", durable=False), durable=False)
    got = Received()
    with (
        connect("memory://") as conn,
        kombu.Consumer(conn.default_channel, queues=[queue], callbacks=[got]),
    ):
        transport = conn.transport
        thread, failures = _when_waiting([name], transport.interrupt)
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=WAIT)  # ends on the interrupt, not after WAIT
        thread.join(WAIT)
        assert failures == []
        assert time.monotonic() - began < WAIT

        transport.interrupt()  # before the drain: that drain ends at once
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=WAIT)
        # Each interrupt ends one drain: the next one waits for its message again.
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.05)
    assert got.bodies == []


def test_an_interrupted_drain_still_delivers_a_waiting_message_first(name: str) -> None:
    exchange = kombu.Exchange(f"{name}_x", type="direct", durable=False)
    queue = kombu.Queue(name, exchange, routing_key=name, durable=False)
    got = Received()
    with (
        connect("memory://") as conn,
        kombu.Consumer(conn.default_channel, queues=[queue], callbacks=[got]),
    ):
        kombu.Producer(conn.default_channel).publish(
            "m", exchange=exchange, routing_key=name, declare=[exchange]
        )
        conn.transport.interrupt()
        conn.drain_events(timeout=WAIT)
        assert got.bodies == ["m"]
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=WAIT)
