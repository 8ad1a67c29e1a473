"""Engine scheduling behaviours in virtual time (no HTTP, no clock)."""

import pytest

from pdlab.emulator import perfmodel as pm
from pdlab.emulator.engine import Engine, EngineConfig, Req, SimRequest, simulate
from pdlab.experiment.profiles import gpu, model

M, G = model("Qwen3-32B"), gpu("L20")


def cfg(**kw) -> EngineConfig:
    base = dict(model=M, gpu=G, tp=2, step_overhead_s=0.0)
    base.update(kw)
    return EngineConfig(**base)


def run(e: Engine, until_idle: int = 10_000) -> float:
    """Drive an engine step by step in virtual time; returns the final time."""
    t = 0.0
    for _ in range(until_idle):
        if e.config.mode == "decode":
            e.admit(t)
        b = e.next_batch(t)
        if b is None:
            return t
        t += b.cost.total_s
        e.complete(b, t)
    raise AssertionError("engine did not go idle")


def test_chunked_prefill_splits_long_prompt():
    e = Engine(cfg(chunked_prefill_size=4096))
    e.submit(Req("a", 10000, 4))
    sizes = []
    t = 0.0
    while (b := e.next_batch(t)) is not None and b.kind == "prefill":
        sizes.append([n for _, n in b.prefill])
        t += b.cost.total_s
        e.complete(b, t)
    assert sizes == [[4096], [4096], [1808]]
    # the second chunk attends to the first chunk's cached context
    c2 = pm.step_time(M, G, 2, prefill=[(4096, 4096)])
    assert c2.total_s > pm.step_time(M, G, 2, prefill=[(4096, 0)]).total_s


def test_prefill_batches_several_prompts_up_to_budget():
    e = Engine(cfg(chunked_prefill_size=4096))
    for i in range(3):
        e.submit(Req(str(i), 1500, 4))
    b = e.next_batch(0.0)
    assert [n for _, n in b.prefill] == [1500, 1500, 1096]


def test_max_running_requests_caps_the_batch():
    e = Engine(cfg(max_running_requests=3))
    for i in range(5):
        e.submit(Req(str(i), 100, 50))
    b = e.next_batch(0.0)
    e.complete(b, 1.0)
    assert len(e.running) == 3 and e.num_queued == 2
    b = e.next_batch(1.0)
    assert b.kind == "decode" and len(b.decode) == 3
    run(e)
    assert e.num_queued == 0 and e.used == 0 and e.reserved == 0


def test_kv_exhaustion_queues_until_memory_frees():
    e = Engine(cfg(kv_pool_tokens=1000))
    done = []
    for i in range(3):
        e.submit(Req(str(i), 300, 100, listener=lambda k, r: done.append(r.rid) if k == "finished" else None))
    b = e.next_batch(0.0)
    assert [r.rid for r, _ in b.prefill] == ["0", "1"]  # 2 × 400 reserved; the third would exceed 1000
    e.complete(b, 1.0)
    assert e.num_queued == 1 and e.token_usage == 600 / 1000
    run(e)
    assert done == ["0", "1", "2"] and e.used == 0


def test_request_larger_than_pool_is_rejected():
    e = Engine(cfg(kv_pool_tokens=1000))
    assert "KV pool" in e.check(900, 200)
    assert "context length" in e.check(50000, 10)
    assert e.check(100, 100) is None


def test_colocated_prefill_takes_priority_over_decode():
    e = Engine(cfg(chunked_prefill_size=2048))
    e.submit(Req("dec", 100, 1000))
    t = 0.0
    b = e.next_batch(t)
    t += b.cost.total_s
    e.complete(b, t)
    b = e.next_batch(t)
    assert b.kind == "decode"
    e.submit(Req("long", 8000, 10))
    kinds = []
    for _ in range(4):
        b = e.next_batch(t)
        kinds.append(b.kind)
        t += b.cost.total_s
        e.complete(b, t)
    assert kinds == ["prefill"] * 4  # decode stalls for every chunk of the long prompt


def test_simulated_interference_inflates_colocated_max_itl_not_pd():
    reqs = [SimRequest(0.0, 200, 100)] + [SimRequest(1.0 + i * 0.5, 8000, 2) for i in range(3)]
    colo = simulate(reqs, cfg(), workers=1)
    pd = simulate(reqs, cfg(), prefill_workers=1, decode_workers=1)
    assert colo[0].max_itl > 1.0  # stalled behind 8k-token prefills
    assert pd[0].max_itl < 0.2
    assert len(colo) == len(pd) == 4


def test_pd_decode_waits_for_transfer():
    reqs = [SimRequest(0.0, 4000, 10)]
    (r,) = simulate(reqs, cfg(), prefill_workers=1, decode_workers=1)
    prefill = pm.step_time(M, G, 2, prefill=[(4000, 0)]).total_s
    transfer = pm.kv_transfer_time(4000, M, cfg().link)
    assert r.ttft == __import__("pytest").approx(prefill + transfer)


def test_decode_engine_starts_only_after_kv_arrives():
    e = Engine(cfg(mode="decode"))
    r = Req("a", 500, 5)
    e.submit(r)
    (admitted,) = e.admit(0.0)
    assert admitted is r and r.state == "kv_wait"
    assert e.next_batch(0.0) is None  # nothing to decode before the KV arrives
    e.kv_arrived(r, 1.0)
    assert r.generated == 1 and r.t_first == 1.0
    assert e.next_batch(1.0).kind == "decode"
    run(e)
    assert r.generated == 5 and e.used == 0


def test_prefill_engine_holds_kv_until_released():
    e = Engine(cfg(mode="prefill"))
    events = []
    r = Req("a", 500, 1, listener=lambda k, q: events.append(k))
    e.submit(r)
    run(e)
    assert events == ["token", "prefill_done"] and e.used == 500
    e.release(r, 2.0)
    assert events[-1] == "finished" and e.used == 0


def test_abort_frees_kv():
    e = Engine(cfg())
    r = Req("a", 300, 100)
    e.submit(r)
    b = e.next_batch(0.0)
    e.complete(b, 1.0)
    e.abort(r, 1.0)
    assert e.used == 0 and e.reserved == 0 and not e.running


def test_isolated_prefills_run_at_boost_clocks_and_a_burst_reaches_the_power_cap():
    """H100's profile measured both: a request at an idle GPU prefills faster than one in a prefill burst."""
    h100 = EngineConfig(model=M, gpu=gpu("H100"), tp=2, step_overhead_s=0.0, radix_cache=False,
                        chunked_prefill_size=2048, max_prefill_tokens=2048)  # one request a step
    one = pm.step_time(M, h100.gpu, 2, prefill=[(2048, 0)], overhead_s=0.0)  # at the power cap
    apart = simulate([SimRequest(2.0 * i, 2048, 1) for i in range(3)], h100)
    burst = simulate([SimRequest(0.0, 2048, 1) for _ in range(12)], h100)
    for r in apart:
        assert r.ttft < 0.95 * one.total_s  # from idle: boost clocks
    firsts = sorted(r.ttft for r in burst)
    steps = [firsts[0]] + [b - a for a, b in zip(firsts, firsts[1:], strict=False)]  # one prefill step each
    assert steps[0] < 0.95 * one.total_s
    assert steps[-1] == pytest.approx(one.total_s, rel=0.02)  # back to back: at the cap
