"""The layout stays legible: packages import only the layers below them, no module
grows past ~500 lines without saying why, the README's module map lists exactly the
modules there are, CODING.md names only paths that exist, and no test module imports
another."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "exporter"
# CODING.md, "Layers": what each part may import (besides itself)
LAYERS = {
    "exporter": 0,
    "exporter.logs": 0,
    "exporter.config": 1,
    "exporter.api": 2,
    "exporter.tracking": 3,
    "exporter.metrics": 4,
    "exporter.replication": 4,
    "exporter.web": 5,
    "exporter.runtime": 6,
    "exporter.mixin": 2,
    "exporter.cli": 7,
    "exporter.__main__": 8,
}
LONG = 500
LONG_NOTE = "Longer than 500 lines because"


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The unit of layering: a subpackage, or a top-level module."""
    pieces = module.split(".")
    return ".".join(pieces[:2]) if len(pieces) > 1 else module


def imports(path: Path) -> list[str]:
    """Modules of the exporter imported at run time (not those under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [m for m in found if m == "exporter" or m.startswith("exporter.")]


def test_packages_import_only_the_layers_below():
    problems = []
    for path in modules():
        source = part_of(dotted(path))
        for target_module in imports(path):
            target = part_of(target_module)
            if target == source or target_module == "exporter":
                continue  # itself, or the version
            if source == "exporter.sim" or target == "exporter.sim":
                if not (target == "exporter.sim" and source == "exporter.cli"):
                    problems.append(f"{dotted(path)} imports {target_module} (sim stands apart)")
                continue
            if LAYERS[target] >= LAYERS[source]:
                problems.append(f"{dotted(path)} (layer {LAYERS[source]}) imports {target_module}")
    assert problems == []


def test_the_layer_table_knows_every_part():
    assert {part_of(dotted(p)) for p in modules()} - {"exporter.sim"} == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_what_it_is_for_and_long_ones_why(path):
    text = path.read_text()
    assert ast.get_docstring(ast.parse(text)), f"{path} has no docstring"
    if text.count("\n") > LONG:
        assert LONG_NOTE in text, f"{path} is over {LONG} lines: say why ({LONG_NOTE} ...)"


def test_the_readme_module_map_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- module-map:start -->")[1].split("<!-- module-map:end -->")[0]
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines():
        match = re.match(r"^(\s*)(\S+)", line)
        if not match or match.group(2).startswith("```"):
            continue
        indent, name = len(match.group(1)), match.group(2)
        if name.endswith("/"):
            folder = "" if indent == 0 else name
            continue
        if name.endswith(".py"):
            listed.add(f"exporter/{folder if indent > 2 else ''}{name}")
    actual = {
        str(p.relative_to(ROOT)) for p in modules() if p.name not in ("__init__.py", "__main__.py")
    }
    assert listed == actual


def test_coding_md_names_only_paths_that_exist():
    text = (ROOT / "CODING.md").read_text()
    paths = set(re.findall(r"`((?:exporter|tests|README)[\w./-]*\.(?:py|md))`", text))
    paths |= {f"{p}/" for p in re.findall(r"`(exporter/\w+|tests/\w+(?:/\w+)?)/`", text)}
    assert paths, "CODING.md names no paths?"
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    assert missing == []


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith(("tests.test_", "tests.conftest")):
                offenders.append(f"{path.name}: {module}")
    assert offenders == []
