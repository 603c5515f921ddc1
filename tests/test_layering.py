"""Imports go one way through the pipeline: tail -> parse -> state -> detectors -> collectors -> serve; cli wires.

Read from the modules' ASTs (absolute and relative imports alike), so a new import that breaks the layering
fails here, not in review. A module inside a package (exporter/state/run.py = `state.run`) may import what its
package's entry allows plus its siblings, unless it has an entry of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "exporter"
# every other module of exporter/detectors is one detector: it may not import another detector
DETECTOR_MODULES = {f"detectors.{p.stem}" for p in (PACKAGE / "detectors").glob("*.py")
                    if p.stem not in ("__init__", "base", "history", "schema", "tracker")}

# module or package -> the exporter modules/packages it may import (importing a package allows its modules; the
# package root `exporter` only gives __version__)
ALLOWED: dict[str, set[str]] = {
    "events": set(),
    "tail": {"events", "tail.discover", "tail.follow", "tail.lines", "tail.resume", "tail.stats", "tail.tailer"},
    "tail.stats": set(),
    "tail.lines": {"events", "tail.stats"},
    "tail.discover": set(),
    "tail.resume": {"events"},
    "tail.files": {"events", "tail.lines", "tail.resume", "tail.stats"},
    "tail.tailer": {"events", "tail.discover", "tail.files", "tail.resume", "tail.stats"},
    "tail.follow": {"events", "tail.inotify"},
    "tail.inotify": set(),
    "identity": set(),
    "parse": {"events"},
    "state": {"events", "parse"},
    "scan": {"parse", "_scan"},  # _scan: the optional C accelerator of the fast path
    "codec": set(),
    # the run state package: its modules import each other ("state": `from exporter.state import feed`),
    # earlier stages (events, parse, scan) and the codec; nothing later
    "state.clock": {"events"},
    "state.records": {"events", "state.clock", "state.run"},
    "state.limits": {"parse", "state.records", "state.run"},
    "state.feed": {"events", "parse", "scan", "state", "state.clock", "state.records", "state.run"},
    "state.run": {"codec", "events", "parse", "scan", "state", "state.clock", "state.limits", "state.records"},
    "state.runs": {"events", "parse", "scan", "state.limits", "state.records", "state.run"},
    # the detectors: one module each (below), sharing only base/history/schema; the package lists them
    "detectors": {"detectors.base", "detectors.history", "detectors.schema", "detectors.tracker", "state",
                  *DETECTOR_MODULES},
    "detectors.schema": set(),
    "detectors.history": {"state"},
    "detectors.base": {"detectors.history", "detectors.schema", "jsonvalue", "parse", "state"},
    "detectors.tracker": {"detectors.base"},
    **{m: {"detectors.base", "detectors.history", "detectors.schema", "events", "parse", "state"}
       for m in DETECTOR_MODULES},
    "errors": set(),  # used by the wiring stages (pipeline, daemon) only
    "pipeline": {"errors", "events", "state", "tail"},
    "shard": set(),  # pure: which shard owns a run name
    "collectors": set(),
    "collectors.family": set(),  # a family declared once: name, type, HELP, labels
    "collectors.runs": {"collectors.family", "state"},
    "collectors.http": {"collectors.family"},
    "collectors.anomalies": {"detectors", "state"},
    "collectors.selfmetrics": {"collectors.family", "exporter", "pipeline"},
    "collectors.scrape": {"collectors.runs", "collectors.anomalies", "collectors.selfmetrics", "pipeline"},
    "http1": set(),  # the protocol, pure
    "httpserver": {"http1"},
    "serve": {"exporter", "http1", "httpserver"},
    "config": {"detectors", "identity", "lifecycle", "shard", "state"},
    "lifecycle": {"state"},
    "jsonvalue": set(),
    "diagnose": {"config", "detectors", "events", "identity", "jsonvalue", "state", "tail"},
    "demo": {"config", "identity"},
    "checkpoint": {"detectors", "events", "state"},
}
WIRING = {"cli", "daemon"}  # the modules that wire every stage together


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    """``tail/files.py`` is ``tail.files``; a package's ``__init__.py`` is the package (``tail``)."""
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_module(dotted: str, root: Path) -> bool:
    target = root.joinpath(*dotted.split("."))
    return target.is_dir() or any(target.with_name(target.name + ext).exists() for ext in (".py", ".pyi"))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The dotted name below `exporter` an ImportFrom refers to ("" = the package root); None: not exporter."""
    if node.level == 0:
        name = node.module or ""
        if name != "exporter" and not name.startswith("exporter."):
            return None
        return name.removeprefix("exporter").lstrip(".")
    base = module.split(".") if is_package else module.split(".")[:-1]
    up = node.level - 1
    if up > len(base):
        raise AssertionError(f"{module}: relative import beyond the exporter package")
    base = base[: len(base) - up]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(source: str, module: str, root: Path = PACKAGE, is_package: bool = False) -> set[str]:
    """The exporter modules (dotted, below `exporter`) that `module`'s source imports; "exporter" = the root."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            name = _absolute(node, module, is_package)
            if name is None:
                continue
            for alias in node.names:  # `from exporter.x import y`: y may be a module of the package x
                sub = f"{name}.{alias.name}" if name else alias.name
                found.add(sub if _is_module(sub, root) else (name or "exporter"))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("exporter.") for a in node.names if a.name.startswith("exporter.")}
    return found


def allowed_for(module: str) -> set[str] | None:
    """What `module` may import: its own entry, else its package's entry plus its siblings; None: no entry."""
    if module in ALLOWED:
        return ALLOWED[module] | {module}  # a package's __init__ imports its own modules
    package = module.rpartition(".")[0]
    if package in ALLOWED:
        return ALLOWED[package] | {package}
    return None


def permitted(imported: str, allowed: set[str]) -> bool:
    """Importing `a.b.c` is permitted by `a.b.c`, `a.b` or `a` in `allowed` (a package allows its modules)."""
    parts = imported.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def violations(source: str, module: str, root: Path = PACKAGE, is_package: bool = False) -> list[str]:
    allowed = allowed_for(module)
    assert allowed is not None, f"{module}: new module, add its place in the pipeline to ALLOWED"
    imported = _imports(source, module, root, is_package)
    return sorted(i for i in imported if not permitted(i, allowed))


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name not in ("__init__.py",
                                                                                            "__main__.py"))


def test_the_tail_package_imports_only_the_shared_records() -> None:
    """The tailer is the first stage: besides its own modules, it needs only ``exporter.events``."""
    outside = {m for p in (PACKAGE / "tail").glob("*.py")
               for m in _imports(p.read_text(), _module_name(p), PACKAGE, p.name == "__init__.py")
               if not m.startswith("tail")}
    assert outside == {"events"}


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_module_imports_only_earlier_stages(path: Path) -> None:
    name = _module_name(path)
    if name in WIRING:
        return
    bad = violations(path.read_text(), name, is_package=path.name == "__init__.py")
    assert not bad, f"{name} imports {bad}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "exporter"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_relative_imports_resolve_to_the_modules_they_name(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"state/__init__.py": "", "state/run.py": "", "state/feed.py": "", "parse.py": ""})
    source = "from .run import RunState\nfrom . import feed\nfrom ..parse import scan\nfrom .. import __version__\n"
    assert _imports(source, "state.clock", root) == {"state.run", "state.feed", "parse", "exporter"}


def test_a_package_init_resolves_relative_imports_inside_itself(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"detectors/__init__.py": "", "detectors/spike.py": ""})
    assert _imports("from .spike import LossSpike\nfrom . import spike\n", "detectors", root,
                    is_package=True) == {"detectors.spike"}


def test_an_upward_relative_import_is_a_violation(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"tail/__init__.py": "", "tail/files.py": "", "state/__init__.py": ""})
    assert violations("from ..state import RunRegistry\n", "tail.files", root) == ["state"]
    assert violations("from exporter.state import RunRegistry\n", "tail.files", root) == ["state"]


def test_a_package_module_may_import_its_siblings_and_what_its_package_may(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"state/__init__.py": "", "state/run.py": "", "state/feed.py": "", "events.py": "",
                            "parse.py": ""})
    source = "from .run import RunState\nfrom exporter.parse import x\nfrom ..events import Chunk\n"
    assert violations(source, "state.feed", root) == []


def test_parse_is_pure() -> None:
    """No files, clock or logging in the parser: it is tested with literal strings."""
    tree = ast.parse((PACKAGE / "parse.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "open" not in names
    assert not modules & {"time", "logging", "os", "io"}


def _logger_names(path: Path) -> list[ast.expr]:
    return [call.args[0] if call.args else call for call in ast.walk(ast.parse(path.read_text()))
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "getLogger"]


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_every_module_logs_under_the_one_caffe_exporter_namespace(path: Path) -> None:
    """cli sets --log-level on the `caffe_exporter` logger alone; a module logging elsewhere escapes it."""
    for arg in _logger_names(path):
        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), f"{path.name}: a logger named at run time"
        if path.name == "cli.py" and arg.value == "caffe_exporter":
            continue  # the root that --log-level sets
        assert arg.value.startswith("caffe_exporter."), f"{path.name}: logger {arg.value!r}"
