"""Run identity: default run names from paths, run_regex named groups, static labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.identity import RunNamer, SourceRule, check_label_name, default_run_name, identify_default


@pytest.mark.parametrize("path,run", [
    # glog's own files: one run per directory (a restart writes a new file), generic dirs skipped
    ("/jobs/resnet50/caffe.gpu1.alice.log.INFO.20261126-143014.22388", "resnet50"),
    ("/jobs/resnet50/glog/caffe.vm.root.log.INFO.20261126-143014.22388", "resnet50"),
    ("/jobs/resnet50/logs/caffe.vm.root.log.WARNING.20261126-143014.22388", "resnet50"),
    ("/data/exp/lr0.1/caffe.my-host.example.com.bob.log.INFO.20170825-101839.10411", "lr0.1"),
    # generic file names: the directory (the one-directory-per-job layout)
    ("/jobs/resnet50-lr0.1/caffe.log", "resnet50-lr0.1"),
    ("/jobs/resnet50-lr0.1/train.log", "resnet50-lr0.1"),
    ("/jobs/resnet50-lr0.1/output/stderr.txt", "resnet50-lr0.1"),
    ("/jobs/alexnet/log/nohup.log", "alexnet"),
    ("/jobs/alexnet/Console.log", "alexnet"),
    # anything else: the file name without .log/.txt
    ("/var/log/caffe/alexnet_fp16.log", "alexnet_fp16"),
    ("/var/log/caffe/squeezenet.txt", "squeezenet"),
    ("/tmp/VGG_VOC0712_SSD_300x300.log", "VGG_VOC0712_SSD_300x300"),
    ("/tmp/run.2026-11-26.out", "run.2026-11-26.out"),
    # rotated siblings belong to their log's run
    ("/jobs/x/caffe.log.1", "x"),
    ("/jobs/x/caffe.log.12", "x"),
    ("/jobs/x/caffe.log-20261126", "x"),
    ("/jobs/x/caffe.log.20261126", "x"),
    ("/jobs/x/caffe.log.2.gz", "x"),
    ("/jobs/x/caffe.log-20261126.zst", "x"),
    ("/jobs/x/caffe.log.gz", "x"),
    ("/var/log/caffe/alexnet_fp16.log.1", "alexnet_fp16"),
    ("/var/log/caffe/squeezenet.txt.3.bz2", "squeezenet"),
    ("/jobs/resnet50/glog/caffe.vm.root.log.INFO.20261126-143014.22388.gz", "resnet50"),
    ("/tmp/lr0.1", "lr0.1"),  # not a .log name: no rotation suffix to strip
    ("/tmp/exp.20261126", "exp.20261126"),
    # standard input
    ("-", "stdin"),
])
def test_default_run_name(path: str, run: str) -> None:
    assert default_run_name(path) == run
    assert identify_default(path) == (run, {})


def test_two_glog_files_of_one_directory_are_one_run() -> None:
    a = "/jobs/lenet/glog/caffe.vm.root.log.INFO.20261126-142951.21713"
    b = "/jobs/lenet/glog/caffe.vm.root.log.INFO.20261126-142959.21826"
    assert default_run_name(a) == default_run_name(b) == "lenet"


def test_relative_generic_name_uses_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = tmp_path / "job-7"
    job.mkdir()
    monkeypatch.chdir(job)
    assert default_run_name("caffe.log") == "job-7"


def test_run_regex_named_groups_become_labels_and_run_replaces_the_name(tmp_path: Path) -> None:
    rule = SourceRule(str(tmp_path / "*" / "*" / "caffe.log"),
                      re.compile(r"/(?P<team>[^/]+)/(?P<run>[^/]+)/caffe\.log$"), {"cluster": "gpu-a"})
    path = str(tmp_path / "vision" / "resnet50-lr0.1" / "caffe.log")
    assert rule.covers(path)
    assert rule.identify(path) == ("resnet50-lr0.1", {"cluster": "gpu-a", "team": "vision"})


def test_run_regex_without_run_group_keeps_the_default_name(tmp_path: Path) -> None:
    rule = SourceRule(str(tmp_path), re.compile(r"/jobs/(?P<user>[a-z]+)-"))
    path = str(tmp_path / "jobs" / "alice-lenet" / "caffe.log")
    assert rule.identify(path) == ("alice-lenet", {"user": "alice"})


def test_run_regex_that_does_not_match_gives_static_labels_only() -> None:
    rule = SourceRule("/x/*.log", re.compile(r"/nomatch/(?P<team>\w+)"), {"site": "b"})
    assert rule.identify("/x/alexnet.log") == ("alexnet", {"site": "b"})


def test_optional_group_that_did_not_take_part_is_no_label() -> None:
    rule = SourceRule("/x", re.compile(r"/x/(?:(?P<team>t\w+)/)?(?P<run>[^/]+)\.log$"))
    assert rule.identify("/x/alexnet.log") == ("alexnet", {})


def test_namer_uses_the_first_rule_that_covers_the_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    namer = RunNamer((
        SourceRule(str(tmp_path / "a"), None, {"src": "dir"}),
        SourceRule(str(tmp_path / "*" / "*.log"), None, {"src": "glob"}),
        SourceRule("-", None, {"src": "stdin"}),
    ))
    assert namer(str(tmp_path / "a" / "x.log")) == ("x", {"src": "dir"})
    assert namer(str(tmp_path / "b" / "y.log")) == ("y", {"src": "glob"})
    assert namer("-") == ("stdin", {"src": "stdin"})
    assert namer("/elsewhere/z.log") == ("z", {})


@pytest.mark.parametrize("name", ["team", "cluster_1", "_x", "run"])
def test_valid_label_names(name: str) -> None:
    check_label_name(name, "where")


@pytest.mark.parametrize("name,message", [
    ("1team", "not a valid Prometheus label name"), ("te-am", "not a valid Prometheus label name"),
    ("__name", "not a valid Prometheus label name"), ("layer", "reserved"), ("phase", "reserved"),
    ("instance", "reserved"), ("job", "reserved"),
])
def test_invalid_label_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        check_label_name(name, "conf.yml: sources[0].labels")
    assert str(e.value).startswith("conf.yml: sources[0].labels")
