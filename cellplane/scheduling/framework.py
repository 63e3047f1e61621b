"""The filter/weigher framework shared by the cell scheduler and the host scheduler.

Candidates are anything with a ``name`` (a cell, a host). Filters run in
order, each seeing only what the previous ones let through; the weighers then
score the survivors the way Nova did: each weigher's raw values are min-max
normalized to 0..1 across the candidates, multiplied by the weigher's
multiplier, and summed. The best candidate comes first; ties go to the
smaller name, so the same inputs always give the same answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

from cellplane.errors import NoValidHost
from cellplane.scheduling.spec import RequestSpec

_log = structlog.get_logger()


class Candidate(Protocol):
    """Something the schedulers choose between."""

    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=Candidate)


class Filter(ABC, Generic[C]):
    """Decides which candidates can take the request at all."""

    @property
    def name(self) -> str:
        """How logs and errors call this filter."""
        return type(self).__name__

    @abstractmethod
    def passes(self, candidate: C, spec: RequestSpec) -> bool:
        """Whether ``candidate`` can take ``spec``."""

    def filter_all(self, candidates: Sequence[C], spec: RequestSpec) -> list[C]:
        """The candidates that pass; override for filters that look at all of them at once."""
        return [c for c in candidates if self.passes(c, spec)]


class Weigher(ABC, Generic[C]):
    """Scores candidates; higher raw values win when the multiplier is positive.

    ``minval``/``maxval`` fix the normalization range (otherwise it is the
    range of the raw values over the candidates).
    """

    multiplier: float = 1.0
    minval: float | None = None
    maxval: float | None = None

    @property
    def name(self) -> str:
        """How logs call this weigher."""
        return type(self).__name__

    @abstractmethod
    def weigh(self, candidate: C, spec: RequestSpec) -> float:
        """The raw weight of ``candidate`` for ``spec``."""


@dataclass(frozen=True)
class Weighed(Generic[C]):
    """A candidate that passed every filter, with its total weight."""

    candidate: C
    weight: float
    # weigher name -> its contribution (normalized value times multiplier)
    parts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Filtered(Generic[C]):
    """What the filters let through, and who removed what."""

    passed: list[C]
    # (filter name, names of the candidates it removed), in filter order
    removed: list[tuple[str, list[str]]]

    @property
    def eliminated_by(self) -> str | None:
        """The filter that removed the last candidates, when none passed."""
        if self.passed:
            return None
        return self.removed[-1][0] if self.removed else None


def normalize(
    values: Sequence[float], lo: float | None = None, hi: float | None = None
) -> list[float]:
    """Min-max normalize to 0..1 (all zeros when every value is the same), as Nova did."""
    if not values:
        return []
    low = min(values) if lo is None else lo
    high = max(values) if hi is None else hi
    if high == low:
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]


def run_filters(
    candidates: Sequence[C],
    spec: RequestSpec,
    filters: Sequence[Filter[C]],
    *,
    log: Any = None,
) -> Filtered[C]:
    """Apply ``filters`` in order; stops early once nothing is left."""
    log = log or _log
    remaining = list(candidates)
    removed: list[tuple[str, list[str]]] = []
    for flt in filters:
        if not remaining:
            break
        kept = flt.filter_all(remaining, spec)
        if len(kept) != len(remaining):
            kept_ids = {id(c) for c in kept}
            gone = [c.name for c in remaining if id(c) not in kept_ids]
            removed.append((flt.name, gone))
            log.debug("scheduler_filtered", filter=flt.name, removed=gone, remaining=len(kept))
        remaining = kept
    return Filtered(passed=remaining, removed=removed)


def weigh(
    candidates: Sequence[C], spec: RequestSpec, weighers: Sequence[Weigher[C]]
) -> list[Weighed[C]]:
    """Score ``candidates``, best first (ties: smaller name first)."""
    totals = [0.0] * len(candidates)
    parts: list[dict[str, float]] = [{} for _ in candidates]
    for weigher in weighers:
        raw = [float(weigher.weigh(c, spec)) for c in candidates]
        for i, value in enumerate(normalize(raw, weigher.minval, weigher.maxval)):
            contribution = weigher.multiplier * value
            totals[i] += contribution
            parts[i][weigher.name] = contribution
    weighed = [
        Weighed(candidate=c, weight=totals[i], parts=parts[i]) for i, c in enumerate(candidates)
    ]
    weighed.sort(key=lambda w: (-w.weight, w.candidate.name))
    return weighed


def select(
    candidates: Sequence[C],
    spec: RequestSpec,
    filters: Sequence[Filter[C]],
    weighers: Sequence[Weigher[C]],
    *,
    log: Any = None,
) -> list[Weighed[C]]:
    """Filter then weigh; best first, empty when nothing passes."""
    return weigh(run_filters(candidates, spec, filters, log=log).passed, spec, weighers)


def no_valid_host(filtered: Filtered[Any], total: int, what: str = "host") -> NoValidHost:
    """The error for a selection that left nothing, naming the filter to blame."""
    if total == 0:
        return NoValidHost(f"no valid {what}: there are no {what}s to choose from")
    culprit = filtered.eliminated_by
    last = filtered.removed[-1][1] if filtered.removed else []
    return NoValidHost(
        f"no valid {what}: {culprit} eliminated the last {len(last)} of {total} ({', '.join(last)})"
    )


def select_or_raise(
    candidates: Sequence[C],
    spec: RequestSpec,
    filters: Sequence[Filter[C]],
    weighers: Sequence[Weigher[C]],
    *,
    what: str = "host",
    log: Any = None,
) -> list[Weighed[C]]:
    """Like :func:`select`, but raise NoValidHost naming the filter that removed the last."""
    filtered = run_filters(candidates, spec, filters, log=log)
    if not filtered.passed:
        raise no_valid_host(filtered, len(candidates), what)
    return weigh(filtered.passed, spec, weighers)
