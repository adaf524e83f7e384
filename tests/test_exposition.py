"""The per-run renderer: correct text, lines reused while a run does not change, and
runs that leave the config leaving the output and the cache."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from exporter.api.records import Run, RunStatus
from exporter.api.transport import make_session
from exporter.metrics.exposition import CHUNK_BYTES, RunRenderer
from exporter.tracking.runs import RunState


def render(renderer: RunRenderer, runs, now: float, sparse: bool) -> bytes:
    return b"".join(renderer.render_chunks(runs, now, sparse))


def state(run_id: str, status: RunStatus | None, credits=None, created=100.0, ok=True):
    run = None if status is None else Run(run_id, status, created, credits)
    return RunState("WCFG-1", run_id, run=run, fetch_ok=ok)


def parse(text: bytes) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_renders_every_family_with_help_and_type_once():
    renderer = RunRenderer()
    text = render(
        renderer,
        [state("WRUN-a", RunStatus.PROCESSING, credits=9001), state("WRUN-b", None, ok=False)],
        now=142.0,
        sparse=False,
    )
    samples = parse(text)
    key = (("run_id", "WRUN-a"), ("workflow_id", "WCFG-1"))
    assert (
        samples[("copyai_workflow_run_status", (*key[:1], ("status", "PROCESSING"), key[1]))] == 1
    )
    assert samples[("copyai_workflow_run_credits", key)] == 9001
    assert samples[("copyai_workflow_run_age_seconds", key)] == 42.0
    assert samples[("copyai_workflow_run_created_timestamp_seconds", key)] == 100.0
    b = (("run_id", "WRUN-b"), ("workflow_id", "WCFG-1"))
    assert samples[("copyai_workflow_run_fetch_success", b)] == 0
    assert not any(
        name == "copyai_workflow_run_status" and labels[0][1] == "WRUN-b"
        for name, labels in samples
    )
    for name in ("status", "credits", "created_timestamp_seconds", "age_seconds", "fetch_success"):
        assert text.count(f"# TYPE copyai_workflow_run_{name} gauge".encode()) == 1


def test_unchanged_runs_reuse_their_lines_and_changes_show():
    renderer = RunRenderer()
    finished = state("WRUN-a", RunStatus.COMPLETE, credits=2)
    render(renderer, [finished], now=200.0, sparse=False)
    cached = renderer._cache[("WCFG-1", "WRUN-a")]
    text = render(renderer, [finished], now=300.0, sparse=False)
    assert renderer._cache[("WCFG-1", "WRUN-a")] is cached  # nothing re-formatted
    assert b'copyai_workflow_run_age_seconds{workflow_id="WCFG-1",run_id="WRUN-a"} 200.0' in text
    moved = state("WRUN-a", RunStatus.FAILED, credits=3)
    samples = parse(render(renderer, [moved], now=300.0, sparse=False))
    key = (("run_id", "WRUN-a"), ("status", "FAILED"), ("workflow_id", "WCFG-1"))
    assert samples[("copyai_workflow_run_status", key)] == 1
    sparse = render(renderer, [moved], now=300.0, sparse=True)
    assert sparse.count(b"copyai_workflow_run_status{") == 1
    render(renderer, [], now=300.0, sparse=True)
    assert renderer._cache == {}  # a run gone from the config leaves no lines behind


def test_a_large_exposition_streams_in_bounded_chunks():
    """Thousands of runs come out in chunks of about CHUNK_BYTES, never as one buffer of
    the whole answer, and the chunks together are exactly the whole render."""
    renderer = RunRenderer()
    runs = [state(f"WRUN-{i:05d}", RunStatus.PROCESSING, credits=i) for i in range(3000)]
    chunks = list(renderer.render_chunks(runs, now=500.0, sparse=False))
    whole = b"".join(chunks)
    assert len(whole) > 4 * CHUNK_BYTES
    assert len(chunks) >= 4
    longest_line = max(len(line) for line in whole.splitlines(keepends=True))
    assert max(len(c) for c in chunks) < CHUNK_BYTES + longest_line + 1024  # + HELP, TYPE
    assert whole == render(renderer, runs, now=500.0, sparse=False)
    samples = parse(whole)
    key = (("run_id", "WRUN-02999"), ("workflow_id", "WCFG-1"))
    assert samples[("copyai_workflow_run_credits", key)] == 2999


def test_session_reads_proxy_settings_once_for_the_api_origin(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "api.internal")
    assert (
        make_session(2, "https://api.copy.ai/api").proxies["https"] == "http://proxy.internal:3128"
    )
    assert make_session(2, "https://api.internal/api").proxies == {}
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem")
    assert make_session(2, "https://api.copy.ai/api").verify == "/etc/ssl/corp.pem"
