"""The radix prefix cache: page-size matching, node splits, locks, LRU eviction."""

from pdlab.emulator.radix import RadixCache


def test_match_insert_split_and_sizes():
    c = RadixCache()
    assert c.match([1, 2, 3])[0] == 0
    new, node = c.insert([1, 2, 3, 4])
    assert new == 4 and c.size == 4 and c.evictable == 4
    m, n2 = c.match([1, 2, 9])
    assert m == 2 and n2.key == (1, 2)
    new, _ = c.insert([1, 2, 7, 8, 9])
    assert new == 3 and c.size == 7
    assert c.match([1, 2, 3, 4, 5])[0] == 4

def test_page_size_matches_whole_pages():
    c = RadixCache(page_size=4)
    new, _ = c.insert(list(range(10)))
    assert new == 8
    assert c.match(list(range(7)) + [99])[0] == 4
    assert c.match(list(range(12)))[0] == 8

def test_lock_protects_and_lru_evicts_oldest_leaf():
    c = RadixCache()
    _, a = c.insert([1] * 5 + [2])
    _, b = c.insert([3] * 4)
    _, d = c.insert([4] * 3)
    c.lock(a)
    assert c.protected == 6 and c.evictable == 7
    c.match([4, 4, 4])  # touch d: b is now least recent
    assert c.evict(1) == 4 and c.match([3, 3])[0] == 0 and c.match([4, 4, 4])[0] == 3
    assert c.evict(100) == 3 and c.size == 6  # the locked prefix stays
    c.unlock(a)
    assert c.evict(100) == 6 and c.size == 0

def test_reset_and_evict_cascades_to_parent():
    c = RadixCache()
    c.insert([1, 2, 3])
    c.insert([1, 2, 4])
    assert c.size == 4
    assert c.evict(4) == 4 and c.size == 0
    c.insert([5])
    c.reset()
    assert c.size == 0 and c.match([5])[0] == 0
