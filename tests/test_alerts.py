"""Static and unit tests for the alerting bundle in ``alerts/`` and ``docs/runbooks.md``.

Runs the real tools from the Debian packages ``prometheus`` (promtool) and ``prometheus-alertmanager``
(amtool):

- ``promtool check rules`` on ``alerts/caffe-exporter.rules.yml``;
- ``promtool test rules`` on every ``alerts/tests/*.yaml`` (one test file per rule group);
- ``amtool check-config`` and ``amtool config routes test`` on ``alerts/alertmanager.yml``;

and checks the shape every alert must have (CamelCase name, ``severity``, ``summary``, ``description``,
``runbook_url`` whose anchor exists in ``docs/runbooks.md``, ``dashboard_url``), that each alert has a
promtool case where it fires and one where it stays silent, and that the inhibition rules name existing
alerts. Issue 8: every page about a run is gated by the paging window (one number, documented in the runbooks)
and has a warning-severity ...Historical twin on the same condition; Alertmanager groups and inhibits by the
whole run identity (job, instance, run), written once.

Missing binaries fail the tests (CI installs them); they are never skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "alerts" / "caffe-exporter.rules.yml"
ALERTMANAGER = REPO / "alerts" / "alertmanager.yml"
RULE_TESTS = sorted((REPO / "alerts" / "tests").glob("*.yaml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"

RUNBOOK_BASE = "https://github.com/caffe-exporter/caffe-exporter/blob/main/docs/runbooks.md#"
DASHBOARD_BASE = "https://grafana.example.com/d/caffe-run-detail/caffe-run-detail"
HEALTH_DASHBOARD_BASE = "https://grafana.example.com/d/caffe-exporter-health/caffe-exporter-health"
CAMEL_CASE = re.compile(r"^(?:[A-Z][a-z0-9]+)+$")
TIMEOUT = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: install the Debian packages prometheus and prometheus-alertmanager "
            "(these tests are never skipped)"
        )
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=REPO)


def _groups() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    groups: list[dict[str, Any]] = data["groups"]
    return groups


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"] if "alert" in rule]


def _github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation except '-' and '_' removed, spaces to '-'."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def _runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6} +(.+?) *$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {_github_anchor(h) for h in headings}


ALERT_NAMES = [rule["alert"] for rule in _alerts()]


# ----------------------------------------------------------------------------------------------------
# promtool


def test_promtool_check_rules() -> None:
    result = _run([_tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_test_files_exist() -> None:
    assert RULE_TESTS, "no promtool test files in alerts/tests/"


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_promtool_test_rules(test_file: Path) -> None:
    result = _run([_tool("promtool"), "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_test_file_per_rule_group() -> None:
    names = {p.name for p in RULE_TESTS}
    for group in _groups():
        assert f"{group['name']}-test.yaml" in names, f"missing alerts/tests/{group['name']}-test.yaml"


def _alert_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in RULE_TESTS:
        data = yaml.safe_load(path.read_text())
        assert data["rule_files"] == ["../caffe-exporter.rules.yml"], path
        for test in data["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_every_alert_has_a_firing_and_a_silent_case(alertname: str) -> None:
    cases = [c for c in _alert_cases() if c["alertname"] == alertname]
    firing = [c for c in cases if c.get("exp_alerts")]
    silent = [c for c in cases if not c.get("exp_alerts")]
    assert firing, f"{alertname}: no promtool case where it fires"
    assert silent, f"{alertname}: no promtool case where it stays silent"
    for case in firing:
        for exp in case["exp_alerts"]:
            assert exp.get("exp_labels", {}).get("severity"), f"{alertname}: exp_labels without severity"
            annotations = exp.get("exp_annotations", {})
            assert {"summary", "description", "runbook_url", "dashboard_url"} <= set(annotations), (
                f"{alertname}: a firing case does not check all annotations exactly"
            )


# ----------------------------------------------------------------------------------------------------
# alert shape and runbooks


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_alert_shape(alertname: str) -> None:
    rule = next(r for r in _alerts() if r["alert"] == alertname)
    assert CAMEL_CASE.match(alertname), f"{alertname} is not CamelCase"
    assert alertname.startswith("Caffe"), alertname
    assert "for" in rule, f"{alertname}: set `for:` explicitly (0m included)"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url", "dashboard_url"):
        assert annotations.get(key), f"{alertname}: missing annotation {key}"
    assert "{{" not in annotations["summary"], f"{alertname}: summary must be static"
    description = annotations["description"]
    assert re.search(r"\brun\b", description, re.IGNORECASE), f"{alertname}: description must name the run"
    assert "layer" in description.lower(), f"{alertname}: description must name the layer (or say n/a)"
    assert "$value" in description or "| value" in description, f"{alertname}: description must show a value"
    assert annotations["runbook_url"] == RUNBOOK_BASE + alertname.lower()
    if "$labels.run" in description:
        # a run's alert links the run-detail dashboard of that run
        assert annotations["dashboard_url"] == DASHBOARD_BASE + "?var-run={{ $labels.run | urlquery }}"
    else:
        # the exporter's own alerts link the exporter-health dashboard
        assert alertname.startswith("CaffeExporter"), alertname
        assert annotations["dashboard_url"].startswith(HEALTH_DASHBOARD_BASE + "?var-job=")


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_runbook_anchor_exists(alertname: str) -> None:
    assert alertname.lower() in _runbook_anchors(), f"docs/runbooks.md has no '## {alertname}' section"


def test_runbook_has_no_section_for_unknown_alerts() -> None:
    headings = re.findall(r"^## +(Caffe\w+) *$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    assert sorted(headings) == sorted(ALERT_NAMES)


def test_nan_alerts_page_fast() -> None:
    for rule in _alerts():
        if rule["alert"] in {"CaffeTrainingLossNonFinite", "CaffeLayerNonFinite"}:
            assert rule["labels"]["severity"] == "critical"
            assert rule["for"] in {"0m", "0s"}, f"{rule['alert']}: a single NaN must page at once"


# ----------------------------------------------------------------------------------------------------
# Alertmanager


def test_amtool_check_config() -> None:
    result = _run([_tool("amtool"), "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _route(labels: dict[str, str], expected: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [
            _tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"--verify.receivers={expected}",
            *(f"{k}={v}" for k, v in labels.items()),
        ]
    )


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "pager"), ("warning", "chat")], ids=["critical", "warning"]
)
def test_amtool_routes_by_severity(severity: str, receiver: str) -> None:
    result = _route({"severity": severity, "alertname": "X", "run": "r"}, receiver)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_amtool_routes_every_alert(alertname: str) -> None:
    rule = next(r for r in _alerts() if r["alert"] == alertname)
    severity = rule["labels"]["severity"]
    expected = {"critical": "pager", "warning": "chat"}[severity]
    result = _route({"alertname": alertname, "severity": severity, "run": "r", "layer": "conv1"}, expected)
    assert result.returncode == 0, result.stdout + result.stderr


RUN_IDENTITY = ["job", "instance", "run"]


def test_alertmanager_groups_and_inhibits_by_the_whole_run_identity() -> None:
    """A run is (job, instance, run) as in the rules' joins, never the run name alone (issue 8: node-a/node-b)."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == RUN_IDENTITY
    for route in config["route"].get("routes", []):
        assert "group_by" not in route, "a child route regroups; keep the run identity in one place"
    for rule in config["inhibit_rules"]:
        assert rule["equal"] == RUN_IDENTITY, rule
    # written once: the inhibit rules reuse the route's list through a YAML alias
    text = ALERTMANAGER.read_text()
    assert len(re.findall(r"^  group_by: &run_identity \[job, instance, run\]$", text, re.MULTILINE)) == 1
    assert len(re.findall(r"^    equal: \*run_identity$", text, re.MULTILINE)) == len(config["inhibit_rules"])


def _inhibitions() -> dict[str, set[str]]:
    """source alert -> the alerts it mutes, from alerts/alertmanager.yml."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    out: dict[str, set[str]] = {}
    for rule in config["inhibit_rules"]:
        (source,) = rule["source_matchers"]
        (target,) = rule["target_matchers"]
        source_name = re.fullmatch(r'alertname="(\w+)"', source)
        target_names = re.fullmatch(r'alertname=~"([\w|]+)"', target)
        assert source_name and target_names, rule
        out.setdefault(source_name.group(1), set()).update(target_names.group(1).split("|"))
    return out


def test_alertmanager_inhibition_names_existing_alerts() -> None:
    names = set(ALERT_NAMES)
    for source, targets in _inhibitions().items():
        assert source in names
        assert targets <= names, f"inhibit rule of {source} names an unknown alert: {targets - names}"
        assert source not in targets


def test_nan_page_mutes_the_symptoms_and_the_historical_twins_of_its_run() -> None:
    inhibitions = _inhibitions()
    symptoms = {"CaffeExplodingGradients", "CaffeLossSpike", "CaffeLossSaturated", "CaffeVanishingGradients"}
    historical = {"CaffeTrainingLossNonFiniteHistorical", "CaffeLayerNonFiniteHistorical"}
    assert symptoms | historical | {"CaffeLayerNonFinite"} <= inhibitions["CaffeTrainingLossNonFinite"]
    assert symptoms | historical <= inhibitions["CaffeLayerNonFinite"]
    # an old NaN log is one chat message as well
    assert symptoms | {"CaffeLayerNonFiniteHistorical"} <= inhibitions["CaffeTrainingLossNonFiniteHistorical"]
    assert symptoms <= inhibitions["CaffeLayerNonFiniteHistorical"]


def test_example_receivers_are_local_webhooks() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in config["receivers"]:
        for webhook in receiver["webhook_configs"]:
            assert webhook["url"].startswith("http://127.0.0.1:5001/")


# ----------------------------------------------------------------------------------------------------
# paging window: only a NaN of a run that logged recently pages

WINDOW_RECORD = "run:caffe_last_log:in_paging_window"
GATE = f"unless on (job, instance, run) {WINDOW_RECORD} == 0"
HISTORICAL_GATE = f"and on (job, instance, run) {WINDOW_RECORD} == 0"


def _rule(name: str) -> dict[str, Any]:
    return next(r for g in _groups() for r in g["rules"] if name in (r.get("alert"), r.get("record")))


def _paging_window_seconds() -> int:
    expr = " ".join(_rule(WINDOW_RECORD)["expr"].split())
    match = re.fullmatch(r"time\(\) - caffe_last_log_timestamp_seconds <= bool (\d+)", expr)
    assert match, f"{WINDOW_RECORD}: unexpected expr {expr!r}"
    return int(match.group(1))


RUN_PAGES = [
    rule["alert"]
    for rule in _alerts()
    if rule["labels"]["severity"] == "critical" and "$labels.run" in rule["annotations"]["description"]
]


def test_run_pages_are_the_two_nan_alerts() -> None:
    assert sorted(RUN_PAGES) == ["CaffeLayerNonFinite", "CaffeTrainingLossNonFinite"]


@pytest.mark.parametrize("alertname", RUN_PAGES)
def test_every_run_page_is_gated_by_the_paging_window(alertname: str) -> None:
    page = _rule(alertname)
    lines = [line.strip() for line in page["expr"].strip().splitlines()]
    assert len(lines) == 2 and lines[1] == GATE, f"{alertname}: expr must be `<condition>\n{GATE}`"
    condition = lines[0]
    assert re.fullmatch(r"run:\w+:active", condition), condition
    assert _rule(condition)["record"] == condition


@pytest.mark.parametrize("alertname", RUN_PAGES)
def test_every_run_page_has_a_historical_warning_on_the_same_condition(alertname: str) -> None:
    page, twin = _rule(alertname), _rule(alertname + "Historical")
    condition = page["expr"].strip().splitlines()[0].strip()
    lines = [line.strip() for line in twin["expr"].strip().splitlines()]
    assert lines == [condition, HISTORICAL_GATE]
    assert twin["labels"]["severity"] == "warning"
    assert (twin["for"], twin.get("keep_firing_for")) == (page["for"], page.get("keep_firing_for"))
    assert "paging window" in twin["annotations"]["description"]


def test_paging_window_is_written_once_and_documented() -> None:
    seconds = _paging_window_seconds()
    assert seconds == 3600
    rules_text = RULES.read_text()
    assert f"PAGING WINDOW: {seconds} seconds (1 hour)" in rules_text
    exprs = [r["expr"] for g in _groups() for r in g["rules"]]
    assert sum(str(seconds) in e for e in exprs) == 1, "the window is a single number in a single rule"
    runbooks = RUNBOOKS.read_text()
    assert "**Paging window.**" in runbooks
    assert f"**{seconds} s (1 h)**" in runbooks
