"""ThreadBatcher: blocking callers on threads share batches and each gets its own result."""

import threading

import pytest

from cellplane.batching import ThreadBatcher


def test_calls_made_while_a_batch_runs_are_run_together_next() -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(items: list[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if len(batches) == 1:
            started.set()
            release.wait(5)
        return [i * 10 for i in items]

    batcher: ThreadBatcher[int, int] = ThreadBatcher(run)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = batcher.submit(i)

    first = threading.Thread(target=call, args=(1,))
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=call, args=(i,)) for i in (2, 3, 4)]
    for t in others:
        t.start()
    # Wait until the three are queued behind the running batch, then let it finish.
    for _ in range(500):
        with batcher._cond:
            if len(batcher._waiting) == 3:
                break
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert results == {1: 10, 2: 20, 3: 30, 4: 40}
    assert batches[0] == [1]
    assert sorted(batches[1]) == [2, 3, 4]
    assert batcher.batches == 2


def test_an_item_error_reaches_only_its_caller_and_a_run_error_reaches_all() -> None:
    def run(items: list[int]) -> list[int | BaseException]:
        if 99 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    batcher: ThreadBatcher[int, int] = ThreadBatcher(run)
    assert batcher.submit(5) == 5
    with pytest.raises(ValueError, match="bad -1"):
        batcher.submit(-1)
    with pytest.raises(RuntimeError, match="whole batch"):
        batcher.submit(99)
    assert batcher.submit(6) == 6  # still working afterwards


def test_max_items_limits_a_batch_and_nobody_is_left_waiting() -> None:
    sizes: list[int] = []
    gate = threading.Barrier(8)

    def run(items: list[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        return list(items)

    batcher: ThreadBatcher[int, int] = ThreadBatcher(run, max_items=3)
    out: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        gate.wait(5)
        value = batcher.submit(i)
        with lock:
            out.append(value)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(out) == list(range(8))
    assert max(sizes) <= 3
    assert sum(sizes) == 8


def test_max_items_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ThreadBatcher(lambda items: list(items), max_items=0)


def test_an_interrupted_batch_releases_everyone_waiting_on_it() -> None:
    class Interrupt(BaseException):
        pass

    def run(items: list[int]) -> list[int | BaseException]:
        raise Interrupt()

    batcher: ThreadBatcher[int, int] = ThreadBatcher(run)
    with pytest.raises(Interrupt):
        batcher.submit(1)
    assert batcher.batches == 1  # no batch ran after it, empty or not
    assert not batcher._running and not batcher._waiting
