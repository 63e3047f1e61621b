"""The serving side of local RPC: a role listening on a topic.

An :class:`RpcServer` consumes three queues: ``topic`` (shared by every server
on the topic, durable so a cast outlives a restarting server), ``topic.server``
(this server only, durable too) and an exclusive queue bound to the topic's
fanout exchange. One consumer thread owns the consuming connection (kombu
channels are not thread-safe); handlers run in a small thread pool, reply
through a separate shared publisher, and hand their message back to the
consumer thread, which acks it. A message is acked only after its handler ran.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import types
import typing
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import kombu
import structlog

from cellplane.amqp import messages
from cellplane.amqp.transport import Publisher, connect
from cellplane.errors import CellplaneError, Code, InvalidArgument, Unavailable, status_of

DEFAULT_WORKERS = 4
# Consumer-thread wake-ups: quickly while handlers run (their acks wait for
# it), slowly when idle (only to notice stop()). A transport that can be
# interrupted (memory://) wakes less often while handlers run, and at once when
# finished handlers' acks fill half the prefetch window: waking it after every
# handler made it compete with the reply's delivery (a sequential call took
# about 50 us longer).
_BUSY_POLL_SECONDS = 0.002
_INTERRUPTIBLE_BUSY_POLL_SECONDS = 0.01
_IDLE_POLL_SECONDS = 0.25
_MIN_PREFETCH = 32

log = structlog.get_logger()

Handler = Callable[..., Any]

# Annotations checked before a handler runs; anything fancier is the handler's job.
_PLAIN_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
}
_MISSING = object()


class _Method:
    """A registered handler plus what is needed to check its arguments cheaply."""

    __slots__ = ("checks", "fn", "name", "signature")

    def __init__(self, name: str, fn: Handler) -> None:
        self.name = name
        self.fn = fn
        self.signature = inspect.signature(fn)
        self.checks = tuple(_argument_checks(fn, self.signature))

    def __call__(self, args: dict[str, Any]) -> Any:
        for param, allowed in self.checks:
            value = args.get(param, _MISSING)
            if value is not _MISSING and not isinstance(value, allowed):
                names = " or ".join(t.__name__ for t in allowed)
                raise InvalidArgument(
                    f"{self.name}: argument {param!r} must be {names}, got {type(value).__name__}"
                )
        try:
            return self.fn(**args)
        except TypeError as exc:
            # Only now find out whether the caller or the handler is at fault.
            try:
                self.signature.bind(**args)
            except TypeError as mismatch:
                raise InvalidArgument(f"{self.name}: {mismatch}") from exc
            raise


def _argument_checks(
    fn: Handler, signature: inspect.Signature
) -> Iterable[tuple[str, tuple[type, ...]]]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: skip the checks, keep the handler
        return
    for name in signature.parameters:
        allowed = _allowed_types(hints.get(name))
        if allowed:
            yield name, allowed


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if hint in _PLAIN_TYPES:
        return _PLAIN_TYPES[hint]
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return (origin,)
    if origin in (typing.Union, types.UnionType):
        allowed: list[type] = []
        for member in typing.get_args(hint):
            if member is type(None):
                allowed.append(type(None))
                continue
            member_types = _allowed_types(member)
            if not member_types:
                return ()
            allowed.extend(member_types)
        return tuple(allowed)
    return ()


class RpcServer:
    """Serves handlers on ``topic``, ``topic.<server>`` and the topic's fanout.

    Handlers are registered with :meth:`register` or taken from the public
    methods of ``endpoints``; they take keyword arguments of JSON types and
    return a JSON-compatible result. ``start()`` may be called once; ``stop()``
    is idempotent and waits for running handlers.
    """

    def __init__(
        self,
        url: str,
        topic: str,
        server: str | None = None,
        exchange: str = messages.DEFAULT_EXCHANGE,
        *,
        workers: int = DEFAULT_WORKERS,
        endpoints: Iterable[object] = (),
    ) -> None:
        if workers < 1:
            raise InvalidArgument(f"workers must be at least 1, got {workers}")
        self.url = url
        self.topic = topic
        self.server = server
        self.exchange_name = exchange
        self.workers = workers
        # Acks wait for the consumer thread; a deep window keeps the broker
        # sending while they do.
        self.prefetch = max(_MIN_PREFETCH, workers * 8)
        self._ack_batch = self.prefetch // 2
        self._methods: dict[str, _Method] = {}
        for endpoint in endpoints:
            self.add_endpoint(endpoint)
        self._log = log.bind(topic=topic, server=server)
        self._state = "new"
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._done: deque[Any] = deque()
        self._inflight: set[Any] = set()
        self._conn: kombu.Connection | None = None
        self._consumer: kombu.Consumer | None = None
        self._publisher: Publisher | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        # Wakes the consumer thread's drain_events, where the transport can (memory://).
        self._interrupt: Callable[[], None] | None = None
        control = messages.control_exchange(exchange)
        self._queues = [
            kombu.Queue(
                messages.topic_queue_name(exchange, topic),
                control,
                routing_key=topic,
                durable=True,
                auto_delete=False,
            )
        ]
        if server is not None:
            key = messages.server_routing_key(topic, server)
            self._queues.append(
                kombu.Queue(
                    messages.topic_queue_name(exchange, key),
                    control,
                    routing_key=key,
                    durable=True,
                    auto_delete=False,
                )
            )
        self._fanout_queue = kombu.Queue(
            f"{exchange}.{topic}_fanout_{uuid.uuid4().hex}",
            messages.fanout_exchange(topic, exchange),
            durable=False,
            exclusive=True,
            auto_delete=True,
        )
        self._queues.append(self._fanout_queue)

    @property
    def queue_names(self) -> list[str]:
        """Names of the queues this server consumes (the durable ones outlive it)."""
        return [queue.name for queue in self._queues]

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler`` (replaces an earlier registration)."""
        if not method or not callable(handler):
            raise InvalidArgument(f"cannot register {method!r}: need a name and a callable")
        self._methods[method] = _Method(method, handler)

    def add_endpoint(self, endpoint: object) -> None:
        """Register every public method of ``endpoint`` under its own name."""
        for name in dir(endpoint):
            if name.startswith("_"):
                continue
            attr = getattr(endpoint, name)
            if callable(attr):
                self.register(name, attr)

    def start(self) -> None:
        """Declare the queues, start consuming in a background thread.

        Returns once the server is consuming, so a fanout sent afterwards
        reaches it. A second start (even after stop) is refused.
        """
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError(f"RpcServer for {self.topic!r} was already started")
            self._state = "starting"
        # Consuming may already deliver messages, so the pool must exist first.
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"rpc-{self.topic}")
        try:
            self._publisher = Publisher(self.url)
            self._conn = connect(self.url)
            self._consumer = self._consume()
        except BaseException:
            with self._state_lock:
                self._state = "stopped"
            self._pool.shutdown()
            self._close_connections()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"rpc-server-{self.topic}", daemon=True
        )
        with self._state_lock:
            self._state = "running"
        self._thread.start()
        self._log.debug("rpc_server_started", queues=self.queue_names)

    def stop(self) -> None:
        """Stop consuming, let running handlers finish, requeue the rest; idempotent."""
        with self._state_lock:
            previous, self._state = self._state, "stopped"
        if previous != "running":
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._flush_acks()
        # Prefetched messages whose handler never started go back to the queue.
        for message in self._inflight:
            # Failing that, the broker requeues them when the channel closes.
            with contextlib.suppress(Exception):
                message.requeue()
        self._inflight.clear()
        try:
            if self._consumer is not None:
                self._consumer.cancel()
            if self._conn is not None:
                self._fanout_queue.bind(self._conn.default_channel).delete()
        except Exception:  # the fanout queue is exclusive: it goes with the connection
            pass
        self._close_connections()
        self._log.debug("rpc_server_stopped")

    def __enter__(self) -> RpcServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _close_connections(self) -> None:
        if self._conn is not None:
            self._conn.release()
        if self._publisher is not None:
            self._publisher.close()

    def _consume(self) -> kombu.Consumer:
        assert self._conn is not None
        try:
            self._conn.ensure_connection(max_retries=1)
        except self._conn.connection_errors as exc:
            raise Unavailable(f"cannot reach broker for topic {self.topic!r}: {exc}") from exc
        consumer = kombu.Consumer(
            self._conn, queues=self._queues, accept=messages.ACCEPT, on_message=self._on_message
        )
        consumer.qos(prefetch_count=self.prefetch)
        consumer.consume()
        self._interrupt = getattr(self._conn.transport, "interrupt", None)
        return consumer

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        errors = conn.connection_errors
        while not self._stopping.is_set():
            if self._done:
                self._flush_acks()
            if not self._inflight:
                timeout = _IDLE_POLL_SECONDS
            elif self._interrupt is None:
                timeout = _BUSY_POLL_SECONDS
            else:
                timeout = _INTERRUPTIBLE_BUSY_POLL_SECONDS
            try:
                conn.drain_events(timeout=timeout)
            except TimeoutError:
                continue
            except errors as exc:
                if self._stopping.is_set():
                    return
                self._log.warning("rpc_server_connection_lost", error=str(exc))
                self._reconnect()

    def _reconnect(self) -> None:
        assert self._conn is not None
        # Unacked messages of the lost channel are redelivered by the broker.
        self._inflight.clear()
        while not self._stopping.is_set():
            try:
                self._conn.collect()
                self._consumer = self._consume()
                return
            except Exception as exc:
                self._log.warning("rpc_server_reconnect_failed", error=str(exc))
                self._stopping.wait(1.0)

    def _on_message(self, message: Any) -> None:
        assert self._pool is not None
        if self._stopping.is_set():
            # Delivered while stop() cancels the consumer: let another server have it.
            message.requeue()
            return
        self._inflight.add(message)
        self._pool.submit(self._handle, message)

    def _flush_acks(self) -> None:
        done = self._done
        inflight = self._inflight
        lost = False
        while done:
            message = done.popleft()
            if message in inflight:
                inflight.discard(message)
                try:
                    message.ack()
                except Exception as exc:  # lost channel: the broker redelivers it
                    self._log.warning("rpc_ack_failed", error=str(exc))
                    lost = True
        if lost and not self._stopping.is_set():
            # A failed write can leave the connection looking alive to the reads
            # (seen with a socket shut down under it): consume on a new one.
            self._reconnect()

    def _handle(self, message: Any) -> None:
        body: Any = None
        try:
            body = message.decode()
            method_name, args = messages.parse_request(body)
            method = self._methods.get(method_name)
            if method is None:
                reply = messages.error_reply(
                    Code.UNIMPLEMENTED,
                    f"method {method_name!r} is not served on topic {self.topic!r}",
                )
            else:
                reply = messages.ok_reply(method(args))
        except CellplaneError as exc:
            reply = messages.error_reply(exc.code, exc.message)
        except Exception as exc:
            code, text = status_of(exc)
            reply = messages.error_reply(code, text)
            self._log.exception(
                "rpc_handler_failed",
                method=_field(body, "method"),
                trace_id=_field(body, "trace_id"),
            )
        reply_to = _field(body, "reply_to")
        if reply_to:
            self._reply(reply, reply_to, _field(body, "correlation_id"))
        self._done.append(message)
        if self._interrupt is not None and len(self._done) >= self._ack_batch:
            self._interrupt()  # the consumer thread acks them now

    def _reply(self, reply: messages.Body, reply_to: str, correlation_id: Any) -> None:
        assert self._publisher is not None
        try:
            try:
                self._publisher.publish(
                    reply, exchange="", routing_key=reply_to, correlation_id=correlation_id
                )
            except (TypeError, ValueError) as exc:  # the result is not JSON
                self._log.error("rpc_result_not_json", error=str(exc))
                self._publisher.publish(
                    messages.error_reply(Code.INTERNAL, f"result is not JSON: {exc}"),
                    exchange="",
                    routing_key=reply_to,
                    correlation_id=correlation_id,
                )
        except Exception as exc:  # the caller will time out; the message is still acked
            self._log.error("rpc_reply_failed", reply_to=reply_to, error=str(exc))


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, dict) else None
