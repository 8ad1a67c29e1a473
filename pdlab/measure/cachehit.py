"""Prefix-cache hit rate per role from the scraped server metrics (SGLang's counters, last sample per worker).

hit rate = Σ sglang:cached_tokens_total ÷ Σ sglang:prompt_tokens_total over the role's workers, at the end of
the run; a role whose workers expose no cached-tokens counter (older SGLang) is left out.
"""

from __future__ import annotations

import pandas as pd

CACHED = "sglang:cached_tokens_total"
PROMPT = "sglang:prompt_tokens_total"


def cache_hit_by_role(server_metrics: pd.DataFrame) -> dict[str, float]:
    """{role: cached ÷ prompt tokens} from a run's server_metrics frame (long format)."""
    if server_metrics is None or server_metrics.empty:
        return {}
    df = server_metrics[server_metrics["metric"].isin((CACHED, PROMPT))]
    if df.empty:
        return {}
    last = df.sort_values("t").groupby(["role", "name", "metric", "labels"], as_index=False)["value"].last()
    per = last.groupby(["role", "metric"])["value"].sum().unstack("metric")
    out = {}
    for role, row in per.iterrows():
        if CACHED in row and PROMPT in row and pd.notna(row[CACHED]) and row[PROMPT] > 0:
            out[str(role)] = float(row[CACHED] / row[PROMPT])
    return out
