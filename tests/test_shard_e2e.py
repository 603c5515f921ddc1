"""Sharding with real daemons: 3 `caffe-exporter serve --shard I/3` over one tree against one exporter, a
SIGHUP that moves an exporter to another shard, and a restart from a checkpoint written by another shard."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from exporter import shard
from exporter.identity import RunNamer, SourceRule
from tests.e2e_util import E2E_MARKS, ManagedProcess, free_port, http_get, running, samples, wait_http_ok, wait_until
from tests.test_shard import Sample, make_tree, run_samples

pytestmark = E2E_MARKS


def _serve(*args: str) -> tuple[list[str], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", "--poll-interval", "0.2",
           *args]
    return cmd, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _exporters(tmp: Path, argsets: list[list[str]]) -> Iterator[list[tuple[ManagedProcess, str]]]:
    with contextlib.ExitStack() as stack:
        out = []
        for i, args in enumerate(argsets):
            cmd, url = _serve(*args)
            out.append((stack.enter_context(running(f"exporter-{i}", cmd, tmp / f"exporter-{i}.log")), url))
        yield out


def _exported(url: str, procs: list[ManagedProcess]) -> set[Sample]:
    wait_http_ok(url + "/-/ready", 60, procs=procs)
    return run_samples(http_get(url + "/metrics"))


def _runs(s: set[Sample]) -> set[str]:
    return {dict(labels)["run"] for _, labels, _ in s}


def test_three_sharded_daemons_export_what_one_exports(tmp_path: Path) -> None:
    tree = tmp_path / "shared"
    make_tree(tree)
    argsets = [[str(tree)], *[[str(tree), "--shard", f"{i}/3"] for i in range(3)]]
    with _exporters(tmp_path, argsets) as daemons:
        procs = [p for p, _ in daemons]
        whole, *parts = [_exported(url, procs) for _, url in daemons]
        for _, url in daemons[1:]:
            info = samples(http_get(url + "/metrics"), "caffe_exporter_shard_info")
            assert [lb["total"] for lb, _ in info] == ["3"]
    assert len(_runs(whole)) == 28
    assert set().union(*parts) == whole
    assert all(parts) and sum(len(_runs(p)) for p in parts) == 28  # disjoint, none empty


def test_sighup_to_another_shard_drops_its_runs_and_reads_the_new_ones(tmp_path: Path) -> None:
    tree = tmp_path / "shared"
    make_tree(tree)
    namer = RunNamer((SourceRule(str(tree)),))
    base = {namer(str(p))[0] for p in tree.rglob("caffe.log")}
    owned = {i: {n for n in base if shard.owner(n, 3) == i} for i in range(3)}
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"sources: [{tree}]\nshard: 0/3\n")
    cmd, url = _serve("--config", str(cfg))
    with running("exporter", cmd, tmp_path / "exporter.log") as proc:
        first = _exported(url, [proc])
        assert {r.split("/")[-1] for r in _runs(first)} == owned[0]
        cfg.write_text(f"sources: [{tree}]\nshard: 1/3\n")
        os.kill(proc.popen.pid, signal.SIGHUP)

        def moved() -> str | None:
            text = http_get(url + "/metrics")
            return text if {r.split("/")[-1] for r in _runs(run_samples(text))} == owned[1] else None

        text = wait_until("the runs of shard 1 only", moved, 60, procs=[proc])
    expired = {lb["reason"]: v for lb, v in samples(text, "caffe_exporter_runs_expired_total")}
    assert expired["resharded"] == len(_runs(first))
    assert samples(text, "caffe_exporter_shard_info") == [({"index": "1", "total": "3"}, 1.0)]


def test_a_checkpoint_of_another_shard_keeps_only_the_runs_this_shard_owns(tmp_path: Path) -> None:
    tree = tmp_path / "shared"
    make_tree(tree)
    ckpt = tmp_path / "checkpoint.json"
    cmd, url = _serve(str(tree), "--checkpoint-file", str(ckpt))
    with running("unsharded", cmd, tmp_path / "unsharded.log") as proc:
        whole = _exported(url, [proc])
    assert ckpt.exists()
    cmd, url = _serve(str(tree), "--checkpoint-file", str(ckpt), "--shard", "2/3")
    with running("shard-2", cmd, tmp_path / "shard2.log") as proc:
        part = _exported(url, [proc])
        expired = {lb["reason"]: v for lb, v in samples(http_get(url + "/metrics"),
                                                          "caffe_exporter_runs_expired_total")}
    assert part and part < whole
    assert {s for s in whole if dict(s[1])["run"] in _runs(part)} == part
    assert expired["resharded"] == len(_runs(whole)) - len(_runs(part))
