"""Prometheus scraping and parsing."""

import json
import time
from types import SimpleNamespace

import pytest
from _load_helpers import METRICS_TEXT, serve

from pdlab.core.schema import SERVER_METRIC_COLUMNS as COLUMNS
from pdlab.measure.scrape import Scraper, parse_metrics


def test_parse_metrics_long_format():
    rows = parse_metrics(METRICS_TEXT)
    by = {(m, lab): v for m, lab, v in rows}
    assert by[("sglang:num_running_reqs", json.dumps({"engine_type": "unified", "model_name": "m"}))] == 3.0
    assert by[("sglang:prompt_tokens_total", '{"model_name": "m"}')] == 1234.0
    assert by[("sglang:time_to_first_token_seconds_bucket", '{"le": "+Inf", "model_name": "m"}')] == 5.0
    assert by[("sglang:time_to_first_token_seconds_sum", '{"model_name": "m"}')] == 1.5
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus\n")


def test_scraper_polls_every_endpoint_and_records_failures():
    with serve() as url:
        eps = [SimpleNamespace(name="decode-0", role="decode", metrics_url=url + "/metrics"),
               SimpleNamespace(name="prefill-0", role="prefill", metrics_url="http://127.0.0.1:9/metrics"),
               SimpleNamespace(name="router", role="scheduler", metrics_url=None)]
        s = Scraper(eps, interval_s=0.1, timeout_s=1.0).start()
        time.sleep(0.5)
        s.stop()
    df = s.frame()
    assert list(df.columns) == COLUMNS
    assert set(df["name"]) == {"decode-0", "prefill-0"}
    up = df[df["metric"] == "pdlab:scrape_up"].groupby("name")["value"].agg(["min", "max", "count"])
    assert up.loc["decode-0", "min"] == 1.0 and up.loc["prefill-0", "max"] == 0.0
    assert up.loc["decode-0", "count"] >= 3
    running = df[(df["metric"] == "sglang:num_running_reqs")]
    assert (running["value"] == 3.0).all() and (running["role"] == "decode").all()
    assert "prefill-0" in s.errors
