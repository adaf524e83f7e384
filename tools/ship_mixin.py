"""Writes the mixin's default outputs where the repository ships them (the compose
stacks mount these): prometheus/alerts.yml, prometheus/rules.yml,
grafana/dashboards/copyai-exporter.json, and the inhibit_rules at the end of
alertmanager/alertmanager.yml. Run it after changing exporter/mixin/; a test checks
the shipped files are what `copyai-exporter mixin` writes.

    .venv/bin/python tools/ship_mixin.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.mixin import ALERTS, DASHBOARD, INHIBIT, RULES, render

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    ALERTS: ROOT / "prometheus" / "alerts.yml",
    RULES: ROOT / "prometheus" / "rules.yml",
    DASHBOARD: ROOT / "grafana" / "dashboards" / "copyai-exporter.json",
}
ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"
INHIBIT_MARKER = "# --- the mixin's alertmanager_inhibit_rules.yaml, as generated ---\n"


def shipped_alertmanager(current: str, inhibit: str) -> str:
    """The hand-written routing of alertmanager.yml, then the generated inhibitions."""
    head = current.split(INHIBIT_MARKER, maxsplit=1)[0]
    return head + INHIBIT_MARKER + inhibit


def main() -> int:
    outputs = render()
    for name, path in SHIPPED.items():
        path.write_text(outputs[name], encoding="utf-8")
        sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")
    ALERTMANAGER.write_text(
        shipped_alertmanager(ALERTMANAGER.read_text(encoding="utf-8"), outputs[INHIBIT]),
        encoding="utf-8",
    )
    sys.stdout.write(f"wrote {ALERTMANAGER.relative_to(ROOT)} (its inhibit_rules)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
