"""Issue 16: a level ends at its duration plus a bounded drain; unsent requests are counted, failures are marked."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from _load_helpers import serve

from pdlab.analysis.summary_table import format_summary
from pdlab.core.stats import failure, summarize, top_errors
from pdlab.experiment.spec import DatasetSpec
from pdlab.measure.load import LevelPlan, RecordSink, make_dataset, run_level_sync
from pdlab.measure.load.runner import DRAIN_CANCELLED
from pdlab.measure.run import failed_levels, with_level_stats


@pytest.fixture(scope="module")
def url():
    with serve() as u:
        yield u


def test_late_requests_are_not_sent_and_the_drain_is_bounded(url):
    # every request takes 2 s and only one may be in flight: the 10 scheduled in 0.5 s would take 20 s one by one
    ds = make_dataset(DatasetSpec(input_len=8, output_len=2), seed=0)
    sink = RecordSink()
    plan = LevelPlan(0, "rate", 20.0, arrival="constant", duration_s=0.5, max_inflight=1, drain_s=0.3)
    st = run_level_sync(url, ds, plan, sink, t0=time.perf_counter(), model="slow")
    # one request sent; the 9 that could not go out by 0.5 s + grace are counted, not sent late one by one;
    # the one in flight past the 0.3 s drain is cancelled and recorded as failed
    assert st.sent == 1 and st.not_sent == 9 and st.drain_cancelled == 1
    recs = sink.table().to_pandas()
    assert len(recs) == 1 and not recs["ok"].iloc[0] and DRAIN_CANCELLED in recs["error"].iloc[0]


def test_a_level_on_schedule_loses_nothing(url):
    ds = make_dataset(DatasetSpec(input_len=8, output_len=2), seed=0)
    st = run_level_sync(url, ds, LevelPlan(0, "rate", 20.0, arrival="constant", duration_s=0.5, drain_s=5), RecordSink(),
                        t0=time.perf_counter())
    assert st.done == 10 and st.not_sent == 0 and st.drain_cancelled == 0


def _records(errors: list[str | None]) -> pd.DataFrame:
    n = len(errors)
    return pd.DataFrame({
        "level": [0] * n, "level_kind": ["rate"] * n, "level_value": [2.0] * n, "req_id": range(n),
        "warmup": [False] * n, "t_sched": [i * 0.1 for i in range(n)], "t_send": [i * 0.1 for i in range(n)],
        "t_first": [i * 0.1 + 0.05 for i in range(n)], "t_end": [i * 0.1 + 0.2 for i in range(n)],
        "chunk_times": [[i * 0.1 + 0.05, i * 0.1 + 0.2] for i in range(n)], "input_len": [8] * n,
        "max_tokens": [2] * n, "prompt_tokens": [8] * n, "output_tokens": [2] * n, "tokens_source": ["usage"] * n,
        "status": [200 if e is None else 400 for e in errors], "ok": [e is None for e in errors],
        "error": [e or "" for e in errors]})


def test_top_errors_group_messages_that_differ_only_in_numbers():
    errs = pd.Series(["HTTP 400: total of 45954 tokens", "HTTP 400: total of 41000 tokens", "timeout after 5 s"])
    assert top_errors(errs) == [{"error": "HTTP 400: total of 45954 tokens", "count": 2},
                                {"error": "timeout after 5 s", "count": 1}]


def test_failed_share_threshold_marks_the_level():
    assert failure(10, pd.Series(["x"]), 0.1)["level_failed"] is False  # 10 % is not more than 10 %
    assert failure(10, pd.Series(["x", "y"]), 0.1)["level_failed"] is True
    assert failure(0, pd.Series([], dtype=str), 0.1)["level_failed"] is True  # nothing measured


def test_summary_and_table_say_a_level_failed():
    recs = _records([None] * 6 + ["HTTP 400: context of 40960 exceeded by 5000"] * 3 + ["timeout after 5 s"])
    s = summarize(recs, max_failed_share=0.2)
    row = s.iloc[0]
    assert row["level_failed"] and row["failed_share"] == pytest.approx(0.4)
    assert row["top_errors"][0] == {"error": "HTTP 400: context of 40960 exceeded by 5000", "count": 3}
    assert failed_levels(s) == [0]
    text = format_summary(s)
    assert "FAILED" in text and "3 × HTTP 400" in text and "1 × timeout" in text
    assert not summarize(recs, max_failed_share=0.5).iloc[0]["level_failed"]


def test_unsent_requests_make_the_level_client_bound():
    from pdlab.measure.load.runner import LevelStats

    s = summarize(_records([None] * 5))
    assert not s.iloc[0]["client_bound"]
    plan = LevelPlan(0, "rate", 2.0, duration_s=3.0)
    out = with_level_stats(s, {0: LevelStats(sent=5, not_sent=7)}, [plan])
    assert out.iloc[0]["client_bound"] and out.iloc[0]["not_sent"] == 7
    assert "7 of 12 scheduled requests not sent" in out.iloc[0]["client_bound_reason"]
