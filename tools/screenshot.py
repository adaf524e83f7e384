"""Renders the demo's status page to docs/status.png for the README, with headless
Chromium (Debian's `chromium`): starts `copyai-exporter --demo` on a free loopback
port, scrapes it for a while so runs move and new ones are discovered, then takes the
picture. A picture for people, not a check: CI does not run it (the status page is
tested in a browser by tests/test_status_browser.py).

    .venv/bin/python tools/screenshot.py [--seconds 20] [--out docs/status.png]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening url=(http://\S+?)/metrics")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def start_demo() -> tuple[subprocess.Popen[str], str]:
    """The demo on a port of its own choosing; its URL from the log line."""
    env = {k: v for k, v in os.environ.items() if k != "COPYAI_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--demo", "--web.listen-address", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert process.stderr is not None
    for line in process.stderr:
        match = LISTENING.search(line)
        if match:
            # keep reading the log so the demo never blocks on a full pipe
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, match.group(1)
    raise SystemExit(f"the demo did not start (exit status {process.wait()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="scrape the demo this long")
    parser.add_argument("--out", default=str(ROOT / "docs" / "status.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1640)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    process, url = start_demo()
    try:
        stop_at = time.monotonic() + args.seconds
        while time.monotonic() < stop_at:  # as Prometheus would, every 2 s
            requests.get(f"{url}/metrics", timeout=30).raise_for_status()
            time.sleep(2)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            subprocess.run(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={args.width},{args.height}",
                    f"--screenshot={out}",
                    f"{url}/",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        print(f"wrote {out}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
