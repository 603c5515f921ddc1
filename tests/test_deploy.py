"""Checks for the deployment bundle in ``deploy/`` (systemd, container, Kubernetes) against the real exporter.

- every YAML file under ``deploy/`` parses; Kubernetes manifests are namespace-free and listed in
  ``kustomization.yaml`` (and ``kubectl kustomize`` builds them when kubectl is installed);
- every flag used by the DaemonSet, the systemd unit and the Containerfile exists in the output of
  ``python -m exporter serve --help`` (run in a subprocess);
- the ConfigMap's ``config.yml`` and ``deploy/systemd/config.yml`` load with ``exporter.config``;
- ports, probe paths, scrape annotations, Service and ServiceMonitor agree with each other and with the
  configured ``listen`` address; the DaemonSet's securityContext and hostPath mount are hardened;
- the DaemonSet's startup and liveness probes ask ``/-/healthy``, its readiness probe ``/-/ready``;
- the real exporter, started with the DaemonSet's arguments and each example config (log paths pointed at a
  copy of a test fixture, ``--listen`` on a free loopback port), answers ``/``, ``/metrics`` and every probe
  path; the Containerfile's HEALTHCHECK command succeeds against it (and fails when nothing listens); with
  100 idle connections and 20 parallel scrapes its thread count stays below the unit's ``TasksMax``;
- ``systemd-analyze verify`` accepts the unit (only "ExecStart binary not installed" is tolerated), and accepts
  a copy whose ExecStart points at this Python with no message at all;
- the Containerfile has the instructions the deployment relies on, and the build context left by the root
  ``.dockerignore`` builds a wheel with ``pip wheel`` (what ``pip install .`` in the image does).

Not tested here: building or running the image (no container engine on the test machines), applying the
manifests to a cluster, and starting the unit under a real systemd (the hardening is only statically checked).
A missing ``systemd-analyze`` or ``kubectl`` skips its test with a reason; any other failure to run a check fails.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import config
from exporter.shard import Shard

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "caffe-exporter.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "config.yml"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"
FIXTURE_LOG = REPO / "tests" / "fixtures" / "public-logs" / "bvlc-rmsprop-diverging-87.3365.log"
PORT = 10052
LOG_DIR = "/var/log/caffe"
UNIT_CONFIG = "/etc/caffe-exporter/config.yml"
TIMEOUT = 60
# Kubernetes probe -> the exporter's endpoint for it (named after Prometheus' own /-/healthy and /-/ready).
PROBES = {"startupProbe": "/-/healthy", "livenessProbe": "/-/healthy", "readinessProbe": "/-/ready"}


# ---------------------------------------------------------------------------------------------- helpers


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=REPO, **kw)


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(p.read_text()) if d is not None)
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {K8S}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    containers = _one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the DaemonSet should run exactly one container"
    c: dict[str, Any] = containers[0]
    return c


def _configmap_text() -> str:
    cm = _one("ConfigMap")
    assert "config.yml" in cm["data"], "ConfigMap must carry the exporter's config under the key config.yml"
    text: str = cm["data"]["config.yml"]
    return text


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; systemd allows repeated keys, so no configparser."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert "=" in line, f"{UNIT.name}: not a Key=Value line: {raw!r}"
        k, v = line.split("=", 1)
        entries.append((section, k.strip(), v.strip()))
    return entries


def _unit(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _unit_entries() if s == section and k == key]


def _exec_start() -> list[str]:
    values = _unit("ExecStart")
    assert len(values) == 1, f"{UNIT.name}: expected one ExecStart=, got {values}"
    return shlex.split(values[0])


def _containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        instr, _, rest = full.partition(" ")
        out.append((instr.upper(), rest.strip()))
    assert not pending, f"{CONTAINERFILE}: dangling line continuation"
    return out


def _instr(name: str) -> list[str]:
    return [rest for instr, rest in _containerfile() if instr == name]


def _console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


@contextlib.contextmanager
def _exporter(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def serve_flags() -> set[str]:
    """The long options of the real `serve` subcommand, from its --help in a subprocess."""
    r = _run([sys.executable, "-m", "exporter", "serve", "--help"])
    assert r.returncode == 0, f"`python -m exporter serve --help` failed ({r.returncode}):\n{r.stdout}{r.stderr}"
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.stdout))
    assert "--config" in flags and "--listen" in flags, f"unexpected --help output:\n{r.stdout}"
    return flags


# ---------------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{path}: top level must be a mapping"


def test_kubernetes_manifests_are_namespace_free_and_labelled() -> None:
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} == {"ConfigMap", "DaemonSet", "Service", "ServiceMonitor"}
    for d in docs:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in d, f"{d.get('kind')}: missing {key}"
        assert d["metadata"].get("name"), f"{d['kind']}: missing metadata.name"
        assert "namespace" not in d["metadata"], f"{d['kind']} {d['metadata']['name']}: must be namespace-free"
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "caffe-exporter"


def test_kustomization_lists_every_manifest() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization"
    assert "namespace" not in k, "kustomization.yaml must stay namespace-free"
    listed = set(k["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(on_disk)}"


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: `kubectl kustomize deploy/kubernetes` not run")
    r = _run([kubectl, "kustomize", str(K8S)])
    assert r.returncode == 0, f"kubectl kustomize failed:\n{r.stderr}"
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == ["ConfigMap", "DaemonSet", "Service", "ServiceMonitor"], kinds


# ---------------------------------------------------------------------------------------------- configs


def test_configmap_config_loads_with_the_real_loader() -> None:
    cfg = config.from_mapping(yaml.safe_load(_configmap_text()), "deploy/kubernetes/configmap.yaml:config.yml")
    assert config.parse_listen(cfg.listen, "listen")[1] == PORT
    assert [s.path for s in cfg.sources] == [LOG_DIR]


def test_systemd_example_config_loads_with_the_real_loader() -> None:
    cfg = config.load(str(SYSTEMD_CONFIG))
    assert config.parse_listen(cfg.listen, "listen")[1] == PORT
    assert LOG_DIR in [s.path for s in cfg.sources]


# ---------------------------------------------------------------------------------------------- DaemonSet


def test_daemonset_args_are_real_serve_flags(serve_flags: set[str]) -> None:
    c = _container()
    args = c.get("args", [])
    assert "command" not in c, "keep the image ENTRYPOINT (caffe-exporter serve); pass flags with args"
    unknown = [f for f in _flags(args) if f not in serve_flags]
    assert not unknown, f"DaemonSet args use flags that `caffe-exporter serve` does not have: {unknown}"
    # --config points at the ConfigMap's key where the ConfigMap is mounted.
    cfg_path = _flag_value(args, "--config")
    assert cfg_path is not None, "DaemonSet must pass --config"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in _one("DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    cm_mounts = [m for n, m in mounts.items() if "configMap" in volumes[n]]
    assert len(cm_mounts) == 1
    assert cfg_path == f"{cm_mounts[0]['mountPath']}/config.yml"
    assert volumes[cm_mounts[0]["name"]]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]


def test_daemonset_ports_probes_and_annotations_match_the_listen_address() -> None:
    ds = _one("DaemonSet")
    c = _container()
    listen_port = config.parse_listen(config.from_mapping(yaml.safe_load(_configmap_text()), "cm").listen, "")[1]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert list(ports.values()) == [listen_port] == [PORT]
    for probe, path in PROBES.items():
        http = c[probe]["httpGet"]
        assert http["path"] == path, f"{probe} must ask {path}, as Prometheus' own probes do"
        port = ports.get(http["port"], http["port"])
        assert port == PORT, f"{probe} port {http['port']} is not {PORT}"
        assert c[probe].get("timeoutSeconds", 1) >= 2
    startup = c["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"startupProbe gives a big backlog only {budget} s before liveness may restart the pod"
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(PORT)
    assert ann["prometheus.io/path"] == "/metrics"


def test_daemonset_is_hardened_and_sized() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    c = _container()
    psc, csc = pod.get("securityContext", {}), c["securityContext"]
    assert psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True
    assert (csc.get("runAsUser") or psc.get("runAsUser") or 0) != 0
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert pod.get("automountServiceAccountToken") is False
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"resources.{kind} must set cpu and memory"


def test_daemonset_mounts_the_log_dir_read_only_and_the_config_reads_it() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    host = [v for v in pod["volumes"] if "hostPath" in v]
    assert [v["hostPath"]["path"] for v in host] == [LOG_DIR]
    mounts = [m for m in _container()["volumeMounts"] if m["name"] == host[0]["name"]]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True and mounts[0]["mountPath"] == LOG_DIR
    assert all(m.get("readOnly") is True for m in _container()["volumeMounts"]), "every mount read-only"
    cfg = config.from_mapping(yaml.safe_load(_configmap_text()), "cm")
    for s in cfg.sources:
        assert s.path == LOG_DIR or s.path.startswith(LOG_DIR + "/"), f"source {s.path} is not under the mount"


def test_image_user_matches_daemonset_user() -> None:
    user = _instr("USER")[-1].split(":")[0]
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    run_as = _container()["securityContext"].get("runAsUser", pod["securityContext"].get("runAsUser"))
    assert user.isdigit(), "USER must be numeric for runAsNonRoot to verify it"
    assert int(user) == run_as


# ---------------------------------------------------------------------------------------------- Service


def test_service_and_servicemonitor_select_the_daemonset() -> None:
    ds, svc, sm = _one("DaemonSet"), _one("Service"), _one("ServiceMonitor")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items(), "Service selector does not match the pods"
    container_ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["metrics"]["port"] == PORT
    target = svc_ports["metrics"]["targetPort"]
    assert container_ports.get(target, target) == PORT
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in svc_ports and ep.get("path", "/metrics") == "/metrics"


# ---------------------------------------------------------------------------------------------- live exporter


def _rewrite_config(text: str, log_dir: Path) -> str:
    data = yaml.safe_load(text)
    sources = [s if isinstance(s, dict) else {"path": s} for s in data["sources"]]
    data["sources"] = [{**s, "path": s["path"].replace(LOG_DIR, str(log_dir))} for s in sources]
    return yaml.safe_dump(data)


@pytest.mark.parametrize("which", ["kubernetes", "systemd"])
def test_real_exporter_answers_probes_with_the_deployed_args(which: str, tmp_path: Path) -> None:
    """Start `python -m exporter serve` with the deployment's flags and config (log paths and listen address
    redirected to the test's sandbox) and hit the probe path and /metrics."""
    if which == "kubernetes":
        args, text = list(_container()["args"]), _configmap_text()
    else:
        args, text = _exec_start()[2:], SYSTEMD_CONFIG.read_text()
    log_dir = tmp_path / "caffe" / "rmsprop-run"
    log_dir.mkdir(parents=True)
    shutil.copy(FIXTURE_LOG, log_dir / "caffe.log")
    cfg_file = tmp_path / "config.yml"
    cfg_file.write_text(_rewrite_config(text, tmp_path / "caffe"))
    args[args.index("--config") + 1] = str(cfg_file)
    port = _free_port()
    with _exporter([*args, "--listen", f"127.0.0.1:{port}"], tmp_path / "exporter.log") as proc:
        deadline = time.monotonic() + 30
        status, metrics, ready = 0, "", 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"exporter exited {proc.returncode}:\n{(tmp_path / 'exporter.log').read_text()}"
            with contextlib.suppress(OSError):
                status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
                ready, _ = _get(f"http://127.0.0.1:{port}/-/ready")
                if status == 200 and 'run="rmsprop-run"' in metrics and ready == 200:
                    break
            time.sleep(0.2)
        assert status == 200 and 'run="rmsprop-run"' in metrics, (
            f"no metrics for the fixture run after 30 s:\n{(tmp_path / 'exporter.log').read_text()}")
        assert ready == 200, "/-/ready did not answer 200 once the fixture was read"
        status, body = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "rmsprop-run" in body, "the landing page / did not answer 200 with the run listed"
        for path in sorted(set(PROBES.values())):
            assert _get(f"http://127.0.0.1:{port}{path}")[0] == 200, f"probe path {path} did not answer 200"
        if which == "kubernetes":  # the image's HEALTHCHECK, pointed at this exporter's port
            r = _run(_healthcheck_argv(port))
            assert r.returncode == 0, f"HEALTHCHECK failed against a healthy exporter:\n{r.stderr}"
        else:  # the unit's TasksMax holds however many clients connect (each used to cost a thread)
            with _clients(port, idle=100, scrapes=20):
                threads = _threads(proc.pid)
            assert threads < int(_unit("TasksMax")[0]), f"{threads} threads reach the unit's TasksMax"


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


@contextlib.contextmanager
def _clients(port: int, idle: int, scrapes: int) -> Iterator[None]:
    """`idle` silent connections held open, and `scrapes` GET /metrics in parallel done, while the body runs."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(idle)]
    try:
        threads = [threading.Thread(target=_get, args=(f"http://127.0.0.1:{port}/metrics",)) for _ in range(scrapes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        yield
    finally:
        for c in conns:
            c.close()


def _healthcheck_argv(port: int) -> list[str]:
    (check,) = _instr("HEALTHCHECK")
    argv: list[str] = json.loads(check[check.index("CMD") + 3:])
    assert argv[0] == "python", "the HEALTHCHECK runs the image's python (there is no curl in python:3.11-slim)"
    return [sys.executable, *[a.replace(f":{PORT}/", f":{port}/") for a in argv[1:]]]


def test_healthcheck_fails_when_nothing_answers() -> None:
    r = _run(_healthcheck_argv(_free_port()))
    assert r.returncode != 0


# ---------------------------------------------------------------------------------------------- systemd


def test_unit_is_hardened_and_uses_real_flags(serve_flags: set[str]) -> None:
    argv = _exec_start()
    assert os.path.isabs(argv[0]) and os.path.basename(argv[0]) in _console_scripts()
    assert argv[1] == "serve"
    unknown = [f for f in _flags(argv[2:]) if f not in serve_flags]
    assert not unknown, f"ExecStart uses flags that `caffe-exporter serve` does not have: {unknown}"
    assert _flag_value(argv, "--config") == UNIT_CONFIG
    assert _unit("DynamicUser") == ["yes"] or _unit("User") not in ([], ["root"], ["0"])
    assert _unit("ProtectSystem") == ["strict"]
    assert _unit("NoNewPrivileges") == ["yes"]
    assert _unit("Restart") == ["on-failure"]
    assert _unit("CapabilityBoundingSet") == [""]
    read_only = [p.lstrip("-") for v in _unit("ReadOnlyPaths") for p in v.split()]
    assert LOG_DIR in read_only
    assert not _unit("ReadWritePaths"), "the exporter writes nothing; no ReadWritePaths"
    # Every configured source lies under a ReadOnlyPaths entry (ProtectSystem=strict allows reading anyway,
    # but the list documents and pins what the service reads).
    for s in config.load(str(SYSTEMD_CONFIG)).sources:
        assert any(s.path == p or s.path.startswith(p.rstrip("/") + "/") for p in read_only), (
            f"source {s.path} is not under ReadOnlyPaths {read_only}")
    assert _unit("WantedBy", "Install") == ["multi-user.target"]
    # systemd's default soft limit of 1024 descriptors is what the review's EMFILE spin (D2) was hit at.
    (nofile,) = _unit("LimitNOFILE")
    assert nofile.isdigit() and int(nofile) >= 4096, f"LimitNOFILE={nofile}"
    (tasks,) = _unit("TasksMax")
    assert tasks.isdigit(), f"TasksMax={tasks}: a number, checked against the real exporter's threads"


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed: `systemd-analyze verify` not run on the unit")
    return tool


def test_systemd_analyze_verify_unit(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    r = _run([tool, "verify", str(UNIT)])
    binary = _exec_start()[0]
    allowed = f"{UNIT.name}: Command {binary} is not executable: No such file or directory"
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    other = [ln for ln in lines if ln.strip() != allowed]
    assert not other, f"systemd-analyze verify complained (rc={r.returncode}):\n" + "\n".join(lines)
    if os.access(binary, os.X_OK):
        assert r.returncode == 0, "\n".join(lines)


def test_systemd_analyze_verify_unit_with_an_existing_binary(tmp_path: Path) -> None:
    """The same unit with ExecStart's binary replaced by `<this python> -m exporter`: no message at all."""
    tool = _systemd_analyze()
    binary = _exec_start()[0]
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(f"ExecStart={binary} ", f"ExecStart={sys.executable} -m exporter "))
    assert unit.read_text() != UNIT.read_text()
    r = _run([tool, "verify", str(unit)])
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and not out, f"systemd-analyze verify (rc={r.returncode}):\n{out}"


# ---------------------------------------------------------------------------------------------- container


def test_containerfile_instructions() -> None:
    instrs = _containerfile()
    assert instrs[0] == ("FROM", "python:3.11-slim"), f"first instruction is {instrs[0]}"
    (check,) = _instr("HEALTHCHECK")
    assert re.match(r"(--\S+\s+)*CMD\s+\[", check), f"HEALTHCHECK must be exec-form CMD: {check}"
    assert f"http://127.0.0.1:{PORT}/-/healthy" in check and "curl" not in check and "wget" not in check
    runs = _instr("RUN")
    assert any(re.search(r"\bpip install \.(\s|$)", r) for r in runs), "RUN pip install . missing"
    users = _instr("USER")
    assert users, "USER missing: the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    names = [i for i, _ in instrs]
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN"), "USER must come after RUN"
    assert _instr("EXPOSE") == [str(PORT)]
    (entry,) = _instr("ENTRYPOINT")
    argv = json.loads(entry)  # exec form, so signals reach the exporter (it stops cleanly on SIGTERM)
    assert argv == ["caffe-exporter", "serve"]
    assert argv[0] in _console_scripts()


def test_containerfile_cmd_paths_and_flags(serve_flags: set[str]) -> None:
    for cmd in _instr("CMD"):
        argv = json.loads(cmd)
        assert not [f for f in _flags(argv) if f not in serve_flags]


def _dockerignore_patterns() -> list[tuple[bool, str]]:
    pats = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pats.append((neg, line.lstrip("!").strip("/")))
    return pats


def _ignored(rel: str, pats: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory matches below it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for neg, pat in pats:
        alts = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alts):
            ignored = not neg
    return ignored


def _build_context() -> list[str]:
    pats = _dockerignore_patterns()
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d != ".git"]
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), REPO)
            if not _ignored(rel, pats):
                files.append(rel)
    return sorted(files)


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    ctx = _build_context()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = ["pyproject.toml", "exporter/__init__.py", "exporter/cli.py", "exporter/py.typed"]
    if isinstance(project.get("readme"), str):
        needed.append(project["readme"])
    for f in needed:
        assert f in ctx, f".dockerignore leaves {f} out of the build context"
    assert any(f.startswith("exporter/demo_data/") for f in ctx), "package data exporter/demo_data/ left out"
    assert not [f for f in ctx if f.startswith(("tests/", ".git/", "deploy/", "bench/"))]
    assert not [f for f in ctx if "__pycache__" in f or f.endswith(".pyc")]


def test_build_context_builds_a_wheel(tmp_path: Path) -> None:
    """What `RUN pip install .` does in the image, minus fetching the runtime dependencies."""
    ctx = tmp_path / "context"
    for rel in _build_context():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, ctx / rel)
    # --no-build-isolation: the installed setuptools builds it; tests send no traffic beyond loopback
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
              str(tmp_path / "dist"), str(ctx)],
             env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert r.returncode == 0, (
        "pip wheel on the .dockerignore-filtered build context failed (it builds with the installed "
        f"setuptools, >= 61):\n{r.stdout}{r.stderr}")
    (wheel,) = (tmp_path / "dist").glob("caffe_exporter-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "exporter/cli.py" in names and any(n.startswith("exporter/demo_data/") for n in names)
    assert "caffe-exporter = exporter.cli:main" in entry_points


# ---------------------------------------------------------------------------------------------- sharded StatefulSet

SHARDED = K8S / "sharded"
SHARED_DIR = "/shared/caffe-jobs"


def _sharded_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for p in sorted(SHARDED.glob("*.yaml")):
        if p.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(p.read_text()) if d is not None)
    return docs


def _sharded(kind: str) -> dict[str, Any]:
    found = [d for d in _sharded_docs() if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {SHARDED}, found {len(found)}"
    return found[0]


def _sharded_container() -> dict[str, Any]:
    (c,) = _sharded("StatefulSet")["spec"]["template"]["spec"]["containers"]
    container: dict[str, Any] = c
    return container


def _expanded_args(ordinal: int) -> list[str]:
    """The container's args as the kubelet expands them for pod `ordinal` ($(VAR) from the env)."""
    env: dict[str, str] = {}
    for e in _sharded_container()["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
            env[e["name"]] = str(ordinal)
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in _sharded_container()["args"]]


def test_sharded_kustomize_builds_a_statefulset_and_no_daemonset() -> None:
    k = yaml.safe_load((SHARDED / "kustomization.yaml").read_text())
    assert "namespace" not in k
    assert set(k["resources"]) == {p.name for p in SHARDED.glob("*.yaml")} - {"kustomization.yaml"}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: `kubectl kustomize deploy/kubernetes/sharded` not run")
    r = _run([kubectl, "kustomize", str(SHARDED)])
    assert r.returncode == 0, f"kubectl kustomize failed:\n{r.stderr}"
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Service", "ServiceMonitor", "StatefulSet"], kinds


def test_sharded_pods_take_their_shard_from_the_ordinal(serve_flags: set[str]) -> None:
    sts = _sharded("StatefulSet")
    replicas = sts["spec"]["replicas"]
    assert replicas >= 2
    for ordinal in range(replicas):
        args = _expanded_args(ordinal)
        assert not [f for f in _flags(args) if f not in serve_flags]
        value = _flag_value(args, "--shard")
        assert value is not None, "the StatefulSet must pass --shard"
        assert config.parse_shard(value, "--shard") == Shard(ordinal, replicas), "SHARD_TOTAL != replicas"


def test_sharded_pods_read_one_shared_read_only_volume() -> None:
    pod = _sharded("StatefulSet")["spec"]["template"]["spec"]
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["readOnly"] is True
    pvc = _sharded("PersistentVolumeClaim")
    assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    mounts = _sharded_container()["volumeMounts"]
    assert all(m["readOnly"] is True for m in mounts)
    assert [m["mountPath"] for m in mounts if m["name"] == claim["name"]] == [SHARED_DIR]
    (cm_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    cm = _sharded("ConfigMap")
    assert cm_volume["configMap"]["name"] == cm["metadata"]["name"]
    assert _flag_value(_expanded_args(0), "--config") == \
        f"{next(m['mountPath'] for m in mounts if m['name'] == cm_volume['name'])}/config.yml"
    cfg = config.from_mapping(yaml.safe_load(cm["data"]["config.yml"]), "sharded/configmap.yaml")
    assert [s.path for s in cfg.sources] == [SHARED_DIR] and cfg.poll is True
    assert cfg.shard == Shard(), "the shard comes from the pod, not from the config every pod shares"


def test_sharded_statefulset_is_hardened_and_selected_by_its_service() -> None:
    sts, svc, sm = _sharded("StatefulSet"), _sharded("Service"), _sharded("ServiceMonitor")
    pod, c = sts["spec"]["template"]["spec"], _sharded_container()
    csc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10052
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and pod.get("automountServiceAccountToken") is False
    for probe, path in PROBES.items():
        assert c[probe]["httpGet"]["path"] == path
    assert [p["containerPort"] for p in c["ports"]] == [PORT]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    base_pods = _one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= base_pods.items(), "must not select the DaemonSet's pods"


def _status(url: str) -> int:
    try:
        return _get(url)[0]
    except urllib.error.URLError:  # not listening yet
        return 0


def test_real_exporters_with_the_statefulset_args_split_the_runs(tmp_path: Path) -> None:
    """Every pod's args (ordinal expanded, config pointed at a sandbox tree): disjoint runs, none missing."""
    tree = tmp_path / "jobs"
    for i in range(9):
        (tree / f"job-{i}").mkdir(parents=True)
        shutil.copy(FIXTURE_LOG, tree / f"job-{i}" / "caffe.log")
    cfg_file = tmp_path / "config.yml"
    text = _sharded("ConfigMap")["data"]["config.yml"].replace(SHARED_DIR, str(tree))
    cfg_file.write_text(text.replace("poll_interval: 1.0", "poll_interval: 0.2"))
    replicas = _sharded("StatefulSet")["spec"]["replicas"]
    exported: list[set[str]] = []
    with contextlib.ExitStack() as stack:
        for ordinal in range(replicas):
            args = _expanded_args(ordinal)
            args[args.index("--config") + 1] = str(cfg_file)
            port = _free_port()
            proc = stack.enter_context(_exporter([*args, "--listen", f"127.0.0.1:{port}"],
                                                 tmp_path / f"shard-{ordinal}.log"))
            deadline = time.monotonic() + 30
            while _status(f"http://127.0.0.1:{port}/-/ready") != 200:
                assert proc.poll() is None and time.monotonic() < deadline, "the exporter never became ready"
                time.sleep(0.1)
            metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
            assert f'caffe_exporter_shard_info{{index="{ordinal}",total="{replicas}"}} 1.0' in metrics
            exported.append(set(re.findall(r'^caffe_iteration\{run="([^"]+)"', metrics, re.MULTILINE)))
    assert sorted(r for runs in exported for r in runs) == [f"job-{i}" for i in range(9)]
    assert all(exported), f"a shard exports nothing: {exported}"
