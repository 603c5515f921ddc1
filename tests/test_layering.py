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
    "tail": {"events", "tail.discover", "tail.follow", "tail.lines", "tail.resume", "tail.stats", "tail.tailer"},
    "tail.stats": set(),
    "tail.lines": {"events", "tail.stats"},
    "tail.discover": set(),
    "tail.resume": {"events"},
    "tail.files": {"events", "tail.lines", "tail.resume", "tail.stats"},
    "tail.tailer": {"events", "tail.discover", "tail.files", "tail.resume", "tail.stats"},
    "tail.follow": {"events"},
    "identity": set(),
    "parse": {"events"},
    "state": {"events", "parse", "_scan"},  # _scan: the optional C accelerator of its hot loop
    "detect": {"parse", "state"},
    "errors": set(),  # used by the wiring stages (pipeline, cli) only
    "pipeline": {"errors", "events", "state", "tail"},
    "collectors": set(),
    "collectors.runs": {"state"},
    "collectors.http": set(),
    "collectors.anomalies": {"detect", "state"},
    "collectors.selfmetrics": {"exporter", "pipeline"},
    "collectors.scrape": {"collectors.runs", "collectors.anomalies", "collectors.selfmetrics", "pipeline"},
    "serve": {"exporter"},
    "config": {"detect", "identity", "lifecycle", "state"},
    "lifecycle": {"state"},
    "diagnose": {"detect", "events", "identity", "state", "tail"},
    "demo": {"config", "identity"},
    "checkpoint": {"detect", "events", "state"},
}


def _module_name(path: Path) -> str:
    """``tail/files.py`` is ``tail.files``; a package's ``__init__.py`` is the package (``tail``)."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


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


# A subpackage's __init__ re-exports its modules and is checked like one; the package root's is not.
MODULES = sorted(p for p in PACKAGE.rglob("*.py")
                 if p.name != "__main__.py" and p != PACKAGE / "__init__.py")


def test_the_tail_package_imports_only_the_shared_records() -> None:
    """The tailer is the first stage: besides its own modules, it needs only ``exporter.events``."""
    outside = {m for p in (PACKAGE / "tail").glob("*.py") for m in _imports(p) if not m.startswith("tail")}
    assert outside == {"events"}


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
