"""Fit a GPU profile's efficiencies to raw step-time measurements (as `measure.py` writes them).

Per TP size: prefill efficiency = FLOPs ÷ (peak × measured time) at each measured token count (and from
the from-idle times, where measured, the boost-clock ``prefill_boost``); decode
weight-read and KV-read efficiencies per batch from a least-squares fit of
time = weights ÷ (BW × e_w[batch]) + KV bytes ÷ (BW × e_kv[batch]) over the contexts measured at that
batch (rows timed without the all-reduce; e_kv held at most 1, the HBM peak); the all-reduce latency and
per-direction bandwidth (NCCL, or one-shot + NCCL where the raw document says so) from what the
all-reduces added to the measured steps (the in-step cost, which exceeds an isolated sweep's), or from the
sweep alone when no step was timed both ways.
"""

from __future__ import annotations

import numpy as np

from pdlab.emulator import perfmodel
from pdlab.experiment.profiles import GPUProfile, Interconnect, ModelProfile, TPEfficiency

GB = 1e9
# A KV-read efficiency above 1 would read the KV cache faster than the HBM peak: it only appears where a
# step's time hardly grows with context (at batch 1 the split-KV attention is latency-bound), and it would
# extrapolate to long contexts as if they were free. The fit holds it at the peak instead.
KV_EFFICIENCY_CAP = 1.0


def model_of(raw: dict) -> ModelProfile:
    """The model profile a raw measurement document was taken with (its layer shapes)."""
    return ModelProfile(name=raw.get("model") or "measured", **raw["shape"])


def fit_tp(raw: dict, base: GPUProfile) -> tuple[TPEfficiency, dict[str, float]]:
    """Efficiencies of one TP size from one raw document, and the fit's residuals (max and RMS, relative)."""
    m, tp = model_of(raw), int(raw["tp"])
    peak, bw = base.bf16_tflops * 1e12, base.mem_bw_gbps * GB
    rows = [r for r in raw["rows"] if not r.get("allreduce")]
    prefill = {int(r["tokens"]): perfmodel.flops_per_step(m, [(r["tokens"], 0)], []) / tp / peak / r["seconds"]
               for r in rows if r["phase"] == "prefill"}
    boost = {int(r["tokens"]): perfmodel.flops_per_step(m, [(r["tokens"], 0)], []) / tp / peak
             / min(r["seconds_boost"], r["seconds"]) for r in rows if r["phase"] == "prefill" and "seconds_boost" in r}
    dec = [r for r in rows if r["phase"] == "decode"]
    if not prefill or not dec:
        raise ValueError(f"raw measurement for TP{tp} needs both prefill and decode rows")
    batches = sorted({int(r["batch"]) for r in dec})
    weights = perfmodel.weight_bytes_per_gpu(m, tp)
    kv_of = {id(r): perfmodel.kv_read_bytes(m, [], [int(r["context"])] * int(r["batch"])) / tp for r in dec}
    pooled = _seconds_per_kv_byte(dec, kv_of, batches)
    e_w, e_kv, rel = {}, {}, []
    for b in batches:
        rs = [r for r in dec if int(r["batch"]) == b]
        y = np.array([r["seconds"] for r in rs])
        kv = np.array([kv_of[id(r)] for r in rs])
        k = 0.0
        if len({int(r["context"]) for r in rs}) >= 2:
            (a, k), *_ = np.linalg.lstsq(np.c_[np.ones_like(y), kv] / y[:, None], np.ones(len(y)), rcond=None)
        if k <= 0:  # one context, or times that do not grow with it (noise): the KV cost pooled over batches
            k = pooled
            a = float(np.mean(y - k * kv))
        if k * bw < 1.0 / KV_EFFICIENCY_CAP:  # faster than HBM can read: latency-bound attention, not bandwidth
            k = 1.0 / (KV_EFFICIENCY_CAP * bw)
            a = float(np.sum((1.0 - k * kv / y) / y) / np.sum(1.0 / y**2))  # relative least squares, k fixed
        if a <= 0 or k <= 0:
            raise ValueError(f"decode times for TP{tp} batch {b} do not fit weights + KV reads (check the raw rows)")
        e_w[b], e_kv[b] = round(weights / bw / a, 4), round(1.0 / (k * bw), 4)
        rel += list((a + k * kv) / y - 1)
    eff = TPEfficiency(prefill={t: round(e, 4) for t, e in sorted(prefill.items())}, decode_weights=e_w, decode_kv=e_kv,
                       prefill_boost={t: round(e, 4) for t, e in sorted(boost.items())} or None)
    rel = np.array(rel)
    return eff, {f"tp{tp}_decode_max": float(np.abs(rel).max()), f"tp{tp}_decode_rms": float(np.sqrt((rel**2).mean()))}


def _seconds_per_kv_byte(dec: list[dict], kv_of: dict[int, float], batches: list[int]) -> float:
    """One pooled seconds-per-KV-byte over all batches (for a batch measured at a single context)."""
    X = np.zeros((len(dec), len(batches) + 1))
    y = np.array([r["seconds"] for r in dec])
    for i, r in enumerate(dec):
        X[i, batches.index(int(r["batch"]))] = 1.0
        X[i, -1] = kv_of[id(r)]
    coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones(len(y)), rcond=None)
    return float(coef[-1])


def _allreduce_samples(raw: dict, phase: str) -> list[tuple[float, float]]:
    """(message bytes, seconds per all-reduce call) from `phase` steps timed with and without the all-reduce."""
    m = model_of(raw)
    calls = 2 * m.num_hidden_layers
    plain = {(r["phase"], r["tokens"], r["context"]): r["seconds"] for r in raw["rows"] if not r.get("allreduce")}
    out = []
    for r in raw["rows"]:
        key = (r["phase"], r["tokens"], r["context"])
        if r.get("allreduce") and r["phase"] == phase and key in plain:
            msg = int(r["tokens"]) * m.hidden_size * m.dtype_bytes
            out.append((float(msg), (r["seconds"] - plain[key]) / calls))
    return out


def fit_allreduce(raw: dict, kind: str) -> Interconnect | None:
    """Latency and per-direction bandwidth of the TP all-reduce (ring: 2(TP−1)/TP × bytes on the wire), and
    per-call tables by message size: inside prefill steps and inside decode steps apart, since a decode step's
    calls also wait for the slower rank's memory-bound work (the sweep alone where no step was timed both ways)."""
    tp = int(raw["tp"])
    pre, dec = _allreduce_samples(raw, "prefill"), _allreduce_samples(raw, "decode")
    sweep = [(float(r["bytes"]), r["seconds"]) for r in raw.get("allreduce") or []]
    samples = [(b, t) for b, t in (pre + dec or sweep) if t > 0]
    if len(samples) < 2 or tp < 2:
        return None
    wire = np.array([2 * (tp - 1) / tp * b for b, _ in samples])
    t = np.array([s for _, s in samples])
    A = np.c_[np.ones_like(wire), wire]
    (lat, per_byte), *_ = np.linalg.lstsq(A / t[:, None], np.ones(len(t)), rcond=None)
    table, decode = _median_us(pre), _median_us(dec)
    if len(table) < 3:  # too few prefill sizes for a table: one over everything measured
        table, decode = _median_us(samples), {}
    if len(table) < 3:
        table = {}
    impl = "one-shot + NCCL" if str(raw.get("allreduce_impl", "NCCL")).startswith("one-shot") else "NCCL"
    return Interconnect(kind=f"{kind} ({impl}, measured)", bw_gbps=round(1 / per_byte / GB, 1),
                        latency_us=round(max(lat, 0.0) * 1e6, 2), allreduce_us=table,
                        allreduce_decode_us=decode if table and len(decode) >= 3 else {},
                        allreduce_tp=tp if table else None)


def _median_us(samples: list[tuple[float, float]]) -> dict[int, float]:
    """{message bytes: median µs per call} of (bytes, seconds) samples."""
    by_size: dict[int, list[float]] = {}
    for b, s in samples:
        if s > 0:
            by_size.setdefault(int(b), []).append(s)
    return {b: round(float(np.median(v)) * 1e6, 2) for b, v in sorted(by_size.items())}


def predict(m: ModelProfile, gpu: GPUProfile, row: dict, tp: int) -> float:
    """The perf model's time for one raw row (all-reduce included only where the row measured it)."""
    pre = [(int(row["tokens"]), 0)] if row["phase"] == "prefill" else []
    dec = [int(row["context"])] * int(row["batch"]) if row["phase"] == "decode" else []
    return perfmodel.step_time(m, gpu, tp, prefill=pre, decode=dec, overhead_s=0.0,
                               allreduce=bool(row.get("allreduce"))).total_s
