"""Structure of the Grafana dashboards, generator in sync, and every PromQL expression checked by promtool.

The live checks (metric names against a running exporter's /metrics, every panel returning data from a real
Prometheus) are in tests/test_dashboards_e2e.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASH_DIR = GRAFANA / "dashboards"
UIDS = {
    "caffe-runs-overview.json": "caffe-runs-overview",
    "caffe-run-detail.json": "caffe-run-detail",
    "caffe-exporter-health.json": "caffe-exporter-health",
}
MIN_SCHEMA_VERSION = 39  # Grafana 11.0; the generator writes 41 (Grafana 12)
TAGS = {"caffe", "caffe-exporter"}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# Concrete values for the template variables and Grafana's built-ins, for promtool.
SAMPLE_VALUES = {
    "job": "caffe-exporter",
    "instance": "127.0.0.1:10052",
    "run": "lenet_healthy|lenet_nan",
    "test_output": "accuracy",
    "stall": "900",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("grafana_generate", module)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DASH_DIR / name).read_text(encoding="utf-8"))
    return doc


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def walk(node: Any, path: str = "") -> Any:
    """Yield (path, key, value) for every dict entry of a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


DASHBOARDS = sorted(UIDS)


def test_exactly_the_expected_dashboards_are_committed() -> None:
    assert sorted(p.name for p in DASH_DIR.glob("*.json")) == DASHBOARDS


@pytest.mark.parametrize("name", DASHBOARDS)
def test_committed_json_equals_generator_output(name: str) -> None:
    committed = (DASH_DIR / name).read_text(encoding="utf-8")
    assert committed == gen.render(gen.DASHBOARDS[name]), f"{name} is stale: run python grafana/generate.py"


def test_generator_check_mode_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_conventions(name: str) -> None:
    dash = load(name)
    assert dash["uid"] == UIDS[name]
    assert dash["title"] and dash["description"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert set(dash["tags"]) >= TAGS
    assert "__inputs" not in dash and "__requires" not in dash
    assert dash.get("id") is None, "a provisioned dashboard must not carry a database id"
    text = json.dumps(dash)
    assert "${DS_" not in text, "import-only ${DS_...} placeholders do not work with provisioning"
    # Every datasource reference is the variable (no hard-coded uid anywhere in the tree).
    refs = [(path, value) for path, key, value in walk(dash) if key == "datasource"]
    assert refs
    for path, value in refs:
        assert value == DS_REF, f"{path}: datasource {value!r}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_template_variables(name: str) -> None:
    dash = load(name)
    vs = variables(dash)
    ds = vs["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    order = [v["name"] for v in dash["templating"]["list"]]
    assert order[:3] == ["datasource", "job", "instance"], "variables must be chained datasource -> job -> instance"
    for v in vs.values():
        if v["type"] == "query":
            assert v["datasource"] == DS_REF
            assert v["query"].startswith("label_values(") and v["definition"] == v["query"]
            assert v["refresh"] == 2, f"{v['name']} must refresh on time range change"
    assert vs["instance"]["multi"] and vs["instance"]["includeAll"]
    assert "$job" in vs["instance"]["query"]
    run = vs["run"]
    assert run["query"] == 'label_values(caffe_run_info{job=~"$job", instance=~"$instance"}, run)'
    # One run at a time in the detail view (per-layer heatmaps), several elsewhere.
    assert run["multi"] is (name != "caffe-run-detail.json")
    # Every variable an expression uses is defined (or a Grafana built-in).
    for where, expr in gen.iter_queries(dash):
        for m in gen.VAR_RE.finditer(expr):
            var = m.group(1) or m.group(2)
            assert var in vs or var.startswith("__"), f"{where}: undefined variable ${var}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_ids_grid_descriptions(name: str) -> None:
    panels = load(name)["panels"]
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0 and g["w"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        assert p["type"] in {"timeseries", "stat", "table", "heatmap", "bargauge", "state-timeline"}
        assert len(p["description"]) >= 40, f"{p['title']!r} needs a description of what the value means"
        assert p["datasource"] == DS_REF
        assert p["targets"], p["title"]
        assert "unit" in p["fieldConfig"]["defaults"], f"{p['title']!r} has no unit"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS_REF and t["expr"].strip()
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique"


def test_per_layer_panels_say_mean_absolute_value() -> None:
    for name in DASHBOARDS:
        for p in load(name)["panels"]:
            if any("caffe_layer_" in t["expr"] and "abs_mean" in t["expr"] for t in p["targets"]):
                assert "mean absolute value" in p["description"], p["title"]
                assert "not an L2 norm" in p["description"], p["title"]


def test_run_detail_layer_views_are_in_forward_order_on_log_scale() -> None:
    panels = {p["title"]: p for p in load("caffe-run-detail.json")["panels"]}
    heatmaps = [p for p in panels.values() if p["type"] == "heatmap"]
    metrics = {m for p in heatmaps for t in p["targets"] for m in gen.metric_names(t["expr"])}
    assert {
        "caffe_layer_top_data_abs_mean",
        "caffe_layer_bottom_diff_abs_mean",
        "caffe_layer_param_diff_abs_mean",
        "caffe_layer_param_data_abs_mean",
    } <= metrics
    for p in heatmaps:
        expr = p["targets"][0]["expr"]
        assert "group_left (index)" in expr and "caffe_layer_info" in expr, p["title"]
        assert re.search(r'label_join\(.*"display", " ", "index", "layer"', expr, re.S), p["title"]
        assert "max by (display)" in expr and "log10(" in expr, p["title"]
        assert p["targets"][0]["legendFormat"] == "{{display}}"
        assert p["options"]["calculate"] is False
        # log10 values are mostly negative: Grafana's default filter (hide <= 1e-9) would hide them all.
        assert p["options"]["filterValues"]["le"] < -30
    origin = panels["First non-finite origin"]
    assert origin["type"] == "stat" and "caffe_first_nonfinite_info" in origin["targets"][0]["expr"]
    assert "caffe_first_nonfinite_layer_iteration" in origin["targets"][0]["expr"]
    assert "{{layer}}" in origin["targets"][0]["legendFormat"]
    assert origin["options"]["textMode"] == "value_and_name"
    assert panels["First non-finite iteration"]["type"] == "stat"
    ann = [a for a in load("caffe-run-detail.json")["annotations"]["list"] if "expr" in a]
    assert ann and "caffe_anomaly" in ann[0]["expr"] and ann[0]["datasource"] == DS_REF


def test_overview_runs_table_links_into_run_detail() -> None:
    panels = {p["title"]: p for p in load("caffe-runs-overview.json")["panels"]}
    table = panels["All runs"]
    assert all(t["instant"] and t["format"] == "table" for t in table["targets"])
    links = [
        v
        for o in table["fieldConfig"]["overrides"]
        if o["matcher"]["options"] == "run"
        for prop in o["properties"]
        if prop["id"] == "links"
        for v in prop["value"]
    ]
    assert links and all(
        "/d/caffe-run-detail/" in lk["url"] and "var-run=${__data.fields.run}" in lk["url"] for lk in links
    )
    state = table["targets"][0]["expr"]
    for needle in ("caffe_run_finished", "caffe_anomaly", "exploding", "$stall", "caffe_iteration"):
        assert needle in state
    for p in ("Training loss across runs", "Test outputs across runs"):
        custom = panels[p]["fieldConfig"]["defaults"]["custom"]
        assert custom["scaleDistribution"] == {"type": "log", "log": 10}
        assert "var-run=${__field.labels.run}" in panels[p]["fieldConfig"]["defaults"]["links"][0]["url"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboards_link_to_each_other(name: str) -> None:
    links = load(name)["links"]
    assert any(
        lk["type"] == "dashboards" and "caffe-exporter" in lk["tags"] and lk["includeVars"] and lk["keepTime"]
        for lk in links
    )


def test_health_dashboard_covers_the_exporter() -> None:
    exprs = " ".join(e for _, e in gen.iter_queries(load("caffe-exporter-health.json")))
    for metric in (
        "caffe_exporter_files_watched",
        "caffe_exporter_lines_total",
        "caffe_exporter_bytes_read_total",
        "caffe_exporter_file_rotations_total",
        "caffe_exporter_file_truncations_total",
        "caffe_exporter_read_errors_total",
        "scrape_samples_scraped",
        "scrape_duration_seconds",
        "time() - caffe_last_log_timestamp_seconds",
    ):
        assert metric in exprs


def test_substitution_and_metric_name_extraction() -> None:
    assert (
        gen.substitute(
            'x{run=~"$run"}[$__rate_interval] ${job:regex}', {"run": "a", "__rate_interval": "1m", "job": "j"}
        )
        == 'x{run=~"a"}[1m] j'
    )
    assert gen.metric_names(
        'sum by (job, le) (rate(a_total{x="b c"}[5m])) / on (run) group_left (index) b:rec * 2 > bool inf '
        'or label_join(c, "d", " ", "e") unless count_values("v", d) offset 5m'
    ) == {"a_total", "b:rec", "c", "d"}


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z0-9_:]+)` \|", text, re.M))


PROMETHEUS_INTERNAL = {"up", "scrape_samples_scraped", "scrape_duration_seconds"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_metric_is_in_the_metric_contract(name: str) -> None:
    """Against docs/metrics.md; tests/test_dashboards_e2e.py checks the same names against a live /metrics."""
    allowed = documented_metrics() | PROMETHEUS_INTERNAL
    for where, expr in gen.iter_queries(load(name)):
        unknown = gen.metric_names(expr) - allowed
        assert not unknown, f"{where}: {sorted(unknown)} not in docs/metrics.md"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_expression_passes_promtool(name: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package 'prometheus'"
    rules = []
    for where, expr in gen.iter_queries(load(name)):
        concrete = gen.substitute(expr, SAMPLE_VALUES)
        assert "$" not in concrete, where
        record = "dashboard:" + re.sub(r"\W+", "_", where).strip("_")
        rules.append({"record": record, "expr": concrete})
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": name, "rules": rules}]}, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_provisioning_files() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "caffe-exporter.yml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["url"]
