#!/usr/bin/env python3
"""Generate the caffe-exporter Grafana dashboards (standard library only).

    python grafana/generate.py            # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 if a committed file differs from the generated one
    python grafana/generate.py --list-exprs   # print every PromQL expression, one per line

The metrics are the ones in docs/metrics.md. Per-layer values are what Caffe prints with `debug_info: true`:
the mean absolute value of a blob (asum/count), not an L2 norm. The dashboards follow current Grafana
conventions: a `datasource` template variable (no `__inputs`, no hard-coded datasource uid), chained
`job` -> `instance` -> `run` variables, stable uids, tags and links between the three dashboards.

The query-inspection helpers at the end (`iter_queries`, `substitute`, `metric_names`) are shared with
tests/test_dashboards*.py so the tests read the committed JSON the same way this module writes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Json = dict[str, Any]

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 41  # Grafana 12 classic dashboard model
TAGS = ["caffe", "caffe-exporter"]
DS = {"type": "prometheus", "uid": "${datasource}"}

UID_OVERVIEW = "caffe-runs-overview"
UID_RUN = "caffe-run-detail"
UID_HEALTH = "caffe-exporter-health"

# Label selectors shared by all queries (template variables are substituted by Grafana).
INST = 'job=~"$job", instance=~"$instance"'
RUN = INST + ', run=~"$run"'
BY_RUN = "job, instance, run"
TRAIN = 'phase="train"'

MEAN_ABS = (
    "Per-layer values are Caffe's debug_info numbers: the mean absolute value of the blob (asum/count), not an L2 norm."
)
HEATMAP_NOTE = (
    " Rows are the net's layers in forward order (input at the top, loss at the bottom), labelled "
    "'<index> <layer> <blob or param>' from caffe_layer_info; colour is log10 of the value, so one colour "
    "step "
    "is a factor of ten. Exact zeros are drawn at the floor -30; NaN/Inf cells stay empty (see 'Non-finite "
    "values by layer')."
)

# Run state codes of state_expr(); value mappings turn them into text and colours.
STATES = [
    (0, "training", "blue"),
    (1, "finished", "green"),
    (2, "stalled", "orange"),
    (3, "exploding", "red"),
    (4, "NaN / Inf", "dark-red"),
]


# --------------------------------------------------------------------------------------------- PromQL


def sel(metric: str, scope: str = RUN, extra: str = "") -> str:
    """`metric{scope, extra}`."""
    matchers = ", ".join(m for m in (scope, extra) if m)
    return f"{metric}{{{matchers}}}"


def per_run(expr: str, agg: str = "max") -> str:
    """Collapse configuration labels so instant table queries merge on (job, instance, run)."""
    return f"{agg} by ({BY_RUN}) ({expr})"


def state_expr(scope: str = RUN) -> str:
    """One series per run whose value is the run's state code (see STATES), highest priority first.

    `a or b` keeps `a` and adds only the runs `a` lacks, so the first matching condition wins.
    """
    anomaly = 'caffe_anomaly{%s, type%s"%s"}'
    loss = sel("caffe_loss", scope)
    nonfinite_loss = f"({loss} != bool {loss}) + (abs({loss}) == bool +Inf)"
    parts = [
        f"(({per_run(anomaly % (scope, '=~', 'nonfinite|nan_loss'))} == 1) * 0 + 4)",
        f"(({per_run(nonfinite_loss)} > 0) * 0 + 4)",
        f"(({per_run(anomaly % (scope, '=', 'exploding'))} == 1) * 0 + 3)",
        f"(({per_run(sel('caffe_run_finished', scope))} == 1) * 0 + 1)",
        f"(({per_run('time() - ' + sel('caffe_last_log_timestamp_seconds', scope))} > $stall) * 0 + 2)",
        f"({per_run(sel('caffe_iteration', scope))} * 0)",
    ]
    return "\n  or ".join(parts)


def count_state(code: int) -> str:
    """Number of runs in state `code` (0 rather than no data when there is none)."""
    return f"count(\n  (\n  {state_expr()}\n  ) == {code}\n) or vector(0)"


def layer_expr(metric: str, label: str, phase_label: bool, value: str | None = None) -> str:
    """Per-layer series ordered by forward position: joined with caffe_layer_info for `index`, then one
    `display` label '<index> <layer> <blob|param>' so Prometheus' label-sorted result is in net order."""
    base = value or sel(metric, RUN, TRAIN if phase_label else "")
    on = f"{BY_RUN}, phase, layer" if phase_label else f"{BY_RUN}, layer"
    joined = f"{base}\n  * on ({on}) group_left (index)\n  {sel('caffe_layer_info', RUN, TRAIN)}"
    display = f'label_join(\n  {joined},\n  "display", " ", "index", "layer", "{label}"\n)'
    return f"clamp_min(log10(max by (display) ({display})), -30)"


# --------------------------------------------------------------------------------------------- targets


def target(expr: str, legend: str = "", ref: str = "A", table: bool = False) -> Json:
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": table,
        "legendFormat": legend or "__auto",
        "range": not table,
        "refId": ref,
    }


def targets(*specs: tuple[str, str], table: bool = False) -> list[Json]:
    """targets(("expr", "legend"), ...) with refIds A, B, C..."""
    return [target(e, lg, chr(ord("A") + i), table) for i, (e, lg) in enumerate(specs)]


# --------------------------------------------------------------------------------------------- links


def run_link(run_ref: str) -> Json:
    """Data link into the run detail dashboard for the run named by `run_ref`."""
    return {
        "title": "Open run ${__field.labels.run}" if "__field" in run_ref else "Open run detail",
        "url": (
            f"/d/{UID_RUN}/caffe-run-detail?${{datasource:queryparam}}&${{job:queryparam}}"
            f"&${{instance:queryparam}}&var-run={run_ref}&${{__url_time_range}}"
        ),
        "targetBlank": False,
    }


DASHBOARD_LINKS = [
    {
        "asDropdown": False,
        "icon": "external link",
        "includeVars": True,
        "keepTime": True,
        "tags": ["caffe-exporter"],
        "targetBlank": False,
        "title": "Caffe dashboards",
        "tooltip": "The other caffe-exporter dashboards, keeping time range and variables",
        "type": "dashboards",
        "url": "",
    }
]


# --------------------------------------------------------------------------------------------- panels


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


GREEN = thresholds((None, "green"))
STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {str(code): {"color": color, "index": code, "text": text} for code, text, color in STATES},
    }
]


def panel(kind: str, title: str, description: str, tgts: list[Json], **kw: Any) -> Json:
    """Common panel skeleton; kw: unit, options, custom, mappings, thresholds, links, overrides,
    transformations, defaults (extra fieldConfig.defaults keys)."""
    defaults: Json = {"unit": kw.get("unit", "none"), "thresholds": kw.get("thresholds", GREEN)}
    if "custom" in kw:
        defaults["custom"] = kw["custom"]
    if "mappings" in kw:
        defaults["mappings"] = kw["mappings"]
    if "links" in kw:
        defaults["links"] = kw["links"]
    defaults.update(kw.get("defaults", {}))
    p: Json = {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": kw.get("overrides", [])},
        "options": kw.get("options", {}),
        "targets": tgts,
        "title": title,
        "type": kind,
    }
    if "transformations" in kw:
        p["transformations"] = kw["transformations"]
    return p


def timeseries(
    title: str,
    description: str,
    tgts: list[Json],
    unit: str = "none",
    log: bool = False,
    stack: bool = False,
    links: list[Json] | None = None,
    legend_calcs: list[str] | None = None,
) -> Json:
    custom = {
        "drawStyle": "line",
        "fillOpacity": 10 if stack else 0,
        "lineWidth": 1,
        "pointSize": 4,
        "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"},
        "showPoints": "auto",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    options = {
        "legend": {
            "calcs": legend_calcs or ["lastNotNull"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    extra = {"links": links} if links else {}
    return panel(
        "timeseries",
        title,
        description,
        tgts,
        unit=unit,
        custom=custom,
        options=options,
        defaults={"color": {"mode": "palette-classic"}},
        **extra,
    )


def stat(
    title: str,
    description: str,
    tgts: list[Json],
    unit: str = "none",
    calc: str = "last",
    text_mode: str = "auto",
    **kw: Any,
) -> Json:
    options = {
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": text_mode,
        "wideLayout": True,
    }
    kw.setdefault("defaults", {})["noValue"] = kw.pop("no_value", "no data")
    return panel("stat", title, description, tgts, unit=unit, options=options, **kw)


def bargauge(title: str, description: str, tgts: list[Json], unit: str = "none", **kw: Any) -> Json:
    options = {
        "displayMode": "gradient",
        "maxVizHeight": 300,
        "minVizHeight": 16,
        "minVizWidth": 8,
        "namePlacement": "left",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "sizing": "auto",
        "valueMode": "color",
    }
    return panel("bargauge", title, description, tgts, unit=unit, options=options, **kw)


def heatmap(title: str, description: str, expr: str, axis_label: str) -> Json:
    options = {
        "calculate": False,
        "cellGap": 1,
        "cellValues": {"decimals": 1, "unit": "none"},
        "color": {
            "exponent": 0.5,
            "fill": "dark-orange",
            "mode": "scheme",
            "reverse": True,
            "scale": "linear",
            "scheme": "Spectral",
            "steps": 64,
        },
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        # Values are log10 (mostly negative): keep every cell, the default hides values <= 1e-9.
        "filterValues": {"le": -1e9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto", "value": "log10"},
        "selectionMode": "x",
        "showValue": "never",
        "tooltip": {"mode": "single", "showColorScale": True, "yHistogram": False},
        "yAxis": {"axisLabel": axis_label, "axisPlacement": "left", "reverse": True},
    }
    custom = {
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "scaleDistribution": {"type": "linear"},
    }
    return panel(
        "heatmap",
        title,
        description + HEATMAP_NOTE,
        targets((expr, "{{display}}")),
        options=options,
        custom=custom,
    )


def table(title: str, description: str, tgts: list[Json], **kw: Any) -> Json:
    options = {
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        "showHeader": True,
        "sortBy": kw.pop("sort_by", []),
    }
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": False, "inspect": False}
    return panel("table", title, description, tgts, options=options, custom=custom, **kw)


def state_timeline(title: str, description: str, tgts: list[Json], mappings: list[Json]) -> Json:
    options = {
        "alignValue": "left",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "mergeValues": True,
        "rowHeight": 0.9,
        "showValue": "never",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return panel(
        "state-timeline",
        title,
        description,
        tgts,
        options=options,
        mappings=mappings,
        custom={"fillOpacity": 80, "lineWidth": 0},
        defaults={"color": {"mode": "thresholds"}},
    )


def override(name: str, *props: tuple[str, Any]) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props],
    }


def layout(rows: list[list[tuple[Json, int, int]]]) -> list[Json]:
    """rows of (panel, width, height) -> panels with ids and non-overlapping gridPos, left to right."""
    out, y, pid = [], 0, 1
    for row in rows:
        x = 0
        for p, w, h in row:
            assert x + w <= 24, p["title"]
            out.append({"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p})
            x, pid = x + w, pid + 1
        y += max(h for _, _, h in row)
    return out


# --------------------------------------------------------------------------------------------- variables


def datasource_var() -> Json:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "type": "datasource",
    }


def query_var(name: str, label: str, query: str, multi: bool = False, include_all: bool = False) -> Json:
    return {
        "current": {},
        "datasource": DS,
        "definition": query,
        "hide": 0,
        "includeAll": include_all,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "type": "query",
    }


def stall_var() -> Json:
    choices = [("5m", "300"), ("15m", "900"), ("30m", "1800"), ("1h", "3600"), ("6h", "21600")]
    return {
        # 30m: the CaffeTrainingStalled alert's threshold, so the dashboard and the page agree by default
        "current": {"text": "30m", "value": "1800"},
        "description": "A run whose newest log line is older than this (and did not finish) is 'stalled'.",
        "hide": 0,
        "includeAll": False,
        "label": "Stalled after",
        "multi": False,
        "name": "stall",
        "options": [{"selected": v == "1800", "text": t, "value": v} for t, v in choices],
        "query": ", ".join(f"{t} : {v}" for t, v in choices),
        "type": "custom",
    }


def common_vars(run_multi: bool | None) -> list[Json]:
    """datasource, job, instance (multi) and, unless run_multi is None, run chained on them."""
    out = [
        datasource_var(),
        query_var("job", "Job", "label_values(caffe_exporter_build_info, job)"),
        query_var(
            "instance",
            "Instance",
            'label_values(caffe_exporter_build_info{job=~"$job"}, instance)',
            multi=True,
            include_all=True,
        ),
    ]
    if run_multi is not None:
        out.append(
            query_var(
                "run",
                "Run",
                f"label_values(caffe_run_info{{{INST}}}, run)",
                multi=run_multi,
                include_all=run_multi,
            )
        )
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Json],
    panels: list[Json],
    annotations: list[Json] | None = None,
) -> Json:
    return {
        "annotations": {"list": annotations or []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": DASHBOARD_LINKS,
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# --------------------------------------------------------------------------------------------- dashboards

STATE_DESC = (
    "Run state derived in PromQL, first match wins: NaN / Inf (a nonfinite or nan_loss anomaly is active, or "
    "the newest loss is NaN/Inf), exploding (exploding anomaly active), finished ('Optimization Done' seen), "
    "stalled (newest log line older than the 'Stalled after' variable), otherwise training."
)


def overview() -> Json:
    run_links = [run_link("${__field.labels.run}")]
    stats = [
        stat(
            "Runs",
            "Number of runs exported by the selected instances (caffe_run_info).",
            targets((f"count({per_run(sel('caffe_run_info'))}) or vector(0)", "runs")),
        ),
    ] + [
        stat(
            f"Runs {text}",
            f"Number of selected runs whose derived state is '{text}'. " + STATE_DESC,
            targets((count_state(code), text)),
            thresholds=thresholds((None, "green"), (1, color)) if code >= 2 else thresholds((None, color)),
        )
        for code, text, color in STATES
    ]
    columns = [
        ("State", state_expr()),
        ("Iteration", per_run(sel("caffe_iteration"))),
        ("Loss", per_run(sel("caffe_loss"))),
        ("Learning rate", per_run(sel("caffe_learning_rate"))),
        ("Iterations/s", per_run(sel("caffe_iterations_per_second"))),
        ("Test output", per_run(sel("caffe_test_output", extra='output=~"$test_output"'))),
        ("Anomaly iterations", per_run(sel("caffe_anomalies_total"), "sum")),
        ("Active anomalies", per_run(sel("caffe_anomaly"), "sum")),
        ("Log age", per_run("time() - " + sel("caffe_last_log_timestamp_seconds"))),
    ]
    runs_table = table(
        "All runs",
        "One row per run. " + STATE_DESC + " Iteration: newest 'Iteration N' printed; Loss: smoothed loss of the "
        "newest display line; Learning rate: newest 'lr ='; Iterations/s: solver speed; Test output: newest "
        "'Test net output' named by the 'Test output' variable (max over test nets); Anomaly iterations: "
        "display "
        "iterations in which any anomaly held (caffe_anomalies_total, all types); Active anomalies: "
        "conditions "
        "holding now; Log age: seconds since the newest log line. Click a run to open its detail dashboard.",
        targets(*[(expr, name) for name, expr in columns], table=True),
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "job": True},
                    "indexByName": {
                        "run": 0,
                        **{name: i + 1 for i, (name, _) in enumerate(columns)},
                        "instance": len(columns) + 1,
                    },
                    "renameByName": {f"Value #{chr(ord('A') + i)}": name for i, (name, _) in enumerate(columns)},
                },
            },
        ],
        overrides=[
            override("run", ("links", [run_link("${__data.fields.run}")])),
            override(
                "State",
                ("mappings", STATE_MAPPINGS),
                ("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
            ),
            override("Learning rate", ("unit", "sci")),
            override("Loss", ("decimals", 4)),
            override("Iterations/s", ("unit", "suffix: it/s")),
            override("Test output", ("displayName", "Test ${test_output}"), ("decimals", 4)),
            override("Log age", ("unit", "s")),
        ],
        sort_by=[{"desc": False, "displayName": "run"}],
    )
    test_table = table(
        "Latest test outputs",
        "Every 'Test net output #i: name = v' of the newest test phase of each run (raw value, before the "
        "loss weight), per test net, with the iteration that test ran at.",
        targets((f"max by ({BY_RUN}, net, output) ({sel('caffe_test_output')})", ""), table=True),
        transformations=[
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "job": True}, "renameByName": {"Value": "value"}},
            }
        ],
        overrides=[override("run", ("links", [run_link("${__data.fields.run}")]))],
        sort_by=[{"desc": False, "displayName": "run"}],
    )
    anomalies = bargauge(
        "Anomaly counts by type",
        "Display iterations in which each anomaly condition held (caffe_anomalies_total), per run and type; "
        "types with a zero count are hidden. Types: nonfinite, nan_loss, exploding, vanishing, "
        "zero_gradient, "
        "dead, loss_spike, loss_saturated (docs/detectors.md).",
        targets((f"sum by (run, type) ({sel('caffe_anomalies_total')}) > 0", "{{run}} {{type}}")),
        thresholds=thresholds((None, "orange")),
        links=run_links,
    )
    loss = timeseries(
        "Training loss across runs",
        "Smoothed training loss of each run's display lines (caffe_loss), log scale. NaN/Inf values leave "
        "gaps. "
        "Click a line to open the run.",
        targets((sel("caffe_loss"), "{{run}}")),
        log=True,
        links=run_links,
    )
    test_curves = timeseries(
        "Test outputs across runs",
        "Test net outputs named by the 'Test output' variable (caffe_test_output, raw value of the newest "
        "test "
        "phase), one line per run and test net, log scale.",
        targets((sel("caffe_test_output", extra='output=~"$test_output"'), "{{run}} #{{net}} {{output}}")),
        log=True,
        links=run_links,
    )
    lr = timeseries(
        "Learning rate across runs",
        "Learning rate printed by the solver (caffe_learning_rate), log scale.",
        targets((sel("caffe_learning_rate"), "{{run}}")),
        unit="sci",
        log=True,
        links=run_links,
    )
    speed = timeseries(
        "Training speed across runs",
        "Solver iterations per second (caffe_iterations_per_second): from '(x iter/s, ...)' on the display "
        "line, else computed from the glog timestamps of consecutive display lines.",
        targets((sel("caffe_iterations_per_second"), "{{run}}")),
        unit="suffix: it/s",
        links=run_links,
    )
    panels = layout(
        [
            [(p, 4, 4) for p in stats],
            [(runs_table, 24, 9)],
            [(loss, 12, 9), (test_curves, 12, 9)],
            [(lr, 12, 8), (speed, 12, 8)],
            [(test_table, 12, 8), (anomalies, 12, 8)],
        ]
    )
    test_output_query = f"label_values(caffe_test_output{{{RUN}}}, output)"
    test_output_var = query_var("test_output", "Test output", test_output_query)
    variables = [*common_vars(run_multi=True), test_output_var, stall_var()]
    return dashboard(
        UID_OVERVIEW,
        "Caffe runs overview",
        "Every Caffe training run on the selected exporter instances: state, progress, loss, test "
        "outputs and anomalies. Click a run to open 'Caffe run detail'.",
        variables,
        panels,
    )


def run_detail() -> Json:
    nonfinite = "Empty ('none') while the run has never produced a non-finite value."
    stats = [
        stat(
            "State",
            STATE_DESC,
            targets((state_expr(), "{{run}}")),
            mappings=STATE_MAPPINGS,
            thresholds=thresholds((None, "text")),
        ),
        stat(
            "Iteration",
            "Newest 'Iteration N' the solver printed (caffe_iteration).",
            targets((sel("caffe_iteration"), "{{run}}")),
        ),
        stat(
            "Loss",
            "Smoothed loss of the newest display line (caffe_loss); shows NaN/Inf as printed.",
            targets((sel("caffe_loss"), "{{run}}")),
            defaults={"decimals": 4},
        ),
        stat(
            "Learning rate",
            "Newest 'Iteration N, lr = v' (caffe_learning_rate).",
            targets((sel("caffe_learning_rate"), "{{run}}")),
            unit="sci",
        ),
        stat(
            "Iterations/s",
            "Solver speed (caffe_iterations_per_second).",
            targets((sel("caffe_iterations_per_second"), "{{run}}")),
            unit="suffix: it/s",
        ),
        stat(
            "First non-finite iteration",
            "Iteration of the first display block holding a NaN/Inf value anywhere, including the net-wide "
            "'All net params' norms (caffe_first_nonfinite_iteration); it can precede the first per-layer "
            "NaN/Inf shown in 'First non-finite origin'. " + nonfinite,
            targets((sel("caffe_first_nonfinite_iteration"), "{{run}}")),
            thresholds=thresholds((None, "red")),
            no_value="none",
        ),
        stat(
            "First non-finite origin",
            "Where the first per-layer NaN/Inf appeared (caffe_first_nonfinite_info): pass (stage), layer, blob, "
            "the value printed and the phase; the number is the iteration of that line "
            "(caffe_first_nonfinite_layer_iteration). " + MEAN_ABS + " " + nonfinite,
            targets(
                (
                    f"{sel('caffe_first_nonfinite_info')}\n  * on ({BY_RUN})\n  "
                    f"{sel('caffe_first_nonfinite_layer_iteration')}",
                    "{{stage}} {{layer}} / {{blob}} = {{value}} ({{phase}}), iteration",
                )
            ),
            text_mode="value_and_name",
            thresholds=thresholds((None, "red")),
            no_value="none",
        ),
    ]
    loss = timeseries(
        "Loss and train outputs",
        "Smoothed training loss of the display lines (caffe_loss) and each 'Train net output' "
        "(caffe_train_output,"
        " raw value before the loss weight), log scale. NaN/Inf leave gaps.",
        targets((sel("caffe_loss"), "loss (smoothed)"), (sel("caffe_train_output"), "train {{output}}")),
        log=True,
    )
    test = timeseries(
        "Test outputs",
        "'Test net output' values of the newest test phase (caffe_test_output), per test net and output.",
        targets((sel("caffe_test_output"), "test #{{net}} {{output}}")),
    )
    lr = timeseries(
        "Learning rate over time",
        "Learning rate printed by the solver (caffe_learning_rate), log scale.",
        targets((sel("caffe_learning_rate"), "lr")),
        unit="sci",
        log=True,
    )
    speed = timeseries(
        "Training speed",
        "Solver iterations per second (caffe_iterations_per_second).",
        targets((sel("caffe_iterations_per_second"), "iter/s")),
        unit="suffix: it/s",
    )
    norms = timeseries(
        "Net parameter norms",
        "From '[Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)': L1 and L2 norms "
        "summed"
        " over all learnable parameters (data = weights, diff = gradients before weight decay/momentum), log "
        "scale. These are true norms, unlike the per-layer mean absolute values.",
        targets(
            *[
                (sel(f"caffe_net_param_{k}_{n}_norm"), f"{k} {n.upper()}")
                for n in ("l1", "l2")
                for k in ("data", "diff")
            ]
        ),
        log=True,
    )
    activations = heatmap(
        "Activations: mean |top data| per layer",
        "Forward pass of the train net: mean absolute value of each layer's top blob "
        "(caffe_layer_top_data_abs_mean,"
        " phase train) over time. " + MEAN_ABS,
        layer_expr("caffe_layer_top_data_abs_mean", "blob", phase_label=True),
        "layer (forward order)",
    )
    gradients = heatmap(
        "Gradients: mean |bottom diff| per layer",
        "Backward pass: mean absolute value of the gradient each layer passes to its bottom blob "
        "(caffe_layer_bottom_diff_abs_mean). A gradient vanishing towards the input shows as colours fading "
        "towards the top rows; an explosion as one row turning hot. " + MEAN_ABS,
        layer_expr("caffe_layer_bottom_diff_abs_mean", "blob", phase_label=False),
        "layer (forward order)",
    )
    param_grads = heatmap(
        "Parameter gradients: mean |param diff| per layer",
        "Backward pass: mean absolute value of each learnable parameter blob's gradient "
        "(caffe_layer_param_diff_abs_mean; param 0 = weights, 1 = bias). " + MEAN_ABS,
        layer_expr("caffe_layer_param_diff_abs_mean", "param", phase_label=False),
        "layer / param",
    )
    ratio_value = (
        f"(\n  {sel('caffe_layer_param_diff_abs_mean')}\n  / on ({BY_RUN}, layer, param)\n  "
        f"{sel('caffe_layer_param_data_abs_mean', extra=TRAIN)}\n  )"
    )
    ratio = heatmap(
        "Gradient / weight ratio per layer",
        "mean |param diff| / mean |param data| per layer and param (caffe_layer_param_diff_abs_mean divided "
        "by "
        "caffe_layer_param_data_abs_mean of the train net): the relative size of a step before the learning "
        "rate "
        "is applied. " + MEAN_ABS,
        layer_expr("", "param", phase_label=False, value=ratio_value),
        "layer / param",
    )
    anomalies = state_timeline(
        "Anomalies",
        "Each detector condition (caffe_anomaly, 1 while it holds at the newest display iteration) per type "
        "and "
        "layer (empty layer = net-wide). Types are described in docs/detectors.md.",
        targets((sel("caffe_anomaly"), "{{type}} {{layer}}")),
        [
            {
                "type": "value",
                "options": {
                    "0": {"color": "green", "index": 0, "text": "ok"},
                    "1": {"color": "red", "index": 1, "text": "active"},
                },
            }
        ],
    )
    nonfinite_layers = bargauge(
        "Non-finite values by layer",
        "NaN/Inf values read per phase, pass, layer and blob (caffe_nonfinite_values_total); an empty layer "
        "is the net-wide 'All net params' line or the loss. " + nonfinite,
        targets(
            (
                f"sum by (phase, stage, layer, blob) ({sel('caffe_nonfinite_values_total')}) > 0",
                "{{phase}} {{stage}} {{layer}} {{blob}}",
            )
        ),
        thresholds=thresholds((None, "red")),
    )
    layers = table(
        "Layers in forward order",
        "The net's layers (caffe_layer_info): index = position in forward order (000 = input side), layer "
        "type from the 'Initializing net from parameters' block, per phase.",
        targets((f"max by (phase, index, layer, type) ({sel('caffe_layer_info')})", ""), table=True),
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True},
                    "indexByName": {"index": 0, "layer": 1, "type": 2, "phase": 3},
                },
            }
        ],
        sort_by=[{"desc": False, "displayName": "index"}],
    )
    panels = layout(
        [
            [
                (stats[0], 3, 4),
                (stats[1], 3, 4),
                (stats[2], 3, 4),
                (stats[3], 3, 4),
                (stats[4], 3, 4),
                (stats[5], 3, 4),
                (stats[6], 6, 4),
            ],
            [(loss, 12, 9), (test, 12, 9)],
            [(lr, 8, 7), (speed, 8, 7), (norms, 8, 7)],
            [(activations, 12, 11), (gradients, 12, 11)],
            [(param_grads, 12, 11), (ratio, 12, 11)],
            [(anomalies, 24, 7)],
            [(nonfinite_layers, 12, 8), (layers, 12, 8)],
        ]
    )
    annotations = [
        {
            "datasource": DS,
            "enable": True,
            "expr": f"{sel('caffe_anomaly')} == 1",
            "hide": False,
            "iconColor": "red",
            "name": "Anomalies",
            "refId": "Anomalies",
            "step": "$__interval",
            "tagKeys": "type,layer",
            "textFormat": "{{type}} anomaly in run {{run}} (layer '{{layer}}')",
            "titleFormat": "{{type}}",
            "useValueForTime": False,
        }
    ]
    variables = [*common_vars(run_multi=False), stall_var()]
    return dashboard(
        UID_RUN,
        "Caffe run detail",
        "One Caffe training run: solver curves, per-layer activations and gradients in forward order "
        "(mean absolute values, log scale), parameter norms, anomalies and where the first NaN/Inf "
        "appeared.",
        variables,
        panels,
        annotations,
    )


def health() -> Json:
    by_inst = "job, instance"
    stats = [
        stat(
            "Exporter up",
            "Prometheus scrape health of the exporter targets (up: 1 = scraped, 0 = failed).",
            targets((sel("up", INST), "{{instance}}")),
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"color": "red", "index": 0, "text": "down"},
                        "1": {"color": "green", "index": 1, "text": "up"},
                    },
                }
            ],
            thresholds=thresholds((None, "red"), (1, "green")),
        ),
        stat(
            "Files watched",
            "Log files currently open for tailing (caffe_exporter_files_watched).",
            targets((f"sum by ({by_inst}) ({sel('caffe_exporter_files_watched', INST)})", "{{instance}}")),
        ),
        stat(
            "Runs exported",
            "Runs currently exported (caffe_exporter_runs).",
            targets((f"sum by ({by_inst}) ({sel('caffe_exporter_runs', INST)})", "{{instance}}")),
        ),
        stat(
            "Since last read",
            "Seconds since a read returned data (time() - caffe_exporter_last_read_timestamp_seconds); grows "
            "while all watched logs are idle.",
            targets((f"time() - {sel('caffe_exporter_last_read_timestamp_seconds', INST)}", "{{instance}}")),
            unit="s",
            thresholds=thresholds((None, "green"), (900, "orange")),
        ),
        stat(
            "Series dropped",
            "Per-layer series not created because a run hit limits.max_series_per_run "
            "(caffe_exporter_series_dropped_total).",
            targets((f"sum by ({by_inst}) ({sel('caffe_exporter_series_dropped_total', INST)})", "{{instance}}")),
            thresholds=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Version",
            "Exporter version and Python version (caffe_exporter_build_info).",
            targets((sel("caffe_exporter_build_info", INST), "{{version}} (Python {{python_version}})")),
            text_mode="name",
            thresholds=thresholds((None, "text")),
        ),
    ]
    lines = timeseries(
        "Lines read per second by outcome",
        "Log lines read per second (rate of caffe_exporter_lines_total) by outcome: parsed (a known Caffe "
        "line), "
        "skipped (anything else), oversized (longer than max_line_bytes, dropped). Stacked: the top is all "
        "lines.",
        targets(
            (
                f"sum by ({by_inst}, outcome) (rate({sel('caffe_exporter_lines_total', INST)}[$__rate_interval]))",
                "{{instance}} {{outcome}}",
            )
        ),
        unit="suffix: lines/s",
        stack=True,
        legend_calcs=["mean", "max"],
    )
    read_bytes = timeseries(
        "Bytes read per second",
        "Bytes read per second from all watched sources (rate of caffe_exporter_bytes_read_total).",
        targets(
            (
                f"sum by ({by_inst}) (rate({sel('caffe_exporter_bytes_read_total', INST)}[$__rate_interval]))",
                "{{instance}}",
            )
        ),
        unit="Bps",
        legend_calcs=["mean", "max"],
    )
    outcomes = bargauge(
        "Lines by outcome (time range)",
        "Lines read during the dashboard time range by outcome (increase of caffe_exporter_lines_total): "
        "parsed, skipped, oversized, failed. Many 'oversized' lines mean max_line_bytes is too small; "
        "'failed' lines are a bug (the exporter's log has the traceback).",
        targets(
            (
                f"sum by (outcome) (increase({sel('caffe_exporter_lines_total', INST)}[$__range]))",
                "{{outcome}}",
            )
        ),
        thresholds=thresholds((None, "blue")),
    )
    file_events = timeseries(
        "Rotations, truncations and read errors",
        "Per scrape interval: rotations (a watched path now names another file), truncations (a file shrank "
        "below the read offset, copytruncate) and read errors (open/read/stat failures).",
        targets(
            *[
                (
                    f"sum by ({by_inst}) (increase({sel(m, INST)}[$__rate_interval]))",
                    f"{{{{instance}}}} {name}",
                )
                for m, name in (
                    ("caffe_exporter_file_rotations_total", "rotations"),
                    ("caffe_exporter_file_truncations_total", "truncations"),
                    ("caffe_exporter_read_errors_total", "read errors"),
                )
            ]
        ),
    )
    files = timeseries(
        "Files watched over time",
        "Log files open for tailing over time (caffe_exporter_files_watched), and paths that fail to open, "
        "stat or read right now (caffe_exporter_files_unreadable).",
        targets(
            (sel("caffe_exporter_files_watched", INST), "{{instance}} watched"),
            (sel("caffe_exporter_files_unreadable", INST), "{{instance}} unreadable"),
        ),
    )
    series = timeseries(
        "Series per scrape",
        "Samples in each scrape of the exporter (Prometheus' scrape_samples_scraped): the exporter's series "
        "count, dominated by per-layer series.",
        targets((sel("scrape_samples_scraped", INST), "{{instance}}")),
    )
    duration = timeseries(
        "Scrape duration",
        "Time Prometheus needed to scrape the exporter (scrape_duration_seconds).",
        targets((sel("scrape_duration_seconds", INST), "{{instance}}")),
        unit="s",
        legend_calcs=["mean", "max"],
    )
    cpu = timeseries(
        "Exporter CPU",
        "CPU the exporter process uses, in cores (rate of prometheus_client's process_cpu_seconds_total): "
        "what tailing and parsing all runs of the node costs.",
        targets((f"rate({sel('process_cpu_seconds_total', INST)}[$__rate_interval])", "{{instance}}")),
        unit="percentunit",
        legend_calcs=["mean", "max"],
    )
    memory = timeseries(
        "Exporter memory",
        "Resident memory of the exporter process (process_resident_memory_bytes).",
        targets((sel("process_resident_memory_bytes", INST), "{{instance}}")),
        unit="bytes",
        legend_calcs=["mean", "max"],
    )
    fresh_expr = f"time() - {sel('caffe_last_log_timestamp_seconds')}"
    freshness_desc = (
        "Seconds since the newest log line of each run (time() - caffe_last_log_timestamp_seconds, glog "
        "time of the line). A training run that stops logging grows here; finished runs grow too."
    )
    freshness = bargauge(
        "Run freshness",
        freshness_desc,
        targets((fresh_expr, "{{run}}")),
        unit="s",
        thresholds=thresholds((None, "green"), (300, "orange"), (3600, "red")),
        links=[run_link("${__field.labels.run}")],
    )
    freshness_ts = timeseries(
        "Run freshness over time",
        freshness_desc,
        targets((fresh_expr, "{{run}}")),
        unit="s",
        links=[run_link("${__field.labels.run}")],
    )
    panels = layout(
        [
            [(p, 4, 4) for p in stats],
            [(lines, 12, 8), (read_bytes, 12, 8)],
            [(outcomes, 8, 8), (file_events, 8, 8), (files, 8, 8)],
            [(series, 12, 8), (duration, 12, 8)],
            [(cpu, 12, 8), (memory, 12, 8)],
            [(freshness, 12, 8), (freshness_ts, 12, 8)],
        ]
    )
    return dashboard(
        UID_HEALTH,
        "Caffe exporter health",
        "The caffe-exporter process itself: files, read throughput, parse outcomes, rotations, "
        "errors, scrape size and duration, CPU and memory, and how fresh each run's log is.",
        common_vars(run_multi=True),
        panels,
    )


DASHBOARDS = {
    "caffe-runs-overview.json": overview,
    "caffe-run-detail.json": run_detail,
    "caffe-exporter-health.json": health,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------- inspection

VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
    "atan2",
}


def iter_queries(dash: Json) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and variable query of a dashboard."""
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            yield f"panel {p['id']} '{p['title']}' target {t['refId']}", t["expr"]
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            yield f"annotation '{a['name']}'", a["expr"]
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q, re.S)
            yield f"variable {v['name']}", m.group(1) if m else q


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $var / ${var} / ${var:fmt} with values[var] (KeyError for unknown variables)."""
    return VAR_RE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not functions, keywords, label names
    inside {...} or by/on/... lists, strings, numbers or durations."""
    s = VAR_RE.sub("0", expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', s)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if committed dashboards differ")
    ap.add_argument("--list-exprs", action="store_true", help="print every PromQL expression")
    args = ap.parse_args(argv)
    if args.list_exprs:
        for name, build in DASHBOARDS.items():
            for where, expr in iter_queries(build()):
                print(f"{name} {where}: {' '.join(expr.split())}")
        return 0
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = OUT_DIR / name, render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
