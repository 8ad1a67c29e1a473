"""Params files → a validated experiment spec (pydantic), with errors that name the file, field and fix.

A params file describes one experiment: model, GPUs, topology (PD or colocated), engine args,
image, namespace, model storage, workload, SLOs and backend. `--set field.path=value` overrides
are applied to the raw document before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pdlab.core.errors import SpecError, did_you_mean
from pdlab.experiment import profiles
from pdlab.experiment.flags import ROUTER_FLAGS, WORKER_FLAGS, reserved_flag_error

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RATIO = re.compile(r"^(\d+)P(\d+)D$", re.IGNORECASE)
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
SECRET_KEY = re.compile(r"(secret|token|password|passwd|access[_-]?key|credential)", re.IGNORECASE)


# Upper bounds: beyond them a value is a typo or a unit mix-up, not an experiment (see issue 16's note).
MAX_RATE = 10_000.0  # req/s: one load client process dispatches a few thousand req/s at most
MAX_INFLIGHT = 65_536  # one connection per in-flight request: a host's ephemeral port range
MAX_SECONDS = 86_400.0  # a day: per level, per request, per readiness wait
MAX_PROMPTS = 10_000_000
MAX_TOKENS = 10_000_000  # the longest context of any served model, with room to spare
MAX_SLO_MS = 3_600_000.0  # an hour
MAX_INSTANCES = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _dns_name(value: str, what: str = "name", max_len: int = 63) -> str:
    if not DNS1123.match(value) or len(value) > max_len:
        raise ValueError(
            f"'{value}' is not a valid {what}: use lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, at most {max_len} characters"
        )
    return value


class ModelSpec(_Strict):
    """The served model: its name, where it sits in the pod, and its architecture."""

    name: str = "Qwen3-32B"
    path: str = "/models/Qwen3-32B/"
    profile: str | None = Field(None, description="built-in architecture profile; default from path")
    config: str | None = Field(None, description="path to a Hugging Face config.json instead of a profile")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                return profiles.model(v).name
            except SpecError as e:
                raise ValueError(str(e)) from None
        return v

    def architecture(self) -> profiles.ModelProfile:
        """The model profile: the config.json if given, else the named or path-inferred profile."""
        if self.config:
            return profiles.model_from_config(self.config, name=self.name)
        if self.profile:
            return profiles.model(self.profile)
        return profiles.model_for_path(self.path)


class GPUSpec(_Strict):
    """GPU type and node shape."""

    type: str = "L20"
    per_node: int = Field(8, ge=1, le=64)
    nodes: int = Field(1, ge=1, le=MAX_INSTANCES, description="nodes available to the experiment (the GPU budget)")
    erdma: bool = True
    profile: str | None = Field(None, description="GPU profile file written by `pdlab calibrate`: the emulator "
                                "and planner model this GPU with it instead of the built-in profile of `type`")

    @field_validator("type")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        try:
            return profiles.gpu(v).name
        except SpecError as e:
            raise ValueError(str(e)) from None

    @field_validator("profile")
    @classmethod
    def _readable_profile(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                profiles.load_gpu_profile(v)
            except SpecError as e:
                raise ValueError(f"{v}: {e.message}") from None
        return v

    def performance_profile(self, model_name: str | None = None) -> profiles.GPUProfile:
        """The GPU profile the emulator and planner use: the calibrated file if `profile` is set, else built-in."""
        if self.profile:
            return profiles.load_gpu_profile(self.profile, model_name)
        return profiles.gpu(self.type)

    @property
    def budget(self) -> int:
        return self.per_node * self.nodes


EngineArgs = dict[str, Any]


class FaultSpec(_Strict):
    """Faults injected into a role's emulated workers (--emu-fault-* flags; the real SGLang gets none)."""

    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests refused with error_status")
    error_status: Literal[500, 503] = 503
    stall_at_s: float | None = Field(None, ge=0.0, description="seconds after start the engine stalls")
    stall_s: float = Field(0.0, ge=0.0, description="how long the stall lasts (wall seconds)")
    crash_after: int | None = Field(None, ge=1, description="the worker process dies when this request arrives")
    crash_at_s: float | None = Field(None, ge=0.0, description="the worker process dies this long after start")
    kv_fail_rate: float = Field(0.0, ge=0.0, le=1.0, description="prefill: share of KV transfers that fail")
    kv_timeout_rate: float = Field(0.0, ge=0.0, le=1.0, description="prefill: share of KV transfers that hang")


class RoleSpec(_Strict):
    """One worker role: how many instances, at which TP, with which extra engine args."""

    replicas: int = Field(1, ge=1, le=MAX_INSTANCES)
    tp: int = Field(2, ge=1, le=64)
    args: EngineArgs = Field(default_factory=dict, description="extra engine args, e.g. {chunked-prefill-size: 8192}")
    faults: FaultSpec | None = Field(None, description="injected faults (emulated workers only)")

    @field_validator("args")
    @classmethod
    def _norm_args(cls, v: EngineArgs) -> EngineArgs:
        return normalize_args(v, WORKER_FLAGS)


ROUTER_POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")
TRANSFER_BACKENDS = ("mooncake", "nixl", "ascend", "fake")


class RouterSpec(_Strict):
    """The router in front of the workers: sglang-router's policies (--policy, and in PD --prefill-policy /
    --decode-policy) and cache-aware thresholds; unset fields keep the router's defaults (cache_aware, 0.3, 64, 1.5)."""

    impl: Literal["sglang-router", "mini_lb"] = "sglang-router"
    policy: str | None = None
    prefill_policy: str | None = None
    decode_policy: str | None = None
    cache_threshold: float | None = Field(None, ge=0.0, le=1.0, description="cache_aware: min prefix match rate")
    balance_abs_threshold: int | None = Field(None, ge=0, description="cache_aware: load gap that forces balancing")
    balance_rel_threshold: float | None = Field(None, ge=1.0, description="cache_aware: load ratio that forces it")
    service_discovery: bool = False
    args: EngineArgs = Field(default_factory=dict)

    @field_validator("policy", "prefill_policy", "decode_policy")
    @classmethod
    def _known_policy(cls, v: str | None) -> str | None:
        if v is not None and v not in ROUTER_POLICIES:
            raise ValueError(f"unknown routing policy '{v}'{did_you_mean(v, list(ROUTER_POLICIES))}; "
                             f"allowed: {', '.join(ROUTER_POLICIES)}")
        return v

    @field_validator("args")
    @classmethod
    def _norm_args(cls, v: EngineArgs) -> EngineArgs:
        return normalize_args(v, ROUTER_FLAGS)


class PDTopology(_Strict):
    """Prefill/decode disaggregated: `prefill` and `decode` roles behind the PD router."""

    kind: Literal["pd"] = "pd"
    ratio: str | None = Field(None, description="shorthand 'xPyD' setting both replica counts")
    prefill: RoleSpec = Field(default_factory=lambda: RoleSpec(replicas=2, tp=2))
    decode: RoleSpec = Field(default_factory=lambda: RoleSpec(replicas=1, tp=2))
    bootstrap_port: int = Field(34000, ge=1, le=65535)
    transfer_backend: str | None = Field(None, description="--disaggregation-transfer-backend, e.g. mooncake")
    ib_device: str | None = Field(None, description="--disaggregation-ib-device, e.g. mlx5_0 (RDMA NIC for KV)")
    router: RouterSpec = Field(default_factory=RouterSpec)

    @field_validator("transfer_backend")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        if v is not None and v not in TRANSFER_BACKENDS:
            raise ValueError(f"unknown transfer backend '{v}'{did_you_mean(v, list(TRANSFER_BACKENDS))}; "
                             f"allowed: {', '.join(TRANSFER_BACKENDS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _apply_ratio(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("ratio") is not None:
            m = RATIO.match(str(data["ratio"]))
            if not m:
                raise ValueError(f"ratio '{data['ratio']}' must look like '2P1D' (prefill replicas P, decode replicas D)")
            data = copy.deepcopy(data)
            for role, n in (("prefill", int(m.group(1))), ("decode", int(m.group(2)))):
                data.setdefault(role, {})
                if isinstance(data[role], dict):
                    data[role]["replicas"] = n
            data["ratio"] = f"{m.group(1)}P{m.group(2)}D"
        return data

    @property
    def label(self) -> str:
        return f"{self.prefill.replicas}P{self.decode.replicas}D"


class ColocatedTopology(_Strict):
    """Colocated: identical workers doing prefill and decode, behind the load-balancing router."""

    kind: Literal["colocated"] = "colocated"
    worker: RoleSpec = Field(default_factory=lambda: RoleSpec(replicas=3, tp=2))
    router: RouterSpec = Field(default_factory=RouterSpec)

    @model_validator(mode="after")
    def _no_pd_policies(self) -> ColocatedTopology:
        if self.router.prefill_policy or self.router.decode_policy:
            raise ValueError("router.prefill_policy / router.decode_policy apply to PD topologies only; "
                             "a colocated router takes router.policy")
        return self

    @property
    def label(self) -> str:
        return f"colocated-{self.worker.replicas}x"


Topology = Annotated[PDTopology | ColocatedTopology, Field(discriminator="kind")]


class OSSStorage(_Strict):
    """An OSS bucket exposed as a static PV; the keys come from environment variables at apply time."""

    bucket: str
    endpoint: str = "oss-cn-hangzhou-internal.aliyuncs.com"
    path: str = "/"
    secret_name: str = "oss-secret"
    access_key_id_env: str = "OSS_ACCESS_KEY_ID"
    access_key_secret_env: str = "OSS_ACCESS_KEY_SECRET"
    size: str = "200Gi"

    @field_validator("secret_name")
    @classmethod
    def _dns(cls, v: str) -> str:
        return _dns_name(v, "Secret name", 253)


class StorageSpec(_Strict):
    """Model weights: a PVC mounted at /models, optionally backed by an OSS PV that pdlab renders."""

    pvc: str = "llm-model"
    mount_path: str = "/models"
    oss: OSSStorage | None = None

    @field_validator("pvc")
    @classmethod
    def _dns(cls, v: str) -> str:
        return _dns_name(v, "PVC name", 253)


class DatasetSpec(_Strict):
    """Where prompts come from and how long inputs and outputs are."""

    kind: Literal["random", "sharegpt", "shared-prefix", "generated-shared-prefix", "multi-turn", "mooncake-trace",
                  "jsonl"] = "random"
    input_len: int = Field(1024, ge=1, le=MAX_TOKENS)
    output_len: int = Field(256, ge=1, le=MAX_TOKENS)
    range_ratio: float = Field(0.0, ge=0.0, le=1.0, description="lengths uniform in [len*(1-r), len*(1+r)]")
    path: str | None = Field(None, description="JSONL file for kind=jsonl or mooncake-trace")
    fixed_output_len: int | None = Field(None, ge=1, le=MAX_TOKENS, description="sharegpt: override output lengths")
    num_groups: int = Field(8, ge=1, le=MAX_PROMPTS, description="shared-prefix: number of system prompts")
    prefix_len: int = Field(2048, ge=0, le=MAX_TOKENS,
                            description="shared-prefix, multi-turn: system prompt tokens (multi-turn: 0 = none)")
    prompts_per_group: int = Field(16, ge=1, le=MAX_PROMPTS,
                                   description="generated-shared-prefix: questions per system prompt")
    num_turns: int = Field(4, ge=1, le=999, description="multi-turn: turns per session (± range_ratio)")
    think_time_s: float = Field(1.0, ge=0.0, le=MAX_SECONDS, description="multi-turn: mean user think time between turns")

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> DatasetSpec:
        if self.kind == "jsonl" and not self.path:
            raise ValueError("dataset kind 'jsonl' needs 'path' (a JSONL file with one prompt per line)")
        if self.kind == "mooncake-trace" and not self.path:
            raise ValueError("dataset kind 'mooncake-trace' needs 'path' (a Mooncake trace JSONL file)")
        if self.kind in ("shared-prefix", "generated-shared-prefix") and self.prefix_len < 1:
            raise ValueError(f"dataset kind '{self.kind}' needs prefix_len ≥ 1 (the shared system prompt's tokens)")
        return self


class WorkloadSpec(_Strict):
    """The load: dataset, arrivals, request rates or concurrencies, and how long each level runs."""

    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    api: Literal["chat", "completions", "generate"] = "chat"
    arrival: Literal["poisson", "gamma", "constant"] = "poisson"
    burstiness: float = Field(1.0, gt=0, le=1000, description="gamma shape; 1.0 = Poisson, < 1 burstier")
    rates: list[float] | None = Field(default_factory=lambda: [1.0, 2.0, 4.0], description="requests/s, open loop")
    concurrencies: list[int] | None = Field(None, description="closed loop: in-flight requests held constant")
    duration_s: float | None = Field(60.0, gt=0, le=MAX_SECONDS)
    num_prompts: int | None = Field(None, ge=1, le=MAX_PROMPTS)
    warmup: int = Field(2, ge=0, le=MAX_PROMPTS, description="requests at the start of each level left out of statistics")
    max_inflight: int = Field(2048, ge=1, le=MAX_INFLIGHT)
    ignore_eos: bool = Field(True, description="true: every request generates max_tokens; false: the server may "
                             "stop at EOS, max_tokens being the dataset's own output length (ShareGPT's completion)")
    timeout_s: float = Field(600.0, gt=0, le=MAX_SECONDS)
    seed: int = Field(0, ge=0, lt=2**63)
    max_failed_share: float = Field(0.1, ge=0, le=1, description="a level with a larger share of failed requests "
                                    "is marked failed (and `pdlab run` exits 3)")
    drain_s: float | None = Field(None, gt=0, le=MAX_SECONDS, description="after a level's duration, wait this long "
                                  "for in-flight requests before cancelling them (default: timeout_s)")

    @field_validator("rates")
    @classmethod
    def _positive_rates(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("rates is empty: give at least one request rate (requests/s), or use concurrencies")
            bad = [r for r in v if r <= 0]
            if bad:
                raise ValueError(f"request rates must be > 0 (got {bad}); for a closed loop use 'concurrencies'")
            big = [r for r in v if r > MAX_RATE]
            if big:
                raise ValueError(f"request rates must be ≤ {MAX_RATE:g} req/s (got {big}): one load client cannot "
                                 "send faster, so such a level would measure the client")
        return v

    @field_validator("concurrencies")
    @classmethod
    def _positive_conc(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(c < 1 for c in v)):
            raise ValueError("concurrencies must be a non-empty list of integers ≥ 1")
        if v is not None and any(c > MAX_INFLIGHT for c in v):
            raise ValueError(f"concurrencies must be ≤ {MAX_INFLIGHT} (one connection each; got {max(v)})")
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_kind_of_level(cls, data: Any) -> Any:
        """Concurrencies replace the default rates; both given explicitly is a conflict, not a silent drop."""
        if isinstance(data, dict) and data.get("concurrencies") is not None:
            if data.get("rates") is not None:
                raise ValueError("both 'rates' and 'concurrencies' are set; keep one (e.g. --set workload.rates=null "
                                 "for a closed loop)")
            data = {**data, "rates": None}
        return data

    @model_validator(mode="after")
    def _levels(self) -> WorkloadSpec:
        if not self.rates and not self.concurrencies:
            raise ValueError("give 'rates' (open loop) or 'concurrencies' (closed loop)")
        if self.duration_s is None and self.num_prompts is None:
            raise ValueError("bound each level by 'duration_s' or 'num_prompts'")
        return self

    @property
    def levels(self) -> list[tuple[str, float]]:
        """The load levels in order: ('rate', r) or ('concurrency', c)."""
        if self.concurrencies:
            return [("concurrency", float(c)) for c in self.concurrencies]
        return [("rate", float(r)) for r in self.rates or []]


STATISTICS = ("mean", "p50", "p90", "p99", "attainment")


class SLOSpec(_Strict):
    """Service-level objectives: the targets and the statistic they apply to (planner and verdicts)."""

    ttft_ms: float = Field(2000.0, gt=0, le=MAX_SLO_MS)
    tpot_ms: float = Field(100.0, gt=0, le=MAX_SLO_MS)
    statistic: str = Field("attainment", description="what must meet both targets: mean, p50, p90, p99 of TTFT and "
                           "TPOT, or attainment (the share of requests meeting both)")
    attainment: float = Field(0.9, description="statistic attainment: share of requests that must meet both targets")

    @field_validator("statistic")
    @classmethod
    def _known_statistic(cls, v: str) -> str:
        if v not in STATISTICS:
            raise ValueError(f"unknown statistic {v!r}{did_you_mean(v, STATISTICS)}; use one of {', '.join(STATISTICS)}")
        return v

    @field_validator("attainment")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"attainment {v} is outside (0, 1]: give the share of requests, e.g. 0.9 for 90 %")
        return v


class CostSpec(_Strict):
    """Optional price of the GPUs, for $ per million output tokens in plans and reports."""

    gpu_hour_usd: float | None = Field(None, gt=0, le=1e6)


class EmulatorSpec(_Strict):
    """Settings of the emulated worker (local backend, fake cluster)."""

    link: str = "erdma"
    step_overhead_ms: float | None = Field(None, ge=0, le=60_000)
    time_scale: float = Field(1.0, gt=0, le=1000, description="multiply modelled durations (CI uses < 1)")

    @field_validator("link")
    @classmethod
    def _known_link(cls, v: str) -> str:
        try:
            return profiles.link(v).name
        except SpecError as e:
            raise ValueError(str(e)) from None


class K8sSpec(_Strict):
    """How to reach the cluster and the router."""

    kubeconfig: str | None = None
    context: str | None = None
    access: Literal["port-forward", "service-dns", "url"] = "port-forward"
    url: str | None = Field(None, description="router URL when access=url")
    api_version: Literal["v1alpha1", "v1alpha2"] = "v1alpha1"
    ready_timeout_s: float = Field(1800.0, gt=0, le=MAX_SECONDS)
    fail_fast_s: float = Field(60.0, gt=0, le=MAX_SECONDS, description="give up on a pod unschedulable, failing to pull or "
                               "crash-looping this long (instead of waiting for ready_timeout_s)")
    preflight: bool = True
    prometheus: str | None = Field(None, description="Prometheus base URL (e.g. ACK Managed Prometheus' HTTP API) "
                                   "to read server metrics from, by the pods' labels, instead of scraping each pod")
    load: Literal["client", "job"] = Field("client", description="where the load generator runs: here ('client', "
                                           "through `access`) or in the cluster next to the router ('job')")
    load_pods: int = Field(1, ge=1, le=64, description="load: job — pods sharing the load (independent Poisson shares)")
    load_image: str = Field("pdlab", description="load: job — the pdlab image (see the Dockerfile), without tag")
    load_image_tag: str | None = Field(None, description="load: job — the pdlab image's tag (default: this "
                                       "pdlab's version)")
    load_start_delay_s: float = Field(30.0, ge=0, le=MAX_SECONDS, description="load: job — the pods start "
                                      "together this long after the Job is created (image pull, start-up)")

    @model_validator(mode="after")
    def _url(self) -> K8sSpec:
        if self.access == "url" and not self.url:
            raise ValueError("access 'url' needs 'url' (the router's http://host:port)")
        return self


class BackendSpec(_Strict):
    """Where the topology runs: local processes (default) or a Kubernetes cluster."""

    kind: Literal["local", "k8s"] = "local"
    engine: Literal["emulator", "sglang"] = "emulator"
    ready_timeout_s: float = Field(120.0, gt=0, le=MAX_SECONDS)
    reuse_deployment: bool = Field(True, description="in a sweep, points that differ only in workload/SLOs share "
                                   "one deployment (false: every point deploys its own)")
    k8s: K8sSpec = Field(default_factory=K8sSpec)


class MetricsSpec(_Strict):
    """Where server metrics come from: each endpoint's /metrics (default) or a Prometheus server."""

    prometheus: str | None = Field(None, description="Prometheus base URL to read server metrics from (local "
                                   "runs; on k8s backend.k8s.prometheus wins)")
    file_sd: str | None = Field(None, description="write the local endpoints as a Prometheus file_sd target "
                                "list here, for a Prometheus that scrapes them")
    step_s: float = Field(5.0, gt=0, description="scrape interval / range-query resolution, s")
    wait_s: float = Field(120.0, gt=0, description="how long Prometheus may take to show every pod's series")
    token_env: str | None = Field(None, description="environment variable holding a bearer token for the "
                                  "Prometheus API (never written to results)")
    pod_label: str = Field("pod", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="the series label that names "
                           "the pod ('pod' with the Prometheus operator; some managed services use 'pod_name')")


class Experiment(_Strict):
    """One experiment: everything needed to deploy a topology and measure it."""

    name: str = "sglang-pd"
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    gpu: GPUSpec = Field(default_factory=GPUSpec)
    topology: Topology = Field(default_factory=PDTopology)
    engine_args: EngineArgs = Field(default_factory=dict, description="extra engine args for every worker role")
    image: str = "lmsysorg/sglang:v0.5.5"
    sglang_version: str | None = Field(None, description="SGLang version in the image (default: read from the "
                                       "image tag); flags it does not accept are refused")
    router_image: str | None = None
    namespace: str = "default"
    storage: StorageSpec = Field(default_factory=StorageSpec)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    slo: SLOSpec = Field(default_factory=SLOSpec)
    cost: CostSpec = Field(default_factory=CostSpec)
    emulator: EmulatorSpec = Field(default_factory=EmulatorSpec)
    backend: BackendSpec = Field(default_factory=BackendSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    labels: dict[str, str] = Field(default_factory=dict)
    arm: str | None = Field(None, description="this run's legend name in comparisons (sweeps set it; default: "
                                              "the topology label, e.g. '2P1D (TP2)')")

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        return _dns_name(v, "experiment name (it names Kubernetes objects)", 40)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return _dns_name(v, "namespace")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if key.split("/")[0].endswith("pdlab.io"):
                raise ValueError(f"label '{key}' is pdlab's own (teardown and cleanup find objects by it); "
                                 "use another key")
            if not LABEL_KEY.fullmatch(key) or len(key.rsplit("/", 1)[-1]) > 63:
                raise ValueError(f"label key '{key}' is not a Kubernetes label key: an optional DNS prefix and '/', "
                                 "then at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric")
            if not LABEL_VALUE.fullmatch(value) or len(value) > 63:
                raise ValueError(f"label '{key}': value '{value}' is not a Kubernetes label value: at most 63 "
                                 "letters, digits, '-', '_' or '.', starting and ending alphanumeric")
        return v

    @field_validator("engine_args")
    @classmethod
    def _norm_args(cls, v: EngineArgs) -> EngineArgs:
        return normalize_args(v, WORKER_FLAGS)

    @field_validator("gpu")
    @classmethod
    def _gpu_profile(cls, v: GPUSpec, info: ValidationInfo) -> GPUSpec:
        if v.profile:
            model = info.data.get("model")
            try:
                v.performance_profile(model.name if model is not None else None)
            except SpecError as e:
                raise ValueError(f"profile {v.profile}: {e.message}") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _sglang_version_from_image(cls, data: Any) -> Any:
        """Unless sglang_version is given, it is the image tag's version (lmsysorg/sglang:v0.5.5 → 0.5.5)."""
        if isinstance(data, dict) and data.get("sglang_version") is None:
            image = data.get("image") or cls.model_fields["image"].default
            m = IMAGE_VERSION.search(str(image or ""))
            if m:
                data = {**data, "sglang_version": m.group(1)}
        return data

    @model_validator(mode="after")
    def _version_gates_flags(self) -> Experiment:
        have = version_tuple(self.sglang_version)
        if have is None:
            return self
        roles = [(k, getattr(self.topology, k)) for k in ("prefill", "decode", "worker") if hasattr(self.topology, k)]
        for where, args in [("engine_args", self.engine_args)] + [(f"topology.{k}.args", r.args) for k, r in roles]:
            for flag in args:
                since = FLAG_SINCE.get(flag)
                if since and have < (version_tuple(since) or ()):
                    raise ValueError(f"{where}: --{flag} needs SGLang ≥ {since}, but the image is SGLang "
                                     f"{self.sglang_version}; use a newer image (or set sglang_version)")
        return self


# flags pdlab knows to be newer than the oldest SGLang it supports: first release whose server_args.py has them
# (checked against the sglang wheels on PyPI); others are taken as accepted.
FLAG_SINCE = {"disaggregation-decode-enable-radix-cache": "0.5.11", "num-reserved-decode-tokens": "0.4.8"}
IMAGE_VERSION = re.compile(r":v?(\d+\.\d+\.\d+(?:\.post\d+)?)(?:$|[-_])")


def version_tuple(v: str | None) -> tuple[int, ...] | None:
    """'0.5.5.post3' → (0, 5, 5, 3); None for anything else."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:\.post(\d+))?", v or "")
    return tuple(int(x or 0) for x in m.groups()) if m else None


def _longest(base: int, ratio: float) -> int:
    """The longest length `sample_length` can draw around `base` (the load generator's own upper end)."""
    return base if ratio <= 0 else max(1, int(round(base * (1 + ratio))))


def check_context(exp: Experiment) -> None:
    """Refuse prompt + output lengths the model's context cannot hold (every such request would fail HTTP 400)."""
    d = exp.workload.dataset
    try:
        context = exp.model.architecture().max_position_embeddings
    except SpecError as e:
        if exp.model.config:  # the user named a config.json that cannot be used: say so now
            raise SpecError(f"{e}", field="model.config") from None
        return  # a model without a built-in profile (real SGLang reads its own config): no context to check
    if d.kind in ("random", "shared-prefix"):
        prefix = d.prefix_len if d.kind == "shared-prefix" else 0
        n_in, n_out = prefix + _longest(d.input_len, d.range_ratio), _longest(d.output_len, d.range_ratio)
        what = (f"{'prefix_len ' + str(prefix) + ' + ' if prefix else ''}input up to {n_in - prefix} + output up to "
                f"{n_out}")
        field = "workload.dataset.output_len" if n_out >= n_in else "workload.dataset.input_len"
    elif d.fixed_output_len is not None:
        n_in, n_out, what, field = 0, d.fixed_output_len, f"fixed_output_len {d.fixed_output_len}", \
            "workload.dataset.fixed_output_len"
    else:
        return  # file datasets: lengths are known only when the file is read
    if n_in + n_out > context:
        raise SpecError(f"{what} = {n_in + n_out} tokens exceeds {exp.model.name}'s context of {context} tokens "
                        "(range_ratio included); every such request would fail; lower the lengths or range_ratio",
                        field=field)


def normalize_args(args: EngineArgs, reserved: dict[str, str | None] | None = None) -> EngineArgs:
    """Engine args keyed without leading dashes, '_' → '-', so `--mem-fraction-static` and `mem_fraction_static` match;
    flags in `reserved` (those pdlab sets itself) are refused rather than silently dropped."""
    out: EngineArgs = {}
    for key, value in args.items():
        k = str(key).lstrip("-").replace("_", "-")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", k):
            raise ValueError(f"engine arg '{key}' is not a flag name (expected e.g. 'chunked-prefill-size')")
        if isinstance(value, dict):
            raise ValueError(f"engine arg '{key}' must be a scalar or a list, not a mapping")
        if k in out:
            raise ValueError(f"engine arg '{key}' is given twice (as '{k}'); keep one")
        clash = reserved_flag_error(k, reserved or {})
        if clash:
            raise ValueError(clash)
        out[k] = value
    return out


# --------------------------------------------------------------------------- loading


SWEEP_KEYS = ("sweep", "grid", "baselines", "base")


def is_sweep_doc(doc: dict) -> bool:
    """Whether a YAML document is a sweep file (any of its keys) rather than a params file."""
    return any(k in doc for k in SWEEP_KEYS)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning I/O and syntax problems into SpecErrors naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found; check the path", file=str(p)) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8 YAML",
                        file=str(p)) from None
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror or e}; check the path", file=str(p)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"invalid YAML{where}: {problem}", file=str(p)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of fields at the top level, got {type(data).__name__}", file=str(p))
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: let the constructor report it
            continue
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"field {key!r} is given twice; keep one",
                                                    key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b.c=value' → ('a.b.c', parsed YAML value)."""
    if "=" not in item:
        raise SpecError(f"--set '{item}' must look like field.path=value (e.g. workload.rates=[1,2])")
    path, raw = item.split("=", 1)
    path = path.strip()
    if not path or any(not part for part in path.split(".")):
        raise SpecError(f"--set '{item}': empty field path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def set_path(doc: dict, path: str, value: Any) -> dict:
    """Set a dotted field path in a nested dict, creating mappings on the way (returns doc)."""
    parts = path.split(".")
    node = doc
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise SpecError(f"cannot set '{path}': '{'.'.join(parts[: i + 1])}' is a value, not a mapping")
        node = nxt
    node[parts[-1]] = value
    return doc


def get_path(doc: dict, path: str, default: Any = None) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def apply_overrides(doc: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Apply --set style overrides (list of 'a.b=v' or a {path: value} dict) to a copy of doc."""
    out = copy.deepcopy(doc)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for path, value in items:
        set_path(out, path, value)
    return out


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        if part in fields:
            ann = fields[part].annotation
            current = _first_model(ann)
        elif part in ("pd", "colocated"):
            current = PDTopology if part == "pd" else ColocatedTopology
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


_UNION_TAGS = ("pd", "colocated")


def format_validation_error(err: ValidationError, model: type[BaseModel], file: str | None) -> SpecError:
    """One SpecError listing every problem as 'field.path: what is wrong (fix)'."""
    lines = []
    first_field = None
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in _UNION_TAGS)  # pydantic puts the union's tag in the path
        path = ".".join(str(p) for p in loc) or "(top level)"
        first_field = first_field or path
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, e["loc"])
            known = list(getattr(owner, "model_fields", {}) or [])
            msg = f"unknown field{did_you_mean(str(loc[-1]), known)}"
            if known:
                msg += f"; allowed here: {', '.join(known)}"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif e["type"] == "union_tag_invalid" and isinstance(e.get("input"), dict):
            msg = f"unknown kind {e['input'].get('kind')!r}; use 'pd' or 'colocated'"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{path}: {msg}")
    if len(lines) == 1:
        return SpecError(lines[0].split(": ", 1)[1], file=file, field=first_field)
    return SpecError("invalid params:\n  " + "\n  ".join(lines), file=file)


def resolved(exp: Experiment) -> dict:
    """The fully resolved spec as plain data (defaults filled), secrets redacted; for params.yaml."""
    return redact(exp.model_dump(mode="json"))


def redact(obj: Any) -> Any:
    """Replace values under secret-looking keys with '<redacted>' (env-var *names* are kept)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") and not str(k).endswith("_name") and v:
                out[k] = "<redacted>"
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
