"""Sharding: which of N exporters over one shared tree exports a run.

Each run identity (the run name ``RunNamer`` gives a path, before the registry tells colliding names apart)
belongs to exactly one shard, chosen by rendezvous hashing (highest random weight): every shard scores the
identity with a stable hash (blake2b, never Python's salted ``hash()``) and the highest score owns it. So N
exporters export disjoint sets whose union is what one exporter exports, every exporter decides alone
(nothing is shared but the tree), and going from N to N+1 shards moves only the runs the new shard wins
(about 1/(N+1) of them); dropping the last shard moves only its runs.

The identity is the name alone, not its labels: the registry keys runs by name, so two jobs whose names
collide (``/a/exp1/caffe.log`` and ``/b/exp1/caffe.log``) must land on the same shard to be told apart
there (``exp1``, ``b/exp1``) exactly as one exporter does, whatever labels a ``run_regex`` gives them.

Pure: no I/O of its own (the identity function given to :class:`ShardFilter` may stat).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_TOTAL = 1024  # each path is scored once per shard: keep the cost of a new path bounded
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based, like a StatefulSet pod ordinal) of ``total``."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_TOTAL:
            raise ValueError(f"the number of shards must be in 1..{MAX_TOTAL}, got {self.total}")
        if not 0 <= self.index < self.total:
            raise ValueError(f"shard index {self.index} is out of range for {self.total} shard(s): expected "
                             f"0 <= INDEX < {self.total} (0-based, like StatefulSet pod ordinals)")

    @property
    def sharded(self) -> bool:
        return self.total > 1

    def owns(self, identity: str) -> bool:
        return self.total == 1 or owner(identity, self.total) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def _score(shard: int, identity: str) -> int:
    digest = hashlib.blake2b(f"{shard}\x00{identity}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(identity: str, total: int) -> int:
    """The shard in ``range(total)`` that owns ``identity`` (ties, never seen in practice, go to the lower)."""
    return max(range(total), key=lambda i: (_score(i, identity), -i))


def parse(text: str) -> Shard:
    """``"I/N"`` (``--shard 0/3``, ``shard: "0/3"``) as a Shard; ValueError says what is expected."""
    m = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"expected INDEX/TOTAL such as 0/3 (shard 0 of 3), got {text!r}")
    return Shard(int(m[1]), int(m[2]))


@dataclass
class ShardFilter:
    """``accept(path)`` for the tailer and the pipeline: whether ``shard`` owns the run of ``path``.

    Asked for every candidate path on every poll, so the answer is cached per path; the cache is emptied
    when it reaches ``max_cached`` entries (answers are recomputed, never wrong), which bounds it on trees
    whose files come and go for months. ``always`` are paths every shard reads (standard input: each
    exporter has its own)."""

    shard: Shard
    identity: Callable[[str], str]
    max_cached: int = 100_000
    always: frozenset[str] = frozenset({"-"})
    _cache: dict[str, bool] = field(default_factory=dict, repr=False)

    def __call__(self, path: str) -> bool:
        ok = self._cache.get(path)
        if ok is None:
            ok = path in self.always or self.shard.owns(self.identity(path))
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            self._cache[path] = ok
        return ok
