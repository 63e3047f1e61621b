"""A watcher's place in the change log survives revisions that commit out of order."""

from __future__ import annotations

from cellplane.api.compute import GAP_WAIT, MAX_GAPS, RevisionCursor


def test_skipped_revisions_are_looked_for_until_they_arrive() -> None:
    cursor = RevisionCursor(10)
    cursor.seen(11, now=0.0)
    cursor.seen(14, now=0.0)  # 12 and 13 are not committed yet
    assert cursor.revision == 14
    assert cursor.gap_list() == [12, 13]
    cursor.seen(13, now=1.0)  # arrives late: sent, and no longer a gap
    assert cursor.gap_list() == [12]
    assert cursor.revision == 14


def test_gaps_are_given_up_after_the_wait() -> None:
    cursor = RevisionCursor(0)
    cursor.seen(3, now=0.0)
    cursor.expire(now=GAP_WAIT / 2)
    assert cursor.gap_list() == [1, 2]
    cursor.expire(now=GAP_WAIT + 1)
    assert cursor.gap_list() == []


def test_old_revisions_do_not_move_the_cursor_back() -> None:
    cursor = RevisionCursor(50)
    cursor.seen(7, now=0.0)
    assert cursor.revision == 50 and cursor.gap_list() == []


def test_gaps_are_bounded() -> None:
    cursor = RevisionCursor(0)
    cursor.seen(MAX_GAPS * 3, now=0.0)
    gaps = cursor.gap_list()
    assert len(gaps) == MAX_GAPS and gaps[-1] == MAX_GAPS * 3 - 1
