"""The public Copy.ai API documentation's example bodies, kept as data in
tests/fixtures/api/ (each file names the page it comes from), with their placeholders
(<run_id>, <workflow_id>, ...) replaced by valid IDs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent.parent / "fixtures" / "api"
WORKFLOW_ID = "WCFG-contract"
WEBHOOK_ID = "WHK-contract-1"
PLACEHOLDERS = {"<workflow_id>": WORKFLOW_ID, "<webhook_id>": WEBHOOK_ID, "<tool_key>": "tool-key"}


def names() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.json"))


def run_id_for(name: str, index: int = 0) -> str:
    """A valid run ID per fixture (and per list item), the same on every call."""
    number = names().index(name) * 10 + index
    return f"WRUN-00000000-0000-4000-8000-{number:012d}"


def substitute(node: Any, run_id: str) -> Any:
    if isinstance(node, str):
        return run_id if node == "<run_id>" else PLACEHOLDERS.get(node, node)
    if isinstance(node, list):
        return [substitute(item, run_id) for item in node]
    if isinstance(node, dict):
        return {key: substitute(value, run_id) for key, value in node.items()}
    return node


def load(name: str) -> dict[str, Any]:
    """A fixture with its placeholders filled: the run ID of a list's item i is
    run_id_for(name, i), of anything else run_id_for(name)."""
    document = json.loads((FIXTURES / name).read_text())
    run_id = run_id_for(name)
    if document["endpoint"] == "list_runs":
        items = document["body"]["data"]["data"]
        document["body"]["data"]["data"] = [
            substitute(item, run_id_for(name, i)) for i, item in enumerate(items)
        ]
        for i, run in enumerate(document["expect"]["runs"]):
            run["run_id"] = run_id_for(name, i)
        return document
    return substitute(document, run_id)


def body(name: str) -> Any:
    """Just the example body of a fixture, placeholders filled."""
    return load(name)["body"]
