"""Performance model against hand-computed values and the committed H100/H200 measurements."""

import json
import math
from pathlib import Path

import pytest

from pdlab.emulator import perfmodel as pm
from pdlab.experiment.profiles import GPUProfile, LinkProfile, ModelProfile, gpu, link, model

ROOT = Path(__file__).resolve().parents[1]
TOY = ModelProfile(name="toy", num_hidden_layers=2, hidden_size=8, num_attention_heads=2, num_key_value_heads=1,
                   head_dim=4, intermediate_size=16, vocab_size=10, dtype_bytes=2)
TOY_EFF = {"prefill": {1: 0.5}, "decode_weights": {1: 0.5, 4: 0.25}, "decode_kv": {1: 0.8}}
TOY_GPU = GPUProfile(name="toy", memory_gb=1, memory_unit="GB", mem_bw_gbps=1, bf16_tflops=1e-3,
                     interconnect={"kind": "x", "bw_gbps": 1, "latency_us": 1},
                     efficiency={1: TOY_EFF, 2: {**TOY_EFF, "prefill": {1: 0.25}}},
                     step_overhead_ms=3.0, provenance={"kind": "datasheet", "summary": "toy"})


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


def test_prefill_step_by_hand():
    c = pm.step_time(TOY, TOY_GPU, 1, prefill=[(3, 0)], overhead_s=0.5)
    assert c.compute_s == pytest.approx(7456 / (1e9 * 0.5))
    # weights at batch 1's weight-read efficiency, KV writes at the KV efficiency
    assert c.memory_s == pytest.approx(2624 / (1e9 * 0.5) + 32 * 3 / (1e9 * 0.8))
    assert c.allreduce_s == 0.0
    assert c.total_s == pytest.approx(max(c.compute_s, c.memory_s) + 0.5)


def test_decode_step_is_weights_plus_kv_with_batch_dependent_efficiency():
    c = pm.step_time(TOY, TOY_GPU, 1, decode=[5, 7], overhead_s=0.0)
    assert c.compute_s == 0.0
    e_w = 0.5 + (0.25 - 0.5) * (math.log2(2) - 0) / (math.log2(4) - 0)  # log2-linear between batch 1 and 4
    assert pm.decode_weight_efficiency(TOY_GPU, 2) == pytest.approx(e_w)
    assert c.memory_s == pytest.approx(2624 / (1e9 * e_w) + 32 * 14 / (1e9 * 0.8))
    assert c.total_s == pytest.approx(c.memory_s)


def test_overhead_comes_from_the_profile_unless_given():
    assert pm.step_time(TOY, TOY_GPU, 1, decode=[5]).overhead_s == pytest.approx(3e-3)
    assert pm.step_time(TOY, TOY_GPU, 1, decode=[5], overhead_s=0.0).overhead_s == 0.0


def test_efficiencies_depend_on_tp():
    assert pm.prefill_efficiency(TOY_GPU, 3, tp=1) == 0.5
    assert pm.prefill_efficiency(TOY_GPU, 3, tp=2) == 0.25
    assert TOY_GPU.at_tp(8) is TOY_GPU.efficiency[2]  # largest measured TP below
    c1 = pm.step_time(TOY, TOY_GPU, 1, prefill=[(3, 0)])
    c2 = pm.step_time(TOY, TOY_GPU, 2, prefill=[(3, 0)])
    assert c2.compute_s == pytest.approx(c1.compute_s / 2 / 0.5)  # half the FLOPs at half the efficiency


def test_allreduce_uses_per_direction_bandwidth_ring_and_latency():
    # TP2: 2 per layer, ring 2*(1/2)*msg/bw + latency; msg = 3 tokens * 8 * 2 bytes = 48
    c2 = pm.step_time(TOY, TOY_GPU, 2, prefill=[(3, 0)])
    assert c2.allreduce_s == pytest.approx(4 * (48 / 1e9 + 1e-6))
    assert pm.step_time(TOY, TOY_GPU, 2, prefill=[(3, 0)], allreduce=False).allreduce_s == 0.0
    for name in ("H100", "H200", "H20", "A100"):  # NVLink figures are per direction (half the datasheet sum)
        assert gpu(name).interconnect.bw_gbps <= 450


def test_memory_in_the_datasheets_unit():
    assert gpu("H100").memory_bytes == 80 * 2**30  # HBM "80 GB" is 80 GiB (81559 MiB usable)
    assert gpu("L20").memory_bytes == 48e9  # GDDR6 "48 GB" is 48e9 bytes (46068 MiB usable)
    m = model("Qwen3-32B")
    free = 80 * 2**30 * 0.88 - m.weight_bytes / 2
    assert pm.kv_pool_tokens(m, gpu("H100"), 2, 0.88) == math.floor(free / (128 * 1024))


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


@pytest.mark.parametrize("name", ["H100", "H200"])
def test_built_in_profile_predicts_the_committed_measurements_within_5_percent(name):
    raws = json.loads((ROOT / f"benchmarks/data/calibration/{name.lower()}-qwen3-32b.json").read_text())
    m, g = model("Qwen3-32B"), gpu(name)
    assert g.provenance.kind == "calibrated" and g.provenance.gpu_name and name in g.provenance.gpu_name
    checked = 0
    for raw in raws:
        for r in raw["rows"]:
            if r["allreduce"] or (r["phase"] == "decode" and r["batch"] > 128):
                continue
            pre = [(r["tokens"], 0)] if r["phase"] == "prefill" else []
            dec = [r["context"]] * r["batch"] if r["phase"] == "decode" else []
            t = pm.step_time(m, g, raw["tp"], prefill=pre, decode=dec, overhead_s=0.0, allreduce=False).total_s
            assert t == pytest.approx(r["seconds"], rel=0.05), (raw["tp"], r)
            checked += 1
    assert checked > 60


def test_uncalibrated_profiles_say_so():
    for name in ("L20", "H20", "A100"):
        assert gpu(name).provenance.kind == "datasheet"
        assert "not measured" in gpu(name).describe()


def test_measured_allreduce_table_is_used_at_its_tp_and_extended_beyond_it():
    ic = {"kind": "x", "bw_gbps": 1, "latency_us": 1, "allreduce_tp": 2, "allreduce_us": {16: 10.0, 64: 30.0}}
    g = TOY_GPU.model_copy(update={"interconnect": TOY_GPU.interconnect.model_copy(update=ic)})
    calls = 2 * TOY.num_hidden_layers
    # 2 tokens × 8 hidden × 2 bytes = 32 bytes: halfway (log2) between 16 and 64 bytes -> 10 + 20 × 0.5
    assert pm.allreduce_time(TOY, g, 2, 2) == pytest.approx(calls * 20e-6)
    # beyond the table: its last time plus the extra bytes at the per-direction bandwidth
    assert pm.allreduce_time(TOY, g, 2, 8) == pytest.approx(calls * (30e-6 + (128 - 64) / 1e9))
    # another TP size: latency + bandwidth, not a table measured at TP2
    assert pm.allreduce_time(TOY, g, 4, 2) == pytest.approx(calls * (1.5 * 32 / 1e9 + 1e-6))


def test_decode_steps_take_the_decode_allreduce_table_and_prefill_steps_the_other():
    ic = {"kind": "x", "bw_gbps": 1, "latency_us": 1, "allreduce_tp": 2, "allreduce_us": {64: 30.0, 256: 50.0},
          "allreduce_decode_us": {16: 10.0, 64: 40.0}}
    g = TOY_GPU.model_copy(update={"interconnect": TOY_GPU.interconnect.model_copy(update=ic)})
    calls = 2 * TOY.num_hidden_layers
    # 4 tokens × 8 × 2 = 64 bytes: each phase its own in-step time
    assert pm.allreduce_time(TOY, g, 2, 4, decode_step=True) == pytest.approx(calls * 40e-6)
    assert pm.allreduce_time(TOY, g, 2, 4) == pytest.approx(calls * 30e-6)
    # a prefill step below the prefill table's sizes borrows the decode table rather than the line
    assert pm.allreduce_time(TOY, g, 2, 1) == pytest.approx(calls * 10e-6)
    step = pm.step_time(TOY, g, 2, decode=[5] * 4, overhead_s=0.0)
    assert step.allreduce_s == pytest.approx(calls * 40e-6)


BOOST_EFF = {**TOY_EFF, "prefill": {1: 0.5}, "prefill_boost": {1: 0.6}}
BOOST_GPU = GPUProfile.model_validate({**TOY_GPU.model_dump(), "efficiency": {1: BOOST_EFF}})


def test_prefill_from_idle_runs_at_boost_clocks_and_heats_to_the_power_cap():
    m, g = model("Qwen3-8B"), BOOST_GPU.model_copy(update={"bf16_tflops": 1000.0, "mem_bw_gbps": 3000.0})
    capped = pm.step_time(m, g, 1, prefill=[(256, 0)], overhead_s=0.0)  # heat None: at the power cap
    cold = pm.step_time(m, g, 1, prefill=[(256, 0)], overhead_s=0.0, heat=0.0)
    hot = pm.step_time(m, g, 1, prefill=[(256, 0)], overhead_s=0.0, heat=1.0)
    assert hot.compute_s == pytest.approx(capped.compute_s)
    assert cold.compute_s == pytest.approx(capped.compute_s * 0.5 / 0.6, rel=1e-3)  # a short step stays at boost
    # a step long against POWER_TAU_S reaches the cap part-way: between boost and capped
    long_cold = pm.step_time(m, g, 1, prefill=[(65536, 0)], overhead_s=0.0, heat=0.0).compute_s
    long_capped = pm.step_time(m, g, 1, prefill=[(65536, 0)], overhead_s=0.0).compute_s
    assert long_capped * 0.5 / 0.6 * 1.01 < long_cold < long_capped
    # a profile without prefill_boost: heat changes nothing
    plain = pm.step_time(m, TOY_GPU.model_copy(update={"bf16_tflops": 1000.0}), 1, prefill=[(256, 0)], heat=0.0)
    assert plain.compute_s == pytest.approx(
        pm.step_time(m, TOY_GPU.model_copy(update={"bf16_tflops": 1000.0}), 1, prefill=[(256, 0)]).compute_s)


def test_power_state_heats_under_back_to_back_prefill_and_cools_when_idle():
    ps = pm.PowerState()
    t = 0.0
    for _ in range(40):  # 20 ms prefill steps back to back for 0.8 s
        t += 0.02
        ps.hot_step(0.02, t)
    assert pm.throttle_of(ps.heat_at(t)) > 0.95
    assert pm.throttle_of(ps.heat_at(t + 0.5)) == 0.0  # half a second idle: boost again
    duty = pm.PowerState()
    t = 0.0
    for _ in range(100):  # 12 ms steps with 12 ms gaps: 50% duty holds the clock (measured)
        t += 0.012
        duty.hot_step(0.012, t)
        t += 0.012
    assert pm.throttle_of(duty.heat_at(t)) == 0.0
