"""Run discovery: page through a workflow's run list, fetching only the pages that can
hold something new.

The list endpoint has no cursor or "since" filter and its order is undocumented, so
the order is checked on every page. When runs come newest first (as the documented
examples do) or oldest first, a refresh fetches the page with the newest runs, plus
just as many further pages as new runs (from `total`) and active runs (from what is
tracked) can fill; an active run buried deep in history is cheaper to fetch on its own,
and the caller does that. The first look at a workflow pages back through the window
(resuming across refreshes when the page budget runs out). If the order cannot be
trusted, every refresh sweeps a budget's worth of pages, round-robin.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.api.errors import ApiError
from exporter.api.records import Run, RunPage
from exporter.config import WorkflowConfig
from exporter.tracking.history import WorkflowHistory

log = logging.getLogger(__name__)

NEWEST_FIRST, OLDEST_FIRST, UNKNOWN = "newest_first", "oldest_first", "unknown"
ORDER_TOLERANCE_SECONDS = 1.0

# fetch these physical pages (concurrently); each result is a page or the error it got
FetchPages = Callable[[list[int]], dict[int, RunPage | ApiError]]
# apply one listed run; returns True if the run is tracked (not too old)
ObserveRun = Callable[[Run], bool]


@dataclass
class CycleResult:
    pages: int = 0
    seen: set[str] = field(default_factory=set)
    error: ApiError | None = None


def detect_order(runs: tuple[Run, ...] | list[Run]) -> str | None:
    """Order of one page by createdAt; None if it cannot tell. Timestamps sent without
    milliseconds may look up to a second out of order, so that much is tolerated."""
    times = [r.created_at for r in runs if r.created_at is not None]
    pairs = list(itertools.pairwise(times))
    against_newest_first = any(b > a + ORDER_TOLERANCE_SECONDS for a, b in pairs)
    against_oldest_first = any(a > b + ORDER_TOLERANCE_SECONDS for a, b in pairs)
    if against_newest_first and against_oldest_first:
        return UNKNOWN
    if against_oldest_first:
        return NEWEST_FIRST
    if against_newest_first:
        return OLDEST_FIRST
    return None


class DiscoveryCycle:
    def __init__(
        self,
        workflow: WorkflowConfig,
        history: WorkflowHistory,
        *,
        fetch_pages: FetchPages,
        observe: ObserveRun,
        now: float,
        parallel: int,
    ):
        self.workflow = workflow
        self.config = workflow.discovery
        self.history = history
        self.fetch_pages = fetch_pages
        self.observe = observe
        self.now = now
        self.parallel = max(1, parallel)
        self.window_start = now - self.config.window_seconds
        self.result = CycleResult()
        self.size = self.config.page_size
        self.total = 0
        self.pages_total = 1
        self.order = NEWEST_FIRST
        self.fetched: dict[int, _PageFacts] = {}

    # --- geometry: item k counts from the newest run (k = 0) -------------------------

    def page_of(self, k: int) -> int:
        k = min(max(k, 0), max(self.total - 1, 0))
        if self.order == OLDEST_FIRST:
            return (self.total - 1 - k) // self.size + 1
        return k // self.size + 1

    def pages_covering(self, count: int) -> list[int]:
        """Physical pages holding the `count` newest runs, newest page first."""
        count = min(count, self.total, self.config.max_tracked_runs)
        if count <= 0:
            return []
        first, last = self.page_of(0), self.page_of(count - 1)
        step = 1 if last >= first else -1
        return list(range(first, last + step, step))

    def next_page_away_from_newest(self, page: int) -> int | None:
        following = page - 1 if self.order == OLDEST_FIRST else page + 1
        return following if 1 <= following <= self.pages_total else None

    # --- the cycle -------------------------------------------------------------------

    def run(self) -> CycleResult:
        state = self.history.discovery
        # Runs listed oldest first: the newest are on the last page, so start there.
        start = 1
        if state.order == OLDEST_FIRST and state.known_total:
            start = max(1, math.ceil(state.known_total / self.size))
        page_one = self._fetch([start]).get(start)
        if not isinstance(page_one, RunPage):
            return self.result
        self.total = page_one.total
        self.pages_total = max(1, math.ceil(self.total / self.size))
        # the documented examples look newest first: assume it until a page says otherwise
        self.order = detect_order(page_one.runs) or state.order or NEWEST_FIRST
        if self.order == UNKNOWN:
            self._warn_order()
            self._sweep()
        else:
            self._front(state.known_total)
            if not state.filled and self.result.error is None:
                self._fill()
        if self.result.error is None:
            with self.history.lock:
                state.order = self.order
                state.known_total = self.total
                state.last_cycle = self.now
                self.history.meta_dirty = True
        return self.result

    def _front(self, known_total: int | None) -> None:
        """Pages with runs new since the last cycle and the active runs worth listing."""
        new = self.total - known_total if known_total is not None else 0
        # however far `total` jumps, look no deeper than the runs we may track
        new = min(new, self.config.max_tracked_runs)
        want = max(new, self._active_depth(max(new, 0)), 1)
        pages = [p for p in self.pages_covering(want) if p not in self.fetched]
        self._fetch(pages[: max(0, self.config.max_pages_per_refresh - self.result.pages)])
        # `total` can hide new runs (some deleted as others arrived): keep going while
        # the deepest page fetched holds nothing but runs we did not know.
        while self.result.error is None and self.history.discovery.filled:
            walk = self._walk()
            deepest = walk[-1] if walk else None
            if deepest is None:
                break
            facts = self.fetched[deepest]
            if not facts.runs or facts.new_runs < len(facts.runs):
                break
            if self.fetched[deepest].older_than_window:
                break
            following = self.next_page_away_from_newest(deepest)
            if following is None or following in self.fetched or not self._budget():
                break
            self._fetch([following])

    def _active_depth(self, new: int) -> int:
        """How many of the newest runs to list so that paging costs no more calls than
        fetching the active runs they cover one by one."""
        with self.history.lock:
            created = sorted(
                r.created_at for r in self.history.runs.values() if r.created_at is not None
            )
            active = sorted(
                (r.created_at for r in self.history.runs.values() if r.active and r.created_at),
                reverse=True,
            )
        # the new runs on the pages fetched so far are tracked already (in `created`):
        # only those not seen yet push the active runs further back
        unseen = max(0, new - sum(facts.new_runs for facts in self.fetched.values()))
        best = 0
        for j, created_at in enumerate(active, start=1):
            newer = len(created) - bisect.bisect_right(created, created_at)
            position = unseen + newer  # its estimated index from the newest
            extra_pages = len(self.pages_covering(position + 1)) - 1
            if extra_pages <= j:
                best = position + 1
        return best

    def _fill(self) -> None:
        """The first look: page back through the window, resuming where the page budget
        stopped the last cycle."""
        state = self.history.discovery
        walk = self._walk()
        listed = sum(len(self.fetched[p].runs) for p in walk)
        reached_end = any(self.fetched[p].older_than_window for p in walk)
        page = self._resume_page()
        if page is None and walk:
            page = self.next_page_away_from_newest(walk[-1])
        while not reached_end and self.result.error is None:
            if page is None or listed >= self.config.max_tracked_runs:
                reached_end = True
                break
            if not self._budget():
                break
            batch: list[int] = []
            cursor: int | None = page
            width = self._fill_width(listed)
            while cursor is not None and len(batch) < width and self._budget(len(batch)):
                if cursor not in self.fetched:
                    batch.append(cursor)
                cursor = self.next_page_away_from_newest(cursor)
            self._fetch(batch)
            got = [self.fetched[p] for p in batch if p in self.fetched]
            listed += sum(len(f.runs) for f in got)
            reached_end = any(f.older_than_window for f in got)
            page = cursor
        with self.history.lock:
            if reached_end and self.result.error is None:
                state.filled, state.cursor = True, 0
                log.info(
                    "discovery complete workflow_id=%s runs_listed=%d pages=%d",
                    self.workflow.id,
                    listed,
                    self.result.pages,
                )
            elif page is not None:
                state.cursor, state.cursor_total = page, self.total
            self.history.meta_dirty = True

    def _fill_width(self, listed: int) -> int:
        """Pages to fetch at once: as many as run in parallel, but no more than the cap
        on tracked runs and the window (estimated from the time the pages so far span)
        can still use, so the last batch does not overshoot by much."""
        width = min(self.parallel, math.ceil((self.config.max_tracked_runs - listed) / self.size))
        facts = [f for f in self.fetched.values() if f.runs and math.isfinite(f.oldest)]
        if facts:
            newest = max(f.newest for f in facts)
            oldest = min(f.oldest for f in facts)
            span_per_page = (newest - oldest) / len(facts)
            if span_per_page > 0:
                remaining = math.ceil((oldest - self.window_start) / span_per_page)
                width = min(width, remaining)
        return max(1, width)

    def _resume_page(self) -> int | None:
        state = self.history.discovery
        if not state.cursor:
            return None
        page = state.cursor
        if self.order == NEWEST_FIRST and state.cursor_total is not None:
            # runs created since then pushed everything further back
            shift = self.total - state.cursor_total
            page = ((page - 1) * self.size + shift) // self.size + 1
        return min(max(page, 1), self.pages_total)

    def _sweep(self) -> None:
        """Order unknown: a budget's worth of pages per cycle, round-robin."""
        state = self.history.discovery
        start = state.cursor if 1 < state.cursor <= self.pages_total else 2
        pages, page = [], start
        while self._budget(len(pages)) and page <= self.pages_total and page not in pages:
            pages.append(page)
            page += 1
        self._fetch(pages)
        with self.history.lock:
            if page > self.pages_total:
                state.filled, state.cursor = True, 2
            else:
                state.cursor = page
            self.history.meta_dirty = True

    # --- plumbing --------------------------------------------------------------------

    def _budget(self, pending: int = 0) -> bool:
        return self.result.pages + pending < self.config.max_pages_per_refresh

    def _fetch(self, pages: list[int]) -> dict[int, RunPage | ApiError]:
        pages = [p for p in pages if p not in self.fetched]
        if not pages:
            return {}
        results = self.fetch_pages(pages)
        self.result.pages += len(pages)
        for page in pages:
            answer = results.get(page)
            if isinstance(answer, ApiError) or answer is None:
                self.result.error = self.result.error or answer
                continue
            self.fetched[page] = self._apply(answer)
        self._check_order()
        return results

    def _apply(self, page: RunPage) -> _PageFacts:
        attributing = bool(self.history.attribution.keys)
        new_runs = 0
        oldest = math.inf
        newest = -math.inf
        for run in page.runs:
            known = self.history.known(run.run_id)
            if self.observe(run):
                # without a status it still needs a fetch; with attribution, so does a
                # counted end whose listing lacked the metadata or input it reads
                if run.raw_status is not None and not (
                    attributing and self.history.awaiting_fetch(run.run_id)
                ):
                    self.result.seen.add(run.run_id)
                if not known:
                    new_runs += 1
            if run.created_at is not None:
                oldest = min(oldest, run.created_at)
                newest = max(newest, run.created_at)
        return _PageFacts(
            runs=page.runs,
            new_runs=new_runs,
            oldest=oldest,
            newest=newest,
            older_than_window=oldest < self.window_start,
        )

    def _walk(self) -> list[int]:
        """Fetched pages in an unbroken run from the newest page."""
        walk: list[int] = []
        page: int | None = self.page_of(0)
        while page is not None and page in self.fetched:
            walk.append(page)
            page = self.next_page_away_from_newest(page)
        return walk

    def _check_order(self) -> None:
        """Pages must not overlap in time in the direction the order claims."""
        if self.order == UNKNOWN or len(self.fetched) < 2:
            return
        ordered = sorted(self.fetched, reverse=self.order == OLDEST_FIRST)
        for newer_page, older_page in itertools.pairwise(ordered):
            a, b = self.fetched[newer_page], self.fetched[older_page]
            if abs(newer_page - older_page) == 1 and b.newest > a.oldest + ORDER_TOLERANCE_SECONDS:
                self.order = UNKNOWN
                self._warn_order()
                return

    def _warn_order(self) -> None:
        if self.history.discovery.order != UNKNOWN:
            log.warning(
                "workflow_id=%s: the run list is not in createdAt order; discovery sweeps "
                "max_pages_per_refresh pages per refresh instead of only the newest",
                self.workflow.id,
            )
            with self.history.lock:
                self.history.discovery.order = UNKNOWN


@dataclass
class _PageFacts:
    runs: tuple[Run, ...]
    new_runs: int
    oldest: float
    newest: float
    older_than_window: bool
