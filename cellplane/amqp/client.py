"""The calling side of local RPC: cast, call and fanout on topics."""

from __future__ import annotations

import contextlib
import threading
import uuid
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

import kombu
import structlog

from cellplane.amqp import messages
from cellplane.amqp.transport import Publisher, connect
from cellplane.errors import Code, Timeout, Unavailable, from_status

DEFAULT_CALL_TIMEOUT = 60.0
# How often the reply thread looks up from the socket to notice close().
_POLL_SECONDS = 0.25

log = structlog.get_logger()


class RpcClient:
    """Casts, calls and fanouts to servers on topics; safe to share between threads.

    Calls share one exclusive reply queue per client, consumed by one
    background thread that hands each reply to the waiting caller by
    correlation id. The thread and queue are created on the first call.

    Handler argument names ``timeout`` and ``trace_id`` are taken by the
    client; ``topic`` and ``method`` are positional-only and so free.
    """

    def __init__(self, url: str, exchange: str = messages.DEFAULT_EXCHANGE) -> None:
        self.url = url
        self.exchange_name = exchange
        self._exchange = messages.control_exchange(exchange)
        self._publisher = Publisher(url)
        self._fanouts: dict[str, kombu.Exchange] = {}
        self._pending: dict[str, Future[messages.Body]] = {}
        self._replies: _ReplyListener | None = None
        self._lock = threading.Lock()
        self._closed = False

    def cast(self, topic: str, method: str, /, *, trace_id: str | None = None, **args: Any) -> None:
        """Send ``method(**args)`` to one server on ``topic`` (or ``topic.server``)."""
        self._check_open()
        body = messages.request(method, args, trace_id=trace_id)
        self._publisher.publish(
            body, exchange=self._exchange, routing_key=topic, declare=(self._exchange,)
        )

    def fanout(
        self, topic: str, method: str, /, *, trace_id: str | None = None, **args: Any
    ) -> None:
        """Send ``method(**args)`` to every server listening on ``topic``."""
        self._check_open()
        exchange = self._fanouts.get(topic)
        if exchange is None:
            exchange = self._fanouts.setdefault(
                topic, messages.fanout_exchange(topic, self.exchange_name)
            )
        body = messages.request(method, args, trace_id=trace_id)
        self._publisher.publish(body, exchange=exchange, routing_key=topic, declare=(exchange,))

    def call(
        self,
        topic: str,
        method: str,
        /,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        trace_id: str | None = None,
        **args: Any,
    ) -> Any:
        """Run ``method(**args)`` on one server on ``topic`` and return its result.

        Raises the error the handler raised (rebuilt from its status code),
        :class:`Timeout` when no reply came within ``timeout`` seconds, or
        :class:`Unavailable` when the broker cannot be reached.
        """
        replies = self._replies or self._start_replies()
        correlation_id = uuid.uuid4().hex
        waiter: Future[messages.Body] = Future()
        self._pending[correlation_id] = waiter
        try:
            body = messages.request(
                method,
                args,
                reply_to=replies.queue_name,
                correlation_id=correlation_id,
                trace_id=trace_id,
            )
            self._publisher.publish(
                body, exchange=self._exchange, routing_key=topic, declare=(self._exchange,)
            )
            reply = waiter.result(timeout)
        except FutureTimeout:
            raise Timeout(
                f"no reply to {method!r} on topic {topic!r} within {timeout:g} s"
            ) from None
        except CancelledError:
            raise Unavailable(f"RpcClient closed during call {method!r} on {topic!r}") from None
        finally:
            self._pending.pop(correlation_id, None)
        error = reply.get("error")
        if error is not None:
            raise from_status(error.get("code", 2), error.get("message", ""))
        return reply.get("result")

    def close(self) -> None:
        """Stop the reply thread, close connections; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            replies, self._replies = self._replies, None
        if replies is not None:
            replies.stop()
        self._publisher.close()
        for waiter in list(self._pending.values()):
            waiter.cancel()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("RpcClient is closed")

    def _start_replies(self) -> _ReplyListener:
        with self._lock:
            self._check_open()
            if self._replies is None:
                self._replies = _ReplyListener(self.url, self._pending)
            return self._replies


class _ReplyListener:
    """One reply queue and the thread that routes its messages to waiters."""

    def __init__(self, url: str, pending: dict[str, Future[messages.Body]]) -> None:
        self.queue_name = f"reply_{uuid.uuid4().hex}"
        self._pending = pending
        self._queue = kombu.Queue(self.queue_name, exclusive=True, auto_delete=True, durable=False)
        self._conn = connect(url)
        self._stopping = threading.Event()
        self._consumer = self._consume()
        self._thread = threading.Thread(
            target=self._run, name=f"rpc-{self.queue_name}", daemon=True
        )
        self._thread.start()

    def _consume(self) -> kombu.Consumer:
        try:
            self._conn.ensure_connection(max_retries=1)
        except self._conn.connection_errors as exc:
            raise Unavailable(f"cannot reach broker: {exc}") from exc
        consumer = kombu.Consumer(
            self._conn,
            queues=[self._queue],
            accept=messages.ACCEPT,
            on_message=self._on_message,
            no_ack=True,
        )
        consumer.consume()
        return consumer

    def _on_message(self, message: Any) -> None:
        correlation_id = message.properties.get("correlation_id")
        waiter = self._pending.get(correlation_id) if correlation_id else None
        if waiter is None:
            return  # the caller already timed out
        try:
            body = message.decode()
        except Exception as exc:  # an undecodable reply fails the call, not the thread
            body = messages.error_reply(Code.INTERNAL, f"undecodable reply: {exc}")
        with contextlib.suppress(InvalidStateError):  # close() cancelled the call meanwhile
            waiter.set_result(body)

    def _run(self) -> None:
        errors = self._conn.connection_errors
        while not self._stopping.is_set():
            try:
                self._conn.drain_events(timeout=_POLL_SECONDS)
            except TimeoutError:
                continue
            except errors as exc:
                if self._stopping.is_set():
                    return
                log.warning("rpc_reply_connection_lost", queue=self.queue_name, error=str(exc))
                self._reconnect()

    def _reconnect(self) -> None:
        while not self._stopping.is_set():
            try:
                self._conn.collect()
                self._consumer = self._consume()
                return
            except Exception as exc:
                log.warning("rpc_reply_reconnect_failed", queue=self.queue_name, error=str(exc))
                self._stopping.wait(1.0)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        try:
            self._consumer.cancel()
            self._queue.bind(self._conn.default_channel).delete()
        except Exception:  # the queue is exclusive: the broker drops it with us anyway
            pass
        self._conn.release()
