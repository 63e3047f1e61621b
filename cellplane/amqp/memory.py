"""kombu's in-process ``memory://`` transport, woken by messages instead of polling.

kombu's own memory transport finds new messages by polling every queue of a
connection every ``polling_interval`` seconds: slow with the default interval
(a second per hop), and with a short one each idle consumer thread burns CPU
thousands of times a second. Here a put on a queue wakes exactly the
connections consuming from it, and an idle consumer sleeps until then. Queues,
exchanges and bindings are kombu's (the same process-wide broker state).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import memory

# queue name -> the events of connections waiting on it
_waiting: defaultdict[str, set[threading.Event]] = defaultdict(set)
_waiting_lock = threading.Lock()


def _wake(queue: str) -> None:
    events = _waiting.get(queue)
    if events:
        with _waiting_lock:
            for event in events:
                event.set()


class Channel(memory.Channel):
    """A memory channel whose puts wake the queue's consumers."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        _wake(queue)

    def _put_fanout(
        self, exchange: str, message: Any, routing_key: Any = None, **kwargs: Any
    ) -> None:
        for queue in self._lookup(exchange, routing_key):
            self._queue_for(queue).put(message)
            _wake(queue)


class Transport(memory.Transport):
    """``memory://`` with event-driven draining (see the module docstring)."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._event = threading.Event()
        self._interrupted = False

    def interrupt(self) -> None:
        """End a :meth:`drain_events` waiting now (or the next one) with TimeoutError,
        as if its timeout had passed: another thread has work for the draining one."""
        self._interrupted = True
        self._event.set()

    def _queues(self) -> set[str]:
        return {q for channel in self.channels for q in channel._active_queues}

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message, waiting up to ``timeout`` seconds for one to be put."""
        deadline = None if timeout is None else monotonic() + timeout
        event, cycle = self._event, self.cycle
        assert cycle is not None
        queues = self._queues()
        event.clear()
        with _waiting_lock:
            for queue in queues:
                _waiting[queue].add(event)
        try:
            while True:
                try:
                    cycle.get(self._deliver, timeout=timeout)
                    return
                except Empty:
                    pass
                if self._interrupted:
                    self._interrupted = False
                    raise TimeoutError
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                # A put after the failed get above has set the event already.
                if not event.wait(remaining):
                    raise TimeoutError
                event.clear()
        finally:
            with _waiting_lock:
                for queue in queues:
                    waiters = _waiting.get(queue)
                    if waiters is not None:
                        waiters.discard(event)
                        if not waiters:
                            del _waiting[queue]
