"""Prefix caching in the engine and in virtual-time simulation (RadixAttention semantics)."""

import pytest

from pdlab.emulator.engine import Engine, EngineConfig, Req, SimRequest, simulate
from pdlab.emulator.perfmodel import kv_transfer_time
from pdlab.emulator.routing import Picker, Policy
from pdlab.experiment.profiles import LinkProfile, gpu, model

M, G = model("Qwen3-32B"), gpu("L20")
LONG = tuple(range(1000, 9000))  # an 8000-token prompt


def cfg(**kw) -> EngineConfig:
    base = dict(model=M, gpu=G, tp=2, step_overhead_s=0.0)
    base.update(kw)
    return EngineConfig(**base)


def two_identical(**kw) -> list:
    reqs = [SimRequest(0.0, len(LONG), 4, tokens=LONG), SimRequest(10.0, len(LONG), 4, tokens=LONG)]
    return simulate(reqs, cfg(**kw))


def test_second_identical_prompt_hits_the_cache_and_is_much_faster():
    first, second = two_identical()
    assert first.cached_tokens == 0 and second.cached_tokens == len(LONG) - 1
    assert second.ttft < first.ttft / 10


def test_disabled_cache_gives_no_difference():
    first, second = two_identical(radix_cache=False)
    assert first.cached_tokens == second.cached_tokens == 0
    assert second.ttft == pytest.approx(first.ttft, rel=1e-6)


def test_page_size_rounds_the_hit_down_to_whole_pages():
    _, second = two_identical(page_size=64)
    assert second.cached_tokens == (len(LONG) - 1) // 64 * 64


def test_concurrent_requests_share_a_prefix_inserted_after_prefill():
    e = Engine(cfg(chunked_prefill_size=4096, max_prefill_tokens=4096))
    a = Req("a", len(LONG), 2, tokens=LONG)
    b = Req("b", len(LONG), 2, tokens=LONG)
    e.submit(a)
    t = 0.0
    while a.prefilled < a.prompt_len:  # a's chunks are cached as they complete
        batch = e.next_batch(t)
        t += batch.cost.total_s
        e.complete(batch, t)
    e.submit(b)
    e.next_batch(t)
    assert b.cached == len(LONG) - 1
    assert e.cache_size == len(LONG)  # one shared copy of the prefix
    assert e.reserved == (a.max_new_tokens) + (1 + b.max_new_tokens)


def test_lru_eviction_makes_room_and_kv_accounting_returns_to_zero():
    e = Engine(cfg(kv_pool_tokens=20_000))
    t = 0.0
    for k in range(4):  # 4 distinct 8000-token prompts through a 20000-token pool
        toks = tuple(range(k * 100_000, k * 100_000 + 8000))
        r = Req(f"r{k}", 8000, 2, tokens=toks)
        e.submit(r)
        while (b := e.next_batch(t)) is not None:
            t += b.cost.total_s
            e.complete(b, t)
        assert r.state == "finished"
        assert e.cache_size <= 20_000
    assert e.reserved == 0 and e.used == 0 and e.cache.protected == 0
    # the most recent prompt survived, the oldest was evicted
    assert e.cache.match(tuple(range(300_000, 308_000)))[0] > 0
    assert e.cache.match(tuple(range(0, 8000)))[0] == 0


def test_flush_refused_while_busy_then_empties_the_cache():
    e = Engine(cfg())
    r = Req("r", 100, 3, tokens=tuple(range(100)))
    e.submit(r)
    assert e.flush() is False
    t = 0.0
    while (b := e.next_batch(t)) is not None:
        t += b.cost.total_s
        e.complete(b, t)
    assert e.cache_size > 0 and e.flush() is True and e.cache_size == 0


def test_pd_decode_cache_only_with_flag_and_then_shorter_transfer():
    reqs = [SimRequest(0.0, len(LONG), 4, tokens=LONG), SimRequest(10.0, len(LONG), 4, tokens=LONG)]
    off = simulate(reqs, cfg(), prefill_workers=1, decode_workers=1, decode_config=cfg(radix_cache=False))
    on = simulate(reqs, cfg(), prefill_workers=1, decode_workers=1, decode_config=cfg())
    assert off[1].cached_tokens == len(LONG) - 1 and off[1].decode_cached_tokens == 0
    assert on[1].decode_cached_tokens == len(LONG) - 1
    assert on[1].ttft < off[1].ttft  # only the uncached KV crosses the link


def test_sessions_arrive_after_the_previous_turn_plus_think_time():
    turn1 = tuple(range(2000))
    turn2 = turn1 + tuple(range(50_000, 50_100))
    reqs = [SimRequest(0.0, len(turn1), 8, tokens=turn1), SimRequest(3.0, len(turn2), 8, tokens=turn2, after=0)]
    a, b = simulate(reqs, cfg())
    assert b.arrival == pytest.approx(a.arrival + a.e2e + 3.0)
    assert b.cached_tokens == len(turn1)


def test_cache_aware_routing_keeps_a_prefix_on_one_worker():
    groups = [tuple(range(g * 10_000, g * 10_000 + 2000)) for g in range(2)]
    reqs = [SimRequest(i * 0.5, 2100, 4, tokens=groups[i % 2] + tuple(range(900_000 + i * 100, 900_000 + i * 100 + 100)))
            for i in range(12)]
    ca = simulate(reqs, cfg(), workers=3, policy=Policy("cache_aware"))
    rr = simulate(reqs, cfg(), workers=3, policy=Policy("round_robin"))
    assert sum(t.cached_tokens for t in ca) > sum(t.cached_tokens for t in rr)


def test_picker_policies():
    p = Picker(2, Policy("power_of_two"), seed=1)
    p.load = [5, 0]
    assert p.pick() == 1
    c = Picker(2, Policy("cache_aware", balance_abs_threshold=2, balance_rel_threshold=1.5))
    c.load = [10, 0]
    assert c.pick(tuple(range(100))) == 1  # imbalanced: least loaded wins
    with pytest.raises(ValueError, match="allowed: cache_aware, round_robin, power_of_two, random"):
        Policy("least_busy")


def test_kv_transfers_into_one_decode_worker_share_its_link():
    slow = LinkProfile(name="slow", bw_gbps=0.5, latency_us=0.0)
    reqs = [SimRequest(0.0, 4000, 2), SimRequest(0.0, 4000, 2)]
    dur = kv_transfer_time(4000, M, slow)
    a, b = simulate(reqs, cfg(link=slow), prefill_workers=2, decode_workers=1, policy=Policy("round_robin"))
    assert abs(abs(b.ttft - a.ttft) - dur) < 0.05 * dur  # the second waited for the first on the decode link
