"""Performance model of one SGLang forward step: a roofline over model shape and GPU profile (no HTTP).

Public API (the local backend, notebooks and the emulator engine call these):

- ``step_time(model, gpu, tp, prefill=[(new_tokens, cached_context), ...], decode=[kv_len, ...],
  overhead_s=0.0, allreduce=True) -> StepCost`` — time of one forward step of a batch.
- ``StepCost`` — ``compute_s``, ``memory_s``, ``allreduce_s``, ``overhead_s``, ``total_s``, ``flops``, ``bytes``.
- ``kv_pool_tokens(model, gpu, tp, mem_fraction_static) -> int`` — KV-cache token pool of one TP group.
- ``kv_transfer_time(tokens, model, link) -> float`` — PD KV-cache handoff time over a link.
- ``prefill_efficiency(gpu, tokens) -> float`` — fraction of dense peak a prefill of ``tokens`` reaches.
- ``flops_per_step(...)`` / ``bytes_per_step(...)`` — the two roofline inputs, for checks and plots.

The model: compute time = FLOPs ÷ TP ÷ (dense BF16 peak × prefill efficiency at the step's token count);
memory time = (weights + KV reads + KV writes) ÷ TP ÷ (HBM bandwidth × decode efficiency); a step takes
max(compute, memory) + TP all-reduce (two per layer of tokens × hidden × dtype bytes, ring algorithm,
plus a per-call latency) + a per-step overhead. FLOPs count 2 × matmul parameters per token (the LM head
only for each sequence's last token) plus causal attention (QKᵀ and AV). All figures are "emulated".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdlab.experiment.profiles import GPUProfile, LinkProfile, ModelProfile

GB = 1e9


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
        """Step time: roofline bound plus all-reduce and fixed overhead."""
        return max(self.compute_s, self.memory_s) + self.allreduce_s + self.overhead_s


def _layer_matmul_params(model: ModelProfile) -> int:
    h = model.hidden_size
    q = h * model.num_attention_heads * model.head_dim
    kv = 2 * h * model.num_key_value_heads * model.head_dim
    o = model.num_attention_heads * model.head_dim * h
    mlp = 3 * h * model.intermediate_size
    return q + kv + o + mlp


def prefill_efficiency(gpu: GPUProfile, tokens: int) -> float:
    """Fraction of dense peak reached by a step of `tokens` tokens (log2-linear interpolation, clamped)."""
    points = sorted(gpu.prefill_efficiency.items())
    if tokens <= points[0][0]:
        return points[0][1]
    if tokens >= points[-1][0]:
        return points[-1][1]
    x = math.log2(max(tokens, 1))
    for (t0, e0), (t1, e1) in zip(points, points[1:], strict=False):
        if t0 <= tokens <= t1:
            x0, x1 = math.log2(t0), math.log2(t1)
            return e0 + (e1 - e0) * (x - x0) / (x1 - x0)
    return points[-1][1]  # pragma: no cover


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


def bytes_per_step(model: ModelProfile, prefill: list[tuple[int, int]], decode: list[int]) -> float:
    """Total HBM bytes (all TP ranks) of a step: weights once, KV reads of the context, KV writes."""
    kv = model.kv_bytes_per_token
    reads = sum(c for _, c in prefill) + sum(decode)
    writes = sum(n for n, _ in prefill) + len(decode)
    return float(model.weight_bytes + kv * (reads + writes))


def allreduce_time(model: ModelProfile, gpu: GPUProfile, tp: int, tokens: int) -> float:
    """TP all-reduce time of a step: two ring all-reduces per layer of tokens × hidden × dtype bytes."""
    if tp <= 1 or tokens <= 0:
        return 0.0
    calls = 2 * model.num_hidden_layers
    msg = tokens * model.hidden_size * model.dtype_bytes
    per_call = 2 * (tp - 1) / tp * msg / (gpu.interconnect.bw_gbps * GB) + gpu.interconnect.latency_us * 1e-6
    return calls * per_call


def step_time(
    model: ModelProfile,
    gpu: GPUProfile,
    tp: int,
    prefill: list[tuple[int, int]] | None = None,
    decode: list[int] | None = None,
    overhead_s: float = 0.0,
    allreduce: bool = True,
) -> StepCost:
    """Modelled time of one forward step: prefill items (new tokens, cached context) and decode KV lengths."""
    prefill = prefill or []
    decode = decode or []
    tokens = sum(n for n, _ in prefill) + len(decode)
    if tokens == 0:
        return StepCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    flops = flops_per_step(model, prefill, decode) / tp
    nbytes = bytes_per_step(model, prefill, decode) / tp
    compute_s = flops / (gpu.bf16_tflops * 1e12 * prefill_efficiency(gpu, tokens))
    memory_s = nbytes / (gpu.mem_bw_gbps * GB * gpu.decode_bw_efficiency)
    ar = allreduce_time(model, gpu, tp, tokens) if allreduce else 0.0
    return StepCost(compute_s, memory_s, ar, overhead_s, flops, nbytes)


def kv_bytes_per_token_per_gpu(model: ModelProfile, tp: int) -> float:
    """KV bytes one GPU holds per token: KV heads split over TP, replicated when fewer heads than ranks."""
    heads = max(model.num_key_value_heads / tp, 1.0)
    return 2 * model.num_hidden_layers * heads * model.head_dim * model.dtype_bytes


def kv_pool_tokens(model: ModelProfile, gpu: GPUProfile, tp: int, mem_fraction_static: float = 0.88) -> int:
    """KV token pool of one TP group: (GPU memory × mem_fraction_static − weights ÷ TP) ÷ KV bytes per token."""
    free = gpu.memory_gb * GB * mem_fraction_static - model.weight_bytes / tp
    if free <= 0:
        return 0
    return int(free // kv_bytes_per_token_per_gpu(model, tp))


def kv_transfer_time(tokens: int, model: ModelProfile, link: LinkProfile) -> float:
    """PD handoff time: the prompt's KV bytes (2 × layers × kv_heads × head_dim × dtype) over the link."""
    if tokens <= 0:
        return 0.0
    return link.latency_us * 1e-6 + tokens * model.kv_bytes_per_token / (link.bw_gbps * GB)
