"""The streaming client and the level runner against a local starlette test server."""

import asyncio
import math
import time

import pytest
from _load_helpers import serve

from pdlab.experiment.spec import DatasetSpec
from pdlab.measure.load import LevelPlan, LoadClient, RecordSink, make_dataset, run_level_sync
from pdlab.measure.load.datasets import Prompt

PROMPT = Prompt(0, " hello world", 2, 5)


@pytest.fixture(scope="module")
def url():
    with serve() as u:
        yield u


async def _send(url, model="ok", api="chat", timeout_s=10.0, prompt=PROMPT):
    async with LoadClient(url, api=api, model=model, timeout_s=timeout_s) as c:
        return await c.send(prompt, t_sched=0.0)


@pytest.mark.parametrize("api", ["chat", "completions", "generate"])
def test_success_records_every_chunk(url, api):
    r = asyncio.run(_send(url, api=api))
    assert r.ok and r.status == 200 and r.error == ""
    assert r.output_tokens == 5 and r.tokens_source == "usage" and len(r.chunk_times) == 5
    assert r.t_send <= r.t_first == r.chunk_times[0] <= r.chunk_times[-1] <= r.t_end
    assert all(b > a for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False))


def test_without_usage_output_is_retokenised(url):
    r = asyncio.run(_send(url, model="no-usage"))
    assert r.ok and r.tokens_source == "retokenized"
    assert r.output_tokens == 10  # " w0" … " w4": two Qwen tokens each
    assert r.prompt_tokens == PROMPT.input_len


@pytest.mark.parametrize("mode,status,match", [
    ("status-400", 400, "HTTP 400: .*simulated 400"),
    ("status-500", 500, "HTTP 500"),
    ("truncate", 200, "truncated stream"),
    ("no-done", 200, "ended without \\[DONE\\]"),
    ("error-event", 200, "server error event"),
])
def test_errors_are_records(url, mode, status, match):
    import re

    r = asyncio.run(_send(url, model=mode))
    assert not r.ok and r.status == status and re.search(match, r.error), r.error
    assert not math.isnan(r.t_end)


def test_timeout_and_unreachable_are_records(url):
    r = asyncio.run(_send(url, model="slow", timeout_s=0.3))
    assert not r.ok and "timeout after 0.3 s" in r.error
    r = asyncio.run(_send("http://127.0.0.1:9", timeout_s=3))
    assert not r.ok and r.status == 0 and "connection failed" in r.error


def test_open_loop_level_keeps_schedule(url, tmp_path):
    ds = make_dataset(DatasetSpec(input_len=16, output_len=3), seed=0)
    sink = RecordSink(tmp_path / "parts", spill_every=7)  # forces several spilled parts
    plan = LevelPlan(0, "rate", 40.0, arrival="constant", duration_s=None, num_prompts=20, warmup=3)
    st = run_level_sync(url, ds, plan, sink, t0=time.perf_counter())
    assert st.sent == st.done == 23 and st.failed == 0
    t = sink.table().to_pandas()
    assert len(list((tmp_path / "parts").glob("part-*.parquet"))) == 4  # 7 + 7 + 7 + the flushed 2
    assert len(t) == 23 and t["warmup"].sum() == 3 and set(t["level_kind"]) == {"rate"}
    assert sorted(t["req_id"]) == list(range(23))
    gaps = t.sort_values("t_sched")["t_sched"].diff().dropna()
    assert gaps.to_numpy() == pytest.approx(0.025, abs=1e-9)
    assert ((t["t_send"] - t["t_sched"]) > -0.0015).all()  # the loop timer may fire ≤ 1 ms early (ms ticks)
    sink.write(tmp_path / "requests.parquet")
    sink.close()
    assert not (tmp_path / "parts").exists()


def test_closed_loop_and_inflight_cap(url):
    ds = make_dataset(DatasetSpec(input_len=8, output_len=4), seed=0)
    sink = RecordSink()
    plan = LevelPlan(1, "concurrency", 3, duration_s=None, num_prompts=12, first_prompt=100)
    st = run_level_sync(url, ds, plan, sink, t0=time.perf_counter())
    t = sink.table().to_pandas()
    assert st.done == 12 and t["ok"].all() and sorted(t["req_id"]) == list(range(100, 112))
    # at most 3 in flight at any time
    events = sorted([(s, 1) for s in t["t_send"]] + [(e, -1) for e in t["t_end"]], key=lambda x: (x[0], x[1]))
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    assert peak <= 3
    # open loop with an in-flight cap of 1: requests wait in the dispatcher (lag grows), never overlap
    sink = RecordSink()
    plan = LevelPlan(2, "rate", 500.0, arrival="constant", duration_s=None, num_prompts=6, max_inflight=1)
    run_level_sync(url, ds, plan, sink, t0=time.perf_counter())
    t = sink.table().to_pandas().sort_values("t_send")
    assert (t["t_send"].to_numpy()[1:] >= t["t_end"].to_numpy()[:-1]).all()


def test_duration_bound_and_bad_rate(url):
    ds = make_dataset(DatasetSpec(input_len=8, output_len=2), seed=0)
    sink = RecordSink()
    st = run_level_sync(url, ds, LevelPlan(0, "rate", 20.0, arrival="constant", duration_s=0.5), sink,
                        t0=time.perf_counter())
    assert st.done == 10
    with pytest.raises(Exception, match="must be > 0"):
        run_level_sync(url, ds, LevelPlan(0, "rate", 0.0, duration_s=1.0), RecordSink(), t0=time.perf_counter())
