"""Cache-hit rate per role from scraped server metrics."""

import json

import pandas as pd

from pdlab.measure.cachehit import cache_hit_by_role


def test_hit_rate_per_role_uses_each_workers_last_sample():
    lab = json.dumps({"model_name": "m"})
    rows = [(0, 1.0, "p0", "prefill", "sglang:cached_tokens_total", lab, 10.0),
            (0, 2.0, "p0", "prefill", "sglang:cached_tokens_total", lab, 300.0),
            (0, 2.0, "p0", "prefill", "sglang:prompt_tokens_total", lab, 1000.0),
            (0, 2.0, "p1", "prefill", "sglang:cached_tokens_total", lab, 100.0),
            (0, 2.0, "p1", "prefill", "sglang:prompt_tokens_total", lab, 1000.0),
            (0, 2.0, "d0", "decode", "sglang:cached_tokens_total", lab, 0.0),
            (0, 2.0, "d0", "decode", "sglang:prompt_tokens_total", lab, 2000.0),
            (0, 2.0, "old", "worker", "sglang:prompt_tokens_total", lab, 50.0)]
    df = pd.DataFrame(rows, columns=["time", "t", "name", "role", "metric", "labels", "value"])
    assert cache_hit_by_role(df) == {"prefill": 0.2, "decode": 0.0}
    assert cache_hit_by_role(df.iloc[:0]) == {}


def test_summary_line_names_each_role():
    from pdlab.analysis.summary_table import cache_hit_line

    assert cache_hit_line({"prefill": 0.543, "decode": 0.0}) == \
        "prefix cache hit (cached ÷ prompt tokens): decode 0%, prefill 54%"


def test_failures_are_counted_per_role_the_error_names():
    from pdlab.core.stats import failed_by_role

    errs = pd.Series(["HTTP 500: prefill failed for bootstrap room 7: KV transfer failed (injected fault)",
                      "HTTP 500: KV for bootstrap room 9 did not arrive from decode side", "HTTP 503: injected fault",
                      "truncated stream after 3 chunks"])
    assert failed_by_role(errs) == {"unattributed": 2, "prefill": 1, "decode": 1}
    assert failed_by_role(errs.iloc[:0]) == {}
