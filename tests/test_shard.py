"""Sharding (`--shard I/N`, `shard:`): which of N exporters over one tree exports a run.

The assignment itself (exporter/shard.py) is checked as properties: every name has exactly one owner, the
owner is stable (not Python's salted hash), and going from N to N+1 shards moves only the runs the new
shard takes. The split is checked end to end on a tree of real logs: 3 shards export disjoint run sets
whose union is exactly what one exporter exports, colliding names included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import config, daemon, shard
from exporter.identity import RunNamer, SourceRule
from exporter.pipeline import Pipeline
from exporter.shard import Shard, ShardFilter
from exporter.tail import Tailer

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
LOGS = sorted([*(FIXTURES / "public-logs").glob("*.log"), *(FIXTURES / "real-caffe").glob("*/caffe.log")])
Sample = tuple[str, tuple[tuple[str, str], ...], str]

names = st.text(min_size=1, max_size=40)


# ---------------------------------------------------------------------------------------------- assignment


@given(names, st.integers(1, 64))
def test_every_name_has_exactly_one_owner(name: str, total: int) -> None:
    owners = [i for i in range(total) if Shard(i, total).owns(name)]
    assert owners == [shard.owner(name, total)]


@settings(max_examples=300)
@given(names, st.integers(1, 64))
def test_adding_a_shard_moves_a_run_only_to_the_new_shard(name: str, total: int) -> None:
    before, after = shard.owner(name, total), shard.owner(name, total + 1)
    assert after in (before, total)


@given(st.sets(names, min_size=1, max_size=200), st.integers(2, 16))
def test_removing_the_last_shard_moves_only_its_runs(run_names: set[str], total: int) -> None:
    moved = {n for n in run_names if shard.owner(n, total) != shard.owner(n, total - 1)}
    assert moved == {n for n in run_names if shard.owner(n, total) == total - 1}


def test_three_to_four_shards_moves_about_a_quarter_of_the_runs() -> None:
    runs = [f"resnet50-lr{i}" for i in range(4000)]
    moved = [r for r in runs if shard.owner(r, 3) != shard.owner(r, 4)]
    assert all(shard.owner(r, 4) == 3 for r in moved)
    assert 850 <= len(moved) <= 1150  # 1000 expected; the hash is fixed, so this is exact every run


def test_shards_are_balanced() -> None:
    runs = [f"job-{i}" for i in range(3000)]
    sizes = [sum(1 for r in runs if shard.owner(r, 3) == i) for i in range(3)]
    assert sum(sizes) == 3000 and all(900 <= n <= 1100 for n in sizes), sizes


def test_the_owner_is_stable_across_processes_and_hash_seeds() -> None:
    """The same owners in a subprocess with another PYTHONHASHSEED: never Python's salted hash()."""
    run_names = ["exp1", "resnet50-lr0.1", "lenet_healthy", "stdin", "ünïcode"]
    here = [shard.owner(n, 5) for n in run_names]
    code = f"from exporter import shard; print([shard.owner(n, 5) for n in {run_names!r}])"
    for seed in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True)
        assert r.stdout.strip() == str(here)


@pytest.mark.parametrize(("text", "expected"), [("0/3", Shard(0, 3)), ("2/3", Shard(2, 3)), (" 1 / 2 ", Shard(1, 2)),
                                                ("0/1", Shard(0, 1))])
def test_parse_accepts_index_slash_total(text: str, expected: Shard) -> None:
    assert shard.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("3/3", "shard index 3 is out of range for 3 shard(s): expected 0 <= INDEX < 3"),
    ("0/0", "the number of shards must be in 1..1024, got 0"),
    ("0/1025", "the number of shards must be in 1..1024, got 1025"),
    ("-1/3", "expected INDEX/TOTAL such as 0/3 (shard 0 of 3), got '-1/3'"),
    ("1", "expected INDEX/TOTAL such as 0/3 (shard 0 of 3), got '1'"),
    ("a/b", "expected INDEX/TOTAL such as 0/3 (shard 0 of 3), got 'a/b'"),
])
def test_parse_rejects_with_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        shard.parse(text)


def test_filter_reads_stdin_on_every_shard_and_bounds_its_cache() -> None:
    asked: list[str] = []

    def identity(path: str) -> str:
        asked.append(path)
        return path

    f = ShardFilter(Shard(1, 3), identity, max_cached=4)
    assert f("-")
    paths = [f"/jobs/run{i}/caffe.log" for i in range(10)]
    assert [f(p) for p in paths] == [shard.owner(p, 3) == 1 for p in paths]
    assert f(paths[-1]) == (shard.owner(paths[-1], 3) == 1)
    assert asked.count(paths[-1]) == 1  # cached
    assert len(f._cache) <= 4


# ---------------------------------------------------------------------------------------------- config, flag


@pytest.mark.parametrize(("value", "expected"), [("0/3", Shard(0, 3)), ("2/5", Shard(2, 5))])
def test_config_shard_key(value: str, expected: Shard) -> None:
    assert config.from_mapping({"shard": value}, "c.yml").shard == expected


def test_config_shard_defaults_to_the_only_shard() -> None:
    assert config.from_mapping({}, "c.yml").shard == Shard(0, 1)


def test_unquoted_yaml_shard_is_read_as_the_string_it_looks_like(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text("shard: 1/3\n")
    assert config.load(str(tmp_path / "c.yml")).shard == Shard(1, 3)


@pytest.mark.parametrize(("value", "message"), [
    (3, 'c.yml: shard: expected a string INDEX/TOTAL such as "0/3" (shard 0 of 3), got 3'),
    ({"index": 0, "total": 3}, "c.yml: shard: expected a string INDEX/TOTAL such as \"0/3\""),
    ("3/3", "c.yml: shard: shard index 3 is out of range for 3 shard(s)"),
    ("0/0", "c.yml: shard: the number of shards must be in 1..1024, got 0"),
])
def test_config_shard_errors_name_the_file_and_key(value: object, message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.from_mapping({"shard": value}, "c.yml")
    assert str(e.value).startswith(message)


def test_bad_shard_flag_is_a_configuration_error_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "exporter", "serve", str(tmp_path), "--shard", "3/3"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "configuration error: --shard: shard index 3 is out of range for 3 shard(s)" in r.stderr


def test_the_flag_overrides_the_file(tmp_path: Path) -> None:
    from exporter import cli

    (tmp_path / "c.yml").write_text("shard: 0/3\n")
    args = cli._parser().parse_args(["serve", "--config", str(tmp_path / "c.yml"), "--shard", "2/4"])
    assert cli._config_from_args(args).shard == Shard(2, 4)


# ---------------------------------------------------------------------------------------------- a tree of real logs


def make_tree(root: Path) -> list[Path]:
    """Real logs copied into 28 job directories, two of them named `exp1` under different teams (the
    registry names them `exp1` and `<team>/exp1`)."""
    files = []
    for i in range(26):
        job = root / f"team{'ABC'[i % 3]}" / f"job-{i:02d}"
        job.mkdir(parents=True)
        files.append(job / "caffe.log")
        shutil.copy(LOGS[i % len(LOGS)], files[-1])
    for team in ("teamA", "teamB"):
        (root / team / "exp1").mkdir()
        files.append(root / team / "exp1" / "caffe.log")
        shutil.copy(LOGS[0], files[-1])
    return files


def run_samples(text: str) -> set[Sample]:
    """Every sample of the run families (not the exporter's own), value as text so NaN equals NaN."""
    return {(s.name, tuple(sorted(s.labels.items())), repr(s.value))
            for fam in text_string_to_metric_families(text) if not fam.name.startswith("caffe_exporter_")
            for s in fam.samples if "run" in s.labels}


def export(tree: Path, sh: Shard, *, tailer_filters: bool = True) -> tuple[Pipeline, set[Sample], int]:
    """What one exporter with shard `sh` exports for `tree`, built as the daemon builds it, and how many
    files its tailer followed."""
    cfg = config.Config(sources=(SourceRule(str(tree)),), shard=sh)
    pipeline, registry = daemon.build(cfg)
    tailer = Tailer([str(tree)], stats=pipeline.tail_stats, accept=pipeline.accept if tailer_filters else None)
    for _ in range(3):
        for chunk in tailer.poll():
            pipeline.on_chunk(chunk)
    watched = pipeline.tail_stats.files_watched
    tailer.close()
    return pipeline, run_samples(generate_latest(registry).decode()), watched


def _runs(samples: set[Sample]) -> set[str]:
    return {dict(labels)["run"] for _, labels, _ in samples}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    make_tree(root)
    return root


@pytest.mark.parametrize("tailer_filters", [True, False], ids=["tailer-and-pipeline", "pipeline-only"])
def test_three_shards_export_disjoint_sets_whose_union_is_one_exporter(tree: Path, tailer_filters: bool) -> None:
    whole = export(tree, Shard(0, 1))[1]
    parts = [export(tree, Shard(i, 3), tailer_filters=tailer_filters)[1] for i in range(3)]
    assert len(_runs(whole)) == 28
    assert set().union(*parts) == whole
    for i in range(3):
        assert _runs(parts[i]), f"shard {i} exports nothing: the test would not show a split"
        for j in range(i + 1, 3):
            assert not _runs(parts[i]) & _runs(parts[j])


def test_colliding_names_land_on_one_shard_and_are_told_apart_there(tree: Path) -> None:
    whole = export(tree, Shard(0, 1))[1]
    assert {"exp1", "teamB/exp1"} <= _runs(whole)
    owner = shard.owner("exp1", 3)
    assert {"exp1", "teamB/exp1"} <= _runs(export(tree, Shard(owner, 3))[1])


def test_a_shard_opens_only_its_own_files(tree: Path) -> None:
    namer = RunNamer((SourceRule(str(tree)),))
    owned = [p for p in tree.rglob("caffe.log") if shard.owner(namer(str(p))[0], 3) == 2]
    pipeline, _, watched = export(tree, Shard(2, 3))
    assert watched == len(owned) < 28
    assert pipeline.tail_stats.bytes_read == sum(p.stat().st_size for p in owned)
    assert pipeline.lines.parsed + pipeline.lines.skipped == sum(p.read_bytes().count(b"\n") for p in owned)


def test_shard_info_names_the_shard(tree: Path) -> None:
    for sh, labels in ((Shard(1, 3), {"index": "1", "total": "3"}), (Shard(), {"index": "0", "total": "1"})):
        cfg = config.Config(sources=(SourceRule(str(tree)),), shard=sh)
        _, registry = daemon.build(cfg)
        text = generate_latest(registry).decode()
        fam = next(f for f in text_string_to_metric_families(text) if f.name == "caffe_exporter_shard_info")
        assert [(s.labels, s.value) for s in fam.samples] == [(labels, 1.0)]


def test_tailer_set_accept_closes_refused_files_and_reads_accepted_ones_from_their_start(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    lines = LOGS[0].read_text().splitlines(keepends=True)[:20]
    a.write_text("".join(lines))
    b.write_text("".join(lines[:5]))
    tailer = Tailer([str(tmp_path)], accept=lambda p: p == str(a))
    assert {c.path for c in tailer.poll() if c.text} == {str(a)}
    assert tailer.stats.files_open == 1
    tailer.set_accept(lambda p: p == str(b))
    chunks = [c for c in tailer.poll() if c.text]
    assert [(c.path, c.first_line, c.text) for c in chunks] == [(str(b), 1, "".join(lines[:5]))]
    assert tailer.stats.files_open == 1 and tailer.tracked_paths() == {str(b)}
    tailer.close()


def test_pipeline_keeps_nothing_of_a_path_it_does_not_accept(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine" / "caffe.log", tmp_path / "theirs" / "caffe.log"
    for p in (mine, theirs):
        p.parent.mkdir()
        shutil.copy(LOGS[0], p)
    cfg = config.Config(sources=(SourceRule(str(tmp_path)),))
    pipeline, _ = daemon.build(cfg)
    pipeline.accept = lambda path: path == str(mine)
    tailer = Tailer([str(tmp_path)], stats=pipeline.tail_stats)  # reads both: only the pipeline filters
    for chunk in tailer.poll():
        pipeline.on_chunk(chunk)
    tailer.close()
    assert list(pipeline.registry.runs) == ["mine"]
    assert set(pipeline.applied) == {str(mine)}
    assert pipeline.lines.parsed + pipeline.lines.skipped == mine.read_bytes().count(b"\n")
