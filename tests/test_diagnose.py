"""`caffe-exporter diagnose` on every real Caffe log: both non-finite origins and exactly the expected findings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from exporter.diagnose import diagnose, main

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "real-caffe"
GLOG_INFO = "glog/caffe.vm.root.log.INFO.20261126-143014.22388"
RUNS = sorted(p.name for p in REAL.iterdir() if (p / "FACTS.json").is_file())
PUBLIC = sorted(p.name for p in (FIXTURES / "public-logs").glob("*.log"))


def log_of(run: str) -> Path:
    return REAL / run / (GLOG_INFO if run == "glog_dir" else "caffe.log")


def facts(run: str) -> dict[str, Any]:
    return json.loads((REAL / run / "FACTS.json").read_text())  # type: ignore[no-any-return]


def report(run: str) -> tuple[dict[str, Any], int]:
    doc, code = diagnose([str(log_of(run))])
    assert len(doc["runs"]) == 1
    return doc["runs"][0], code


def layers_of(entry: dict[str, Any]) -> set[str]:
    out = set(entry.get("layers") or [])
    if entry.get("layer"):
        out.add(entry["layer"])
    return out


def test_every_run_is_covered() -> None:
    assert len(RUNS) == 13 and "lenet_nan" in RUNS and "glog_dir" in RUNS


@pytest.mark.parametrize("run", RUNS)
def test_nonfinite_origins_match_facts(run: str) -> None:
    r, _ = report(run)
    f = facts(run)
    any_kind, per_layer = f["first_nan_or_inf"], f["first_nan_or_inf_per_layer_line"]
    got_any, got_layer = r["nonfinite"]["first_observed"], r["nonfinite"]["first_observed_layer"]
    if any_kind is None:
        assert got_any is None
    else:
        assert got_any["iteration"] == any_kind["iteration"]
        assert got_any["phase"] == any_kind["phase"]
        assert got_any["value"] == any_kind["value"]
        if any_kind["layer"] is None:  # the All net params aggregate
            assert (got_any["stage"], got_any["layer"]) == ("net", "")
            assert any_kind["blob"].lower() == "all net params " + got_any["blob"]
        else:
            assert got_any["layer"] == any_kind["layer"]
            assert got_any["stage"] == any_kind["direction"].lower()
    if per_layer is None:
        assert got_layer is None
    else:
        assert got_layer["iteration"] == per_layer["iteration"]
        assert got_layer["layer"] == per_layer["layer"]
        assert got_layer["stage"] == per_layer["direction"].lower()
        assert got_layer["blob"] == per_layer["blob"]
        assert got_layer["kind"] == per_layer["kind"]
        assert got_layer["value"] == per_layer["value"]


@pytest.mark.parametrize("run", RUNS)
def test_findings_are_exactly_the_expected_ones(run: str) -> None:
    r, code = report(run)
    f = facts(run)
    expected, tolerated = f["expected_findings"], f.get("tolerated_findings") or []
    findings = r["findings"]
    for e in expected:
        matches = [x for x in findings if x["type"] == e["type"]]
        assert matches, f"{run}: missing {e['type']} finding; got {[x['type'] for x in findings]}"
        if "iteration" in e:
            matches = [x for x in matches if x["iteration"] == e["iteration"]]
        if "accept_from_iterations" in e:
            matches = [x for x in matches if x["iteration"] in e["accept_from_iterations"]]
        if layers_of(e):
            matches = [x for x in matches if layers_of(e) <= set(x["layers"])]
        assert matches, f"{run}: no {e['type']} finding matches {e}; got {findings}"
    allowed = expected + tolerated
    for x in findings:
        same = [e for e in allowed if e["type"] == x["type"]]
        assert same, f"{run}: unexpected {x['type']} finding: {x['message']}"
        if all(layers_of(e) for e in same):
            ok = set().union(*(layers_of(e) for e in same))
            assert set(x["layers"]) <= ok, f"{run}: {x['type']} names layers beyond FACTS: {x['layers']}"
    if not expected:
        assert findings == [] and r["healthy"] and code == 0
    else:
        assert code == 1 and not r["healthy"]


def test_nonfinite_finding_carries_both_origins_order_and_explosion_before() -> None:
    r, _ = report("lenet_nan")
    (nf,) = [x for x in r["findings"] if x["type"] == "nonfinite"]
    assert (nf["iteration"], nf["layers"]) == (4, ["conv1"])
    assert nf["values"]["first_observed"]["iteration"] == 2
    assert nf["values"]["order"][0]["layer"] == "conv1"
    assert nf["values"]["largest_before"][0] == {
        "iteration": 2,
        "key": "ip2, param blob 0",
        "layer": "ip2",
        "value": 1.03241e22,
    }
    assert 826 in nf["evidence_lines"]
    (ex,) = [x for x in r["findings"] if x["type"] == "exploding"]
    assert ex["layers"] == ["ip2"] and "base_lr" in ex["advice"]


def test_text_report_for_lenet_nan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(log_of("lenet_nan"))]) == 1
    out = capsys.readouterr().out
    assert "conv1" in out and "iteration 4" in out and "first observed" in out.lower()
    assert "net: LeNet" in out and "base_lr" in out and "line 826" in out


def test_text_report_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(log_of("lenet_healthy"))]) == 0
    out = capsys.readouterr().out
    assert "healthy: no anomalies found" in out and "accuracy = 0.964" in out


def test_json_output_is_the_documented_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(log_of("dead_relu")), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "caffe-exporter.diagnose/1" and doc["exit_code"] == 1
    (run,) = doc["runs"]
    assert set(run) == {
        "run",
        "labels",
        "sources",
        "summary",
        "nonfinite",
        "findings",
        "suppressed_findings",
        "healthy",
    }
    assert set(run["summary"]) >= {
        "net",
        "solver_runs",
        "first_iteration",
        "last_iteration",
        "first_loss",
        "last_loss",
        "lr",
        "test_outputs",
    }
    for f in run["findings"]:
        assert set(f) == {
            "type",
            "iteration",
            "last_iteration",
            "display_iterations",
            "layers",
            "message",
            "values",
            "evidence_lines",
            "advice",
            "open",
        }
    dead = [f for f in run["findings"] if f["type"] == "dead"]
    assert dead[0]["values"]["dead_relu"] == ["relu2"]


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import sys

    data = log_of("lenet_nan").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["-", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["nonfinite"]["first_observed_layer"]["layer"] == "conv1"


def test_exit_2_on_unreadable_and_non_caffe_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.log"
    assert main([str(missing)]) == 2
    assert "missing.log: cannot read" in capsys.readouterr().err
    junk = tmp_path / "notes.log"
    junk.write_text("hello\nthis is not a Caffe log\n")
    assert main([str(junk), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 2 and doc["files"][0]["error"] == "no Caffe log lines found"
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert main([str(empty)]) == 2
    assert main([str(tmp_path)]) == 2  # a directory
    if os.geteuid() != 0:
        locked = tmp_path / "locked.log"
        locked.write_bytes(log_of("lenet_healthy").read_bytes())
        locked.chmod(0)
        assert main([str(locked)]) == 2
    # one bad file among good ones still exits 2, and the good one is reported
    assert main([str(log_of("lenet_healthy")), str(junk)]) == 2
    assert "lenet_healthy" in capsys.readouterr().out


@pytest.mark.parametrize("name", PUBLIC)
def test_public_logs_do_not_crash(name: str) -> None:
    doc, code = diagnose([str(FIXTURES / "public-logs" / name)])
    assert code in (0, 1)
    json.dumps(doc, allow_nan=False)  # valid JSON: no NaN/Infinity numbers


def test_public_saturated_loss_is_found() -> None:
    doc, code = diagnose([str(FIXTURES / "public-logs" / "bvlc-rmsprop-diverging-87.3365.log")])
    assert code == 1
    (sat,) = [f for f in doc["runs"][0]["findings"] if f["type"] == "loss_saturated"]
    assert sat["iteration"] == 20


def _job(tmp_path: Path, run: str, directory: str) -> Path:
    """A copy of a real log in a one-directory-per-job layout (`<tmp>/jobs/<directory>/caffe.log`)."""
    log = tmp_path / "jobs" / directory / "caffe.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(log_of(run).read_bytes())
    return log


def _write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def _json_report(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, doc


def test_config_source_rules_name_and_label_runs_as_the_daemon_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exporter import config
    from exporter.identity import RunNamer

    log = _job(tmp_path, "lenet_healthy", "exp42-lr0.1")
    cfg = _write_config(tmp_path, f"sources:\n  - path: {tmp_path / 'jobs'}\n    run_regex: '/(?P<run>exp[0-9]+)-lr'\n"
                                  "    labels: {team: vision}\n")
    code, doc = _json_report(capsys, str(log), "--config", cfg)
    assert code == 0
    assert [(r["run"], r["labels"]) for r in doc["runs"]] == [("exp42", {"team": "vision"})]
    assert RunNamer(config.load(cfg).sources)(str(log)) == ("exp42", {"team": "vision"})  # serve's own naming
    _, plain = _json_report(capsys, str(log))
    assert [(r["run"], r["labels"]) for r in plain["runs"]] == [("exp42-lr0.1", {})]


def test_a_log_no_configured_source_covers_keeps_the_default_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _job(tmp_path, "lenet_healthy", "exp7-lr0.01")
    cfg = _write_config(tmp_path, f"sources:\n  - path: {tmp_path / 'elsewhere'}\n    labels: {{team: vision}}\n")
    _, doc = _json_report(capsys, str(log), "--config", cfg)
    assert [(r["run"], r["labels"]) for r in doc["runs"]] == [("exp7-lr0.01", {})]


@pytest.mark.parametrize("text", ["detector:\n  exploding: {factor: 2}\n",  # a typo serve rejects
                                  "listen: 10052\n",  # a key diagnose does not use, still validated
                                  "detectors:\n  exploding: {factor: many}\n",
                                  "sources: [{path: /x, run_regex: '('}]\n",
                                  "detectors: [\n"])  # not YAML
def test_a_config_serve_rejects_is_rejected_with_serves_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    from exporter import config

    cfg = _write_config(tmp_path, text)
    with pytest.raises(config.ConfigError) as rejected:
        config.load(cfg)
    assert main([str(log_of("lenet_healthy")), "--config", cfg]) == 2
    assert capsys.readouterr().err == f"caffe-exporter diagnose: {rejected.value}\n"


def test_config_detector_thresholds_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = str(log_of("explode"))
    assert [f["type"] for f in _json_report(capsys, log)[1]["runs"][0]["findings"]] == ["exploding"]
    # a loss spike is only reported apart from an explosion (docs/detectors.md): both off, nothing is found
    cfg = _write_config(tmp_path, "detectors:\n  exploding: {enabled: false}\n  loss_spike: {enabled: false}\n")
    code, doc = _json_report(capsys, log, "--config", cfg)
    assert [f["type"] for f in doc["runs"][0]["findings"]] == []
    assert code == 0


def test_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(log_of("lenet_healthy")), "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: cannot read configuration" in capsys.readouterr().err


def test_non_finite_numbers_are_written_as_their_repr_strings_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """One encoding for NaN/inf in the report and in the findings' values (exporter.jsonvalue)."""
    from exporter.jsonvalue import finite_or_repr, optional_number

    assert [finite_or_repr(v) for v in (1.5, float("nan"), float("inf"), float("-inf"))] == [1.5, "nan", "inf",
                                                                                              "-inf"]
    assert optional_number(None) is None
    _, doc = _json_report(capsys, str(log_of("lenet_nan")))
    run = doc["runs"][0]
    assert run["summary"]["last_loss"] == "nan"
    json.dumps(doc, allow_nan=False)
