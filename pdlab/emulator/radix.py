"""SGLang's RadixAttention prefix cache for the emulated worker: token radix tree, page-size matching, LRU eviction.

Follows python/sglang/srt/mem_cache/radix_cache.py: keys are token ids matched page by page (``page_size``
tokens; 1 = token granularity, SGLang's default); ``match`` splits a node where a prefix ends inside it so the
returned node covers exactly the match; ``insert`` adds the part not yet cached and reports how many tokens
were new; a request ``lock``s the deepest node it uses (every node up to the root stays un-evictable while any
request holds it); ``evict(n)`` removes least-recently-used unlocked leaves until `n` tokens are freed. The
tree holds no KV, only its size: the engine charges ``size`` against the KV pool next to its requests' own
tokens. No clock of its own: recency is a counter bumped on every touch.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence


class Node:
    """One radix tree node: a run of tokens (`key`), children keyed by their first page, a lock count."""

    __slots__ = ("key", "children", "parent", "lock", "last")

    def __init__(self, key: tuple[int, ...] = (), parent: Node | None = None):
        self.key = key
        self.children: dict[tuple[int, ...], Node] = {}
        self.parent = parent
        self.lock = 0
        self.last = 0


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token runs."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo = 0
    step = 256
    while lo + step <= n and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    while lo < n and a[lo] == b[lo]:
        lo += 1
    return lo


class RadixCache:
    """The prefix cache of one worker (see module docstring); sizes are in tokens."""

    def __init__(self, page_size: int = 1):
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page = page_size
        self._tick = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Drop every cached prefix (SGLang's flush_cache; only valid with no request holding a lock)."""
        self.root = Node()
        self.root.lock = 1  # never evicted
        self.evictable = 0
        self.protected = 0

    @property
    def size(self) -> int:
        """Tokens held by the tree (evictable + locked)."""
        return self.evictable + self.protected

    def _child_key(self, key: Sequence[int]) -> tuple[int, ...]:
        return tuple(key[: self.page])

    def _aligned(self, n: int) -> int:
        return n // self.page * self.page

    def _split(self, node: Node, at: int) -> Node:
        """Split `node` so that a new parent covers its first `at` tokens; returns that parent."""
        new = Node(node.key[:at], node.parent)
        new.lock = node.lock
        new.last = node.last
        assert node.parent is not None
        node.parent.children[self._child_key(new.key)] = new
        node.key = node.key[at:]
        node.parent = new
        new.children[self._child_key(node.key)] = node
        return new

    def match(self, tokens: Sequence[int]) -> tuple[int, Node]:
        """Longest cached prefix of `tokens` in whole pages → (matched tokens, node covering exactly them)."""
        key = tuple(tokens[: self._aligned(len(tokens))])
        node, pos, now = self.root, 0, next(self._tick)
        node.last = now
        while pos < len(key):
            child = node.children.get(self._child_key(key[pos:]))
            if child is None:
                break
            n = self._aligned(_common(child.key, key[pos:]))
            if n == 0:
                break
            child.last = now
            if n < len(child.key):
                return pos + n, self._split(child, n)
            node, pos = child, pos + n
        return pos, node

    def insert(self, tokens: Sequence[int]) -> tuple[int, Node]:
        """Cache `tokens` (whole pages only) → (tokens newly added to the tree, node covering all of them)."""
        key = tuple(tokens[: self._aligned(len(tokens))])
        matched, node = self.match(key)
        rest = key[matched:]
        if not rest:
            return 0, node
        leaf = Node(rest, node)
        leaf.last = next(self._tick)
        node.children[self._child_key(rest)] = leaf
        self.evictable += len(rest)
        return len(rest), leaf

    def lock(self, node: Node) -> None:
        """A request uses `node`'s prefix: it and its ancestors cannot be evicted until `unlock`."""
        while node is not self.root:
            if node.lock == 0:
                self.evictable -= len(node.key)
                self.protected += len(node.key)
            node.lock += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: Node) -> None:
        """Release a `lock`."""
        while node is not self.root:
            node.lock -= 1
            if node.lock == 0:
                self.evictable += len(node.key)
                self.protected -= len(node.key)
            node = node.parent  # type: ignore[assignment]

    def evict(self, tokens: int) -> int:
        """Free at least `tokens` tokens by removing least-recently-used unlocked leaves; returns tokens freed."""
        if tokens <= 0 or self.evictable == 0:
            return 0
        heap = [(n.last, id(n), n) for n in self._leaves() if n.lock == 0]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < tokens:
            _, _, n = heapq.heappop(heap)
            parent = n.parent
            assert parent is not None
            del parent.children[self._child_key(n.key)]
            freed += len(n.key)
            self.evictable -= len(n.key)
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last, id(parent), parent))
        return freed

    def _leaves(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
            elif n is not self.root:
                out.append(n)
        return out
