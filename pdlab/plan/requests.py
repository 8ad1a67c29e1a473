"""The planner's requests for one load level, with prompt token ids where prefixes are shared.

Random workloads are planned from the spec's lengths, ShareGPT and JSONL from the dataset's own prompt and output
lengths (the completions' lengths: what max_tokens carries, with or without ignore_eos); neither models prefix
sharing. Chat-shaped
workloads — shared-prefix, generated-shared-prefix, multi-turn sessions, Mooncake traces — are planned from the
very prompts the load generator sends, tokenised as the emulated worker tokenises them (the chat template for
the chat API), so the radix cache and cache-aware routing see the same sharing in virtual time. Sessions: the
first turn at each arrival, each later turn after the previous one finished plus its think time. Traces: the
trace's own times, scaled to the level's rate.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pdlab.emulator import tokens
from pdlab.emulator.engine import SimRequest
from pdlab.measure.load.arrivals import send_times
from pdlab.measure.load.datasets import Prompt, sample_length
from pdlab.measure.load.kinds import make_dataset

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

SHARED = ("shared-prefix", "generated-shared-prefix", "multi-turn", "mooncake-trace")
LISTS = ("sharegpt", "jsonl")


def level_requests(exp: Experiment, rate: float, duration_s: float, seed: int) -> list[SimRequest]:
    """SimRequests of one open-loop level at `rate` (see module docstring)."""
    w, ds = exp.workload, exp.workload.dataset
    times = list(send_times(w.arrival, rate, burstiness=w.burstiness, seed=[seed, int(rate * 1000)],
                            duration_s=duration_s, count=w.num_prompts))
    if ds.kind in LISTS:
        dataset = make_dataset(ds, seed=w.seed)
        dataset.prepare(len(times))
        return [SimRequest(t, dataset[k].input_len, dataset[k].output_len) for k, t in enumerate(times)]
    if ds.kind not in SHARED:
        rng = random.Random(seed)
        return [SimRequest(t, sample_length(rng, ds.input_len, ds.range_ratio),
                           sample_length(rng, ds.output_len, ds.range_ratio)) for t in times]
    dataset = make_dataset(ds, seed=w.seed, context_len=exp.model.architecture().max_position_embeddings)

    def ids(p: Prompt) -> tuple[int, ...]:
        text = tokens.render_chat(p.chat_messages()) if w.api == "chat" else p.text
        return tuple(tokens.encode(text))

    if ds.kind == "mooncake-trace":
        offs = [o for o in dataset.offsets(rate) if o < duration_s][: w.num_prompts]  # type: ignore[attr-defined]
        times = offs
    out: list[SimRequest] = []
    for k, t in enumerate(times):
        if ds.kind != "multi-turn":
            p = dataset[k]
            toks = ids(p)
            out.append(SimRequest(t, len(toks), p.output_len, tokens=toks))
            continue
        for j, p in enumerate(dataset.turns(k)):  # type: ignore[attr-defined]
            toks = ids(p)
            if j == 0:
                out.append(SimRequest(t, len(toks), p.output_len, tokens=toks))
            else:
                out.append(SimRequest(dataset.think_time(k, j), len(toks), p.output_len, tokens=toks,  # type: ignore[attr-defined]
                                      after=len(out) - 1))
    return out
