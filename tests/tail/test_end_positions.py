"""Chunk.end: the position just after a chunk's last line, so a consumer commits only what it applied.

Before, only Tailer.positions() existed: how far the tailer had *read*, which runs ahead of what the
consumer has applied (a checkpoint saved while one chunk is applied covers the next chunk's lines too).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.tail import Chunk, FilePosition, Tailer, TailStats

from . import append, caffe_lines, decoded, long_caffe_lines, poll_all, text


def test_each_chunk_ends_where_the_next_one_starts(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    lines = caffe_lines(200)
    data = b"".join(lines)
    log.write_bytes(data)
    tailer = Tailer([str(log)], read_bytes=500)

    chunks = poll_all(tailer)

    assert len(chunks) > 5  # read_bytes forces several reads
    st = log.stat()
    offset, line = 0, 0
    for c in chunks:
        assert c.end is not None
        offset += len(c.text.encode())
        line += c.text.count("\n")
        assert (c.end.path, c.end.dev, c.end.ino) == (str(log), st.st_dev, st.st_ino)
        assert (c.end.offset, c.end.line) == (offset, line)
        assert c.end.head_len == 1024
        assert c.end.head == tailer.positions()[str(log)].head
    assert chunks[-1].end == tailer.positions()[str(log)]


def test_a_read_ahead_of_the_applied_chunk_is_not_in_its_end(tmp_path: Path) -> None:
    """The window of issue 8: positions() already covers lines the consumer has not applied yet."""
    log = tmp_path / "caffe.log"
    a, b = caffe_lines(20), caffe_lines(20, start=20)
    log.write_bytes(b"".join(a) + b"z" * 300 + b"\n" + b"".join(b))  # one read, split by a dropped line
    tailer = Tailer([str(log)], max_line_bytes=200)
    it = tailer.poll()
    first = next(it)
    assert first.text == decoded(a)
    read_so_far = tailer.positions()[str(log)]
    assert first.end is not None
    assert read_so_far.offset == log.stat().st_size > first.end.offset == len(b"".join(a)) + 301
    second = next(it)
    assert second.text == decoded(b)
    # Resuming from what was applied (the first chunk's end) yields the second chunk's lines again.
    resumed = Tailer([str(log)], positions={str(log): first.end}, max_line_bytes=200)
    assert [(c.text, c.first_line) for c in poll_all(resumed)] == [(second.text, second.first_line)]
    assert list(it) == []


def test_dropped_oversized_line_moves_end_with_an_empty_chunk(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = caffe_lines(2, start=1000)
    huge = b"x" * 5000 + b"\n"
    log.write_bytes(a)
    tailer = Tailer([str(log)], max_line_bytes=1000, read_bytes=512)
    assert text(poll_all(tailer)) == decoded([a])

    append(log, huge)
    chunks = poll_all(tailer)
    assert [c.text for c in chunks] == [""]
    assert chunks[0].end is not None
    assert (chunks[0].end.offset, chunks[0].end.line) == (len(a + huge), 2)

    append(log, b)
    chunks = poll_all(tailer)
    assert text(chunks) == decoded([b]) and chunks[0].first_line == 3


def test_oversized_lines_inside_one_read_give_exact_ends(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b, c = caffe_lines(3, start=700)
    huge = b"z" * 300 + b"\n"
    log.write_bytes(a + huge + b + huge + c)
    chunks = poll_all(Tailer([str(log)], max_line_bytes=200))
    assert [ch.text for ch in chunks] == [a.decode(), b.decode(), c.decode()]
    ends = [(ch.end.offset, ch.end.line) for ch in chunks if ch.end is not None]
    # a chunk's end includes the dropped line after it: restarting there does not count it again
    assert ends == [(len(a + huge), 2), (len(a + huge + b + huge), 4), (len(a + huge + b + huge + c), 5)]


def test_ends_stay_exact_when_nuls_were_removed(tmp_path: Path) -> None:
    """NUL padding (a crashed writer) makes the text shorter than the bytes it came from."""
    log = tmp_path / "caffe.log"
    a, b, c = caffe_lines(3, start=700)
    huge = b"z" * 300 + b"\n"
    pad = b"\0" * 518
    log.write_bytes(pad + a + huge + pad + b + huge + c)
    chunks = poll_all(Tailer([str(log)], max_line_bytes=200))
    assert [ch.text for ch in chunks] == [a.decode(), b.decode(), c.decode()]
    ends = [(ch.end.offset, ch.end.line) for ch in chunks if ch.end is not None]
    assert ends == [(len(pad + a + huge), 2), (len(pad + a + huge + pad + b + huge), 4),
                    (log.stat().st_size, 5)]


def test_start_at_end_commits_the_skipped_history(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    old = caffe_lines(50)
    log.write_bytes(b"".join(old))
    chunks = poll_all(Tailer([str(log)], start_at_end=True))
    assert [c.text for c in chunks] == [""]
    assert chunks[0].end is not None
    assert (chunks[0].end.offset, chunks[0].end.line) == (log.stat().st_size, 50)
    assert not chunks[0].file_start


def test_truncation_commits_offset_zero(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:20])
    tailer = Tailer([str(log)])
    poll_all(tailer)
    os.truncate(log, 0)
    chunks = poll_all(tailer)
    assert [c.text for c in chunks] == [""]
    assert chunks[0].end is not None
    assert (chunks[0].end.offset, chunks[0].end.line, chunks[0].end.head_len) == (0, 0, 0)


def test_tracked_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"".join(caffe_lines(3)))
    saved = FilePosition(path=str(tmp_path / "later.log"), dev=1, ino=2, offset=0, line=0, head="x", head_len=0)
    tailer = Tailer([str(tmp_path / "*.log")], positions={saved.path: saved})
    assert tailer.tracked_paths() == {saved.path}  # restored, not used yet: still meaningful
    poll_all(tailer)
    assert tailer.tracked_paths() == {str(a), saved.path}
    b.write_bytes(b"".join(caffe_lines(3)))
    poll_all(tailer)
    assert tailer.tracked_paths() == {str(a), str(b), saved.path}
    a.unlink()
    poll_all(tailer)
    assert tailer.tracked_paths() == {str(b), saved.path}


# -- property: restart from any chunk's end loses and doubles nothing --------------------------------

_piece = st.sampled_from([b"\n", b"\0", b"a", b"Z", b" ", b"\xe2\x82\xac", b"\xff", b"L" * 30])
_data = st.lists(_piece, max_size=60).map(b"".join)


def numbered(chunks: list[Chunk]) -> list[tuple[int, str]]:
    out = []
    for c in chunks:
        for i, line in enumerate(c.text.split("\n")[:-1]):
            out.append((c.first_line + i, line))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_data,
    cuts=st.lists(st.integers(0, 200), max_size=8),
    sizes=st.tuples(st.integers(1, 24), st.integers(1, 64)),
    start_at_end=st.booleans(),
)
def test_restart_from_any_chunk_end_yields_exactly_the_rest(
    data: bytes, cuts: list[int], sizes: tuple[int, int], start_at_end: bool
) -> None:
    max_line, read_bytes = sizes
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "caffe.log")
        head_written = data[: min(cuts, default=0)] if start_at_end else b""
        with open(path, "wb") as fh:
            fh.write(head_written)
        stats = TailStats()
        tailer = Tailer([path], max_line_bytes=max_line, read_bytes=read_bytes, stats=stats,
                        start_at_end=start_at_end)
        chunks = list(tailer.poll())
        pos = len(head_written)
        for cut in [*sorted(cuts), len(data)]:
            if cut > pos:
                with open(path, "ab") as fh:
                    fh.write(data[pos:cut])
                pos = cut
            chunks += tailer.poll()
        tailer.close()
        whole = numbered(chunks)
        ends = [c.end for c in chunks]
        if data.rfind(b"\n") >= len(head_written):
            last = ends[-1]
            assert last is not None and last.offset == data.rfind(b"\n") + 1
        for k, end in enumerate(ends):
            assert end is not None
            saved = FilePosition.from_dict(end.to_dict())
            rest = list(Tailer([path], max_line_bytes=max_line, read_bytes=read_bytes,
                               positions={path: saved}).poll())
            assert numbered(chunks[: k + 1]) + numbered(rest) == whole, k


# whole lines more often than random bytes do: several chunks from one read need a dropped line between two
_lines = st.lists(st.sampled_from([b"ab\n", b"c\n", b"L" * 30 + b"\n", b"\0", b"xy", b"\xe2\x82"]),
                  max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3), _lines),
        st.tuples(st.just("poll"), st.just(0), st.just(b"")),
        st.tuples(st.just("idle"), st.just(0), st.just(b"")),
        st.tuples(st.just("crash"), st.integers(0, 2), st.just(b"")),
    ), max_size=25),
    sizes=st.tuples(st.integers(1, 24), st.integers(1, 64)),
)
@example(ops=[("write", 0, b"a\n" + b"L" * 30 + b"\nb\n"), ("crash", 1, b"")], sizes=(5, 64))  # one read, 2 chunks
def test_a_consumer_committing_ends_loses_and_doubles_nothing_across_crashes(
    ops: list[tuple[str, int, bytes]], sizes: tuple[int, int]
) -> None:
    """The lead's model: apply a chunk, then commit its end; a crash after any chunk (mid-poll too), with
    few descriptors and idle closing, restarts from the committed ends only."""
    max_line, read_bytes = sizes
    mono = [0.0]
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"job{i}", "caffe.log") for i in range(4)]
        for p in paths:
            os.mkdir(os.path.dirname(p))
            open(p, "wb").close()
        written = {p: b"" for p in paths}

        def start(committed: dict[str, FilePosition]) -> Tailer:
            return Tailer([os.path.join(d, "*", "caffe.log")], max_line_bytes=max_line, read_bytes=read_bytes,
                          positions=committed, max_open_files=2, idle_close=1.0, monotonic=lambda: mono[0])

        committed: dict[str, FilePosition] = {}
        applied: dict[str, list[tuple[int, str]]] = {p: [] for p in paths}

        def apply(c: Chunk) -> None:
            applied[c.path] += numbered([c])
            if c.end is not None:
                committed[c.path] = FilePosition.from_dict(c.end.to_dict())

        tailer = start(committed)
        for op, n, data in ops:
            if op == "write":
                with open(paths[n], "ab") as fh:
                    fh.write(data)
                written[paths[n]] += data
            elif op == "poll":
                for c in tailer.poll():
                    apply(c)
            elif op == "idle":
                mono[0] += 1.0
            else:  # killed after applying n chunks of a poll
                it = tailer.poll()
                for c in it:
                    if n == 0:
                        break
                    apply(c)
                    n -= 1
                tracked = tailer.tracked_paths()
                committed = {p: pos for p, pos in committed.items() if p in tracked}
                tailer.close()
                tailer = start(committed)
        for c in tailer.poll():
            apply(c)
        tailer.close()
    for p in paths:
        expected = [(n, t.rstrip("\n")) for n, t in _reference(written[p], max_line)]
        assert applied[p] == expected, p


def _reference(data: bytes, max_line: int) -> list[tuple[int, str]]:
    *complete, _ = data.split(b"\n")
    return [(n, raw.replace(b"\0", b"").decode("utf-8", "replace"))
            for n, raw in enumerate(complete, start=1) if len(raw.replace(b"\0", b"")) <= max_line]
