"""Datasets: determinism, exact token counts, ShareGPT filtering, JSONL errors; arrival statistics."""

import json

import numpy as np
import pytest

from pdlab.experiment.spec import DatasetSpec
from pdlab.measure.load.arrivals import intervals, send_times
from pdlab.measure.load.datasets import (
    DatasetError,
    count_tokens,
    filter_sharegpt,
    make_dataset,
    sharegpt_rows,
)


def test_random_prompts_exact_token_counts_and_deterministic():
    spec = DatasetSpec(kind="random", input_len=300, output_len=20, range_ratio=0.5)
    a, b, c = make_dataset(spec, seed=7), make_dataset(spec, seed=7), make_dataset(spec, seed=8)
    lens = set()
    for i in range(20):
        p = a[i]
        assert count_tokens(p.text) == p.input_len
        assert 150 <= p.input_len <= 450 and 10 <= p.output_len <= 30
        assert p == b[i]
        lens.add(p.input_len)
    assert len(lens) > 5
    assert a[0].text != c[0].text and a[0].text != a[1].text


def test_fixed_lengths_when_range_ratio_is_zero():
    ds = make_dataset(DatasetSpec(input_len=64, output_len=5), seed=0)
    assert {(ds[i].input_len, ds[i].output_len) for i in range(10)} == {(64, 5)}
    assert all(count_tokens(ds[i].text) == 64 for i in range(10))


def test_shared_prefix_groups_share_system_prompt():
    ds = make_dataset(DatasetSpec(kind="shared-prefix", input_len=30, output_len=8, prefix_len=200, num_groups=3),
                      seed=1)
    p0, p3, p1 = ds[0], ds[3], ds[1]
    assert p0.messages[0]["content"] == p3.messages[0]["content"] != p1.messages[0]["content"]
    assert p0.messages[1]["content"] != p3.messages[1]["content"]
    assert count_tokens(p0.messages[0]["content"]) == 200
    assert count_tokens(p0.text) == p0.input_len == 230
    assert p0.chat_messages()[0]["role"] == "system"


def _conv(h, g):
    return {"conversations": [{"from": "human", "value": h}, {"from": "gpt", "value": g}]}


def test_sharegpt_filter_like_bench_serving():
    data = [
        _conv("hello there my friend", "a fine answer indeed"),  # kept
        _conv("hi", "a fine answer"),  # prompt of 1 token → pruned
        _conv("a long enough prompt", "ok"),  # output of 1 token → pruned
        {"conversations": [{"from": "human", "value": "only one turn"}]},  # < 2 turns → dropped
        _conv("another good prompt here", "another good answer here"),  # kept
    ]
    enc = lambda s: s.split()  # noqa: E731 - whitespace "tokenizer" for hand-checkable counts
    rows, exhausted = filter_sharegpt(data, 10, seed=0, fixed_output_len=None, context_len=None, encode=enc)
    assert exhausted and sorted(r[0] for r in rows) == ["another good prompt here", "hello there my friend"]
    assert {r[1:] for r in rows} == {(4, 4)}
    rows, _ = filter_sharegpt(data, 10, seed=0, fixed_output_len=16, context_len=None, encode=enc)
    assert len(rows) == 3 and {r[2] for r in rows} == {16}  # "ok" survives with a fixed output length
    rows, _ = filter_sharegpt(data, 10, seed=0, fixed_output_len=None, context_len=7, encode=enc)
    assert rows == []  # 4 + 4 > 7: too long
    r1, exhausted = filter_sharegpt(data, 1, seed=0, fixed_output_len=None, context_len=None, encode=enc)
    assert len(r1) == 1 and not exhausted
    assert r1 == filter_sharegpt(data, 1, seed=0, fixed_output_len=None, context_len=None, encode=enc)[0]


def test_sharegpt_rows_cached_from_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PDLAB_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "sg.json"
    src.write_text(json.dumps([_conv(f"question number {i} about things", f"answer {i} with words") for i in range(30)]
                              + [_conv("x", "y")]))
    rows = sharegpt_rows(10, seed=3, source=src)
    assert len(rows) == 10 and all(count_tokens(t) == n for t, n, _ in rows)
    assert list((tmp_path / "cache").glob("sharegpt-*.jsonl"))
    assert sharegpt_rows(10, seed=3, source=src) == rows  # from the cache
    assert sharegpt_rows(100, seed=3, source=src)[:10] == rows  # extends; prefix stable; 30 usable
    assert len(sharegpt_rows(100, seed=3, source=src)) == 30
    with pytest.raises(DatasetError, match="≥ 4"):
        sharegpt_rows(5, fixed_output_len=2, source=src)


def test_jsonl_prompts_and_bad_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello world", "output_len": 7}\n\n'
                 '{"messages": [{"role": "user", "content": "hi there"}]}\n')
    ds = make_dataset(DatasetSpec(kind="jsonl", path=str(f), output_len=11), seed=0)
    got = sorted((ds[i].text, ds[i].input_len, ds[i].output_len) for i in range(2))
    assert got == [("hello world", 2, 7), ("hi there", 2, 11)]
    assert ds[2].text in ("hello world", "hi there")  # wraps around
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "unterminated\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: not valid JSON"):
        make_dataset(DatasetSpec(kind="jsonl", path=str(bad)))[0]
    bad.write_text('{"prompt": "ok", "output_len": 0}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: 'output_len' must be an integer"):
        make_dataset(DatasetSpec(kind="jsonl", path=str(bad)))[0]
    bad.write_text('["a list"]\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: expected a JSON object"):
        make_dataset(DatasetSpec(kind="jsonl", path=str(bad)))[0]
    with pytest.raises(DatasetError, match="not found"):
        make_dataset(DatasetSpec(kind="jsonl", path=str(tmp_path / "missing.jsonl")))[0]


def test_arrival_statistics_seeded():
    n = 20000

    def take(kind, **kw):
        it = intervals(kind, 50.0, seed=1, **kw)
        return np.array([next(it) for _ in range(n)])

    pois = take("poisson")
    assert pois.mean() == pytest.approx(1 / 50, rel=0.03)
    assert pois.std() / pois.mean() == pytest.approx(1.0, rel=0.05)  # CV of exponential = 1
    bursty = take("gamma", burstiness=0.25)
    assert bursty.mean() == pytest.approx(1 / 50, rel=0.05)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.08)  # CV = 1/sqrt(shape)
    const = take("constant")
    assert np.allclose(const, 0.02)
    assert np.array_equal(take("poisson"), pois)  # same seed → same schedule


def test_send_times_bounds_and_bad_rates():
    t = list(send_times("constant", 10.0, duration_s=1.0))
    assert t[0] == 0.0 and len(t) == 10 and t[-1] == pytest.approx(0.9)
    assert len(list(send_times("poisson", 10.0, count=7))) == 7
    with pytest.raises(Exception, match="> 0"):
        next(intervals("poisson", 0.0))
    with pytest.raises(Exception, match="> 0"):
        next(intervals("poisson", -1.0))
    with pytest.raises(Exception, match="unknown arrival"):
        next(intervals("zipf", 1.0))
