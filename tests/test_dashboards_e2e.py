"""End to end: every dashboard query against a real exporter scraped by a real Prometheus.

`python -m exporter serve` tails copies of two real Caffe logs (tests/fixtures/real-caffe/lenet_healthy and
lenet_nan); `prometheus` scrapes it every second. Then

- every metric name any dashboard expression reads is exposed on the exporter's live /metrics
  (Prometheus' own series such as `up`, and recording rules from alerts/, excepted), and
- every panel target, annotation and variable query, with the template variables replaced by the real job,
  instance and run values, returns data from /api/v1/query_range over the time the test ran.

Missing binaries fail the tests (CI installs them); set CAFFE_EXPORTER_SKIP_E2E=1 to skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "real-caffe"
RUN_DIRS = ("lenet_healthy", "lenet_nan")
JOB = "caffe-exporter"
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# Queries about non-finite values: legitimately empty for the healthy run.
NONFINITE_METRICS = {
    "caffe_first_nonfinite_iteration",
    "caffe_first_nonfinite_info",
    "caffe_nonfinite_values_total",
}


def load_generator() -> Any:
    """grafana/generate.py (not a package) holds the query helpers the structure tests use as well."""
    spec = importlib.util.spec_from_file_location("grafana_generate", ROOT / "grafana" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()
DASHBOARDS = sorted(gen.DASHBOARDS)
PROMETHEUS_INTERNAL = {"up", "scrape_samples_scraped", "scrape_duration_seconds"}


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "grafana" / "dashboards" / name).read_text(encoding="utf-8")))


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CAFFE_EXPORTER_SKIP_E2E") == "1", reason="CAFFE_EXPORTER_SKIP_E2E=1"),
]


# ------------------------------------------------------------------------------------- process helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8"))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- last {n} lines of {self.name} output ({self.log}) ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@contextlib.contextmanager
def started(name: str, cmd: list[str], log: Path) -> Iterator[Proc]:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    proc = Proc(name, popen, log)
    try:
        yield proc
    finally:
        proc.stop()


def wait_for(what: str, check: Callable[[], Any], proc: Proc, timeout: float, interval: float = 0.5) -> Any:
    """Poll check() until it returns a truthy value; fail with the process output on timeout or exit."""
    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}\n{proc.tail()}"
            )
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})\n{proc.tail()}"
    )


def sample_names(exposition: str) -> dict[str, list[str]]:
    """metric name -> sample lines, from Prometheus text exposition."""
    out: dict[str, list[str]] = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            out.setdefault(re.split(r"[{\s]", line, maxsplit=1)[0], []).append(line)
    return out


# ------------------------------------------------------------------------------------- fixtures


@dataclass
class Exporter:
    url: str
    instance: str
    proc: Proc

    def metrics(self) -> str:
        return http_get(self.url + "/metrics")


@dataclass
class Prometheus:
    url: str
    start: float
    proc: Proc

    def api(self, path: str, **params: str) -> Any:
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        return list(
            self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")["result"]
        )


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    tmp = tmp_path_factory.mktemp("dashboards-e2e")
    logs = tmp / "logs"
    for run in RUN_DIRS:
        (logs / run).mkdir(parents=True)
        shutil.copyfile(FIXTURES / run / "caffe.log", logs / run / "caffe.log")
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", str(logs)]
    with started("caffe-exporter", cmd, tmp / "exporter.log") as proc:
        exp = Exporter(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", proc)
        seen: list[str] = []

        def settled() -> bool:
            """Both runs exported and the bytes-read counter unchanged over three polls (logs read)."""
            samples = sample_names(exp.metrics())
            runs = {
                m.group(1)
                for line in samples.get("caffe_run_info", [])
                if (m := re.search(r'run="([^"]*)"', line))
            }
            seen.append(repr((sorted(runs), samples.get("caffe_exporter_bytes_read_total"))))
            return len(runs) >= len(RUN_DIRS) and len(seen) >= 3 and len(set(seen[-3:])) == 1

        wait_for("the exporter to read both logs", settled, proc, timeout=60)
        yield exp


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("prometheus not found on PATH: install the Debian package 'prometheus'")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [exporter.instance]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [
        binary,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    start = time.time()
    with started("prometheus", cmd, tmp / "prometheus.log") as proc:
        prom = Prometheus(f"http://127.0.0.1:{port}", start, proc)
        wait_for(
            "prometheus to be ready", lambda: "Ready" in http_get(prom.url + "/-/ready"), proc, timeout=30
        )
        # Bounded wait for enough scrapes that rate()/increase() over 1m have several samples.
        wait_for(
            "5 successful scrapes of the exporter",
            lambda: prom.query(f'sum_over_time(up{{job="{JOB}"}}[5m]) >= 5'),
            proc,
            timeout=60,
        )
        yield prom


# ------------------------------------------------------------------------------------- variable values


def regex_escape(value: str) -> str:
    """Grafana's escaping of multi-value variables for Prometheus regex matchers (inside a PromQL string)."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def values_for(dash: dict[str, Any], prom: Prometheus, exporter: Exporter, run: str | None) -> dict[str, str]:
    """Concrete values for every variable, formatted as Grafana would; `run` picks one run (None = all)."""
    runs = sorted({r["metric"]["run"] for r in prom.query(f'caffe_run_info{{job="{JOB}"}}')})
    chosen = {"job": [JOB], "instance": [exporter.instance], "run": [run] if run else runs}
    outputs = sorted({r["metric"]["output"] for r in prom.query(f'caffe_test_output{{job="{JOB}"}}')})
    chosen["test_output"] = ["accuracy" if "accuracy" in outputs else outputs[0]] if outputs else ["accuracy"]
    out = dict(BUILTINS)
    for name, var in variables(dash).items():
        if var["type"] == "custom":
            out[name] = var["current"]["value"]
        elif name in chosen:
            vals = chosen[name]
            if var.get("multi") or var.get("includeAll"):
                escaped = [regex_escape(v) for v in vals]
                out[name] = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
            else:
                out[name] = vals[0]
    return out


def nan_run(prom: Prometheus) -> str:
    """The run read from lenet_nan/caffe.log (by the `source` label of caffe_run_info)."""
    for r in prom.query(f'caffe_run_info{{job="{JOB}"}}'):
        if "lenet_nan" in r["metric"].get("source", "") or "lenet_nan" in r["metric"]["run"]:
            return str(r["metric"]["run"])
    raise AssertionError("no run from lenet_nan/caffe.log in caffe_run_info")


def healthy_run(prom: Prometheus) -> str:
    for r in prom.query(f'caffe_run_info{{job="{JOB}"}}'):
        if "lenet_healthy" in r["metric"].get("source", "") or "lenet_healthy" in r["metric"]["run"]:
            return str(r["metric"]["run"])
    raise AssertionError("no run from lenet_healthy/caffe.log in caffe_run_info")


# ------------------------------------------------------------------------------------- tests


def recording_rules() -> set[str]:
    path = ROOT / "alerts" / "caffe-exporter.rules.yml"
    if not path.exists():
        return set()
    doc = yaml.safe_load(path.read_text()) or {}
    return {r["record"] for g in doc.get("groups", []) for r in g.get("rules", []) if "record" in r}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_metric_is_exposed_by_the_running_exporter(name: str, exporter: Exporter) -> None:
    exposed = set(sample_names(exporter.metrics()))
    allowed = exposed | PROMETHEUS_INTERNAL | recording_rules()
    missing = {}
    for where, expr in gen.iter_queries(load(name)):
        if unknown := gen.metric_names(expr) - allowed:
            missing[where] = sorted(unknown)
    assert not missing, f"metrics not on the live /metrics of the exporter: {json.dumps(missing, indent=1)}"


def cases() -> list[Any]:
    """(dashboard, where, run context): the run detail is checked for the NaN run and for the healthy run."""
    out = []
    for name in DASHBOARDS:
        contexts = ["nan", "healthy"] if name == "caffe-run-detail.json" else ["all"]
        for where, expr in gen.iter_queries(load(name)):
            for ctx in contexts:
                if ctx == "healthy" and (
                    gen.metric_names(expr) & NONFINITE_METRICS or where.startswith("annot")
                ):
                    continue
                out.append(pytest.param(name, where, ctx, id=f"{name.removesuffix('.json')}::{where}::{ctx}"))
    return out


@pytest.mark.parametrize(("name", "where", "ctx"), cases())
def test_every_query_returns_data(
    name: str, where: str, ctx: str, prometheus: Prometheus, exporter: Exporter
) -> None:
    dash = load(name)
    expr = dict(gen.iter_queries(dash))[where]
    run = {"all": None, "nan": nan_run, "healthy": healthy_run}[ctx]
    values = values_for(dash, prometheus, exporter, run(prometheus) if run else None)
    concrete = gen.substitute(expr, values)
    end = time.time()
    result = prometheus.query_range(concrete, prometheus.start - 5, end)
    points = sum(len(series["values"]) for series in result)
    assert points > 0, (
        f"{name} {where} returned no data over the last {end - prometheus.start:.0f}s\n"
        f"query: {concrete}\nmetrics read: {sorted(gen.metric_names(expr))}"
    )
