"""Performance model against hand-computed values."""

import math

import pytest

from pdlab.emulator import perfmodel as pm
from pdlab.experiment.profiles import GPUProfile, LinkProfile, ModelProfile, gpu, link, model

TOY = ModelProfile(name="toy", num_hidden_layers=2, hidden_size=8, num_attention_heads=2, num_key_value_heads=1,
                   head_dim=4, intermediate_size=16, vocab_size=10, dtype_bytes=2)
TOY_GPU = GPUProfile(name="toy", memory_gb=1, mem_bw_gbps=1, bf16_tflops=1e-3, prefill_efficiency={1: 0.5},
                     decode_bw_efficiency=0.5, interconnect={"kind": "x", "bw_gbps": 1, "latency_us": 1})


def test_toy_counts_by_hand():
    # per layer: q 8*8=64, kv 2*8*4=64, o 64, mlp 3*8*16=384 -> 576; 2 layers -> 1152; emb 2*10*8=160
    assert TOY.num_parameters == 1152 + 160
    assert TOY.kv_bytes_per_token == 2 * 2 * 1 * 4 * 2  # 32 bytes
    # prefill 3 new tokens, no cache: matmul 2*1152*3 = 6912, LM head 2*10*8*1 = 160,
    # attention 4 * L(2) * 8 * pairs(3 * (0 + 2) = 6) = 384
    assert pm.flops_per_step(TOY, [(3, 0)], []) == 6912 + 160 + 384
    # decode two sequences with kv 5 and 7: matmul 2*1152*2, LM head 2*160, attention 4*2*8*12
    assert pm.flops_per_step(TOY, [], [5, 7]) == 4608 + 320 + 768
    # bytes: weights 1312*2 + kv 32 * (reads 12 + writes 2)
    assert pm.bytes_per_step(TOY, [], [5, 7]) == 2624 + 32 * 14


def test_toy_step_time_by_hand():
    c = pm.step_time(TOY, TOY_GPU, 1, prefill=[(3, 0)], overhead_s=0.5)
    assert c.compute_s == pytest.approx(7456 / (1e9 * 0.5))
    assert c.memory_s == pytest.approx((2624 + 32 * 3) / (1e9 * 0.5))
    assert c.allreduce_s == 0.0
    assert c.total_s == pytest.approx(max(c.compute_s, c.memory_s) + 0.5)
    # TP2: all-reduce 2 per layer, ring 2*(1/2)*msg/bw + latency; msg = 3 tokens * 8 * 2 bytes = 48
    c2 = pm.step_time(TOY, TOY_GPU, 2, prefill=[(3, 0)])
    assert c2.allreduce_s == pytest.approx(4 * (48 / 1e9 + 1e-6))
    assert c2.compute_s == pytest.approx(c.compute_s / 2)


def test_qwen3_32b_l20_tp2_decode_by_hand():
    m, g = model("Qwen3-32B"), gpu("L20")
    assert m.num_parameters == pytest.approx(32.76e9, rel=1e-3)
    assert m.kv_bytes_per_token == 256 * 1024
    c = pm.step_time(m, g, 2, decode=[1024], allreduce=False)
    expected_mem = (m.weight_bytes + m.kv_bytes_per_token * 1025) / 2 / (864e9 * 0.75)
    assert c.memory_s == pytest.approx(expected_mem)
    assert c.total_s == pytest.approx(expected_mem)  # decode of one sequence is memory-bound
    assert 0.049 < c.total_s < 0.052


def test_prefill_is_compute_bound_and_uses_efficiency():
    m, g = model("Qwen3-32B"), gpu("H100")
    c = pm.step_time(m, g, 2, prefill=[(4096, 0)], allreduce=False)
    assert c.compute_s > c.memory_s
    assert c.flops / (c.compute_s * 989e12) == pytest.approx(0.63)
    assert pm.prefill_efficiency(g, 256) == 0.46 and pm.prefill_efficiency(g, 100) == 0.46
    assert pm.prefill_efficiency(g, 512) == pytest.approx(0.46 + (0.63 - 0.46) / 2)


def test_kv_pool_sizing_by_hand():
    m, g = model("Qwen3-32B"), gpu("L20")
    free = 48e9 * 0.88 - m.weight_bytes / 2
    assert pm.kv_pool_tokens(m, g, 2, 0.88) == math.floor(free / (128 * 1024))
    assert pm.kv_pool_tokens(m, g, 1, 0.88) == 0  # 65.5 GB of weights do not fit one 48 GB L20
    # more KV heads than ranks -> split; fewer -> replicated
    assert pm.kv_bytes_per_token_per_gpu(m, 16) == 2 * 64 * 1 * 128 * 2


def test_kv_transfer_time_by_hand():
    m = model("Qwen3-32B")
    lk = LinkProfile(name="x", bw_gbps=25, latency_us=15)
    assert pm.kv_transfer_time(1000, m, lk) == pytest.approx(15e-6 + 1000 * 262144 / 25e9)
    assert pm.kv_transfer_time(0, m, link("erdma")) == 0.0
