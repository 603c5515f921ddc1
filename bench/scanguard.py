"""Which exporter build a benchmark measures, and which scan path (the C scanner or pure Python) ran.

A benchmark that silently measures the wrong build is worse than none: after `pip install .` the compiled
scanner lives in site-packages, and a checkout put first on PYTHONPATH without it runs the pure-Python
loop at ~0.55x the speed. So every bench script asks for a scan path (`--scan c|pure`, default c) and a
build (`--build installed|inplace`), and fails with a clear message when what ran is not what was asked:

* parent side: `prepare()` makes the build (`installed`: the checkout copied and `pip install`ed into a
  fresh venv, as users install it; `inplace`: a copy of `exporter/` as it is, in-place-built scanner
  included) and says how to start a child that imports it (`Target`); `check()` reads the child's report.
* child side: `select()` runs before anything is fed: it forces the pure path when asked for (as a build
  without a C compiler has it) and otherwise counts the C scanner's calls, so the report says what ran,
  not merely what was importable.

The scanner switch is found where the exporter keeps it (`exporter.scan.C_SCANNER`); nothing in exporter/ is
changed for the benchmark.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

SCAN_PATHS = ("c", "pure")
BUILDS = ("installed", "inplace")
LABEL = {"c": "C scanner (exporter/_scan.c)", "pure": "pure Python (no C scanner)"}
# where the run state looks the C scanner up, newest layout first: (module, attribute)
SWITCHES = (("exporter.scan", "C_SCANNER"),)
PACKAGE_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in")


# --------------------------------------------------------------------------------------------------
# parent: the build under test
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """How to start a child process that imports the build under test, and where it must come from."""

    build: str
    python: str
    package_dir: str  # the exporter/ directory the child must import
    env: dict[str, str] = field(default_factory=dict)


def _clean_env(extra_path: str | None) -> dict[str, str]:
    """The environment without PYTHONPATH entries holding an `exporter` package (they would shadow the build)."""
    env = dict(os.environ)
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and not os.path.isdir(os.path.join(p, "exporter"))]
    if extra_path:
        kept.insert(0, extra_path)
    env.pop("PYTHONPATH", None)
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def _copy_package(src_root: str, dest: str, *, compiled: bool) -> None:
    ignore = ["__pycache__", "*.pyc"] + ([] if compiled else ["*.so", "*.pyd"])
    shutil.copytree(os.path.join(src_root, "exporter"), os.path.join(dest, "exporter"),
                    ignore=shutil.ignore_patterns(*ignore))


def installed(src_root: str, workdir: str, timeout: float = 600) -> Target:
    """`pip install .` of a copy of the checkout into a fresh venv (system site-packages visible for the
    dependencies; --no-build-isolation --no-index: the installed setuptools builds it, offline). The C scanner
    is compiled as for a user; where that fails (no compiler) the install goes on without it, as for a user."""
    src = os.path.join(workdir, "pkg-src")
    venv = os.path.join(workdir, "venv")
    os.makedirs(src)
    for name in PACKAGE_FILES:
        if os.path.isfile(os.path.join(src_root, name)):
            shutil.copy2(os.path.join(src_root, name), src)
    _copy_package(src_root, src, compiled=False)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True,
                   timeout=timeout)
    python = os.path.join(venv, "bin", "python")
    env = _clean_env(None)
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", src],
                       capture_output=True, text=True, timeout=timeout, cwd=workdir,
                       env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if r.returncode != 0:
        raise SystemExit(f"bench: pip install of {src_root} into {venv} failed:\n{r.stdout}{r.stderr}")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir).stdout.strip()
    return Target("installed", python, os.path.join(site, "exporter"), env)


def inplace(src_root: str, workdir: str) -> Target:
    """A copy of the checkout's exporter/ as it is (with the scanner only if it was built in place), first on
    PYTHONPATH; copied so that every repetition measures the same code while others edit the checkout."""
    src = os.path.join(workdir, "src")
    _copy_package(src_root, src, compiled=True)
    return Target("inplace", sys.executable, os.path.join(src, "exporter"), _clean_env(src))


def prepare(build: str, src_root: str, workdir: str, timeout: float = 600) -> Target:
    if build == "installed":
        return installed(src_root, workdir, timeout)
    if build == "inplace":
        return inplace(src_root, workdir)
    raise SystemExit(f"bench: --build {build}: expected one of {', '.join(BUILDS)}")


def check(report: Mapping[str, Any], scan: str, target: Target, *, scanned: bool = True) -> str | None:
    """Why the child's measurement is not the one asked for (None when it is). `scanned`: the input has
    lines the C scanner reads (a debug_info log), so with `c` it must have been called, not only loaded."""
    got = os.path.realpath(str(report.get("exporter_dir")))
    if got != os.path.realpath(target.package_dir):
        return (f"bench: the child imported exporter from {got}, not from the {target.build} build under test "
                f"({target.package_dir}): something on sys.path shadows it")
    ran, loaded = report.get("scan_path"), report.get("scan_module")
    if scan == "c" and loaded is None:
        return (f"bench: --scan c asked, but the C scanner is not loaded in the {target.build} build "
                f"({target.package_dir}): {report.get('scan_error') or 'unknown reason'}. Build it (a C compiler "
                f"for `pip install .`, or `python3 setup.py build_ext --inplace` for --build inplace), "
                f"or measure the fallback with --scan pure")
    if ran != scan and (scanned or scan == "pure"):
        return (f"bench: --scan {scan} asked, but the {LABEL.get(str(ran), ran)} path ran "
                f"({report.get('scan_calls', 0)} calls of the C scanner): the measurement is not the one asked for")
    return None


# --------------------------------------------------------------------------------------------------
# child: force or count the scan path
# --------------------------------------------------------------------------------------------------


class _Counting:
    """The C scanner module, counting calls of `scan` (one Python call per scanned stretch: negligible)."""

    def __init__(self, inner: ModuleType) -> None:
        self.inner = inner
        self.calls = 0

    def scan(self, *args: Any) -> Any:
        self.calls += 1
        return self.inner.scan(*args)


@dataclass
class Probe:
    module: ModuleType
    attr: str
    loaded: ModuleType | None
    error: str | None
    counting: _Counting | None

    def report(self) -> dict[str, Any]:
        import exporter

        calls = self.counting.calls if self.counting is not None else 0
        return {"exporter_dir": os.path.dirname(os.path.realpath(exporter.__file__)),
                "scan_module": getattr(self.loaded, "__file__", None) if self.loaded is not None else None,
                "scan_error": self.error, "scan_calls": calls, "scan_path": "c" if calls else "pure"}


def _switch() -> tuple[ModuleType, str]:
    for name, attr in SWITCHES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, attr):
            return module, attr
    raise SystemExit("bench: cannot find the exporter's C scanner switch (" + ", ".join(
        f"{m}.{a}" for m, a in SWITCHES) + "): update bench/scanguard.py SWITCHES")


def _import_error() -> str:
    try:
        importlib.import_module("exporter._scan")
    except ImportError as e:
        return f"import exporter._scan: {e}"
    return "exporter._scan imports but the exporter refused it (a stale build?)"


def select(scan: str) -> Probe:
    """Call before the exporter reads anything: `pure` switches the C scanner off, `c` counts its calls."""
    if scan not in SCAN_PATHS:
        raise SystemExit(f"bench: --scan {scan}: expected one of {', '.join(SCAN_PATHS)}")
    module, attr = _switch()
    loaded: ModuleType | None = getattr(module, attr)
    error = None if loaded is not None else _import_error()
    counting = None
    if scan == "pure":
        setattr(module, attr, None)
    elif loaded is not None:
        counting = _Counting(loaded)
        setattr(module, attr, counting)
    return Probe(module, attr, loaded, error, counting)
