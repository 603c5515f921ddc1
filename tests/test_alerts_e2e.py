"""End to end on loopback: a NaN in a real Caffe log pages through real Prometheus and Alertmanager.

Starts, each on 127.0.0.1 with a free port and always stopped at the end:

1. the exporter, ``python -m exporter serve --listen 127.0.0.1:PORT <tmp>/logs`` (an empty watched directory);
2. ``prometheus`` scraping it every second, evaluating ``alerts/caffe-exporter.rules.yml`` every second and
   sending alerts to
3. ``prometheus-alertmanager`` running ``alerts/alertmanager.yml`` with the receivers' webhook URLs pointed at
   a webhook server this test runs, and 1 s group_wait / group_interval.

Then a healthy real log (``tests/fixtures/real-caffe/lenet_healthy``) is copied into the watched directory as
run A: once Prometheus has its ``caffe_iteration``, nothing may be notified (nor pending for run A) for 15 s.
Then run B's file is created and the lines of the real NaN run (``lenet_nan``) are appended in chunks: the
pager webhook must receive a firing critical notification for run B whose annotations name the first-origin
layer (``conv1``, FACTS.json ``first_nan_or_inf_per_layer_line``). The seconds from the write of the chunk holding
the first NaN to the webhook are printed and recorded (``record_property``: ``nan_write_to_webhook_seconds``).

Run labels are read from the exporter's ``caffe_run_info`` (``source`` label), not derived here.
Missing binaries fail the test; ``CAFFE_EXPORTER_SKIP_E2E=1`` skips it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
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
from e2e_util import (
    E2E_MARKS,
    ManagedProcess,
    Notification,
    PrometheusAPI,
    WebhookReceiver,
    free_port,
    http_get,
    require_binary,
    running,
    samples,
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


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("prometheus-alertmanager")
    logs = tmp_path / "logs"
    logs.mkdir()
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
    lines = (FIXTURES / "lenet_nan" / "caffe.log").read_text().splitlines(keepends=True)
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
