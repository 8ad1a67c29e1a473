"""sglang-router's load-balancing policies for virtual-time simulation: which worker gets each request.

Policies (names and defaults as in sglang-router 0.3's CLI): ``round_robin``; ``random``; ``power_of_two`` (two
distinct workers drawn at random, the one with fewer requests in flight wins); ``cache_aware`` (the router's
default): when the load is imbalanced — max − min in-flight > ``balance_abs_threshold`` *and* max >
``balance_rel_threshold`` × min — the least-loaded worker; otherwise the worker whose approximate prefix tree
matches the request best if the match covers more than ``cache_threshold`` of it, else the worker with the
smallest tree. The real router keeps its trees on request *text* (characters) and evicts them by size; here
they are kept on token ids in blocks of ``BLOCK`` tokens and never evicted — an approximation: longest-prefix
match with the router's balance thresholds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")
DEFAULT_POLICY = "cache_aware"  # sglang-router's default --policy
BLOCK = 16  # tokens per block of the approximate router tree


@dataclass(frozen=True)
class Policy:
    """One routing policy and the cache-aware thresholds (sglang-router's --cache-threshold etc.)."""

    name: str = DEFAULT_POLICY
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown routing policy {self.name!r}; allowed: {', '.join(POLICIES)}")


def block_hashes(tokens: Sequence[int] | None) -> list[int]:
    """Chained hashes of a prompt's `BLOCK`-token blocks (the last may be short): equal prefixes, equal leading hashes."""
    if not tokens:
        return []
    out, h = [], 0
    for i in range(0, len(tokens), BLOCK):
        h = hash((h, tuple(tokens[i:i + BLOCK])))
        out.append(h)
    return out


class Picker:
    """Chooses among `n` workers request by request; tell it when a request leaves a worker (`done`)."""

    def __init__(self, n: int, policy: Policy | None = None, seed: int = 0):
        if n < 1:
            raise ValueError("a router needs at least one worker")
        self.n = n
        self.policy = policy or Policy()
        self.load = [0] * n
        self.trees: list[set[int]] = [set() for _ in range(n)]
        self.sizes = [0] * n  # tokens each worker's approximate tree holds
        self._rng = random.Random(seed)
        self._rr = 0

    def pick(self, tokens: Sequence[int] | None = None, hashes: list[int] | None = None, length: int = 0) -> int:
        """The worker for a request with these prompt tokens (or precomputed `block_hashes`; `length` tokens when
        the ids are unknown: nothing matches, the tree still grows); counts it in flight."""
        name, n, load = self.policy.name, self.n, self.load
        if n == 1:
            i = 0
        elif name == "round_robin":
            i, self._rr = self._rr % n, self._rr + 1
        elif name == "random":
            i = self._rng.randrange(n)
        elif name == "power_of_two":
            a, b = self._rng.sample(range(n), 2)
            i = a if load[a] <= load[b] else b
        else:
            i = self._cache_aware(block_hashes(tokens) if hashes is None else hashes, tokens, length)
        load[i] += 1
        return i

    def _cache_aware(self, hashes: list[int], tokens: Sequence[int] | None, length: int) -> int:
        p, load = self.policy, self.load
        hi, lo = max(load), min(load)
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            return load.index(lo)
        best, best_len = 0, -1
        for w, tree in enumerate(self.trees):
            k = 0
            while k < len(hashes) and hashes[k] in tree:
                k += 1
            if k > best_len:
                best, best_len = w, k
        total = len(tokens) if tokens else 0
        if total and min(best_len * BLOCK, total) / total > p.cache_threshold:
            i = best
        else:
            i = self.sizes.index(min(self.sizes))
        if tokens:
            tree = self.trees[i]
            self.sizes[i] += sum(BLOCK for h in hashes if h not in tree)
            tree.update(hashes)
        else:
            self.sizes[i] += length
        return i

    def done(self, i: int) -> None:
        """A request routed to worker `i` finished there (its in-flight count drops)."""
        self.load[i] = max(0, self.load[i] - 1)
