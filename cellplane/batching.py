"""Natural batching: calls that arrive while earlier ones run go together.

A :class:`Batcher` runs the first calls of a key at once, each alone, up to
``max_running`` at a time; calls that arrive meanwhile wait and then run as
one batch (up to ``max_items``). Alone there is no added latency; under load
the batches grow by themselves, and so does what one statement, one
transaction or one message carries. With ``stall_after``, calls that waited
that long for a busy runner get one more (up to ``max_stalled`` more), so one
slow batch never holds up the rest for long.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Key(Generic[T, R]):
    waiting: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    running: int = 0
    stall_timer: asyncio.TimerHandle | None = None


class Batcher(Generic[T, R]):
    """Runs items of one key in batches with ``run`` (see the module docstring)."""

    def __init__(
        self,
        run: Callable[[Hashable, list[T]], Awaitable[list[R | BaseException]]],
        *,
        max_items: int = 64,
        max_running: int = 4,
        size: Callable[[T], int] = lambda item: 1,
        stall_after: float | None = None,
        max_stalled: int = 3,
    ) -> None:
        if max_items < 1 or max_running < 1:
            raise ValueError("max_items and max_running must be at least 1")
        if stall_after is not None and (stall_after <= 0 or max_stalled < 1):
            raise ValueError("stall_after must be positive and max_stalled at least 1")
        self._run = run
        self._max_items = max_items
        self._max_running = max_running
        self._stall_after = stall_after
        self._max_stalled = max_stalled
        self._size = size
        self._keys: dict[Hashable, _Key[T, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches run, for tests and figures
        self.items = 0

    async def submit(self, key: Hashable, item: T) -> R:
        """Run ``item`` (with others of ``key``) and return its result or raise its error."""
        state = self._keys.setdefault(key, _Key())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        state.waiting.append((item, future))
        if state.running < self._max_running:
            self._start(key, state)
        else:
            self._arm_stall_timer(key, state)
        return await future

    def _arm_stall_timer(self, key: Hashable, state: _Key[T, R]) -> None:
        if self._stall_after is not None and state.stall_timer is None:
            state.stall_timer = asyncio.get_running_loop().call_later(
                self._stall_after, self._stalled, key, state
            )

    def _start(self, key: Hashable, state: _Key[T, R], *, once: bool = False) -> None:
        state.running += 1
        task = asyncio.ensure_future(self._drain(key, state, once=once))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stalled(self, key: Hashable, state: _Key[T, R]) -> None:
        """Calls waited ``stall_after`` seconds behind busy runners: one more runner, for
        one batch (the usual runners take what comes after)."""
        state.stall_timer = None
        if any(not f.done() for _, f in state.waiting) and (
            state.running < self._max_running + self._max_stalled
        ):
            self._start(key, state, once=True)

    async def _drain(self, key: Hashable, state: _Key[T, R], *, once: bool = False) -> None:
        try:
            while state.waiting:
                batch = self._take(state)
                if not batch:  # every caller taken gave up
                    continue
                self.batches += 1
                self.items += len(batch)
                try:
                    results = await self._run(key, [item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
                except Exception as exc:  # handed to every caller of the batch
                    results = [exc] * len(batch)
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # This runner itself is cancelled: so is everything waiting.
                        for _, future in batch + state.waiting:
                            future.cancel()
                        state.waiting.clear()
                        raise
                    results = [exc] * len(batch)  # only what the batch awaited was
                except BaseException as exc:  # interrupted: nobody may wait forever
                    for _, future in batch + state.waiting:
                        _settle(future, exc)
                    state.waiting.clear()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result)
                if once:
                    break
        finally:
            state.running -= 1
            if not state.running and not state.waiting:
                if state.stall_timer is not None:
                    state.stall_timer.cancel()
                    state.stall_timer = None
                self._keys.pop(key, None)
            elif state.waiting:  # a one-batch runner left calls waiting
                if state.running < self._max_running:
                    self._start(key, state)
                else:
                    self._arm_stall_timer(key, state)

    def _take(self, state: _Key[T, R]) -> list[tuple[T, asyncio.Future[R]]]:
        taken, total = 0, 0
        for item, future in state.waiting:
            if future.done():  # the caller gave up (cancelled): skip it
                taken += 1
                continue
            size = self._size(item)
            if total and total + size > self._max_items:
                break
            total += size
            taken += 1
        batch = [(i, f) for i, f in state.waiting[:taken] if not f.done()]
        del state.waiting[:taken]
        return batch


def _settle(future: asyncio.Future[R], result: R | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, asyncio.CancelledError):
        future.cancel()
    elif isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class ThreadBatcher(Generic[T, R]):
    """:class:`Batcher` for blocking callers on threads (one key).

    A caller with nobody running a batch runs one itself, for every call waiting
    then (up to ``max_items``), and hands over; the others sleep until their
    result is in or it is their turn to run one.
    """

    def __init__(
        self, run: Callable[[list[T]], list[R | BaseException]], *, max_items: int = 64
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._run = run
        self._max_items = max_items
        self._cond = threading.Condition()
        self._waiting: list[tuple[T, Future[R]]] = []
        self._running = False
        self.batches = 0

    def submit(self, item: T) -> R:
        """Run ``item`` (with what else is waiting) and return its result or raise."""
        future: Future[R] = Future()
        with self._cond:
            self._waiting.append((item, future))
            while not future.done():
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                batch = self._waiting[: self._max_items]
                del self._waiting[: self._max_items]
                self._cond.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
        return future.result()

    def _run_batch(self, batch: list[tuple[T, Future[R]]]) -> None:
        self.batches += 1
        try:
            results = self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
        except Exception as exc:
            results = [exc] * len(batch)
        except BaseException as exc:  # interrupted: nobody may wait for this batch forever
            for _, future in batch:
                future.set_exception(exc)
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
