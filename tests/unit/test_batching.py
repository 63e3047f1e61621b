"""Batcher: calls that arrive while a batch runs go together into the next one.

Every test runs its own event loop with ``asyncio.run``; the first batch is held
open with an :class:`asyncio.Event` so that what arrives meanwhile is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import pytest

from cellplane.batching import Batcher

Item = Any


class Recorder:
    """A ``run`` that records each batch and can hold the first one until released."""

    def __init__(
        self,
        result: Callable[[Item], Any] = lambda item: item * 10,
        *,
        hold_first: bool = True,
    ) -> None:
        self.batches: list[tuple[Hashable, list[Item]]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.result = result
        self.hold_first = hold_first

    async def __call__(self, key: Hashable, items: list[Item]) -> list[Any]:
        self.batches.append((key, list(items)))
        first = len(self.batches) == 1
        self.started.set()
        if first and self.hold_first:
            await self.release.wait()
        return [self.result(item) for item in items]


async def _settle() -> None:
    """Let every ready task run until none is left to start."""
    for _ in range(10):
        await asyncio.sleep(0)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))  # type: ignore[arg-type]


def test_the_first_call_runs_alone_and_later_ones_merge_into_the_next_batch() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher: Batcher[int, int] = Batcher(rec, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await rec.started.wait()
        assert rec.batches == [("k", [1])]  # ran at once, alone
        rest = [asyncio.ensure_future(batcher.submit("k", n)) for n in (2, 3, 4)]
        await _settle()
        assert len(rec.batches) == 1  # the others wait for the running batch
        rec.release.set()
        assert await first == 10
        assert await asyncio.gather(*rest) == [20, 30, 40]
        assert rec.batches == [("k", [1]), ("k", [2, 3, 4])]
        assert (batcher.batches, batcher.items) == (2, 4)

    run(main())


def test_a_lone_call_after_a_quiet_spell_runs_alone_again() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=False)
        batcher: Batcher[int, int] = Batcher(rec, max_running=1)
        assert await batcher.submit("k", 1) == 10
        assert await batcher.submit("k", 2) == 20
        assert rec.batches == [("k", [1]), ("k", [2])]

    run(main())


def test_calls_up_to_max_running_start_at_once_each_alone() -> None:
    async def main() -> None:
        release = asyncio.Event()
        batches: list[list[int]] = []

        async def run_batch(key: Hashable, items: list[int]) -> list[int]:
            batches.append(list(items))
            await release.wait()
            return items

        batcher: Batcher[int, int] = Batcher(run_batch, max_running=2)
        calls = [asyncio.ensure_future(batcher.submit("k", 0))]
        await _settle()
        calls.append(asyncio.ensure_future(batcher.submit("k", 1)))
        await _settle()
        assert batches == [[0], [1]]  # a second runner started for the second call
        calls += [asyncio.ensure_future(batcher.submit("k", n)) for n in (2, 3, 4)]
        await _settle()
        assert batches == [[0], [1]]  # both runners busy: the rest wait
        release.set()
        assert await asyncio.gather(*calls) == [0, 1, 2, 3, 4]
        assert batches == [[0], [1], [2, 3, 4]]

    run(main())


def test_calls_submitted_in_the_same_tick_share_the_first_batch() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=False)
        batcher: Batcher[int, int] = Batcher(rec, max_running=4)
        got = await asyncio.gather(*[batcher.submit("k", n) for n in range(5)])
        assert got == [0, 10, 20, 30, 40]
        # No runner had started before all five were waiting, so the first one took them all.
        assert rec.batches == [("k", [0, 1, 2, 3, 4])]

    run(main())


def test_a_per_item_exception_reaches_only_its_caller() -> None:
    async def main() -> None:
        class Bad(Exception):
            pass

        def result(item: int) -> Any:
            return Bad(f"item {item}") if item == 3 else item * 10

        rec = Recorder(result)
        batcher: Batcher[int, int] = Batcher(rec, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await rec.started.wait()
        rest = [asyncio.ensure_future(batcher.submit("k", n)) for n in (2, 3, 4)]
        await _settle()
        rec.release.set()
        got = await asyncio.gather(first, *rest, return_exceptions=True)
        assert got[:2] == [10, 20]
        assert isinstance(got[2], Bad) and str(got[2]) == "item 3"
        assert got[3] == 40
        assert rec.batches[1] == ("k", [2, 3, 4])  # it was in the same batch as the others

    run(main())


def test_an_exception_raised_by_run_reaches_every_caller_of_that_batch() -> None:
    async def main() -> None:
        release = asyncio.Event()
        batches: list[list[int]] = []

        async def run_batch(key: Hashable, items: list[int]) -> list[int]:
            batches.append(list(items))
            if len(batches) == 1:
                await release.wait()
                return [i * 10 for i in items]
            if len(batches) == 2:
                raise KeyError("whole batch")
            return [i * 10 for i in items]

        batcher: Batcher[int, int] = Batcher(run_batch, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await _settle()
        failing = [asyncio.ensure_future(batcher.submit("k", n)) for n in (2, 3, 4)]
        await _settle()
        release.set()
        assert await first == 10
        got = await asyncio.gather(*failing, return_exceptions=True)
        assert batches[1] == [2, 3, 4]
        assert all(isinstance(e, KeyError) for e in got), got
        # The batcher keeps working afterwards.
        assert await batcher.submit("k", 5) == 50

    run(main())


def test_a_wrong_number_of_results_fails_the_whole_batch() -> None:
    async def main() -> None:
        async def run_batch(key: Hashable, items: list[int]) -> list[int]:
            return [1, 2]

        batcher: Batcher[int, int] = Batcher(run_batch)
        with pytest.raises(RuntimeError, match="batch of 1 got 2 results"):
            await batcher.submit("k", 1)

    run(main())


def test_max_items_with_size_limits_a_batch() -> None:
    async def main() -> None:
        rec = Recorder(lambda item: item[0])
        batcher: Batcher[tuple[str, int], str] = Batcher(
            rec, max_running=1, max_items=5, size=lambda item: item[1]
        )
        first = asyncio.ensure_future(batcher.submit("k", ("a", 1)))
        await rec.started.wait()
        sizes = {"b": 2, "c": 2, "d": 2, "e": 4, "f": 9, "g": 1}
        rest = [asyncio.ensure_future(batcher.submit("k", (n, s))) for n, s in sizes.items()]
        await _settle()
        rec.release.set()
        assert await first == "a"
        assert await asyncio.gather(*rest) == list(sizes)
        names = [[name for name, _ in items] for _, items in rec.batches]
        # b+c = 4 (adding d would make 6 > 5); d+e = 6 > 5; e+f > 5;
        # an oversized item (f = 9) still runs, alone, at the head of a batch.
        assert names == [["a"], ["b", "c"], ["d"], ["e"], ["f"], ["g"]]
        for _, items in rec.batches:
            total = sum(size for _, size in items)
            assert total <= 5 or len(items) == 1

    run(main())


def test_max_items_counts_items_without_size() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher: Batcher[int, int] = Batcher(rec, max_running=1, max_items=3)
        first = asyncio.ensure_future(batcher.submit("k", 0))
        await rec.started.wait()
        rest = [asyncio.ensure_future(batcher.submit("k", n)) for n in range(1, 8)]
        await _settle()
        rec.release.set()
        await first
        assert await asyncio.gather(*rest) == [n * 10 for n in range(1, 8)]
        assert [items for _, items in rec.batches] == [[0], [1, 2, 3], [4, 5, 6], [7]]

    run(main())


def test_different_keys_never_share_a_batch() -> None:
    async def main() -> None:
        release = asyncio.Event()
        batches: list[tuple[Hashable, list[str]]] = []

        async def run_batch(key: Hashable, items: list[str]) -> list[str]:
            batches.append((key, list(items)))
            await release.wait()
            return [f"{key}:{item}" for item in items]

        batcher: Batcher[str, str] = Batcher(run_batch, max_running=1)
        heads = [asyncio.ensure_future(batcher.submit(k, "head")) for k in ("x", "y")]
        await _settle()
        # Each key's first call ran at once, even though the other key is busy.
        assert sorted(batches) == [("x", ["head"]), ("y", ["head"])]
        calls = [
            asyncio.ensure_future(batcher.submit(k, f"{k}{n}"))
            for n in range(3)
            for k in ("x", "y")
        ]
        await _settle()
        release.set()
        await asyncio.gather(*heads)
        got = await asyncio.gather(*calls)
        assert got == [f"{k}:{k}{n}" for n in range(3) for k in ("x", "y")]
        for key, items in batches:
            assert all(item == "head" or item.startswith(str(key)) for item in items)
        assert sorted(batches[2:]) == [("x", ["x0", "x1", "x2"]), ("y", ["y0", "y1", "y2"])]

    run(main())


def test_a_cancelled_caller_is_skipped() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher: Batcher[int, int] = Batcher(rec, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await rec.started.wait()
        keep = asyncio.ensure_future(batcher.submit("k", 2))
        gone = asyncio.ensure_future(batcher.submit("k", 3))
        keep_too = asyncio.ensure_future(batcher.submit("k", 4))
        await _settle()
        gone.cancel()
        await _settle()
        assert gone.cancelled()
        rec.release.set()
        assert await first == 10
        assert await asyncio.gather(keep, keep_too) == [20, 40]
        assert rec.batches == [("k", [1]), ("k", [2, 4])]
        assert batcher.items == 3

    run(main())


def test_a_batch_of_only_cancelled_callers_settles_nobody_and_the_key_keeps_working() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher: Batcher[int, int] = Batcher(rec, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await rec.started.wait()
        gone = [asyncio.ensure_future(batcher.submit("k", n)) for n in (2, 3)]
        await _settle()
        for call in gone:
            call.cancel()
        await _settle()
        rec.release.set()
        assert await first == 10
        await _settle()
        assert all(call.cancelled() for call in gone)
        assert all(item not in (2, 3) for _, items in rec.batches for item in items)
        assert batcher._keys == {}  # nothing left behind for the key
        assert await batcher.submit("k", 5) == 50

    run(main())


def test_run_is_never_called_with_an_empty_batch() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher: Batcher[int, int] = Batcher(rec, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await rec.started.wait()
        gone = asyncio.ensure_future(batcher.submit("k", 2))
        await _settle()
        gone.cancel()
        await _settle()
        rec.release.set()
        assert await first == 10
        await _settle()
        assert rec.batches == [("k", [1])]
        assert batcher.batches == 1

    run(main())


def test_a_cancelled_run_does_not_strand_the_calls_waiting_behind_it() -> None:
    async def main() -> None:
        release = asyncio.Event()
        batches: list[list[int]] = []

        async def run_batch(key: Hashable, items: list[int]) -> list[int]:
            batches.append(list(items))
            if len(batches) == 1:
                await release.wait()
                raise asyncio.CancelledError()  # something run awaited was cancelled
            return [i * 10 for i in items]

        batcher: Batcher[int, int] = Batcher(run_batch, max_running=1)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await _settle()
        behind = asyncio.ensure_future(batcher.submit("k", 2))
        await _settle()
        release.set()
        await _settle()
        assert first.cancelled()  # the caller of the cancelled batch sees the cancellation
        assert behind.done(), f"stranded: {batches}, {batcher._keys}"
        assert behind.result() == 20

    run(main())


@pytest.mark.parametrize(
    "kwargs", [{"max_items": 0}, {"max_running": 0}, {"max_items": -1, "max_running": 3}]
)
def test_limits_below_one_are_refused(kwargs: dict[str, int]) -> None:
    async def noop(key: Hashable, items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="at least 1"):
        Batcher(noop, **kwargs)


def test_calls_stalled_behind_a_slow_batch_get_another_runner() -> None:
    async def main() -> None:
        rec = Recorder(lambda item: item)  # the first batch is slow: held until released
        batcher: Batcher[int, int] = Batcher(rec, max_running=1, stall_after=0.05, max_stalled=1)
        slow = asyncio.ensure_future(batcher.submit("k", 0))
        await rec.started.wait()
        behind = [asyncio.ensure_future(batcher.submit("k", n)) for n in (1, 2)]
        await _settle()
        assert rec.batches == [("k", [0])]  # they wait behind the running batch at first
        assert await asyncio.gather(*behind) == [1, 2]  # then go beside it
        assert rec.batches == [("k", [0]), ("k", [1, 2])] and not slow.done()
        rec.release.set()
        assert await slow == 0

    run(main())


def test_stalled_runners_are_capped() -> None:
    async def main() -> None:
        release = asyncio.Event()
        running = 0
        most = 0

        async def run_batch(key: Hashable, items: list[int]) -> list[int]:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1
            return items

        batcher: Batcher[int, int] = Batcher(
            run_batch, max_running=1, stall_after=0.01, max_stalled=2
        )
        calls = []
        for n in range(8):
            calls.append(asyncio.ensure_future(batcher.submit("k", n)))
            await asyncio.sleep(0.03)  # each new call waits past stall_after
        assert most == 3  # one runner and two more for stalled calls, never more
        release.set()
        assert await asyncio.gather(*calls) == list(range(8))

    run(main())


def test_no_stall_timer_outlives_its_calls() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=False)
        batcher: Batcher[int, int] = Batcher(rec, max_running=1, stall_after=0.01)
        assert await asyncio.gather(*[batcher.submit("k", n) for n in range(3)]) == [0, 10, 20]
        await asyncio.sleep(0.03)
        assert batcher._keys == {}

    run(main())


def test_a_stalled_runner_runs_one_batch_and_hands_the_rest_over() -> None:
    async def main() -> None:
        rec = Recorder(lambda item: item)  # the first batch is slow: held until released
        batcher: Batcher[int, int] = Batcher(
            rec, max_items=2, max_running=1, stall_after=0.05, max_stalled=1
        )
        slow = asyncio.ensure_future(batcher.submit("k", 0))
        await rec.started.wait()
        # Five calls stall behind the slow batch: the extra runner takes two, and the
        # rest must not be left without a runner once it is done.
        behind = [asyncio.ensure_future(batcher.submit("k", n)) for n in range(1, 6)]
        assert await asyncio.gather(*behind) == [1, 2, 3, 4, 5]
        assert rec.batches[:2] == [("k", [0]), ("k", [1, 2])] and not slow.done()
        rec.release.set()
        assert await slow == 0

    run(main())
