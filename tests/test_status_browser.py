"""The status page in a real browser (headless Chromium): the demo's page as a newcomer
sees it, under its own Content-Security-Policy with nothing blocked, and hostile text
from the API and the config rendered as text, never as elements."""

from __future__ import annotations

import html
import json
import os
import re
from urllib.parse import quote

import pytest
import requests

from tests.support.browser import csp_violations, dump_dom
from tests.support.exporters import make_config
from tests.support.polling import wait_for
from tests.support.processes import LISTENING

pytestmark = pytest.mark.e2e

DEMO_WORKFLOWS = ("blog-writer", "seo-meta-descriptions", "lead-enrichment")


def test_the_demo_status_page_in_a_browser(spawn):
    env = {k: v for k, v in os.environ.items() if k != "COPYAI_API_KEY"}
    process = spawn("--demo", "--web.listen-address", "127.0.0.1:0", env=env)
    url = process.wait_for_line(LISTENING).group(1)
    assert requests.get(f"{url}/metrics", timeout=30).status_code == 200  # fetches the runs

    def every_run_has_series() -> bool:
        runs = requests.get(f"{url}/status.json", timeout=10).json()["runs"]
        return runs["configured"] > 0 and runs["without_series"] == 0

    wait_for(every_run_has_series, timeout=30)
    loaded = dump_dom(f"{url}/")
    dom = loaded.dom
    assert csp_violations(loaded.log) == []  # the inline style's hash is right
    assert "<title>Copy.ai exporter: status</title>" in dom
    for name in DEMO_WORKFLOWS:
        assert name in dom, name
    statuses = set(re.findall(r'<span class="st st-([A-Z]+)">\1</span>', dom))
    assert {"COMPLETE", "PROCESSING"} <= statuses, statuses
    for heading in ("Why is a run missing?", "API", "Workflows", "Configured runs"):
        assert f"<h2>{heading}</h2>" in dom
    assert "All 12 configured runs have series." in dom
    assert "<script" not in dom.lower()
    assert process.stop() == 0


HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=1">'
WF = "WCFG-browser"


def test_hostile_text_is_text_in_the_browser(sim, world, start_exporter):
    world.add_workflow("hostile", WF)
    odd = world.add_run(WF, [("COMPLETE", None)]).run_id
    record = {"id": odd, "status": HOSTILE, "createdAt": "2024-01-01T00:00:00Z"}
    world.canned[("GET", f"/workflow/{WF}/run/{odd}")] = (
        200,
        json.dumps({"status": "success", "data": record}).encode(),
        "application/json",
    )
    config = make_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            "workflows": [{"id": WF, "name": HOSTILE, "runs": [odd]}],
        }
    )
    running = start_exporter(config, process_metrics=False)
    assert requests.get(f"{running.url}/metrics", timeout=30).status_code == 200
    loaded = dump_dom(f"{running.url}/?run={quote(HOSTILE)}")
    dom = loaded.dom
    assert "<script" not in dom.lower() and "<img" not in dom.lower()
    assert "<title>Copy.ai exporter: status</title>" in dom  # no script ran
    visible = html.escape(HOSTILE, quote=False)  # how the DOM serializes text
    assert dom.count(visible) >= 2  # the workflow name and the API's status, as text
    assert "undocumented status" in dom
    assert csp_violations(loaded.log) == []
