"""llm-d-benchmark's Benchmark Report v0.2 as a JSON Schema (draft 2020-12), re-declared for validation.

Source: github.com/llm-d/llm-d-benchmark, `llmdbenchmark/analysis/benchmark_report/br_v0_2_json_schema.json`
(generated from `schema_v0_2.py` / `schema_v0_2_components.py`; README.md "v0.2 Format Description"),
commit 8bc9f1ddd873a24f1657d6cca2e0d0fb6947dd36. Re-declared here field by field: the required fields,
types, enums and closed objects (`additionalProperties: false`) follow the published definition; parts pdlab
neither writes nor reads (time series, per-component resource metrics, replica status, profiling,
component health) are declared as open objects/arrays. v0.2.1 is an additive superset of v0.2 (same README);
`schema(strict=False)` opens every object so a v0.2.x report validates on import.
"""

from __future__ import annotations

import copy
from typing import Any

VERSION = "0.2"
SOURCE = ("https://github.com/llm-d/llm-d-benchmark/blob/8bc9f1ddd873a24f1657d6cca2e0d0fb6947dd36/"
          "llmdbenchmark/analysis/benchmark_report/br_v0_2_json_schema.json")
UNITS = ["count", "percent", "fraction", "ms", "s", "MB", "GB", "TB", "MiB", "GiB", "TiB", "Mbit/s", "Gbit/s",
         "Tbit/s", "GiB/s", "MB/s", "GB/s", "TB/s", "ms/token", "s/token", "tokens/s", "queries/s", "Watts"]
PERCENTILES = ["p0p1", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99p9"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def _opt(t: dict) -> dict:
    return {"anyOf": [t, {"type": "null"}]}


def _obj(props: dict[str, dict], required: tuple[str, ...] = (), closed: bool = True) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
OPEN = {"type": "object"}


def _defs() -> dict[str, dict]:
    stat = {k: _opt(NUM) for k in ["mode", "stddev", "min", *PERCENTILES, "max"]}
    seq = _obj({"distribution": {"enum": ["fixed", "gaussian", "uniform", "other"]}, "value": NUM,
                "std_dev": _opt(NUM), "min": _opt(INT), "max": _opt(INT)}, ("distribution", "value"))
    native = _obj({"args": _opt(OPEN), "envars": _opt(OPEN), "config": {}})
    return {
        "Statistics": _obj({"units": {"enum": UNITS}, "mean": NUM, **stat}, ("units", "mean"), closed=False),
        "SequenceLength": seq,
        "Native": native,
        "Run": _obj({"uid": STR, "eid": _opt(STR), "cid": _opt(STR), "pid": _opt(STR),
                     "time": _opt(_obj({"start": _opt(STR), "end": _opt(STR), "duration": _opt(STR)})),
                     "user": _opt(STR), "description": _opt(STR),
                     "keywords": _opt({"type": "array", "items": STR})}, ("uid",)),
        "ComponentMetadata": _obj({"schema_version": STR, "label": STR, "cfg_id": STR, "description": _opt(STR)},
                                  ("label", "cfg_id")),
        "InferenceEngine": _obj({
            "kind": {"const": "inference_engine"}, "tool": STR, "tool_version": STR,
            "role": {"enum": ["replica", "prefill", "decode"]}, "replicas": INT,
            "model": _obj({"name": STR}, ("name",)),
            "accelerator": _obj({"model": STR, "count": INT, "parallelism": _obj(
                {k: INT for k in ("tp", "dp", "dp_local", "workers", "ep", "pp")})}, ("model", "count", "parallelism")),
        }, ("kind", "tool", "tool_version", "role", "replicas", "model", "accelerator")),
        "Generic": _obj({"kind": {"const": "generic"}, "tool": STR, "tool_version": STR},
                        ("kind", "tool", "tool_version"), closed=False),
        "Component": _obj({"metadata": _ref("ComponentMetadata"),
                           "standardized": {"oneOf": [_ref("Generic"), _ref("InferenceEngine")]},
                           "native": _ref("Native")}, ("metadata", "standardized", "native")),
        "Load": _obj({
            "metadata": _obj({"schema_version": STR, "cfg_id": _opt(STR), "description": _opt(STR)}),
            "standardized": _obj({
                "tool": STR, "tool_version": STR, "parallelism": INT,
                "source": {"enum": ["random", "sampled", "unknown"]}, "stage": INT,
                "input_seq_len": _ref("SequenceLength"), "output_seq_len": _opt(_ref("SequenceLength")),
                "prefix": _opt(_obj({"prefix_len": _ref("SequenceLength"), "num_groups": INT,
                                     "num_users_per_group": INT, "num_prefixes": INT},
                                    ("prefix_len", "num_groups", "num_users_per_group", "num_prefixes"))),
                "multi_turn": _opt(_obj({"enabled": {"type": "boolean"},
                                         "max_turns": _opt(_ref("SequenceLength"))})),
                "rate_qps": _opt(NUM), "concurrency": _opt({"type": "number", "minimum": 1}),
            }, ("tool", "tool_version", "source", "input_seq_len")),
            "native": _ref("Native"),
        }, ("metadata", "standardized", "native")),
        "Aggregate": _obj({
            "requests": _opt(_obj({"total": INT, "failures": _opt(INT), "incomplete": _opt(INT),
                                   "input_length": _opt(_ref("Statistics")),
                                   "output_length": _opt(_ref("Statistics"))}, ("total",))),
            "latency": _opt(_obj({k: _opt(_ref("Statistics")) for k in (
                "time_to_first_token", "normalized_time_per_output_token", "time_per_output_token",
                "inter_token_latency", "request_latency")})),
            "throughput": _opt(_obj({k: _opt(_ref("Statistics")) for k in (
                "input_token_rate", "output_token_rate", "total_token_rate", "request_rate")})),
        }),
        "PodStartup": _obj({"name": STR, "model": _opt(STR), "role": _opt(STR), "node": _opt(STR),
                            "creation_timestamp": _opt(STR), "ready_timestamp": _opt(STR),
                            "startup_seconds": _opt(NUM)}, ("name",)),
        "Results": _obj({
            "request_performance": _opt(_obj({"aggregate": _opt(_ref("Aggregate")), "time_series": _opt(OPEN)})),
            "observability": _opt(_obj({
                "components": _opt({"type": "array"}), "drop_rate": _opt(_ref("Statistics")),
                "pod_startup_times": _opt(_obj({"collected_at": _opt(STR),
                                                "pods": _opt({"type": "array", "items": _ref("PodStartup")}),
                                                "aggregate": _opt(_ref("Statistics")), "graph_path": _opt(STR)})),
                "replica_status": _opt(OPEN)}, closed=False)),
            "profiling": {}, "component_health": _opt({"type": "array"}),
        }),
    }


def schema(strict: bool = True) -> dict[str, Any]:
    """The v0.2 report schema; strict=False drops every `additionalProperties: false` (v0.2.x supersets)."""
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Benchmark Report v0.2",
        "$comment": f"re-declared by pdlab from {SOURCE}",
        **_obj({"version": STR, "run": _ref("Run"),
                "scenario": _opt(_obj({"stack": _opt({"type": "array", "items": _ref("Component")}),
                                       "load": _opt(_ref("Load"))})),
                "results": _ref("Results")}, ("run", "results")),
        "$defs": _defs(),
    }
    if not strict:
        doc = _open(copy.deepcopy(doc))
    return doc


def _open(node: Any) -> Any:
    if isinstance(node, dict):
        node.pop("additionalProperties", None)
        for v in node.values():
            _open(v)
    elif isinstance(node, list):
        for v in node:
            _open(v)
    return node


__all__ = ["SOURCE", "UNITS", "VERSION", "schema"]
