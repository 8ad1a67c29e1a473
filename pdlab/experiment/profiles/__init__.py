"""GPU, model and link profiles: the data files the performance model and GPU accounting read."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from pdlab.core.errors import SpecError, did_you_mean


class Interconnect(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    bw_gbps: float
    latency_us: float


class GPUProfile(BaseModel):
    """One GPU type: memory, bandwidth, peak FLOP/s, TP interconnect and efficiency factors."""

    model_config = ConfigDict(extra="forbid")
    name: str
    memory_gb: float
    mem_bw_gbps: float
    bf16_tflops: float
    fp8_tflops: float | None = None
    interconnect: Interconnect
    prefill_efficiency: dict[int, float]
    decode_bw_efficiency: float
    sources: list[str] = []


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
