"""End to end: every dashboard query against a real exporter scraped by a real Prometheus.

`python -m exporter serve` tails copies of two real Caffe logs (tests/fixtures/real-caffe/lenet_healthy and
lenet_nan); `prometheus` scrapes it every second. Then

- every metric name any dashboard expression reads is exposed on the exporter's live /metrics
  (Prometheus' own series such as `up`, and recording rules from alerts/, excepted), and
- every panel target, annotation and variable query, with the template variables replaced by the real job,
  instance and run values, returns data from /api/v1/query_range over the time the test ran.

Process handling, bounded waits and the Prometheus client come from tests/e2e_util.py. Missing binaries fail
the tests (CI installs them); set CAFFE_EXPORTER_SKIP_E2E=1 to skip.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e_util import (
    E2E_MARKS,
    ManagedProcess,
    PrometheusAPI,
    free_port,
    http_get,
    require_binary,
    running,
    samples,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "real-caffe"
RUN_DIRS = ("lenet_healthy", "lenet_nan")
JOB = "caffe-exporter"
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# Queries reading only these are legitimately empty for the healthy run: its log holds no NaN/Inf and no
# anomaly condition ever held (the exporter creates caffe_anomaly series once a condition is evaluated true).
ANOMALY_ONLY_METRICS = {
    "caffe_first_nonfinite_iteration",
    "caffe_first_nonfinite_layer_iteration",
    "caffe_first_nonfinite_info",
    "caffe_nonfinite_values_total",
    "caffe_anomaly",
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


pytestmark = E2E_MARKS


# ------------------------------------------------------------------------------------- fixtures


def sample_names(exposition: str) -> set[str]:
    """Names of all samples in Prometheus text exposition."""
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0] for line in exposition.splitlines() if line and not line.startswith("#")
    }


@dataclass
class Exporter:
    url: str
    instance: str
    proc: ManagedProcess

    def metrics(self) -> str:
        return http_get(self.url + "/metrics")


@dataclass
class Prometheus:
    api: PrometheusAPI
    start: float

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api.query(expr)

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"})
        body = json.loads(http_get(f"{self.api.url}/api/v1/query_range?{params}", timeout=30))
        assert body["status"] == "success", body
        return list(body["data"]["result"])


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    tmp = tmp_path_factory.mktemp("dashboards-e2e")
    logs = tmp / "logs"
    for run in RUN_DIRS:
        (logs / run).mkdir(parents=True)
        shutil.copyfile(FIXTURES / run / "caffe.log", logs / run / "caffe.log")
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", str(logs)]
    with running("caffe-exporter", cmd, tmp / "exporter.log", cwd=ROOT) as proc:
        exp = Exporter(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", proc)
        seen: list[str] = []

        def settled() -> bool:
            """Both runs exported and the bytes-read counter unchanged over three polls (logs read)."""
            text = exp.metrics()
            runs = {labels["run"] for labels, _ in samples(text, "caffe_run_info")}
            seen.append(repr((sorted(runs), samples(text, "caffe_exporter_bytes_read_total"))))
            return len(runs) >= len(RUN_DIRS) and len(seen) >= 3 and len(set(seen[-3:])) == 1

        wait_until("the exporter to read both logs", settled, timeout=60, interval=0.5, procs=[proc])
        yield exp


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
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
    with running("prometheus", cmd, tmp / "prometheus.log") as proc:
        api = PrometheusAPI(f"http://127.0.0.1:{port}", procs=[proc, exporter.proc])
        api.wait_ready(timeout=30)
        # Bounded wait for enough scrapes that rate()/increase() over 1m have several samples.
        api.wait_for_query(f'sum_over_time(up{{job="{JOB}"}}[5m]) >= 5', timeout=60)
        yield Prometheus(api, start)


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
    exposed = sample_names(exporter.metrics())
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
                if ctx == "healthy" and gen.metric_names(expr) <= ANOMALY_ONLY_METRICS:
                    continue
                out.append(pytest.param(name, where, ctx, id=f"{name.removesuffix('.json')}::{where}::{ctx}"))
    return out


@pytest.mark.parametrize(("name", "where", "ctx"), cases())
def test_every_query_returns_data(name: str, where: str, ctx: str, prometheus: Prometheus, exporter: Exporter) -> None:
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
