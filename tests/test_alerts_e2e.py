"""End to end on loopback: a fresh NaN in a real Caffe log pages through real Prometheus and Alertmanager, an old
one does not, and the Alertmanager example mutes only the warnings of the same run.

Starts, each on 127.0.0.1 with a free port and always stopped at the end:

1. the exporter, ``python -m exporter serve --listen 127.0.0.1:PORT <tmp>/logs`` (the watched directory, empty
   or holding logs written before the exporter starts);
2. ``prometheus`` scraping it every second, evaluating ``alerts/caffe-exporter.rules.yml`` every second and
   sending alerts to
3. ``prometheus-alertmanager`` running ``alerts/alertmanager.yml`` with the receivers' webhook URLs pointed at
   a webhook server this test runs, and 1 s group_wait / group_interval.

``test_nan_run_pages_and_healthy_run_is_quiet``: a healthy real log (``tests/fixtures/real-caffe/lenet_healthy``)
is copied into the watched directory as run A: once Prometheus has its ``caffe_iteration``, nothing may be
notified (nor pending for run A) for 15 s. Then run B's file is created and the lines of the real NaN run
(``lenet_nan``, its glog times moved so that its last line is "now": a run diverging while we watch) are appended
in chunks: the pager webhook must receive a firing critical notification for run B whose annotations name the
first-origin layer (``conv1``, FACTS.json ``first_nan_or_inf_per_layer_line``). The seconds from the write of the
chunk holding the first NaN to the webhook are printed and recorded (``record_property``:
``nan_write_to_webhook_seconds``).

``test_old_nan_log_read_at_start_warns_and_a_fresh_one_pages``: before the exporter starts, the watched directory
holds ``lenet_nan`` twice: as it is (glog times of 2026-11-26, mtime the time its own abort trace prints) and
with its glog times moved to "now". The exporter reads both from their beginning at start; the fresh one must
page, the old one must reach only the chat receiver (CaffeTrainingLossNonFiniteHistorical) and never the pager.

``test_nan_page_inhibits_only_the_same_run``: Alertmanager alone, running the example configuration; alerts are
posted to ``/api/v2/alerts``. A NaN page for ``run=resnet50`` on ``instance=node-a`` mutes the warning of that run
(``status.inhibitedBy``) and not the warning of ``run=resnet50`` on ``instance=node-b``; with a static ``cluster``
label added to the run identity as docs/runbooks.md says, a page in one cluster does not mute the other's.

Run labels are read from the exporter's ``caffe_run_info`` (``source`` label), not derived here.
Missing binaries fail the test; ``CAFFE_EXPORTER_SKIP_E2E=1`` skips it.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
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
    AlertmanagerAPI,
    ManagedProcess,
    Notification,
    PrometheusAPI,
    WebhookReceiver,
    free_port,
    http_get,
    require_binary,
    running,
    samples,
    shift_glog_times,
    wait_http_ok,
    wait_until,
)

pytestmark = E2E_MARKS

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "alerts" / "caffe-exporter.rules.yml"
ALERTMANAGER = REPO / "alerts" / "alertmanager.yml"
FIXTURES = REPO / "tests" / "fixtures" / "real-caffe"
JOB = "caffe-exporter"

STARTUP_TIMEOUT = 60.0  # each daemon ready
HEALTHY_QUIET_SECONDS = 15.0  # run A: no notification during this window
PAGE_TIMEOUT = 90.0  # run B: write of the first NaN -> webhook
CHUNK_PAUSE = 1.0
SETTLE_SECONDS = 5.0  # after the expected notifications: time for an unexpected one to arrive too


@dataclass
class Stack:
    logs: Path
    exporter_url: str
    prometheus: PrometheusAPI
    hook: WebhookReceiver
    procs: list[ManagedProcess]

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    def run_label(self, filename: str) -> str | None:
        """The exporter's run label for the file ``filename`` in the watched directory (by ``source``)."""
        for labels, _ in samples(http_get(self.exporter_url + "/metrics"), "caffe_run_info"):
            if Path(labels.get("source", "")).name == filename and labels.get("run"):
                return labels["run"]
        return None


def alertmanager_test_config(webhook_base: str) -> dict[str, Any]:
    """alerts/alertmanager.yml with its webhooks on ``webhook_base`` (same paths) and 1 s grouping timers."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = webhook_base + urllib.parse.urlsplit(webhook["url"]).path
    stack = [config["route"]]
    while stack:
        route = stack.pop()
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        stack.extend(route.get("routes", []))
    return config


@contextlib.contextmanager
def running_stack(tmp_path: Path) -> Iterator[Stack]:
    """Alertmanager, the exporter on ``tmp_path/logs`` (created if missing, read as it is) and Prometheus."""
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("prometheus-alertmanager")
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    exporter_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    while len({exporter_port, prometheus_port, alertmanager_port}) < 3:
        prometheus_port, alertmanager_port = free_port(), free_port()

    with contextlib.ExitStack() as es:
        hook = es.enter_context(WebhookReceiver())

        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_test_config(hook.url), sort_keys=False))
        alertmanager = es.enter_context(
            running(
                "alertmanager",
                [
                    alertmanager_bin,
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",
                ],
                tmp_path / "alertmanager.log",
            )
        )
        exporter = es.enter_context(
            running(
                "exporter",
                [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{exporter_port}", str(logs)],
                tmp_path / "exporter.log",
                cwd=REPO,
            )
        )
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "alerting": {
                        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
                    },
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
                    ],
                },
                sort_keys=False,
            )
        )
        prometheus = es.enter_context(
            running(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                tmp_path / "prometheus.log",
            )
        )
        procs = [exporter, prometheus, alertmanager]
        api = PrometheusAPI(f"http://127.0.0.1:{prometheus_port}", procs=procs)

        wait_http_ok(f"http://127.0.0.1:{alertmanager_port}/-/ready", STARTUP_TIMEOUT, procs=procs)
        wait_http_ok(f"http://127.0.0.1:{exporter_port}/metrics", STARTUP_TIMEOUT, procs=procs)
        api.wait_ready(STARTUP_TIMEOUT)
        api.wait_for_query(f'up{{job="{JOB}"}} == 1', STARTUP_TIMEOUT)
        groups = wait_until("Prometheus to load the rule groups", api.rules, STARTUP_TIMEOUT, procs=procs)
        expected = {g["name"] for g in yaml.safe_load(RULES.read_text())["groups"]}
        assert {g["name"] for g in groups} == expected
        # Prometheus has discovered the Alertmanager
        wait_until(
            "Prometheus to discover the Alertmanager",
            lambda: json.loads(http_get(f"{api.url}/api/v1/alertmanagers"))["data"]["activeAlertmanagers"],
            STARTUP_TIMEOUT,
            procs=procs,
        )
        yield Stack(logs, f"http://127.0.0.1:{exporter_port}", api, hook, procs)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as st:
        yield st


def fresh_lines(log: Path) -> list[str]:
    """The lines of ``log`` with its glog times moved so that its last line was written now."""
    return shift_glog_times(log.read_text(), time.time()).splitlines(keepends=True)


def firing_alerts(notification: Notification) -> list[dict[str, Any]]:
    body = notification.body if isinstance(notification.body, dict) else {}
    return [a for a in body.get("alerts", []) if a.get("status") == "firing"]


def test_nan_run_pages_and_healthy_run_is_quiet(stack: Stack, record_property: Any) -> None:
    api, hook, procs = stack.prometheus, stack.hook, stack.procs

    # ---- run A: a healthy, finished real run -> no notification at all ------------------------------------
    shutil.copyfile(FIXTURES / "lenet_healthy" / "caffe.log", stack.logs / "healthy.log")
    run_a = wait_until("the exporter to export healthy.log", lambda: stack.run_label("healthy.log"), 60, procs=procs)
    api.wait_for_query(f'caffe_iteration{{run="{run_a}"}}', 60)
    api.wait_for_query(f'caffe_run_finished{{run="{run_a}"}} == 1', 60)
    quiet_until = time.monotonic() + HEALTHY_QUIET_SECONDS
    while time.monotonic() < quiet_until:
        assert not hook.received(), f"notification for a healthy run: {hook.received()}\n{stack.tails()}"
        time.sleep(0.5)
    assert not hook.received(), f"notification for a healthy run: {hook.received()}"
    pending_or_firing = api.query(f'ALERTS{{run="{run_a}"}}')
    assert not pending_or_firing, f"alerts pending/firing for the healthy run {run_a}: {pending_or_firing}"
    exporter_alerts = [a for a in api.alerts() if a["labels"]["alertname"].startswith("CaffeExporter")]
    assert not exporter_alerts, f"exporter alerts while reading a healthy log: {exporter_alerts}"

    # ---- run B: append the lines of the real NaN run in chunks ---------------------------------------------
    facts = json.loads((FIXTURES / "lenet_nan" / "FACTS.json").read_text())
    origin = facts["first_nan_or_inf_per_layer_line"]
    lines = fresh_lines(FIXTURES / "lenet_nan" / "caffe.log")
    first_nan = next(
        i
        for i, line in enumerate(lines)
        if f"[Forward] Layer {origin['layer']}, top blob {origin['blob']} data: nan" in line
    )
    first_nan_loss = next(i for i, line in enumerate(lines) if i > first_nan and "loss = " in line and "nan" in line)
    # chunk 1: up to well before the NaN; chunk 2: holds the first NaN line and the first NaN loss line
    cuts = [0, first_nan // 2, first_nan_loss + 1, (first_nan_loss + 1 + len(lines)) // 2, len(lines)]
    chunks = [lines[a:b] for a, b in itertools.pairwise(cuts)]

    path_b = stack.logs / "nan.log"
    nan_written_at = 0.0
    with path_b.open("w") as out:
        for index, chunk in enumerate(chunks):
            out.writelines(chunk)
            out.flush()
            if index == 1:
                nan_written_at = time.monotonic()
                break
            time.sleep(CHUNK_PAUSE)
    run_b = wait_until("the exporter to export nan.log", lambda: stack.run_label("nan.log"), 60, procs=procs)
    assert run_b != run_a

    def is_page(n: Notification) -> bool:
        for alert in firing_alerts(n):
            labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
            if (
                labels.get("severity") == "critical"
                and labels.get("run") == run_b
                and any(origin["layer"] in str(v) for v in [*annotations.values(), *labels.values()])
            ):
                return True
        return False

    # the rest of the log keeps arriving while we wait for the page
    with path_b.open("a") as out:
        for chunk in chunks[2:]:
            time.sleep(CHUNK_PAUSE)
            out.writelines(chunk)
            out.flush()
    remaining = PAGE_TIMEOUT - (time.monotonic() - nan_written_at)

    def prometheus_state() -> str:
        alerts = [a for a in api.alerts() if a["labels"].get("run") in (run_b, None)]
        exported = {
            name: api.query(f'{name}{{run="{run_b}"}}')
            for name in ("caffe_loss", "caffe_anomaly", "caffe_first_nonfinite_info", "caffe_loss_nonfinite_total")
        }
        return f"Prometheus alerts: {json.dumps(alerts)[:3000]}\nPrometheus series: {json.dumps(exported)[:3000]}"

    page = hook.wait_for(
        f"a critical notification for run {run_b} naming layer {origin['layer']}",
        is_page,
        remaining,
        procs=procs,
        context=prometheus_state,
    )
    seconds = page.received - nan_written_at
    print(f"\nNaN write -> pager webhook: {seconds:.2f} s (run {run_b}, path {page.path})")
    record_property("nan_write_to_webhook_seconds", round(seconds, 3))

    assert page.path == "/page", f"critical alert routed to {page.path}, expected the pager"
    alert = next(a for a in firing_alerts(page) if a["labels"].get("run") == run_b)
    print(f"{alert['labels']['alertname']}: {alert['annotations']['description']}")
    assert alert["labels"]["alertname"] in {"CaffeTrainingLossNonFinite", "CaffeLayerNonFinite"}
    assert alert["annotations"]["runbook_url"].endswith("#" + alert["labels"]["alertname"].lower())
    assert "caffe-run-detail" in alert["annotations"]["dashboard_url"]
    assert seconds < PAGE_TIMEOUT
    # nothing about the healthy run was ever sent
    for n in hook.received():
        assert all(a.get("labels", {}).get("run") != run_a for a in firing_alerts(n)), n.body


# ---------------------------------------------------------------------------------------------- paging window


def alerts_of(n: Notification, run: str) -> list[dict[str, Any]]:
    return [a for a in firing_alerts(n) if a.get("labels", {}).get("run") == run]


def test_old_nan_log_read_at_start_warns_and_a_fresh_one_pages(tmp_path: Path) -> None:
    source = FIXTURES / "lenet_nan" / "caffe.log"
    text = source.read_text()
    logs = tmp_path / "logs"
    logs.mkdir()
    # the fixture as it is: its newest glog line (I1126 14:27:44) was written just before the abort trace that
    # prints the Unix time; an old log's mtime is its last write, and the exporter takes the year from it
    old = logs / "old_nan.log"
    old.write_text(text)
    match = re.search(r"^\*\*\* Aborted at (\d+) \(unix time\)", text, re.MULTILINE)
    assert match, "lenet_nan/caffe.log lost its abort trace"
    aborted_at = float(match.group(1))
    os.utime(old, (aborted_at, aborted_at))
    # the same run, its glog times moved so that the last line is now (mtime now)
    fresh = logs / "fresh_nan.log"
    fresh.write_text("".join(fresh_lines(source)))

    with running_stack(tmp_path) as st:
        api, hook, procs = st.prometheus, st.hook, st.procs
        run_old = wait_until("the exporter to export old_nan.log", lambda: st.run_label("old_nan.log"), 60, procs=procs)
        run_fresh = wait_until(
            "the exporter to export fresh_nan.log", lambda: st.run_label("fresh_nan.log"), 60, procs=procs
        )
        assert run_old != run_fresh
        # the exporter dated the old log to its original time and the fresh one to now
        stamps = {
            labels["run"]: value
            for labels, value in samples(http_get(st.exporter_url + "/metrics"), "caffe_last_log_timestamp_seconds")
        }
        assert abs(stamps[run_old] - aborted_at) < 1.0, stamps
        assert abs(stamps[run_fresh] - time.time()) < STARTUP_TIMEOUT * 3, stamps

        def prometheus_state() -> str:
            return f"Prometheus alerts: {json.dumps(api.alerts())[:4000]}"

        page = hook.wait_for(
            f"the pager notification for the fresh run {run_fresh}",
            lambda n: n.path == "/page"
            and any(a["labels"].get("alertname") == "CaffeTrainingLossNonFinite" for a in alerts_of(n, run_fresh)),
            PAGE_TIMEOUT,
            procs=procs,
            context=prometheus_state,
        )
        # the first notification about the old run: a page would end the wait at once (and fail below)
        def old_run_notified(n: Notification) -> bool:
            names = {a["labels"].get("alertname") for a in alerts_of(n, run_old)}
            return bool(names) and (n.path == "/page" or "CaffeTrainingLossNonFiniteHistorical" in names)

        warning = hook.wait_for(
            f"the chat notification (or a page) for the old run {run_old}",
            old_run_notified,
            PAGE_TIMEOUT,
            procs=procs,
            context=prometheus_state,
        )
        assert warning.path == "/chat", f"the old NaN log paged: {json.dumps(warning.body)[:2000]}"
        settle_until = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < settle_until:
            assert all(p.alive for p in procs), st.tails()
            time.sleep(0.5)

        (historical,) = [
            a for a in alerts_of(warning, run_old) if a["labels"]["alertname"] == "CaffeTrainingLossNonFiniteHistorical"
        ]
        print(f"\n{run_old}: {historical['annotations']['description']}")
        assert historical["labels"]["severity"] == "warning"
        assert "does not page" in historical["annotations"]["description"]
        assert "layer conv1" in historical["annotations"]["description"]
        assert any(a["labels"]["severity"] == "critical" for a in alerts_of(page, run_fresh))

        # the old run never reached the pager, and never had a critical alert in Prometheus at all
        for n in hook.received():
            if n.path == "/page":
                assert not alerts_of(n, run_old), f"the old NaN log paged: {json.dumps(n.body)[:2000]}"
        assert not api.query(f'count_over_time(ALERTS{{run="{run_old}",severity="critical"}}[1h])')
        # and the fresh one never looked historical
        assert not api.query(f'count_over_time(ALERTS{{run="{run_fresh}",alertname=~".*Historical"}}[1h])')


# ---------------------------------------------------------------------------------------------- inhibition


def with_identity_labels(config: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """``config`` with ``extra`` added to the run identity (route group_by and every inhibit rule's equal), the
    edit docs/runbooks.md ("Run identity in Alertmanager") asks for."""
    config["route"]["group_by"] = [*config["route"]["group_by"], *extra]
    for rule in config["inhibit_rules"]:
        rule["equal"] = [*rule["equal"], *extra]
    return config


def posted(alertname: str, severity: str, **labels: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "labels": {"alertname": alertname, "severity": severity, "job": JOB, **labels},
        "annotations": {"summary": f"{alertname} posted by {__name__}"},
        "startsAt": now.isoformat(),
        "endsAt": (now + datetime.timedelta(minutes=10)).isoformat(),
    }


@pytest.mark.parametrize(
    ("extra_identity", "page_labels", "muted_labels", "kept_labels"),
    [
        pytest.param(
            [],
            {"instance": "node-a:10052", "run": "resnet50"},
            {"instance": "node-a:10052", "run": "resnet50"},
            {"instance": "node-b:10052", "run": "resnet50"},
            id="shipped-config-instance",
        ),
        pytest.param(
            ["cluster"],
            {"instance": "node-a:10052", "run": "resnet50", "cluster": "eu"},
            {"instance": "node-a:10052", "run": "resnet50", "cluster": "eu"},
            {"instance": "node-a:10052", "run": "resnet50", "cluster": "us"},
            id="static-label-cluster-added",
        ),
    ],
)
def test_nan_page_inhibits_only_the_same_run(
    tmp_path: Path,
    extra_identity: list[str],
    page_labels: dict[str, str],
    muted_labels: dict[str, str],
    kept_labels: dict[str, str],
) -> None:
    alertmanager_bin = require_binary("prometheus-alertmanager")
    port = free_port()
    with WebhookReceiver() as hook:
        config = with_identity_labels(alertmanager_test_config(hook.url), extra_identity)
        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [
            alertmanager_bin,
            f"--config.file={am_config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ]
        with running("alertmanager", cmd, tmp_path / "alertmanager.log") as proc:
            am = AlertmanagerAPI(f"http://127.0.0.1:{port}", procs=[proc])
            am.wait_ready(STARTUP_TIMEOUT)

            def held(labels: dict[str, str]) -> dict[str, Any] | None:
                return next((a for a in am.alerts() if labels.items() <= a["labels"].items()), None)

            page = posted("CaffeTrainingLossNonFinite", "critical", **page_labels)
            am.post_alerts([page])
            source = wait_until("Alertmanager to hold the page", lambda: held(page["labels"]), 30, procs=[proc])
            muted = posted("CaffeExplodingGradients", "warning", **muted_labels)
            kept = posted("CaffeExplodingGradients", "warning", **kept_labels)
            am.post_alerts([muted, kept])

            def inhibited(labels: dict[str, str]) -> dict[str, Any] | None:
                alert = held(labels)
                return alert if alert and alert["status"]["inhibitedBy"] else None

            muted_alert = wait_until(
                f"the warning {muted_labels} to be inhibited",
                lambda: inhibited(muted["labels"]),
                30,
                procs=[proc],
                context=lambda: json.dumps(am.alerts())[:4000],
            )
            assert muted_alert["status"]["inhibitedBy"] == [source["fingerprint"]]
            assert muted_alert["status"]["state"] == "suppressed"
            kept_alert = held(kept["labels"])
            assert kept_alert is not None
            assert kept_alert["status"] == {"state": "active", "inhibitedBy": [], "silencedBy": []}

            # and what the receivers got: the page, the other run's warning, never the muted warning
            def delivered(path: str, labels: dict[str, str]) -> Any:
                return lambda n: n.path == path and any(
                    labels.items() <= a["labels"].items() for a in firing_alerts(n)
                )

            hook.wait_for("the page", delivered("/page", page["labels"]), 30, procs=[proc])
            hook.wait_for(f"the warning {kept_labels}", delivered("/chat", kept["labels"]), 30, procs=[proc])
            settle_until = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < settle_until:
                assert proc.alive, proc.tail()
                time.sleep(0.5)
            assert not any(delivered("/chat", muted["labels"])(n) for n in hook.received()), [
                n.body for n in hook.received()
            ]
