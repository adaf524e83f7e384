"""The status page at `/`: the document of status.py rendered as one HTML page, with no
JavaScript and no external asset (it works air-gapped and under the strict
Content-Security-Policy it is sent with: the one inline <style> is allowed by its hash).

Every value that comes from the API or the config is escaped here, in one helper (`_e`),
so a workflow name or an answer carrying `<script>` shows as text.

Longer than 500 lines because the page is one document of seven sections (summary,
lookup, API, workflows, budgets, runs, configuration) and the small formatters they
share; splitting it would scatter the one place where escaping happens.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from exporter import __version__
from exporter.web.status import reason_short

REFRESH_CHOICE = 10  # seconds, the link's auto-refresh
REFRESH_MIN, REFRESH_MAX = 5, 3600

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1d232a;background:#f6f7f9}
header,section{max-width:1180px;margin:0 auto;padding:0 20px}
header{padding-top:16px}
h1{font-size:22px;margin:0 0 2px}h3{font-size:14px;margin:16px 0 6px}
h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d8dce2;padding-bottom:4px}
p{margin:6px 0}a{color:#0b5cad}nav a{margin-right:14px}
.sub{color:#5b6570}
.summary{list-style:none;padding:0;margin:14px 0 0}
.summary li{padding:7px 12px;margin:4px 0;border-radius:4px;border-left:5px solid}
.summary .ok{background:#e9f6ec;border-color:#2f9e44}
.summary .warn{background:#fff6e0;border-color:#e8a200}
.summary .error{background:#fdeaea;border-color:#d6336c}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #e1e4e8;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.muted{color:#6b7580}
.st{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;font-weight:600;
background:#e8eaed}
.st-COMPLETE{background:#d3f0da;color:#1e6b31}
.st-FAILED{background:#fbd5dc;color:#a61e3c}
.st-PROCESSING,.st-NEW,.st-WAITING{background:#d8e8fb;color:#17508c}
.st-RETRYING{background:#ffe8bf;color:#8a5300}
.st-UNKNOWN{background:#e6e0f5;color:#4b3b80}
.nw{white-space:nowrap}
.bad{color:#b3261e;font-weight:600}
.good{color:#1e7a34;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:6px 0}
dt{color:#5b6570}dd{margin:0}form{margin:6px 0}
input{font:inherit;padding:4px 6px;width:24em;max-width:70%}
button{font:inherit;padding:4px 12px}
.lookup{background:#fff;border:1px solid #d8dce2;border-radius:4px;padding:8px 12px}
footer{max-width:1180px;margin:30px auto;padding:0 20px;color:#6b7580;font-size:12px}
"""
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'none'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def refresh_seconds(text: str | None) -> int | None:
    """`?refresh=N`: seconds between reloads, or None (off, the default)."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 6:
        return None
    return min(REFRESH_MAX, max(REFRESH_MIN, int(text)))


def render(
    facts: dict[str, Any],
    *,
    telemetry_path: str = "/metrics",
    refresh: int | None = None,
) -> str:
    now = facts["generated_at"]
    run_query = facts["lookup"]["run_id"] if facts["lookup"] is not None else None
    config = facts["config"]
    names = {w["id"]: w["name"] for w in facts["workflows"]}
    refresh_meta = f'<meta http-equiv="refresh" content="{refresh}">\n' if refresh else ""
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"{refresh_meta}<title>Copy.ai exporter: status</title>\n"
        f"<style>{STYLE}</style></head>\n<body>\n<header>\n<h1>Copy.ai exporter</h1>\n"
        f'<p class="sub">Version {_e(__version__)}, watching {config["workflows"]} '
        f"workflow(s) and {config['runs']} configured run(s) at "
        f"<code>{_e(facts['api']['base_url'])}</code>. Generated {_stamp(now)}.</p>\n"
        f"<nav>{_nav(telemetry_path, refresh, run_query)}</nav>\n</header>\n",
        _summary(facts["summary"]),
        _lookup(facts["lookup"], run_query, now, names),
        _api(facts["api"], now),
        _workflows(facts["workflows"], facts["history"], now),
        _budgets(facts["budgets"], now, names),
        _runs(facts["runs"], now, names),
        _config(config, facts["history"], now),
        '<footer>The same facts as JSON: <a href="/status.json">/status.json</a> '
        f"(schema {facts['schema']}). Started {_long(facts['started_at'], now)}.</footer>\n"
        "</body></html>\n",
    ]
    return "".join(parts)


# --- sections ---------------------------------------------------------------------------


def _nav(telemetry_path: str, refresh: int | None, run_query: str | None) -> str:
    keep = {"run": run_query} if run_query else {}
    if refresh:
        toggle = (
            f'<a href="{_href(keep)}">Stop auto-refresh</a>'
            f'<span class="muted">(reloading every {refresh} s)</span>'
        )
    else:
        toggle = (
            f'<a href="{_href({**keep, "refresh": str(REFRESH_CHOICE)})}">'
            f"Auto-refresh every {REFRESH_CHOICE} s</a>"
        )
    return (
        f'<a href="{_e(telemetry_path)}">Metrics</a>'
        '<a href="/status.json">status.json</a>'
        '<a href="/-/healthy">Health</a><a href="/-/ready">Readiness</a>'
        f"{toggle}"
    )


def _summary(lines: list[dict[str, str]]) -> str:
    items = "".join(f'<li class="{_level(x["level"])}">{_e(x["text"])}</li>\n' for x in lines)
    return f'<section id="summary">\n<ul class="summary">\n{items}</ul>\n</section>\n'


def _lookup(
    result: dict[str, Any] | None, run_query: str | None, now: float, names: dict[str, str]
) -> str:
    value = f' value="{_e(run_query)}"' if run_query else ""
    out = [
        '<section id="lookup">\n<h2>Why is a run missing?</h2>\n'
        '<form method="get" action="/"><label>Run ID <input name="run" '
        f'placeholder="WRUN-..." maxlength="200"{value}></label> '
        '<button type="submit">Explain</button></form>\n'
    ]
    if result is not None:
        level = {"configured": "ok", "tracked": "ok", "invalid": "warn"}.get(
            result["verdict"], "warn"
        )
        configured = result["configured"]
        if configured is not None and configured["problem"]:
            level = "warn"
        out.append(
            f'<div class="lookup"><p><span class="id">{_e(result["run_id"])}</span>: '
            f'<span class="{"good" if level == "ok" else "bad"}">{_e(result["verdict"])}'
            f"</span></p>\n<p>{_e(result['explanation'])}</p>\n"
        )
        tracked = result["tracked"]
        if tracked is not None:
            out.append(
                "<dl>"
                f'<dt>Workflow</dt><dd class="id">{_e(tracked["workflow_id"])}</dd>'
                f"<dt>Status</dt><dd>{_status(tracked['status'])}</dd>"
                f"<dt>Created</dt><dd>{_when(tracked['created_at'], now)}</dd>"
                f"<dt>Credits</dt><dd>{_number(tracked['credits'])}</dd>"
                f"<dt>First seen</dt><dd>{_when(tracked['first_seen'], now)}</dd>"
                f"<dt>Last seen with a status</dt><dd>{_when(tracked['last_seen'], now)}</dd>"
                "</dl>\n"
            )
        if configured is not None:
            out.append(_run_table([configured], now, names))
        out.append(
            f'<p class="muted">As JSON: <a href="{_href({"run": result["run_id"]}, "/status.json")}'
            '">status.json</a></p></div>\n'
        )
    out.append("</section>\n")
    return "".join(out)


def _api(api: dict[str, Any], now: float) -> str:
    hour, budget = api["last_hour"], api["budget"]
    up = '<span class="good">yes</span>' if api["up"] else '<span class="bad">no</span>'
    codes = _counts(hour["requests_by_code"])
    kinds = _counts(hour["errors_by_kind"])
    if budget["limit_per_minute"] is None:
        use = f"{budget['requests_last_minute']} requests in the last minute (no limit set)"
    else:
        use = (
            f"{budget['requests_last_minute']} of {budget['limit_per_minute']:g} requests a "
            f"minute ({budget['used_ratio']:.0%} of api.max_requests_per_second)"
        )
    out = [
        '<section id="api">\n<h2>API</h2>\n<dl>'
        f"<dt>Answering (copyai_up)</dt><dd>{up}</dd>"
        "<dt>Last refresh without errors</dt>"
        f"<dd>{_long(api['last_successful_refresh'], now)}</dd>"
        f"<dt>Requests, last hour</dt><dd>{hour['requests']}{codes}</dd>"
        f"<dt>Failed operations, last hour</dt><dd>{hour['errors']}{kinds}</dd>"
        f"<dt>Budget use</dt><dd>{_e(use)}</dd>"
        f"<dt>Refresh backlog</dt><dd>{budget['refresh_backlog']} due, not started</dd>"
        "</dl>\n<h3>Recent API errors</h3>\n"
    ]
    errors = api["recent_errors"]
    if not errors:
        out.append('<p class="muted">None since the exporter started.</p>\n')
    else:
        rows = "".join(
            "<tr>"
            f"<td>{_when(e['at'], now)}</td><td><code>{_e(e['endpoint'])}</code></td>"
            f'<td class="num">{_e(e["code"] if e["code"] is not None else "-")}</td>'
            f"<td>{_e(e['kind'])}</td>"
            f"<td>{_run_link(e['run_id']) if e['run_id'] else _e('-')}"
            f"{_workflow_note(e['workflow_id'])}</td>"
            f"<td>{_e(e['message'])}</td></tr>\n"
            for e in errors
        )
        out.append(
            "<table><tr><th>Time</th><th>Endpoint</th><th>HTTP code</th><th>Kind</th>"
            f"<th>Run</th><th>Message</th></tr>\n{rows}</table>\n"
        )
    out.append("</section>\n")
    return "".join(out)


def _workflows(workflows: list[dict[str, Any]], history: dict[str, Any], now: float) -> str:
    rows = []
    for w in workflows:
        values = w["values"]
        by_status = " ".join(
            f'<span class="nw">{_status(status)}&nbsp;{count}</span>'
            for status, count in w["runs_by_status"].items()
            if count
        )
        name = _e(w["name"])
        if not w["configured"]:
            name += ' <span class="muted">(from webhooks)</span>'
        oldest = (
            _duration(w["oldest_active_age_seconds"])
            if w["oldest_active_age_seconds"] is not None
            else _e("none active")
        )
        missing = w["configured_runs_without_series"]
        configured = f"{w['configured_runs']}"
        if missing:
            configured += f' <span class="bad">({missing} without series)</span>'
        rows.append(
            "<tr>"
            f'<td>{name}<br><span class="id muted">{_e(w["id"])}</span></td>'
            f"<td>{'on' if w['discover'] else 'off'}</td>"
            f"<td>{by_status or _e('none yet')}</td>"
            f'<td class="num">{configured}</td><td class="num">{w["tracked_runs"]}</td>'
            f"<td>{_when(values.get('last_success'), now)}</td>"
            f"<td>{_when(values.get('last_failure'), now)}</td>"
            f"<td>{oldest}</td><td>{_when(w['last_webhook'], now)}</td>"
            f"<td>{_discovery(w['discovery'], now)}</td></tr>\n"
        )
    body = "".join(rows) or '<tr><td colspan="10" class="muted">No workflow.</td></tr>\n'
    return (
        '<section id="workflows">\n<h2>Workflows</h2>\n'
        f"<p>History: {_history(history)}.</p>\n"
        "<table><tr><th>Workflow</th><th>Discover</th><th>Runs by status</th>"
        "<th>Configured runs</th><th>Tracked</th><th>Last success</th><th>Last failure</th>"
        "<th>Oldest active run</th><th>Last webhook</th><th>Discovery</th></tr>\n"
        f"{body}</table>\n</section>\n"
    )


def _budgets(budgets: list[dict[str, Any]], now: float, names: dict[str, str]) -> str:
    if not budgets:
        return ""
    rows = []
    for b in budgets:
        share = b["used_ratio"]
        used = f"{_number(b['used_credits'])} ({share:.0%})"
        if share >= 1:
            used = f'<span class="bad">{used}</span>'
        workflows = ", ".join(_e(names.get(w, w)) for w in b["workflows"])
        rows.append(
            "<tr>"
            f"<td>{_e(b['name'])}</td><td>{_e(b['period'])}</td>"
            f'<td class="num">{used}</td><td class="num">{_number(b["credits"])}</td>'
            f"<td>{_stamp(b['period_start'])}</td><td>{_long(b['period_end'], now)}</td>"
            f"<td>{workflows}</td></tr>\n"
        )
    return (
        '<section id="budgets">\n<h2>Credit budgets</h2>\n'
        "<table><tr><th>Budget</th><th>Period</th><th>Used</th><th>Limit</th>"
        "<th>Period started</th><th>Period ends</th><th>Workflows</th></tr>\n"
        f"{''.join(rows)}</table>\n</section>\n"
    )


def _discovery(discovery: dict[str, Any] | None, now: float) -> str:
    if discovery is None:
        return '<span class="muted">-</span>'
    listing = discovery["last_listing"]
    if listing is None:
        state = "not listed yet"
    elif listing["ok"]:
        state = f"listed {_ago(listing['at'], now)}"
    else:
        return (
            f'<span class="bad">listing failed {_ago(listing["at"], now)}:</span> '
            f"{_e(reason_short(listing['kind']))} ({_e(listing['message'])})"
        )
    window = _duration(discovery["window_seconds"])
    extra = "" if discovery["filled"] else ", filling the window"
    return f"{_e(state)}{extra}; window {window}, up to {discovery['max_tracked_runs']} runs"


def _runs(runs: dict[str, Any], now: float, names: dict[str, str]) -> str:
    counts = (
        f"{runs['configured']} configured, {runs['with_series']} with series, "
        f"{runs['without_series']} without"
    )
    if runs["fetch_failed"]:
        counts += f", {runs['fetch_failed']} whose last fetch failed"
    reasons = ""
    if runs["reasons"]:
        reasons = " Without series: " + ", ".join(
            f"{reason_short(reason)} ({count})" for reason, count in runs["reasons"].items()
        )
        reasons += "."
    out = [
        '<section id="runs">\n<h2>Configured runs</h2>\n'
        f"<p>{_e(counts)}.{_e(reasons)} Runs with a problem first, then the newest.</p>\n"
    ]
    if runs["shown"]:
        out.append(_run_table(runs["shown"], now, names))
    if runs["not_shown"]:
        out.append(
            f'<p class="muted">{runs["not_shown"]} more not shown: look one up above, or in '
            "/status.json?run=ID.</p>\n"
        )
    out.append("</section>\n")
    return "".join(out)


def _run_table(runs: Iterable[dict[str, Any]], now: float, names: dict[str, str]) -> str:
    rows = []
    for r in runs:
        workflow = r["workflow_id"]
        fetch = r["last_fetch"]
        if fetch["ok"] is None:
            fetched = _e("not yet") if fetch["at"] is None else _ago(fetch["at"], now)
        elif fetch["ok"]:
            fetched = f'{_ago(fetch["at"], now)} <span class="good">ok</span>'
        else:
            code = f" {fetch['code']}" if fetch["code"] is not None else ""
            fetched = (
                f'{_ago(fetch["at"], now)} <span class="bad">failed: '
                f"{_e(fetch['kind'] or '')}{_e(code)}</span>"
            )
        why = []
        if r["why"]:
            why.append(
                f'<span class="{"bad" if not r["has_series"] else ""}">{_e(r["why"])}</span>'
            )
        if r["note"]:
            why.append(_e(r["note"]))
        status = _status(r["status"]) if r["has_series"] else '<span class="bad">no series</span>'
        rows.append(
            "<tr>"
            f'<td title="{_e(workflow)}">{_e(names.get(workflow, workflow))}</td>'
            f"<td>{_run_link(r['run_id'])}</td>"
            f"<td>{status}</td>"
            f"<td>{_duration(r['age_seconds']) if r['age_seconds'] is not None else '-'}</td>"
            f'<td class="num">{_number(r["credits"])}</td><td>{fetched}</td>'
            f"<td>{'<br>'.join(why)}</td></tr>\n"
        )
    return (
        "<table><tr><th>Workflow</th><th>Run</th><th>Status</th><th>Age</th><th>Credits</th>"
        "<th>Last fetch</th><th>Why no series / notes</th></tr>\n" + "".join(rows) + "</table>\n"
    )


def _config(config: dict[str, Any], history: dict[str, Any], now: float) -> str:
    secrets = config["secrets"]
    key = secrets["api_key"]
    key += (
        f" (from the file {secrets['api_key_file']})"
        if secrets["api_key_file"]
        else (" (from the environment, COPYAI_API_KEY)")
    )
    file = config["file"] if config["file"] else "none (built in, as for --demo)"
    items = [
        ("File", _e(file)),
        ("Loaded", _long(config["loaded_at"], now)),
    ]
    last = config["last_reload"]
    if last is None:
        items.append(("Last reload", _e("none since the start")))
    elif last["ok"]:
        items.append(("Last reload", f'{_long(last["at"], now)}: <span class="good">ok</span>'))
    else:
        problems = "".join(f"<li>{_e(p)}</li>" for p in last["problems"])
        items.append(
            (
                "Last reload",
                f'{_long(last["at"], now)}: <span class="bad">failed, the previous config '
                f"keeps running</span> ({_e(last['file'] or '')})<ul>{problems}</ul>",
            )
        )
    items += [
        ("API key", _e(key)),
        ("Webhook receiver", _e(config["webhooks"] or "off")),
    ]
    if secrets["webhook_token"] is not None:
        items.append(("Webhook token", _e(secrets["webhook_token"])))
    if secrets["redis_password"] is not None:
        items.append(("Redis password", _e(secrets["redis_password"])))
    items.append(("History", _history(history)))
    items.append(("Refresh interval", _duration(config["refresh_interval_seconds"])))
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items)
    return f'<section id="config">\n<h2>Configuration</h2>\n<dl>{rows}</dl>\n</section>\n'


def _history(history: dict[str, Any]) -> str:
    backend = history["backend"]
    if backend == "sqlite":
        text = f"SQLite file {_e(history['path'])}"
    elif backend == "redis":
        redis = history["redis"]
        text = f"Redis {_e(redis['url'])} (prefix {_e(redis['key_prefix'])}), " + (
            "this replica leads" if history["leader"] else "another replica leads"
        )
    else:
        text = "in memory only (no state.path: starts afresh after a restart)"
    if not history["up"]:
        text += ' <span class="bad">(cannot be written)</span>'
    return text


# --- small pieces -----------------------------------------------------------------------


def _e(value: object) -> str:
    """Escaped text: the only way a value reaches the page."""
    return html.escape(str(value), quote=True)


def _level(level: str) -> str:
    return level if level in ("ok", "warn", "error") else "warn"


def _href(params: dict[str, str], path: str = "/") -> str:
    return _e(f"{path}?{urlencode(params)}" if params else path)


def _run_link(run_id: str) -> str:
    return f'<a class="id" href="{_href({"run": run_id})}">{_e(run_id)}</a>'


def _workflow_note(workflow_id: str | None) -> str:
    return f'<br><span class="id muted">{_e(workflow_id)}</span>' if workflow_id else ""


def _status(status: str | None) -> str:
    if status is None:
        return '<span class="muted">-</span>'
    return f'<span class="st st-{_e(status)}">{_e(status)}</span>'


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{_e(k)}: {v}" for k, v in counts.items()) + ")"


def _number(value: float | None) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    return _e(f"{value:g}")


def _when(when: float | None, now: float) -> str:
    if when is None:
        return '<span class="muted">never</span>'
    stamp = _stamp(when)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    return f'<time datetime="{iso}" title="{stamp}">{_ago(when, now)}</time>'


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _long(when: float | None, now: float) -> str:
    """The time itself, and how long ago."""
    if when is None:
        return '<span class="muted">never</span>'
    return f"{_stamp(when)} ({_ago(when, now)})"


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "never"
    seconds = now - when
    if seconds < -1:
        return f"in {_duration(-seconds)}"
    return f"{_duration(max(0.0, seconds))} ago"


def _duration(seconds: float) -> str:
    """Two units at most, the smaller left out when zero: 45 s, 12 min, 2 h 5 min, 1 d."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    big, small, big_unit, small_unit = (
        (seconds // 3600, seconds % 3600 // 60, "h", "min")
        if seconds < 86400
        else (seconds // 86400, seconds % 86400 // 3600, "d", "h")
    )
    return f"{big:.0f} {big_unit}" + (f" {small:.0f} {small_unit}" if small else "")
