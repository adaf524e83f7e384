"""Headless Chromium (Debian's `chromium`) loading a page: its DOM after load, and what
it logged (a Content-Security-Policy violation is logged as a console message)."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass

from tests.support.tools import require_tool

# no sandbox (tests may run as root), no network besides the page, no first-run noise
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)


@dataclass
class Loaded:
    dom: str  # the document as the browser built it, serialized
    log: str  # chromium's stderr: console messages, CSP violations


def dump_dom(url: str, timeout: float = 60) -> Loaded:
    """Load `url` in a fresh profile; fails under CI=true if chromium is missing, skips
    locally."""
    chromium = require_tool("chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return Loaded(result.stdout, result.stderr)


def csp_violations(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Content Security Policy" in line]
