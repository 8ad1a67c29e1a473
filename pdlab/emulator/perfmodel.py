"""Performance model of one SGLang forward step over a model shape and a GPU profile (no HTTP).

Public API (the local backend, notebooks, the emulator engine, the planner and `pdlab calibrate` call these):

- ``step_time(model, gpu, tp, prefill=[(new_tokens, cached_context), ...], decode=[kv_len, ...],
  overhead_s=None, allreduce=True, heat=None) -> StepCost`` — time of one forward step of a batch.
- ``PowerState`` — a GPU's heat (recent compute-bound time): an engine keeps one and passes its heat.
- ``StepCost`` — ``compute_s``, ``memory_s``, ``allreduce_s``, ``overhead_s``, ``total_s``, ``flops``, ``bytes``.
- ``kv_pool_tokens(model, gpu, tp, mem_fraction_static) -> int`` — KV-cache token pool of one TP group.
- ``kv_transfer_time(tokens, model, link) -> float`` — PD KV-cache handoff time over a link.
- ``prefill_efficiency(gpu, tokens, tp)`` / ``decode_weight_efficiency(gpu, batch, tp)`` /
  ``decode_kv_efficiency(gpu, batch, tp)`` — the profile's measured tables, interpolated on log2.
- ``flops_per_step`` / ``weight_bytes_per_gpu`` / ``kv_read_bytes`` / ``allreduce_time`` — the model's inputs.

The model, per GPU of a TP group (everything ÷ TP), with the efficiencies the GPU profile holds for that
TP size (``GPUProfile.at_tp``):

    weights_s = weight bytes ÷ (HBM bandwidth × decode_weights[decode sequences, at least 1])
    kv_s      = KV bytes read and written ÷ (HBM bandwidth × decode_kv[decode sequences, at least 1])
    compute_s = FLOPs ÷ (dense BF16 peak × prefill[step tokens])          steps with prefill tokens only
    step      = max(compute_s, weights_s + kv_s) + TP all-reduce + per-step overhead

``prefill`` is measured back to back, where a GPU sits at its power cap; where the profile also has
``prefill_boost`` (measured from idle, boost clocks), a step given its GPU's heat is computed from boost
toward the cap as the heat rises (``PowerState``): an isolated request's prefill runs at boost clocks, a
burst of prefills reaches the cap within about 100 ms. Without a heat (``heat=None``: bounds, capacity) the
step is at the cap, the conservative figure.

The efficiencies come from CUDA-graph step times measured without the all-reduce (``pdlab calibrate``),
so launch gaps are inside them and nothing is counted twice: the all-reduce is added from its own
measured latency and per-direction bandwidth, and the per-step overhead (``step_overhead_ms``) is only
what a real server adds on the CPU between steps (0 unless fitted from a run). All figures are "emulated".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdlab.experiment.profiles import GPUProfile, LinkProfile, ModelProfile

GB = 1e9
# The power cap (PowerState): heat's time constant, the heat above which clocks drop, and the parts a
# prefill step from a given heat is computed in. Fitted to benchmarks/data/calibration/*-power-cap.log.
POWER_TAU_S = 0.1
POWER_ONSET = 0.65
POWER_SLICES = 8


@dataclass(frozen=True)
class StepCost:
    """The modelled cost of one forward step, in seconds, and the roofline inputs (per GPU)."""

    compute_s: float
    memory_s: float
    allreduce_s: float
    overhead_s: float
    flops: float
    bytes: float

    @property
    def total_s(self) -> float:
        """Step time: the slower of compute and memory, plus all-reduce and per-step overhead."""
        return max(self.compute_s, self.memory_s) + self.allreduce_s + self.overhead_s


def _layer_matmul_params(model: ModelProfile) -> int:
    h = model.hidden_size
    q = h * model.num_attention_heads * model.head_dim
    kv = 2 * h * model.num_key_value_heads * model.head_dim
    o = model.num_attention_heads * model.head_dim * h
    mlp = 3 * h * model.intermediate_size
    return q + kv + o + mlp


def interpolate_log2(table: dict[int, float], x: float) -> float:
    """Value of a {size: value} table at x: linear in log2(size) between points, clamped at the ends."""
    points = sorted(table.items())
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    lx = math.log2(x)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (lx - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
    return points[-1][1]  # pragma: no cover


def prefill_efficiency(gpu: GPUProfile, tokens: int, tp: int = 1, throttle: float = 1.0) -> float:
    """Fraction of dense BF16 peak a step with `tokens` prefill tokens reaches at this TP size.

    `throttle` 1 is a GPU at its power cap (sustained compute, what `prefill` is measured at), 0 one at boost
    clocks (from idle: `prefill_boost`, where measured); between, the step's time is interpolated.
    """
    return _blend(*_prefill_efficiencies(gpu, tokens, tp), throttle)


def _prefill_efficiencies(gpu: GPUProfile, tokens: int, tp: int) -> tuple[float, float]:
    """(at the power cap, at boost clocks) prefill efficiencies; the same twice without `prefill_boost`."""
    eff = gpu.at_tp(tp)
    capped = interpolate_log2(eff.prefill, max(tokens, 1))
    if not eff.prefill_boost:
        return capped, capped
    return capped, max(interpolate_log2(eff.prefill_boost, max(tokens, 1)), capped)


def _blend(capped: float, boost: float, throttle: float) -> float:
    """The efficiency whose step time is `throttle` of the way from boost's to capped's."""
    return 1.0 / (throttle / capped + (1.0 - throttle) / boost)


def throttle_of(heat: float) -> float:
    """How far toward its power cap a GPU runs (0 boost .. 1 capped) at a given heat (see PowerState)."""
    return min(max((heat - POWER_ONSET) / (1.0 - POWER_ONSET), 0.0), 1.0)


class PowerState:
    """A GPU's heat: the moving average (time constant POWER_TAU_S) of the time it spent in compute-bound
    steps. Measured (benchmarks/gpu_power_cap.py, H100 and H200): back-to-back prefill drops the SM clock
    from 1980 to 1300-1500 MHz within 60-200 ms, steps 15% slower; at 50% duty the clock holds, at 70% the
    steps are 1-2% slower. Memory-bound decode steps hardly heat it."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self.heat = 0.0
        self.t = 0.0  # when `heat` was last updated (the end of the last compute-bound step), caller's clock
        self.time_scale = time_scale  # caller's clock seconds per modelled second (an emulator's --emu-time-scale)

    def heat_at(self, now: float) -> float:
        """Heat at `now`: cooled since the last compute-bound step ended."""
        return self.heat * math.exp(-max(now - self.t, 0.0) / self.time_scale / POWER_TAU_S)

    def hot_step(self, seconds: float, end: float) -> None:
        """A compute-bound step of `seconds` (modelled) ended at `end`."""
        h = self.heat_at(end - seconds * self.time_scale)
        self.heat, self.t = 1.0 - (1.0 - h) * math.exp(-seconds / POWER_TAU_S), end

    @staticmethod
    def is_hot(cost: StepCost) -> bool:
        """Whether a step heats the GPU: compute-bound (a prefill step), not a memory-bound decode step."""
        return cost.compute_s > 0 and cost.compute_s >= cost.memory_s


def decode_weight_efficiency(gpu: GPUProfile, batch: int, tp: int = 1) -> float:
    """Fraction of HBM bandwidth the weight reads of a decode step of `batch` sequences reach at this TP size.

    It falls as the batch grows because the GEMMs start to compute; a prefill-only step reads at batch 1's.
    """
    return interpolate_log2(gpu.at_tp(tp).decode_weights, max(batch, 1))


def decode_kv_efficiency(gpu: GPUProfile, batch: int, tp: int = 1) -> float:
    """Fraction of HBM bandwidth the KV-cache reads of a decode step of `batch` sequences reach."""
    return interpolate_log2(gpu.at_tp(tp).decode_kv, max(batch, 1))


def flops_per_step(model: ModelProfile, prefill: list[tuple[int, int]], decode: list[int]) -> float:
    """Total FLOPs (all TP ranks) of a step: matmuls, LM head on last tokens, causal attention."""
    L = model.num_hidden_layers
    attn_dim = model.num_attention_heads * model.head_dim
    new_tokens = sum(n for n, _ in prefill) + len(decode)
    sequences = len(prefill) + len(decode)
    flops = 2.0 * L * _layer_matmul_params(model) * new_tokens
    flops += 2.0 * model.vocab_size * model.hidden_size * sequences
    # attention: QK^T and AV, 2 FLOPs per MAC each -> 4 × attn_dim per (query, key) pair per layer
    pairs = sum(n * (c + (n + 1) / 2) for n, c in prefill) + sum(decode)
    flops += 4.0 * L * attn_dim * pairs
    return flops


def weight_bytes_per_gpu(model: ModelProfile, tp: int) -> float:
    """Weight bytes one GPU reads per step: every weight of its shard once (embedding lookups aside)."""
    return model.weight_bytes / tp


def kv_read_bytes(model: ModelProfile, prefill: list[tuple[int, int]], decode: list[int]) -> float:
    """KV-cache bytes (all TP ranks) a step reads (cached context) and writes (new tokens)."""
    reads = sum(c for _, c in prefill) + sum(decode)
    writes = sum(n for n, _ in prefill) + len(decode)
    return float(model.kv_bytes_per_token * (reads + writes))


def bytes_per_step(model: ModelProfile, prefill: list[tuple[int, int]], decode: list[int]) -> float:
    """Total HBM bytes (all TP ranks) of a step: weights once, KV reads of the context, KV writes."""
    return float(model.weight_bytes) + kv_read_bytes(model, prefill, decode)


def allreduce_time(model: ModelProfile, gpu: GPUProfile, tp: int, tokens: int, decode_step: bool = False) -> float:
    """TP all-reduce time of a step: two ring all-reduces per layer of tokens × hidden × dtype bytes.

    Each rank sends and receives 2 × (TP − 1) ÷ TP × message bytes, at the interconnect's
    per-direction bandwidth, plus a per-call latency; a calibrated profile's per-call times measured inside
    steps by message size take their place within the measured range (``allreduce_decode_us`` in a decode
    step, where each call also waits for the slower rank; ``allreduce_us`` otherwise).
    """
    if tp <= 1 or tokens <= 0:
        return 0.0
    calls = 2 * model.num_hidden_layers
    msg = tokens * model.hidden_size * model.dtype_bytes
    ic = gpu.interconnect
    wire_s = 2 * (tp - 1) / tp / (ic.bw_gbps * GB)
    table = None
    if ic.allreduce_tp == tp:  # this phase's in-step table, else the other's where it covers the size
        first, other = (ic.allreduce_decode_us, ic.allreduce_us) if decode_step else (ic.allreduce_us,
                                                                                      ic.allreduce_decode_us)
        table = first if first and min(first) <= msg else other if other and min(other) <= msg else None
    if table:  # measured per-call times, extended linearly
        top = max(table)
        per_call = (interpolate_log2(table, msg) if msg <= top else table[top] + (msg - top) * wire_s * 1e6) * 1e-6
    else:
        per_call = msg * wire_s + ic.latency_us * 1e-6
    return calls * per_call


def step_time(
    model: ModelProfile,
    gpu: GPUProfile,
    tp: int,
    prefill: list[tuple[int, int]] | None = None,
    decode: list[int] | None = None,
    overhead_s: float | None = None,
    allreduce: bool = True,
    heat: float | None = None,
) -> StepCost:
    """Modelled time of one forward step: prefill items (new tokens, cached context) and decode KV lengths.

    `overhead_s` None takes the GPU profile's per-step overhead (``step_overhead_ms``). `heat` None models
    prefill at the power cap (sustained load); a PowerState's heat at the step's start models it from there,
    heating through the step (a long prefill from idle reaches the cap part-way).
    """
    prefill = prefill or []
    decode = decode or []
    prefill_tokens = sum(n for n, _ in prefill)
    tokens = prefill_tokens + len(decode)
    if tokens == 0:
        return StepCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    bw = gpu.mem_bw_gbps * GB
    flops = flops_per_step(model, prefill, decode) / tp
    weights = weight_bytes_per_gpu(model, tp)
    kv = kv_read_bytes(model, prefill, decode) / tp
    compute_s = 0.0
    if prefill_tokens:
        work = flops / (gpu.bf16_tflops * 1e12)  # seconds at 100% of peak
        capped, boost = _prefill_efficiencies(gpu, tokens, tp)
        if heat is None or boost == capped:
            compute_s = work / capped
        else:  # from `heat`, heating as the step runs: its work in POWER_SLICES equal parts
            h = heat
            for _ in range(POWER_SLICES):
                dt = work / POWER_SLICES / _blend(capped, boost, throttle_of(h))
                compute_s += dt
                h = 1.0 - (1.0 - h) * math.exp(-dt / POWER_TAU_S)
    batch = max(len(decode), 1)
    memory_s = weights / (bw * decode_weight_efficiency(gpu, batch, tp)) + kv / (bw * decode_kv_efficiency(gpu, batch, tp))
    ar = allreduce_time(model, gpu, tp, tokens, decode_step=not prefill_tokens) if allreduce else 0.0
    overhead = gpu.step_overhead_ms / 1e3 if overhead_s is None else overhead_s
    return StepCost(compute_s, memory_s, ar, overhead, flops, weights + kv)


def kv_bytes_per_token_per_gpu(model: ModelProfile, tp: int) -> float:
    """KV bytes one GPU holds per token: KV heads split over TP, replicated when fewer heads than ranks."""
    heads = max(model.num_key_value_heads / tp, 1.0)
    return 2 * model.num_hidden_layers * heads * model.head_dim * model.dtype_bytes


def kv_pool_tokens(model: ModelProfile, gpu: GPUProfile, tp: int, mem_fraction_static: float = 0.88) -> int:
    """KV token pool of one TP group: (GPU memory bytes × mem_fraction_static − weights ÷ TP) ÷ KV bytes per token."""
    free = gpu.memory_bytes * mem_fraction_static - model.weight_bytes / tp
    if free <= 0:
        return 0
    return int(free // kv_bytes_per_token_per_gpu(model, tp))


def kv_transfer_time(tokens: int, model: ModelProfile, link: LinkProfile) -> float:
    """PD handoff time: the prompt's KV bytes (2 × layers × kv_heads × head_dim × dtype) over the link."""
    if tokens <= 0:
        return 0.0
    return link.latency_us * 1e-6 + tokens * model.kv_bytes_per_token / (link.bw_gbps * GB)
