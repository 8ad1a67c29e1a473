"""GPU, model and link profiles: the data files the performance model and GPU accounting read.

A GPU profile is either built in (``gpus.yaml``: datasheet figures, efficiencies measured on H100/H200)
or a file written by ``pdlab calibrate`` and named with ``gpu.profile: PATH`` (``load_gpu_profile``).
Every profile carries its ``provenance``, which runs, plans and reports print (``describe``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pdlab.core.errors import SpecError, did_you_mean


class Interconnect(BaseModel):
    """What the TP all-reduce runs over: bandwidth per direction (GB/s) and latency per call."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    bw_gbps: float = Field(gt=0)
    latency_us: float = Field(ge=0)
    allreduce_us: dict[int, float] = Field(default_factory=dict, description="measured µs per all-reduce call by "
                                           "message bytes, inside forward steps (calibrated profiles)")
    allreduce_decode_us: dict[int, float] = Field(
        default_factory=dict, description="the same inside decode steps, where each call also waits for the "
        "slower rank's memory-bound work (calibrated profiles; empty: allreduce_us)")
    allreduce_tp: int | None = Field(None, description="the TP size allreduce_us was measured at")


class TPEfficiency(BaseModel):
    """Measured efficiencies of one TP size: prefill by step tokens, decode weight reads by batch, KV reads."""

    model_config = ConfigDict(extra="forbid")
    prefill: dict[int, float] = Field(min_length=1, description="fraction of dense BF16 peak, by tokens")
    decode_weights: dict[int, float] = Field(min_length=1, description="fraction of HBM bw, by decode batch")
    decode_kv: dict[int, float] = Field(min_length=1, description="fraction of HBM bw reading KV, by batch")
    prefill_boost: dict[int, float] | None = Field(
        None, description="prefill from an idle GPU (boost clocks), by tokens; `prefill` is at the power cap")


class Provenance(BaseModel):
    """Where a profile's numbers come from: datasheet defaults, or calibrated where, when and how."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["datasheet", "calibrated", "fitted"]
    summary: str
    gpu_name: str | None = None
    driver: str | None = None
    torch: str | None = None
    date: str | None = None
    command: str | None = None
    model: str | None = None
    raw: str | None = None
    residuals: dict[str, float] = {}


class GPUProfile(BaseModel):
    """One GPU type: memory, bandwidth, peak FLOP/s, TP interconnect and efficiency factors per TP size."""

    model_config = ConfigDict(extra="forbid")
    name: str
    memory_gb: float = Field(gt=0)
    memory_unit: Literal["GB", "GiB"] = Field(
        "GiB", description="what the datasheet's GB means: HBM parts are sold in GiB, GDDR parts in 10^9 bytes")
    mem_bw_gbps: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float | None = None
    interconnect: Interconnect
    efficiency: dict[int, TPEfficiency] = Field(min_length=1, description="by TP size")
    step_overhead_ms: float = Field(0.0, ge=0, description="CPU time a server adds between GPU steps")
    model: str | None = Field(None, description="the model whose layer shapes were measured (calibrated only)")
    provenance: Provenance
    sources: list[str] = []

    @property
    def memory_bytes(self) -> float:
        """GPU memory in bytes, in the unit the datasheet means."""
        return self.memory_gb * (2**30 if self.memory_unit == "GiB" else 1e9)

    def at_tp(self, tp: int) -> TPEfficiency:
        """Efficiencies for a TP size: its own if measured, else the largest measured TP below it, else the smallest."""
        if tp in self.efficiency:
            return self.efficiency[tp]
        below = [t for t in self.efficiency if t <= tp]
        return self.efficiency[max(below) if below else min(self.efficiency)]

    def describe(self) -> str:
        """One line naming the profile and where its numbers come from (runs, plans and reports print it)."""
        p = self.provenance
        if p.kind == "datasheet":
            return f"{self.name} (built-in: {p.summary})"
        where = ", ".join(x for x in (p.gpu_name, p.date and f"on {p.date}", p.model and f"for {p.model}") if x)
        return f"{self.name} ({p.kind}: {where}; {p.summary})"


class ModelProfile(BaseModel):
    """A transformer's shape, as in its Hugging Face config.json."""

    model_config = ConfigDict(extra="ignore")
    name: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    dtype_bytes: int = 2
    sources: list[str] = []

    @property
    def num_parameters(self) -> int:
        """Parameter count of a dense Qwen/Llama-style decoder (no biases)."""
        h, L = self.hidden_size, self.num_hidden_layers
        q = h * self.num_attention_heads * self.head_dim
        kv = 2 * h * self.num_key_value_heads * self.head_dim
        o = self.num_attention_heads * self.head_dim * h
        mlp = 3 * h * self.intermediate_size
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return L * (q + kv + o + mlp) + emb

    @property
    def weight_bytes(self) -> int:
        return self.num_parameters * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers: 2 × layers × kv_heads × head_dim × dtype bytes."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * self.dtype_bytes


class LinkProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    bw_gbps: float
    latency_us: float
    sources: list[str] = []


def _load(name: str) -> dict:
    return yaml.safe_load(resources.files(__package__).joinpath(name).read_text())


@cache
def gpus() -> dict[str, GPUProfile]:
    """The built-in GPU profiles (gpus.yaml)."""
    return {k: GPUProfile(name=k, **v) for k, v in _load("gpus.yaml").items()}


@cache
def models() -> dict[str, ModelProfile]:
    return {k: ModelProfile(name=k, **v) for k, v in _load("models.yaml").items()}


@cache
def links() -> dict[str, LinkProfile]:
    return {k: LinkProfile(name=k, **v) for k, v in _load("links.yaml").items()}


def _lookup(kind: str, name: str, table: dict):
    for key, value in table.items():
        if key.lower() == name.lower():
            return value
    raise SpecError(f"unknown {kind} profile '{name}'{did_you_mean(name, table)}; known: {', '.join(table)}")


def gpu(name: str) -> GPUProfile:
    """The GPU profile called `name` (case-insensitive)."""
    return _lookup("GPU", name, gpus())


def load_gpu_profile(path: str | Path, model_name: str | None = None) -> GPUProfile:
    """A GPU profile file (as `pdlab calibrate` writes): checked, and for `model_name` when it names one."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SpecError(f"cannot read GPU profile: {e.strerror} (run `pdlab calibrate` to write one)",
                        file=str(p), field="gpu.profile") from None
    except yaml.YAMLError as e:
        raise SpecError(f"GPU profile is not valid YAML: {e}", file=str(p), field="gpu.profile") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpu"), dict):
        raise SpecError("not a GPU profile: expected a mapping with a 'gpu' section (as `pdlab calibrate` writes)",
                        file=str(p), field="gpu.profile")
    try:
        prof = GPUProfile(**data["gpu"])
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise SpecError(f"GPU profile field gpu.{loc}: {first['msg']} ({len(e.errors())} problem(s); "
                        "re-run `pdlab calibrate` or fix the file)", file=str(p), field=f"gpu.{loc}") from None
    if model_name and prof.model and prof.model.lower() != model_name.lower():
        raise SpecError(f"GPU profile was calibrated for {prof.model}, not {model_name}: run `pdlab calibrate "
                        f"--model {model_name}`", file=str(p), field="gpu.profile")
    return prof


def link(name: str) -> LinkProfile:
    return _lookup("link", name, links())


def model(name: str) -> ModelProfile:
    """The built-in model profile called `name` (case-insensitive)."""
    return _lookup("model", name, models())


def model_from_config(path: str | Path, name: str | None = None) -> ModelProfile:
    """A model profile read from a Hugging Face config.json."""
    p = Path(path)
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpecError(f"cannot read model config: {e.strerror or e}; check model.config", file=str(p)) from None
    except UnicodeDecodeError:
        raise SpecError("model config is not UTF-8 text; point model.config at a config.json", file=str(p)) from None
    except json.JSONDecodeError as e:
        raise SpecError(f"not valid JSON: {e}", file=str(p)) from None
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k, 1), int) and not isinstance(cfg.get(k, 1), bool)
                                            for k in ("hidden_size", "num_attention_heads")):
        raise SpecError("not a transformer config.json (expected a JSON object with integer hidden_size and "
                        "num_attention_heads)", file=str(p))
    cfg.setdefault("head_dim", cfg.get("hidden_size", 0) // max(cfg.get("num_attention_heads", 1), 1))
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    try:
        return ModelProfile(name=name or p.parent.name or "custom", **cfg)
    except Exception as e:  # pydantic ValidationError: name the missing keys
        raise SpecError(f"not a usable transformer config: {e}", file=str(p)) from None


def model_for_path(model_path: str) -> ModelProfile:
    """Infer the model profile from a model path's last component (`/models/Qwen3-32B/` → Qwen3-32B)."""
    last = Path(model_path.rstrip("/")).name
    return model(last)
