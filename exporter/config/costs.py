"""The config's cost sections, read by load.py: `budgets` (credit budgets over some
workflows, each needing discover: true) and `attribution` (the run fields credits are
attributed by). Every problem is collected with its path, like the rest of the file."""

from __future__ import annotations

import re
from collections.abc import Mapping

from exporter.config.checks import Validator, read_options, type_name
from exporter.config.model import BUDGET_NAME, AttributionConfig, BudgetConfig, WorkflowConfig

ATTRIBUTION_ROOTS = ("metadata", "input")  # the run objects a key may point into
MAX_ATTRIBUTION_KEYS = 10
MAX_BUDGETS = 100


def read_budgets(
    v: Validator, node: object, workflows: tuple[WorkflowConfig, ...]
) -> tuple[BudgetConfig, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        v.problem("budgets", f"must be a list of budgets, got {type_name(node)}")
        return ()
    if len(node) > MAX_BUDGETS:
        v.problem("budgets", f"at most {MAX_BUDGETS} budgets")
        return ()
    configured = {w.id: (i, w) for i, w in enumerate(workflows)}
    budgets: list[BudgetConfig] = []
    names: dict[str, str] = {}
    for i, item in enumerate(node):
        path = f"budgets[{i}]"
        if not isinstance(item, Mapping):
            v.problem(path, f"must be a mapping with a name, got {type_name(item)}")
            continue
        values, m = read_options(v, item, path, BudgetConfig, "name", "credits", "workflows")
        name = m.get("name")
        if name is None:
            v.problem(f"{path}.name", "is required")
        elif not isinstance(name, str) or not re.fullmatch(BUDGET_NAME, name):
            v.problem(f"{path}.name", "must be 1-64 letters, digits, '-' or '_'")
            name = None
        elif name in names:
            v.problem(f"{path}.name", f"duplicate budget name {name} (also {names[name]})")
        else:
            names[name] = path
        if "credits" not in m:
            v.problem(f"{path}.credits", "is required")
        before = len(v.problems)
        credits = v.number(m, f"{path}.credits", 0.0, 0, 1e15)
        if "credits" in m and credits <= 0 and len(v.problems) == before:
            v.problem(f"{path}.credits", "must be more than 0")
        chosen, every = _budget_workflows(v, m.get("workflows"), f"{path}.workflows", configured)
        if name is not None and credits > 0 and chosen:
            budgets.append(
                BudgetConfig(
                    name=name,
                    credits=credits,
                    workflows=chosen,
                    every_workflow=every,
                    **values,
                )
            )
    return tuple(budgets)


def _budget_workflows(
    v: Validator,
    node: object,
    path: str,
    configured: Mapping[str, tuple[int, WorkflowConfig]],
) -> tuple[tuple[str, ...], bool]:
    """The budget's workflows, each configured with discover: true: without it the
    exporter sees only the listed runs, and the budget would miss the others."""
    if node is None:
        v.problem(path, 'is required: a list of workflow ids, or "*" for every workflow')
        return (), False
    if node == "*":
        chosen = [w.id for _, w in sorted(configured.values(), key=lambda x: x[0])]
        every = True
    elif isinstance(node, list) and node:
        chosen = []
        for j, item in enumerate(node):
            workflow_id = v.token_value(item, f"{path}[{j}]")
            if workflow_id is None:
                continue
            if workflow_id not in configured:
                v.problem(f"{path}[{j}]", f"{workflow_id} is not a configured workflow")
            elif workflow_id in chosen:
                v.problem(f"{path}[{j}]", f"{workflow_id} is listed twice")
            else:
                chosen.append(workflow_id)
        every = False
    else:
        v.problem(path, 'must be a non-empty list of workflow ids, or "*" for every workflow')
        return (), False
    blind = [configured[w] for w in chosen if not configured[w][1].discover]
    for index, workflow in blind:
        v.problem(
            path,
            f"workflow {workflow.id} (workflows[{index}]) has no discover: true; a budget "
            "counts every run of its workflows, so each needs discover: true (with only "
            "listed runs, the budget would miss the others)",
        )
    return (tuple(chosen), every) if not blind else ((), every)


def read_attribution(v: Validator, node: object) -> AttributionConfig:
    if node is None:
        return AttributionConfig()
    values, m = read_options(v, node, "attribution", AttributionConfig, "keys")
    keys_node = m.get("keys")
    if not isinstance(keys_node, list) or not keys_node:
        v.problem(
            "attribution.keys",
            "must be a non-empty list of dotted paths such as metadata.customer or input.team",
        )
        return AttributionConfig()
    if len(keys_node) > MAX_ATTRIBUTION_KEYS:
        v.problem("attribution.keys", f"at most {MAX_ATTRIBUTION_KEYS} keys")
        return AttributionConfig()
    keys: list[str] = []
    for i, key in enumerate(keys_node):
        path = f"attribution.keys[{i}]"
        if not isinstance(key, str):
            v.problem(path, f"must be a string, got {type_name(key)}")
            continue
        root, _, rest = key.partition(".")
        parts = rest.split(".")
        if (
            root not in ATTRIBUTION_ROOTS
            or not rest
            or any(not part for part in parts)
            or len(key) > 200
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
        ):
            v.problem(
                path,
                f"{key[:80]!r} must be metadata.<field> or input.<field> (fields separated "
                "by dots, none empty, at most 200 characters)",
            )
        elif key in keys:
            v.problem(path, f"{key} is listed twice")
        else:
            keys.append(key)
    return AttributionConfig(keys=tuple(keys), **values)
