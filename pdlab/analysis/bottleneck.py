"""Which role limits an arm, from its request records and the scraped server metrics.

For each arm the level examined is its first load level below the SLO attainment threshold (where it
saturates; its highest level when it never does), first repeat. There: which SLO its requests miss (TTFT:
prompts wait for prefill; TPOT: decode steps are slow), and per role the mean number of requests queued per
instance (`sglang:num_queue_reqs` plus decode's KV pre-allocation queue) and the peak KV-cache usage
(`sglang:token_usage`). A PD arm missing mostly on TTFT with the longer queue on prefill is prefill-bound;
missing on TPOT, decode-bound; a colocated arm missing on TPOT is slowed by prefill chunks interleaved with
its decode steps.
"""

from __future__ import annotations

import math

import pandas as pd

from pdlab.analysis import capacity as cap

QUEUES = ("sglang:num_queue_reqs", "sglang:num_decode_prealloc_queue_reqs")  # waiting for compute or KV memory
KV = "sglang:token_usage"
SATURATED_QUEUE = 0.5  # mean queued requests per instance above which a role counts as backed up
WORKER_ROLES = ("prefill", "decode", "worker")


def _level_requests(requests: pd.DataFrame, run: str, level_value: float) -> pd.DataFrame:
    r = requests[(requests["run"] == run) & (requests["level_value"] == level_value)]
    return r[~r["warmup"].astype(bool)] if "warmup" in r else r


def role_load(server: pd.DataFrame, run: str, window: tuple[float, float]) -> pd.DataFrame:
    """Per worker role in one run's time window: instances, mean queued requests per instance, peak KV usage."""
    s = server[(server["run"] == run) & server["t"].between(*window) & server["role"].isin(WORKER_ROLES)]
    rows = []
    for role, g in s.groupby("role", sort=True):
        n = max(1, g["name"].nunique())
        q = g[g["metric"].isin(QUEUES)].groupby("t")["value"].sum()
        kv = g[g["metric"] == KV].groupby("t")["value"].mean()
        rows.append({"role": role, "instances": n,
                     "queued_per_instance": float(q.mean()) / n if len(q) else math.nan,
                     "kv_peak": float(kv.max()) if len(kv) else math.nan})
    return pd.DataFrame(rows, columns=["role", "instances", "queued_per_instance", "kv_peak"])


def slo_misses(reqs: pd.DataFrame, ttft_ms: float, tpot_ms: float) -> tuple[float, float]:
    """Shares of a level's measured requests over the TTFT SLO and over the TPOT SLO (failed count as both)."""
    if reqs.empty:
        return math.nan, math.nan
    ok = reqs["ok"].astype(bool)
    ttft = (~ok | (reqs["ttft_ms"] > ttft_ms)).mean()
    tpot = (~ok | (reqs["tpot_ms"].fillna(0.0) > tpot_ms)).mean()
    return float(ttft), float(tpot)


def explain(summary: pd.DataFrame, requests: pd.DataFrame, server: pd.DataFrame,
            threshold: float | None = None) -> pd.DataFrame:
    """One row per arm: the level examined (its first below the attainment threshold, else its highest), which
    SLO its requests miss, per-role queues and KV usage, the limiting role and a sentence saying why."""
    thr = cap.threshold_of(summary, threshold)
    d = summary.assign(_att=cap.attainment(summary), _off=cap.offered(summary))
    rows = []
    for arm, g in d.groupby("arm", sort=True):
        first = (g[g["repeat"] == g["repeat"].min()] if "repeat" in g else g).sort_values("level_value")
        miss = first[first["_att"] < thr]
        lv = miss.iloc[0] if len(miss) else first.iloc[-1]
        reqs = _level_requests(requests, lv["run"], lv["level_value"]) if len(requests) else pd.DataFrame()
        win = (float(reqs["t_send"].min()), float(reqs["t_end"].max())) if len(reqs) else None
        roles = role_load(server, lv["run"], win) if win and len(server) else pd.DataFrame()
        ttft_miss, tpot_miss = slo_misses(reqs, float(lv["slo_ttft_ms"]), float(lv["slo_tpot_ms"]))
        rows.append({"arm": arm, "level": lv["level_value"], "offered": lv["_off"], "attainment": lv["_att"],
                     "over TTFT SLO": ttft_miss, "over TPOT SLO": tpot_miss,
                     **_verdict(str(arm), roles, float(lv["level_value"]), bool(len(miss)), ttft_miss, tpot_miss,
                                float(lv["_off"]))})
    return pd.DataFrame(rows)


def _verdict(arm: str, roles: pd.DataFrame, level: float, saturated: bool, ttft_miss: float,
             tpot_miss: float, offered: float = math.nan) -> dict:
    off = f", offered {offered:.2f}" if not math.isnan(offered) and abs(offered - level) > 0.005 else ""
    which = "its first level below the attainment threshold" if saturated else "its highest level"
    where = f"at {level:g} req/s ({which}{off})"
    misses = (f"{ttft_miss * 100:.0f} % of requests over the TTFT SLO, {tpot_miss * 100:.0f} % over the TPOT SLO"
              if not math.isnan(ttft_miss) else "no request records")
    if roles.empty or roles["queued_per_instance"].isna().all():
        return {"bottleneck": "unknown", "why": f"{arm} {where}: {misses}; no server metrics were scraped"}
    figs = "; ".join(f"{r.role}: {r.queued_per_instance:.1f} queued per instance, KV peak {r.kv_peak * 100:.0f} %"
                     for r in roles.itertuples())
    if not saturated:
        return {"bottleneck": "none (meets the SLO at every level)", "why": f"{arm} {where}: {misses} ({figs})"}
    by = dict(zip(roles["role"], roles["queued_per_instance"], strict=True))
    kv = roles.sort_values("kv_peak", ascending=False).iloc[0]
    ttft_side = not math.isnan(ttft_miss) and ttft_miss >= tpot_miss
    if "worker" in by:
        kind = ("prefill work (colocated workers)" if ttft_side else
                "decode steps slowed by prefill interference (colocated workers)")
    elif ttft_side:
        kind = "prefill" if by.get("prefill", 0) >= by.get("decode", 0) else "decode admission"
    else:
        kind = "decode"
    if kv["kv_peak"] >= 0.9:
        kind += f", {kv['role']} KV cache full"
    return {"bottleneck": kind, "why": f"{arm} is limited by {kind} {where}: {misses} ({figs})"}
