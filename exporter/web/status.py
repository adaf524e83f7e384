"""The facts of the status page, gathered in one place into one plain document: what
/status.json answers (schema 1, every field documented in the README) and what the HTML
page (status_page.py) renders, so a script and a person read the same facts.

It reads what the exporter already keeps (the config, the configured runs, the
workflow histories, the API health, the recent requests and the journal of recent
errors) and never calls the API. Lists are bounded: runs with a problem first, then
the newest, MAX_RUNS_SHOWN of them, with a count of the rest. Secrets appear only as
"set" or "unset".

Longer than 500 lines because every fact of the page is gathered here, section by
section in the order the README's schema documents them, with the plain words that
explain them: split, a field and the words that explain it would live apart.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from exporter import __version__
from exporter.api.errors import ErrorKind
from exporter.api.records import ALL_STATUSES, RunStatus
from exporter.config import ID_PATTERN, Config, WorkflowConfig
from exporter.logs import REDACTED, REDACTOR
from exporter.metrics.collector import View
from exporter.metrics.telemetry import RecentRequests, budget_ratio
from exporter.tracking.budgets import period_bounds
from exporter.tracking.history import (
    GONE,
    OUTSIDE_WINDOW,
    OVER_CAP,
    UNCONFIGURED,
    DroppedRun,
    TrackedRun,
    WorkflowHistory,
)
from exporter.tracking.journal import ErrorEntry, Journal
from exporter.tracking.runs import MAX_SILENT_BACKOFF, RunState

SCHEMA = 1
MAX_RUNS_SHOWN = 100
MAX_QUERY_SHOWN = 200  # characters shown of a lookup that is not a run ID, or of a status

# why a configured run has no series, or why its last fetch failed (run_facts "reason"):
# "not_fetched_yet", or the ErrorKind of the last failure; and the notes on a status
NOT_FETCHED = "not_fetched_yet"
NO_STATUS = "no_status"
UNDOCUMENTED_STATUS = "undocumented_status"

FAILURES = {
    ErrorKind.NOT_FOUND: "404 from the API: it does not know this run in this workflow "
    "(check the run ID and the workflow ID)",
    ErrorKind.RATE_LIMITED: "rate limited: the API answered 429 (too many requests); the "
    "exporter waits as asked and tries again at a later scrape",
    ErrorKind.UNAUTHORIZED: "key refused: the API answered {code} to the API key (revoked, "
    "rotated or mistyped? put the current key in place and reload)",
    ErrorKind.UNREACHABLE: "no answer from the API (connection refused or reset, DNS, "
    "timeout); tried again at the next scrape",
    ErrorKind.SERVER_ERROR: "server error: the API answered {code} after every retry; tried "
    "again at the next scrape",
    ErrorKind.CLIENT_ERROR: "request refused: the API answered {code}",
    ErrorKind.BAD_RESPONSE: "a bad answer: not a usable run record (invalid JSON, wrong "
    "shape or types, or a redirect elsewhere)",
    ErrorKind.TOO_LARGE: "a bad answer: larger than api.max_response_bytes",
}
NEVER_FETCHED = (
    "never fetched yet: runs are fetched when /metrics is scraped, and no scrape has "
    "fetched this one yet"
)
DROPPED = {
    OUTSIDE_WINDOW: "not tracked: it is older than {workflow}'s discovery window "
    "(window_seconds {window:g}; finished runs created before then are forgotten)",
    OVER_CAP: "not tracked: dropped because {workflow} tracks more than max_tracked_runs "
    "({cap}) runs; the oldest go first",
    GONE: "not tracked any more: the API answered 404 for it in {workflow}",
    UNCONFIGURED: "not tracked any more: it was removed from {workflow}'s runs in the config",
}


@dataclass(frozen=True)
class StatusSources:
    """What the facts are read from, taken once per request."""

    view: View
    journal: Journal
    recent: RecentRequests
    now: float  # Unix time
    monotonic: float  # now on the clock of RunState.attempted_at


def gather(sources: StatusSources, run_query: str | None = None) -> dict[str, Any]:
    """The whole status document (schema 1)."""
    view = sources.view
    runs, by_workflow = _runs_section(sources)
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "version": __version__,
        "generated_at": sources.now,
        "started_at": sources.journal.started_at,
        "summary": [],
        "api": _api_section(sources),
        "history": _history_section(view),
        "workflows": _workflows_section(sources, by_workflow),
        "budgets": _budgets_section(sources),
        "runs": runs,
        "lookup": lookup(sources, run_query) if run_query is not None else None,
        "config": _config_section(sources),
    }
    document["summary"] = _summary(document)
    return document


# --- the API ------------------------------------------------------------------------


def budget_use(requests_last_minute: int, max_requests_per_second: float) -> dict[str, Any]:
    """Requests this process sent in the last minute against the client-side limit
    (api.max_requests_per_second x 60; 0 = no limit). With replicas the limit is shared
    and this counts one replica's requests."""
    limit = max_requests_per_second * 60
    return {
        "requests_last_minute": requests_last_minute,
        "limit_per_minute": limit if limit > 0 else None,
        # the same figure as copyai_api_budget_utilization_ratio
        "used_ratio": budget_ratio(requests_last_minute, max_requests_per_second),
    }


def _api_section(sources: StatusSources) -> dict[str, Any]:
    view, now = sources.view, sources.now
    recent = sources.recent.summary()
    refreshed = view.health.last_successful_refresh
    return {
        "base_url": view.config.api.base_url,
        "up": bool(view.health.up),
        "last_successful_refresh": refreshed,
        "last_successful_refresh_age_seconds": _age(refreshed, now),
        "last_hour": {
            "requests": recent.requests,
            "requests_by_code": recent.requests_by_code,
            "errors": recent.errors,
            "errors_by_kind": recent.errors_by_kind,
        },
        "budget": {
            **budget_use(recent.requests_last_minute, view.config.api.max_requests_per_second),
            "refresh_backlog": view.backlog,
        },
        "recent_errors": [_error(entry) for entry in sources.journal.recent_errors()],
    }


def _error(entry: ErrorEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "endpoint": entry.endpoint,
        "code": entry.code,
        "kind": entry.kind,
        "message": entry.message,
        "workflow_id": entry.workflow_id,
        "run_id": entry.run_id,
    }


# --- configured runs ------------------------------------------------------------------


def failure_words(kind: str, code: int | None) -> str:
    """A failed fetch in plain words."""
    text = FAILURES.get(kind, f"the request failed ({kind})")
    return text.format(code=code if code is not None else "an error")


def _signature(signature: str | None) -> tuple[str | None, int | None]:
    """ApiError.signature ("kind" or "kind:status") → (kind, status)."""
    if not signature:
        return None, None
    kind, _, code = signature.partition(":")
    return kind, int(code) if code.isdigit() else None


def _reason(state: RunState) -> str | None:
    """Why the run has no series, or why its last fetch failed; None if neither."""
    if state.fetch_ok is False:
        kind, _ = _signature(state.error)
        return kind or ErrorKind.BAD_RESPONSE
    if state.run is None:
        return NOT_FETCHED
    return None


def _note(state: RunState) -> tuple[str | None, str | None]:
    """(code, words) about a status the answers do not give, or (None, None)."""
    run = state.run
    if run is None:
        return None, None
    pace = (
        f"fetched less often (after 1, 2, 4, 8, then every {MAX_SILENT_BACKOFF} refresh "
        "intervals) until an answer has a status"
    )
    if run.status is RunStatus.UNKNOWN and run.raw_status is None:
        return NO_STATUS, f"its answers carry no status: shown as UNKNOWN, {pace}"
    if run.status is RunStatus.UNKNOWN:
        return (
            UNDOCUMENTED_STATUS,
            f"the API reports the undocumented status {_clip(run.raw_status)!r}: shown as "
            f"UNKNOWN, {pace}",
        )
    if state.silent_fetches:
        return (
            NO_STATUS,
            f"its last {state.silent_fetches} answer(s) carried no status: keeping "
            f"{run.status.value}, {pace}",
        )
    return None, None


def run_facts(state: RunState, sources: StatusSources) -> dict[str, Any]:
    """One configured run: what is known, its last fetch, and in plain words why it has
    no series (or why its last fetch failed), and any note on its status."""
    run, now = state.run, sources.now
    reason = _reason(state)
    kind, code = _signature(state.error)
    last = None
    if state.fetch_ok is False:
        last = sources.journal.last_error_of(state.workflow_id, state.run_id)
    if reason is None:
        why = None
    elif reason == NOT_FETCHED:
        why = NEVER_FETCHED
    else:
        why = failure_words(reason, code)
        if run is not None:
            why = f"last fetch failed: {why}; showing the last known values"
    note_code, note = _note(state)
    attempted = state.attempted_at
    return {
        "workflow_id": state.workflow_id,
        "run_id": state.run_id,
        "has_series": run is not None,
        "status": run.status.value if run is not None else None,
        "api_status": _clip(run.raw_status) if run is not None else None,
        "created_at": run.created_at if run is not None else None,
        "age_seconds": _age(run.created_at if run is not None else None, now),
        "credits": run.credits if run is not None else None,
        "last_fetch": {
            "at": now - (sources.monotonic - attempted) if attempted is not None else None,
            "ok": state.fetch_ok,
            "kind": kind,
            "code": code,
            "message": last.message if last is not None else None,
        },
        "reason": reason,
        "why": why,
        "note_code": note_code,
        "note": note,
        "problem": reason is not None or note_code is not None,
    }


def _is_problem(state: RunState) -> bool:
    run = state.run
    return (
        run is None
        or state.fetch_ok is False
        or state.silent_fetches > 0
        or run.status is RunStatus.UNKNOWN
    )


def _runs_section(sources: StatusSources) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The configured runs (counts, and the ones shown), and per workflow how many are
    configured and how many of those have no series."""
    states = sources.view.store.snapshot()
    reasons: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    by_workflow: dict[str, list[int]] = {}  # workflow -> [configured, without series]
    problems: list[RunState] = []
    fine: list[RunState] = []
    for state in states:
        counts = by_workflow.setdefault(state.workflow_id, [0, 0])
        counts[0] += 1
        if state.run is None:
            counts[1] += 1
        if not _is_problem(state):
            fine.append(state)
            continue
        problems.append(state)
        if state.run is None:
            reasons[_reason(state) or NOT_FETCHED] += 1
        note_code, _ = _note(state)
        if note_code is not None:
            notes[note_code] += 1
    shown = _newest(problems, MAX_RUNS_SHOWN)
    shown += _newest(fine, MAX_RUNS_SHOWN - len(shown))
    without = sum(1 for s in problems if s.run is None)
    section = {
        "configured": len(states),
        "with_series": len(states) - without,
        "without_series": without,
        "fetch_failed": sum(1 for s in problems if s.fetch_ok is False),
        "problems": len(problems),
        "reasons": dict(reasons.most_common()),
        "notes": dict(notes.most_common()),
        "shown": [run_facts(state, sources) for state in shown],
        "not_shown": len(states) - len(shown),
    }
    return section, by_workflow


def _newest(states: list[RunState], count: int) -> list[RunState]:
    """The `count` newest (by createdAt; runs without one first), in that order."""
    if count <= 0:
        return []

    def created(state: RunState) -> float:
        run = state.run
        return run.created_at if run is not None and run.created_at is not None else math.inf

    if len(states) <= count:
        return sorted(states, key=created, reverse=True)
    return heapq.nlargest(count, states, key=created)


# --- workflows and history ------------------------------------------------------------


def _workflows_section(
    sources: StatusSources, runs_by_workflow: dict[str, list[int]]
) -> list[dict[str, Any]]:
    view = sources.view
    out = []
    for workflow in view.config.workflows:
        history = view.book.get(workflow.id)
        if history is not None:
            counts = runs_by_workflow.get(workflow.id, [0, 0])
            out.append(_workflow(sources, history, workflow, counts))
    for workflow_id in sorted(view.book.adopted()):
        history = view.book.get(workflow_id)
        if history is not None:
            out.append(_workflow(sources, history, None, [0, 0]))
    return out


def _workflow(
    sources: StatusSources,
    history: WorkflowHistory,
    workflow: WorkflowConfig | None,
    counts: list[int],
) -> dict[str, Any]:
    snap = history.snapshot()
    oldest = snap.values.get("oldest_active_created")
    discovery = None
    if workflow is not None and workflow.discover:
        with history.lock:
            state = history.discovery
            order, filled, last_cycle = state.order, state.filled, state.last_cycle
            horizon = history.forget_horizon
        listing = sources.journal.last_listing(workflow.id)
        discovery = {
            "window_seconds": workflow.discovery.window_seconds,
            "max_tracked_runs": workflow.discovery.max_tracked_runs,
            "order": order or None,
            "filled": filled,
            "last_cycle": last_cycle,
            "forget_horizon": horizon if horizon != -math.inf else None,
            "last_listing": None
            if listing is None
            else {
                "at": listing.at,
                "ok": listing.error is None,
                "kind": listing.error.kind if listing.error else None,
                "code": listing.error.code if listing.error else None,
                "message": listing.error.message if listing.error else None,
            },
        }
    return {
        "id": history.workflow_id,
        "name": workflow.display_name if workflow is not None else history.workflow_id,
        "configured": workflow is not None,
        "discover": bool(workflow is not None and workflow.discover),
        "configured_runs": counts[0],
        "configured_runs_without_series": counts[1],
        "tracked_runs": snap.tracked,
        "runs_by_status": {s.value: snap.status_counts.get(s, 0) for s in ALL_STATUSES},
        "values": dict(snap.values),
        "oldest_active_age_seconds": _age(oldest, sources.now),
        "last_webhook": sources.journal.last_delivery(history.workflow_id),
        "discovery": discovery,
    }


def _budgets_section(sources: StatusSources) -> list[dict[str, Any]]:
    """Each credit budget in its current period, as copyai_credit_budget_* show it."""
    view = sources.view
    out = []
    for budget in view.config.budgets:
        start, end = period_bounds(budget.period, sources.now)
        used = view.book.credits_between(budget.workflows, start, end)
        out.append(
            {
                "name": budget.name,
                "credits": budget.credits,
                "period": budget.period,
                "workflows": list(budget.workflows),
                "period_start": start,
                "period_end": end,
                "used_credits": used,
                "used_ratio": used / budget.credits,
            }
        )
    return out


def _history_section(view: View) -> dict[str, Any]:
    state = view.config.state
    if state.backend == "redis" and state.redis is not None:
        backend, path = "redis", None
        redis: dict[str, Any] | None = {
            "url": _without_credentials(state.redis.url),
            "key_prefix": state.redis.key_prefix,
            "lease_seconds": state.redis.lease_seconds,
        }
    else:
        backend, path, redis = ("sqlite" if state.path else "memory"), state.path, None
    return {
        "backend": backend,
        "path": path,
        "redis": redis,
        "up": bool(view.state_up),
        "leader": bool(view.leader),
    }


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --- looking up a run ---------------------------------------------------------------


def lookup(sources: StatusSources, query: str) -> dict[str, Any]:
    """Everything the exporter can say about one run ID, configured or not."""
    run_id = query.strip()
    if not ID_PATTERN.fullmatch(run_id) or _redact(run_id, sources.view.config) != run_id:
        return {
            "run_id": _redact(query[:MAX_QUERY_SHOWN], sources.view.config),
            "verdict": "invalid",
            "explanation": "not a run ID (1 to 128 letters, digits, '-' or '_')",
            "configured": None,
            "tracked": None,
            "dropped": None,
            "discovering": [],
        }
    view = sources.view
    configured = None
    for workflow in view.config.workflows:
        if run_id in workflow.runs:
            state = view.store.get((workflow.id, run_id))
            if state is not None:
                configured = run_facts(state, sources)
            break
    tracked: dict[str, Any] | None = None
    dropped: dict[str, Any] | None = None
    histories = view.book.all()
    for history in histories:
        found = history.lookup(run_id)
        if isinstance(found, TrackedRun):
            tracked = _tracked(history.workflow_id, found, sources.now)
            break
        if isinstance(found, DroppedRun) and dropped is None:
            dropped = {
                "workflow_id": history.workflow_id,
                "reason": found.reason,
                "at": found.at,
                "created_at": found.created_at,
            }
    discovering = [_window(w, view, sources.now) for w in view.config.workflows if w.discover]
    verdict, explanation = _verdict(configured, tracked, dropped, discovering, view.config)
    return {
        "run_id": run_id,
        "verdict": verdict,
        "explanation": explanation,
        "configured": configured,
        "tracked": tracked,
        "dropped": dropped if tracked is None else None,
        "discovering": discovering,
    }


def _tracked(workflow_id: str, run: TrackedRun, now: float) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "status": run.status.value if run.status is not None else None,
        "created_at": run.created_at,
        "age_seconds": _age(run.created_at, now),
        "credits": run.credits,
        "first_seen": run.first_seen,
        "last_seen": run.last_seen or None,
        "configured": run.pinned,
        "counted": run.origin == "watched",
    }


def _window(workflow: WorkflowConfig, view: View, now: float) -> dict[str, Any]:
    history = view.book.get(workflow.id)
    horizon = None
    if history is not None:
        with history.lock:
            horizon = history.forget_horizon if history.forget_horizon != -math.inf else None
    return {
        "workflow_id": workflow.id,
        "window_start": now - workflow.discovery.window_seconds,
        "forget_horizon": horizon,
    }


def _verdict(
    configured: dict[str, Any] | None,
    tracked: dict[str, Any] | None,
    dropped: dict[str, Any] | None,
    discovering: list[dict[str, Any]],
    config: Config,
) -> tuple[str, str]:
    if configured is not None:
        where = f"configured in workflow {configured['workflow_id']}"
        if configured["why"]:
            return "configured", f"{where}; {configured['why']}"
        if configured["note"]:
            return "configured", f"{where}, status {configured['status']}; {configured['note']}"
        return "configured", f"{where}: it has series, status {configured['status']}"
    if tracked is not None:
        workflow = config.workflow(tracked["workflow_id"])
        series = (
            "per-run series for it only while it is active (discovery.run_series)"
            if workflow is not None and workflow.discovery.run_series
            else "no per-run series (list it under runs[] for them, or set discovery.run_series)"
        )
        return (
            "tracked",
            f"tracked in workflow {tracked['workflow_id']}'s history, status "
            f"{tracked['status'] or 'not known yet'}: it counts in copyai_workflow_runs and "
            f"the workflow's counters, {series}",
        )
    if dropped is not None:
        workflow = config.workflow(dropped["workflow_id"])
        discovery = workflow.discovery if workflow is not None else None
        text = DROPPED.get(dropped["reason"], "not tracked any more ({workflow})").format(
            workflow=dropped["workflow_id"],
            window=discovery.window_seconds if discovery else 0,
            cap=discovery.max_tracked_runs if discovery else 0,
        )
        return "dropped", text
    if not discovering:
        return (
            "never_seen",
            "never seen: it is not configured, no workflow has discover: true, and no "
            "webhook delivery named it (list it under a workflow's runs)",
        )
    older = "; ".join(_horizon_words(d) for d in discovering)
    return (
        "never_seen",
        "not configured and not tracked in any workflow's history. If it belongs to a "
        f"workflow with discover: true, it is older than what is kept ({older}), or the "
        "listing has not reached it yet; otherwise the exporter has never seen it",
    )


def _horizon_words(window: dict[str, Any]) -> str:
    text = f"{window['workflow_id']}: runs created before {_utc(window['window_start'])}"
    if window["forget_horizon"] is not None:
        text += f", and at or before {_utc(window['forget_horizon'])} past max_tracked_runs"
    return text


# --- config -----------------------------------------------------------------------------


def _config_section(sources: StatusSources) -> dict[str, Any]:
    config = sources.view.config
    first, last = sources.journal.loads()
    webhooks = config.webhooks
    redis = config.state.redis if config.state.backend == "redis" else None
    return {
        "file": first.path,
        "loaded_at": first.at,
        "last_reload": None
        if last is None
        else {
            "at": last.at,
            "ok": last.ok,
            "file": last.path,
            "problems": [_redact(p, config) for p in last.problems],
        },
        "workflows": len(config.workflows),
        "runs": sum(len(w.runs) for w in config.workflows),
        "refresh_interval_seconds": config.collector.refresh_interval_seconds,
        "webhooks": webhooks.listen_address if webhooks is not None else None,
        "secrets": {
            "api_key": _set(config.api.api_key.reveal()),
            "api_key_from": "file" if config.api.api_key_file else "environment",
            "api_key_file": config.api.api_key_file,
            "webhook_token": _set(webhooks.token.reveal()) if webhooks is not None else None,
            "redis_password": _set(redis.password.reveal()) if redis is not None else None,
        },
    }


def _redact(text: str, config: Config) -> str:
    """Text that may echo a secret (a lookup's query, a config problem) with the running
    config's secrets, and every secret the log redaction knows, masked."""
    secrets = [config.api.api_key.reveal()]
    if config.webhooks is not None:
        secrets.append(config.webhooks.token.reveal())
    if config.state.redis is not None:
        secrets.append(config.state.redis.password.reveal())
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return REDACTOR.redact(text)


def _set(secret: str) -> str:
    return "set" if secret else "unset"


# --- the summary: the few lines a person reads first ------------------------------------


def _summary(document: dict[str, Any]) -> list[dict[str, str]]:
    lines: list[dict[str, str]] = []
    api, runs, config = document["api"], document["runs"], document["config"]
    if api["up"]:
        lines.append({"level": "ok", "text": "The API answers with this key (copyai_up 1)."})
    else:
        lines.append(
            {
                "level": "error",
                "text": "The API does not answer, refuses the key or answers only 5xx "
                "(copyai_up 0): see the recent API errors.",
            }
        )
    for budget in document["budgets"]:
        if budget["used_ratio"] >= 1:
            lines.append(
                {
                    "level": "warn",
                    "text": f"Credit budget {budget['name']} is spent: "
                    f"{budget['used_credits']:g} of {budget['credits']:g} credits this "
                    f"{budget['period']}.",
                }
            )
    total = runs["configured"]
    if runs["without_series"]:
        detail = ", ".join(
            f"{reason_short(reason)} ({count})" for reason, count in runs["reasons"].items()
        )
        lines.append(
            {
                "level": "warn",
                "text": f"{runs['without_series']} of {total} configured runs have no "
                f"series yet: {detail}.",
            }
        )
    elif total:
        lines.append({"level": "ok", "text": f"All {total} configured runs have series."})
    if runs["fetch_failed"]:
        lines.append(
            {
                "level": "warn",
                "text": f"The last fetch of {runs['fetch_failed']} configured run(s) failed.",
            }
        )
    if runs["notes"]:
        lines.append(
            {
                "level": "warn",
                "text": f"{sum(runs['notes'].values())} run(s) answer without a usable "
                "status (shown as UNKNOWN, fetched less often).",
            }
        )
    if not document["history"]["up"]:
        lines.append(
            {
                "level": "error",
                "text": "The state store (SQLite file or Redis) cannot be written "
                "(copyai_state_backend_up 0).",
            }
        )
    last = config["last_reload"]
    if last is not None and not last["ok"]:
        count = len(last["problems"])
        lines.append(
            {
                "level": "error",
                "text": f"The last reload failed with {count} problem(s); the previous "
                "config is still running.",
            }
        )
    return lines


_REASON_SHORT = {
    NOT_FETCHED: "never fetched yet",
    ErrorKind.NOT_FOUND: "404 from the API",
    ErrorKind.RATE_LIMITED: "rate limited",
    ErrorKind.UNAUTHORIZED: "key refused",
    ErrorKind.UNREACHABLE: "no answer",
    ErrorKind.SERVER_ERROR: "server error",
    ErrorKind.CLIENT_ERROR: "request refused",
    ErrorKind.BAD_RESPONSE: "a bad answer",
    ErrorKind.TOO_LARGE: "answer too large",
}


def reason_short(reason: str) -> str:
    return _REASON_SHORT.get(reason, reason)


# --- helpers --------------------------------------------------------------------------


def _clip(text: str | None) -> str | None:
    """Text the API chose (an undocumented status), cut to a length a page can show."""
    if text is None or len(text) <= MAX_QUERY_SHOWN:
        return text
    return text[:MAX_QUERY_SHOWN] + "…"


def _age(when: float | None, now: float) -> float | None:
    return max(0.0, now - when) if when is not None else None


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
