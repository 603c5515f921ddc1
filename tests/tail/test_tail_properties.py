"""Properties: for any interleaving of writes and polls the output is exactly the written complete lines."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.tail import Chunk, FilePosition, Tailer, TailStats

# Bytes that matter to the tailer: newlines, NULs, invalid and multi-byte UTF-8, plain text.
_byte = st.sampled_from([b"\n", b"\0", b"a", b"Z", b" ", b"\xe2", b"\x82", b"\xac", b"\xff", b"\r"])
_write = st.lists(_byte, max_size=40).map(b"".join)
_long_line = st.integers(min_value=1, max_value=80).map(lambda n: b"L" * n + b"\n")

Op = tuple[str, bytes]
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), _write),
        st.tuples(st.just("write"), _long_line),
        st.tuples(st.just("poll"), st.just(b"")),
    ),
    max_size=30,
)
_ops_with_rotation = st.lists(
    st.one_of(
        st.tuples(st.just("write"), _write),
        st.tuples(st.just("poll"), st.just(b"")),
        st.tuples(st.sampled_from(["rotate", "truncate", "delete"]), st.just(b"")),
    ),
    max_size=30,
)
_sizes = st.tuples(st.integers(1, 24), st.integers(1, 64))  # max_line_bytes, read_bytes


def reference(data: bytes, max_line: int, *, flush: bool = False) -> list[tuple[int, str]]:
    """(line number, text) of the lines a tailer must emit for a file holding ``data``."""
    *complete, rest = data.split(b"\n")
    out = []
    for n, raw in enumerate(complete, start=1):
        line = raw.replace(b"\0", b"")
        if len(line) <= max_line:
            out.append((n, line.decode("utf-8", "replace") + "\n"))
    rest = rest.replace(b"\0", b"")
    if flush and 0 < len(rest) <= max_line:
        out.append((len(complete) + 1, rest.decode("utf-8", "replace") + "\n"))
    return out


def numbered(chunks: list[Chunk]) -> list[tuple[int, str]]:
    out = []
    for c in chunks:
        if not c.text:  # only moves the committed position
            continue
        assert c.text.endswith("\n")
        for i, line in enumerate(c.text.split("\n")[:-1]):
            out.append((c.first_line + i, line + "\n"))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, sizes=_sizes)
def test_output_is_the_written_complete_lines(ops: list[Op], sizes: tuple[int, int]) -> None:
    max_line, read_bytes = sizes
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "caffe.log")
        open(path, "wb").close()
        stats = TailStats()
        tailer = Tailer([path], max_line_bytes=max_line, read_bytes=read_bytes, stats=stats)
        chunks: list[Chunk] = []
        written = b""
        with open(path, "ab", buffering=0) as fh:
            for op, data in ops:
                if op == "write":
                    fh.write(data)
                    written += data
                else:
                    chunks += tailer.poll()
            chunks += tailer.poll()
        tailer.close()
    assert numbered(chunks) == reference(written, max_line)
    with_text = [c for c in chunks if c.text]
    assert [c.file_start for c in with_text] == [i == 0 for i in range(len(with_text))]
    assert not any(c.file_start for c in chunks if not c.text)
    assert stats.bytes_read == len(written)
    assert stats.read_errors == stats.rotations == stats.truncations == 0
    assert stats.files_watched == 0


@dataclass
class Model:
    """What has been written to the current file, and what of it the tailer had read at its last poll."""

    max_line: int
    current: bytes = b""
    seen: bytes = b""
    expected: list[str] = field(default_factory=list)
    rotations: int = 0
    truncations: int = 0

    def finish(self, data: bytes) -> None:
        """The file ended for good: its unterminated last line is never emitted."""
        self.expected += [t for _, t in reference(data, self.max_line)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops_with_rotation, sizes=_sizes, use_glob=st.booleans())
def test_rotation_truncation_deletion_lose_and_repeat_nothing(
    ops: list[Op], sizes: tuple[int, int], use_glob: bool
) -> None:
    """With the glob ``caffe.log*`` the rotated files match too: they must not be read a second time."""
    max_line, read_bytes = sizes
    m = Model(max_line)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "caffe.log")
        open(path, "wb").close()
        stats = TailStats()
        source = path + "*" if use_glob else path
        tailer = Tailer([source], max_line_bytes=max_line, read_bytes=read_bytes, stats=stats)
        chunks = list(tailer.poll())
        for n, (op, data) in enumerate(ops):
            if op == "write":
                with open(path, "ab") as fh:
                    fh.write(data)
                m.current += data
            elif op == "poll":
                chunks += tailer.poll()
                m.seen = m.current
            elif op == "rotate":  # mv; new file; the next poll drains the old file first
                os.rename(path, f"{path}.{n}")
                open(path, "wb").close()
                chunks += tailer.poll()
                # A rotated file is drained (followed under its new name if the glob matches it, else
                # until it has been idle for rotate_wait): its unterminated last line is never emitted.
                m.finish(m.current)
                m.current = m.seen = b""
                m.rotations += 1
            elif op == "truncate":  # bytes written since the last poll are lost with the truncation
                os.truncate(path, 0)
                chunks += tailer.poll()
                if m.seen:
                    m.finish(m.seen)
                    m.truncations += 1
                m.current = m.seen = b""
            else:  # delete and re-create: a new file at the same path
                os.unlink(path)
                chunks += tailer.poll()
                m.finish(m.current)
                open(path, "wb").close()
                chunks += tailer.poll()
                m.current = m.seen = b""
                m.rotations += 1
        chunks += tailer.poll()
        tailer.close()
    m.expected += [t for _, t in reference(m.current, max_line)]
    assert "".join(c.text for c in chunks) == "".join(m.expected)
    assert stats.rotations == m.rotations
    assert stats.truncations == m.truncations
    assert stats.read_errors == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.one_of(st.tuples(st.just("write"), _write), st.sampled_from([("poll", b""), ("restart", b"")]))),
    sizes=_sizes,
)
def test_restart_from_positions_is_seamless(ops: list[Op], sizes: tuple[int, int]) -> None:
    """Checkpoint positions (through to_dict/from_dict), close, resume: the same lines and numbers."""
    max_line, read_bytes = sizes
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "caffe.log")
        open(path, "wb").close()

        def start(saved: dict[str, FilePosition] | None) -> Tailer:
            return Tailer([path], max_line_bytes=max_line, read_bytes=read_bytes, positions=saved, start_at_end=True)

        tailer = start(None)
        chunks: list[Chunk] = list(tailer.poll())  # the empty file exists at the first poll
        written = b""
        for op, data in ops:
            if op == "write":
                with open(path, "ab") as fh:
                    fh.write(data)
                written += data
            elif op == "poll":
                chunks += tailer.poll()
            else:
                saved = {p: FilePosition.from_dict(fp.to_dict()) for p, fp in tailer.positions().items()}
                tailer.close()
                tailer = start(saved)
        chunks += tailer.poll()
        tailer.close()
    assert numbered(chunks) == reference(written, max_line)
    # A resumed file is marked file_start only when resumed at offset 0 (here: lines dropped as oversized
    # before a restart can leave the first emitted chunk unmarked).
    assert not any(c.file_start for c in [c for c in chunks if c.text][1:])
    assert not any(c.file_start for c in chunks if not c.text)
