"""Imports go one way through the pipeline: tail -> parse -> state -> detect -> collectors -> serve; cli wires.

Read from the modules' ASTs, so a new import that breaks the layering fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "exporter"

# module -> the exporter modules it may import (the package root only gives __version__)
ALLOWED: dict[str, set[str]] = {
    "events": set(),
    "tail": set(),
    "identity": set(),
    "parse": {"events"},
    "scan": {"parse", "_scan"},  # _scan: the optional C accelerator of the fast path
    "codec": set(),
    # the run state package: its modules import each other ("state": `from exporter.state import feed`),
    # earlier stages (events, parse, scan, tail for Chunk) and the codec; nothing later
    "state.clock": {"events"},
    "state.records": {"events", "state.clock", "state.run"},
    "state.limits": {"parse", "state.records", "state.run"},
    "state.feed": {"parse", "scan", "state", "state.clock", "state.records", "state.run", "tail"},
    "state.run": {"codec", "events", "parse", "scan", "state", "state.clock", "state.limits", "state.records",
                  "tail"},
    "state.runs": {"events", "parse", "scan", "state.limits", "state.records", "state.run", "tail"},
    "detect": {"parse", "state"},
    "errors": set(),  # used by the wiring stages (pipeline, cli) only
    "pipeline": {"errors", "state", "tail"},
    "collectors.runs": {"state"},
    "collectors.http": set(),
    "collectors.anomalies": {"detect", "state"},
    "collectors.selfmetrics": {"exporter", "pipeline"},
    "collectors.scrape": {"collectors.runs", "collectors.anomalies", "collectors.selfmetrics", "pipeline"},
    "serve": {"exporter"},
    "config": {"detect", "identity", "lifecycle", "state"},
    "lifecycle": {"state"},
    "diagnose": {"detect", "identity", "state", "tail"},
    "demo": {"config", "identity"},
    "checkpoint": {"detect", "state", "tail"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
            name = node.module.removeprefix("exporter").lstrip(".")
            if name:
                found.add(name)
            else:  # `from exporter import x`: x is a module, or an attribute of the package root
                for alias in node.names:
                    is_module = any((PACKAGE / f"{alias.name}{ext}").exists() for ext in (".py", ".pyi"))
                    found.add(alias.name if is_module else "exporter")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("exporter.") for a in node.names if a.name.startswith("exporter.")}
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_module_imports_only_earlier_stages(path: Path) -> None:
    name = _module_name(path)
    if name == "cli":
        return  # the one module that wires every stage together
    assert name in ALLOWED, f"{name}: new module, add its place in the pipeline to ALLOWED"
    assert _imports(path) <= ALLOWED[name], f"{name} imports {sorted(_imports(path) - ALLOWED[name])}"


def test_parse_is_pure() -> None:
    """No files, clock or logging in the parser: it is tested with literal strings."""
    tree = ast.parse((PACKAGE / "parse.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "open" not in names
    assert not modules & {"time", "logging", "os", "io"}
