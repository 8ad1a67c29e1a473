"""Chat-shaped workloads: generated-shared-prefix, multi-turn sessions, Mooncake trace replay (and its errors)."""

import json
import time

import pytest
from _load_helpers import serve

from pdlab.experiment.spec import DatasetSpec
from pdlab.measure.load import LevelPlan, RecordSink, run_level_sync
from pdlab.measure.load.datasets import DatasetError, count_tokens
from pdlab.measure.load.kinds import make_dataset
from pdlab.measure.load.runner import level_offsets


def test_generated_shared_prefix_groups_and_shuffled_order():
    spec = DatasetSpec(kind="generated-shared-prefix", num_groups=3, prompts_per_group=4, prefix_len=64,
                       input_len=8, output_len=4)
    ds, again = make_dataset(spec, seed=5), make_dataset(spec, seed=5)
    prompts = [ds[i] for i in range(12)]
    systems = [p.messages[0]["content"] for p in prompts]
    assert len(set(systems)) == 3 and all(systems.count(s) == 4 for s in set(systems))
    assert len({p.messages[1]["content"] for p in prompts}) == 12
    assert [p.text for p in prompts] == [again[i].text for i in range(12)]
    assert systems != sorted(systems, key=systems.index)  # not group by group
    assert ds[12].text == prompts[0].text  # the cycle repeats
    assert count_tokens(prompts[0].text) == prompts[0].input_len == 72


def test_multi_turn_prompt_is_the_conversation_so_far():
    spec = DatasetSpec(kind="multi-turn", num_turns=4, range_ratio=0.5, prefix_len=32, input_len=10,
                       output_len=6, think_time_s=2.0)
    ds = make_dataset(spec, seed=3)
    counts = {len(ds.turns(k)) for k in range(20)}
    assert counts <= {2, 3, 4, 5, 6} and len(counts) > 1
    turns = ds.turns(0)
    for a, b in zip(turns, turns[1:], strict=False):
        assert b.messages[: len(a.messages)] == a.messages  # earlier turns are a prefix
        assert b.messages[len(a.messages)]["role"] == "assistant"
        assert b.text.startswith(a.text) and b.input_len > a.input_len
        assert count_tokens(b.text) == b.input_len
    assert ds.think_time(0, 0) == 0 and ds.think_time(0, 1) > 0
    assert [p.text for p in make_dataset(spec, seed=3).turns(0)] == [p.text for p in turns]


def test_sessions_run_turn_after_turn():
    spec = DatasetSpec(kind="multi-turn", num_turns=3, input_len=8, output_len=3, think_time_s=0.05, prefix_len=0)
    ds = make_dataset(spec, seed=0)
    sink = RecordSink()
    with serve() as url:
        st = run_level_sync(url, ds, LevelPlan(0, "rate", 50.0, arrival="constant", duration_s=None,
                                               num_prompts=4), sink, t0=time.perf_counter())
    t = sink.table().to_pandas()
    assert st.done == len(t) == 12 and t["ok"].all()
    for s in range(4):
        rows = t[t["req_id"] // 1000 == s].sort_values("req_id")
        assert list(rows["req_id"] % 1000) == [0, 1, 2]
        assert (rows["t_send"].to_numpy()[1:] >= rows["t_end"].to_numpy()[:-1]).all()
        assert list(rows["input_len"]) == sorted(rows["input_len"])


def _trace(tmp_path, lines) -> DatasetSpec:
    p = tmp_path / "trace.jsonl"
    p.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return DatasetSpec(kind="mooncake-trace", path=str(p))


def test_mooncake_trace_shares_blocks_and_replays_its_times(tmp_path):
    spec = _trace(tmp_path, [
        {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 500, "input_length": 600, "output_length": 7, "hash_ids": [0, 2]},
        {"timestamp": 1000, "input_length": 300, "output_length": 9, "hash_ids": [3]},
    ])
    ds = make_dataset(spec, seed=1)
    a, b, c = ds[0], ds[1], ds[2]
    assert (a.input_len, a.output_len, c.output_len) == (1000, 5, 9)
    assert count_tokens(a.text) == 1000 and count_tokens(c.text) == 300
    wa, wb = a.text.split(" "), b.text.split(" ")
    assert wa[:513] == wb[:513] and wa[513:600] != wb[513:600]  # block 0 shared (leading '' from the split)
    assert ds.offsets() == [0.0, 0.5, 1.0] and ds.natural_rate == 2.0
    assert ds.offsets(4.0) == [0.0, 0.25, 0.5]
    plan = LevelPlan(0, "rate", 4.0, duration_s=0.4)
    assert list(level_offsets(ds, plan, None)) == [0.0, 0.25]


@pytest.mark.parametrize("line, match", [
    ({"timestamp": 5, "input_length": 10, "hash_ids": []}, "trace.jsonl:2: missing output_length"),
    ({"timestamp": 1, "input_length": 10, "output_length": 2, "hash_ids": []}, "trace.jsonl:2: timestamp 1 is earlier"),
    ({"timestamp": 9, "input_length": 40959, "output_length": 2, "hash_ids": []}, "trace.jsonl:2: .*context length 40960"),
    ({"timestamp": 9, "input_length": 0, "output_length": 2, "hash_ids": []}, "trace.jsonl:2: input_length must be"),
    ("{not json", "trace.jsonl:2: not valid JSON"),
])
def test_bad_trace_lines_are_named(tmp_path, line, match):
    spec = _trace(tmp_path, [{"timestamp": 2, "input_length": 10, "output_length": 2, "hash_ids": [0]}, line])
    with pytest.raises(DatasetError, match=match):
        make_dataset(spec, context_len=40960).prepare(1)


def test_a_bad_trace_stops_the_run_before_anything_is_deployed_or_written(tmp_path, monkeypatch):
    import pdlab.deploy.registry as registry
    from pdlab.experiment.loader import experiment_from_dict
    from pdlab.measure.run import run_experiment

    spec = _trace(tmp_path, [{"timestamp": 0, "input_length": 10, "output_length": 2}])
    exp = experiment_from_dict({"model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"},
                                "topology": {"kind": "colocated", "worker": {"replicas": 1, "tp": 1}},
                                "workload": {"dataset": spec.model_dump(), "rates": [1]}})
    monkeypatch.setattr(registry, "get_backend", lambda e: pytest.fail("deployed despite a bad trace"))
    with pytest.raises(DatasetError, match=r"trace.jsonl:1: missing hash_ids"):
        run_experiment(exp, results=tmp_path / "results", run_name="x", progress=False)
    assert not (tmp_path / "results").exists()
