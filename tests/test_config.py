"""Configuration: defaults, every key validated with errors naming the file, the key and the expectation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import config
from exporter.config import Config, ConfigError, from_mapping, load
from exporter.identity import SourceRule
from exporter.lifecycle import LifecycleConfig
from exporter.state import Limits

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "conf.yml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file() -> None:
    cfg = Config()
    assert cfg.listen == "0.0.0.0:10052"
    assert cfg.sources == (SourceRule("."),)
    assert (cfg.start_at, cfg.poll, cfg.poll_interval) == ("beginning", False, 1.0)
    assert (cfg.max_line_bytes, cfg.read_bytes, cfg.max_series_per_run) == (1 << 20, 4 << 20, 20000)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_file_gives_the_defaults(tmp_path: Path, text: str) -> None:
    assert load(write(tmp_path, text)) == Config()


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The YAML block of docs/configuration.md, as written."""
    doc = (REPO / "docs/configuration.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = load(write(tmp_path, block))
    assert cfg.listen == "0.0.0.0:10052"
    assert [s.path for s in cfg.sources] == ["/var/log/caffe", "/shared/jobs/*/caffe.log"]
    rule = cfg.sources[1]
    assert rule.run_regex is not None and rule.run_regex.pattern == "/shared/jobs/(?P<run>[^/]+)/"
    assert dict(rule.labels) == {"cluster": "gpu-a"}
    assert rule.identify("/shared/jobs/resnet/caffe.log") == ("resnet", {"cluster": "gpu-a"})
    # the limits and lifecycle shown are the defaults
    assert cfg.limits == Config().limits == Limits(20000, 1_000_000, 10_000, 256, None, None)
    assert cfg.runs == Config().runs == LifecycleConfig(300, 3600, 7 * 86400)
    assert (cfg.max_open_files, cfg.idle_close, cfg.rotate_wait) == (256, 30.0, 5.0)


@pytest.mark.parametrize("key, value, expected", [("max_open_files", 0, "an integer >= 1"),
                                                  ("idle_close", 0, "a positive number of seconds"),
                                                  ("rotate_wait", -1, "a number of seconds >= 0")])
def test_file_handling_settings_are_validated(tmp_path: Path, key: str, value: int, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: expected {expected}, got {value}"):
        load(write(tmp_path, f"{key}: {value}\n"))


def test_file_handling_settings_are_read(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "max_open_files: 16\nidle_close: 2.5\nrotate_wait: 0\n"))
    assert (cfg.max_open_files, cfg.idle_close, cfg.rotate_wait) == (16, 2.5, 0.0)


def test_every_key_set(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
listen: "127.0.0.1:9999"
sources: [/a, {path: /b/*.log, labels: {site: x, gpus: 8}}]
start_at: end
poll: true
poll_interval: 0.5
max_line_bytes: 4096
read_bytes: 65536
limits: {max_series_per_run: 10, max_series: 100, max_runs: 3, max_name_bytes: 64,
         layers: {include: "conv.*", exclude: "conv1"}}
runs: {deleted_grace: 90s, finished_ttl: 0, stale_ttl: 1h30m}
"""))
    lim = cfg.limits
    assert (lim.max_series, lim.max_runs, lim.max_name_bytes) == (100, 3, 64)
    assert [lim.keeps_layer(x) for x in ("conv2", "conv1", "ip1")] == [True, False, False]
    assert cfg.runs == LifecycleConfig(90, 0, 5400)
    assert cfg.listen == "127.0.0.1:9999"
    assert cfg.sources == (SourceRule("/a"), SourceRule("/b/*.log", None, {"site": "x", "gpus": "8"}))
    assert (cfg.start_at, cfg.poll, cfg.poll_interval) == ("end", True, 0.5)
    assert (cfg.max_line_bytes, cfg.read_bytes, cfg.max_series_per_run) == (4096, 65536, 10)


# (YAML, what the error must contain after "<file>: ")
BAD: list[tuple[str, str]] = [
    ("listen: 10052", "listen: expected HOST:PORT"),
    ("listen: 'localhost'", "listen: expected HOST:PORT"),
    ("listen: ':70000'", "listen: expected HOST:PORT"),
    ("sources: []", "sources: expected a non-empty list of sources"),
    ("sources: /var/log", "sources: expected a non-empty list of sources"),
    ("sources: [3]", "sources[0]: expected a path or a mapping with 'path'"),
    ("sources: [{labels: {a: b}}]", "sources[0].path: missing"),
    ("sources: [{path: ''}]", "sources[0].path: expected a non-empty string"),
    ("sources: [{path: /x, regex: a}]", "sources[0]: unknown key(s) ['regex']; expected path, run_regex, labels"),
    ("sources: [{path: /x, run_regex: '(unclosed'}]", "sources[0].run_regex: invalid regular expression"),
    ("sources: [{path: /x, run_regex: 7}]", "sources[0].run_regex: expected a regular expression string"),
    ("sources: [{path: /x, run_regex: '(?P<layer>.+)'}]", "sources[0].run_regex group: label 'layer' is reserved"),
    ("sources: [{path: /x, run_regex: '(?P<__x>.+)'}]", "sources[0].run_regex group: '__x' is not a valid"),
    ("sources: [{path: /x, labels: [a]}]", "sources[0].labels: expected a mapping of label: value"),
    ("sources: [{path: /x, labels: {1a: b}}]", "sources[0].labels: '1a' is not a valid Prometheus label name"),
    ("sources: [{path: /x, labels: {phase: b}}]", "sources[0].labels: label 'phase' is reserved"),
    ("sources: [{path: /x, labels: {a: [1]}}]", "sources[0].labels.a: expected a string"),
    ("sources: [{path: /x, labels: {a: true}}]", "sources[0].labels.a: expected a string"),
    ("start_at: middle", "start_at: expected 'beginning' or 'end'"),
    ("poll: yes please", "poll: expected true or false"),
    ("poll: 1", "poll: expected true or false"),
    ("poll_interval: 0", "poll_interval: expected a number of seconds in (0, 3600]"),
    ("poll_interval: 7200", "poll_interval: expected a number of seconds in (0, 3600]"),
    ("poll_interval: fast", "poll_interval: expected a number of seconds in (0, 3600]"),
    ("poll_interval: true", "poll_interval: expected a number of seconds in (0, 3600]"),
    ("max_line_bytes: 100", "max_line_bytes: expected an integer >= 1024"),
    ("max_line_bytes: 2048.5", "max_line_bytes: expected an integer >= 1024"),
    ("read_bytes: 1024", "read_bytes: expected an integer >= 4096"),
    ("read_bytes: true", "read_bytes: expected an integer >= 4096"),
    ("limits: 5", "limits: expected a mapping"),
    ("limits: {max_serie: 5}", "limits: unknown key(s) ['max_serie']"),
    ("limits: {max_series_per_run: 0}", "limits.max_series_per_run: expected a positive integer"),
    ("limits: {max_series: -1}", "limits.max_series: expected a positive integer"),
    ("limits: {max_runs: 1.5}", "limits.max_runs: expected a positive integer"),
    ("limits: {max_name_bytes: true}", "limits.max_name_bytes: expected a positive integer"),
    ("limits: {layers: [conv1]}", "limits.layers: expected a mapping with include and/or exclude"),
    ("limits: {layers: {include: '(conv'}}", "limits.layers.include: invalid regular expression"),
    ("limits: {layers: {exclude: 5}}", "limits.layers.exclude: expected a regular expression string"),
    ("limits: {layers: {only: x}}", "limits.layers: unknown key(s) ['only']"),
    ("runs: 5m", "runs: expected a mapping"),
    ("runs: {stale_ttl: 7days}", "runs.stale_ttl: expected a duration such as 90s, 5m, 1h30m or 7d"),
    ("runs: {finished_ttl: 60}", "runs.finished_ttl: expected a duration"),
    ("runs: {deleted: 5m}", "runs: unknown key(s) ['deleted']"),
    ("detectors: [a]", "detectors: expected a mapping"),
    ("detectors: {no_such_detector: {}}", "detectors.no_such_detector: unknown detector"),
    ("listn: ':1'", "unknown key(s) ['listn']; known keys:"),
    ("- a\n- b\n", "expected a mapping of settings at the top level, got list"),
    ("just a string", "expected a mapping of settings at the top level, got str"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[t.split(":")[0].strip("- ") + "|" + m[:30] for t, m in BAD])
def test_invalid_values_name_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    assert message in msg, msg


def test_error_shows_the_offending_value(tmp_path: Path) -> None:
    path = write(tmp_path, "start_at: middle\n")
    with pytest.raises(ConfigError, match="got 'middle'"):
        load(path)


def test_broken_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: [unclosed\nsources: {\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}: not valid YAML:")
    assert "line" in str(e.value)  # PyYAML says where


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"nope\.yml: cannot read configuration: No such file or directory"):
        load(path)


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load(str(tmp_path))


def test_from_mapping_accepts_what_yaml_gives() -> None:
    data: Any = yaml.safe_load("listen: ':10052'\nsources: ['-']\n")
    cfg = from_mapping(data, "x.yml")
    assert cfg.sources == (SourceRule("-"),)
    assert config.parse_listen(cfg.listen, "x") == ("0.0.0.0", 10052)


@pytest.mark.parametrize("value,expected", [
    ("0.0.0.0:10052", ("0.0.0.0", 10052)), (":10052", ("0.0.0.0", 10052)),
    ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::1]:10052", ("::1", 10052)),
])
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert config.parse_listen(value, "--listen") == expected


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


def test_serve_with_a_broken_config_exits_2_with_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: ':1'\npoll: maybe\n", "broken.yml")
    proc = _cli("serve", "--config", path, "--listen", "127.0.0.1:1")
    assert proc.returncode == 2, proc.stderr
    assert f"caffe-exporter: configuration error: {path}: poll: expected true or false, got 'maybe'" in proc.stderr


def test_serve_with_broken_yaml_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "sources: [\n", "broken.yml")
    proc = _cli("serve", "--config", path)
    assert proc.returncode == 2
    assert f"caffe-exporter: configuration error: {path}: not valid YAML" in proc.stderr


def test_serve_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.yml")
    proc = _cli("serve", "--config", path)
    assert proc.returncode == 2
    assert f"configuration error: {path}: cannot read configuration" in proc.stderr


def test_bad_listen_flag_exits_2() -> None:
    proc = _cli("serve", "--listen", "nowhere")
    assert proc.returncode == 2
    assert "--listen: expected HOST:PORT" in proc.stderr
