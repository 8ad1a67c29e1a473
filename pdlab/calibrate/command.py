"""`pdlab calibrate`: measure this GPU (local or a k8s Job), refit raw measurements, or fit a finished run.

Modes (one per call; each writes the profile only once everything succeeded, atomically):
- measure: ``pdlab calibrate [PARAMS] --model NAME --tp 1 2 --out gpu.yaml`` times the model's layer
  shapes with PyTorch on this machine's CUDA GPU (``--backend k8s``: in a Job on a GPU node of the
  experiment's cluster, with its SGLang image) and writes the profile and the raw measurements;
- ``--from-raw RAW.json``: refit a profile from raw measurements already taken;
- ``--from-run RUN_DIR``: fit the prefill and decode factors (and with ``--fit-overhead`` the per-step
  overhead) of the run's GPU profile so the emulator reproduces that run's TTFT and TPOT.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from pdlab.core.errors import PdlabError, SpecError
from pdlab.core.fsutil import write_atomic
from pdlab.experiment.profiles import GPUProfile, ModelProfile, Provenance

CUDA_NEEDED = ("pdlab calibrate measures with PyTorch on a CUDA GPU, and {why}. Run it on a machine with an "
               "NVIDIA GPU and torch (the SGLang image has both), use --backend k8s to run it as a Job on the "
               "cluster, or fit a finished run with --from-run RUN_DIR")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `pdlab calibrate` flags."""
    p.add_argument("params", nargs="?", help="params file: the model, TP, image and cluster to calibrate for")
    p.add_argument("--model", default=None, help="built-in model profile (default: the params' model)")
    p.add_argument("--tp", type=int, nargs="+", default=None, help="TP sizes to measure (default: the params' TPs, "
                   "else 1 2); TP>1 runs the NCCL all-reduce where that many GPUs are present")
    p.add_argument("--out", required=True, help="GPU profile to write (YAML; load it with gpu.profile: PATH)")
    p.add_argument("--raw", default=None, help="also keep the raw measurements here (default: OUT with .raw.json)")
    p.add_argument("--name", default=None, help="profile name (default: the GPU's built-in name)")
    p.add_argument("--base", default=None, help="built-in GPU whose datasheet peaks the efficiencies refer to "
                   "(default: matched from the GPU's name); --from-run: the profile to fit from (default: the "
                   "run's own)")
    p.add_argument("--backend", choices=["local", "k8s"], default="local",
                   help="local: this machine's GPU; k8s: a Job on a GPU node of the params' cluster")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (a smoke test, not a profile "
                   "to trust)")
    p.add_argument("--kernels", choices=["fused", "eager"], default="fused",
                   help="fused (default): the elementwise steps compiled by torch.compile, as SGLang fuses them; "
                   "eager: plain PyTorch ops (slower, for comparison)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # 'cpu': tests with a tiny model
    p.add_argument("--from-raw", default=None, metavar="RAW", help="refit a profile from raw measurements")
    p.add_argument("--from-run", default=None, metavar="RUN_DIR", help="fit the factors to a finished run")
    p.add_argument("--fit-overhead", action="store_true", help="--from-run: also fit the per-step overhead (only "
                   "identifiable when the run spans light and heavy load)")


def _model(a: argparse.Namespace, exp: Any) -> ModelProfile:
    from pdlab.experiment.profiles import model

    if a.model:
        return model(a.model)
    if exp is not None:
        return exp.model.architecture()
    raise SpecError("say which model to calibrate for: --model NAME or a params file", field="--model")


def _quick_sizes(quick: bool) -> dict[str, Any]:
    if not quick:
        return {}
    return {"prefill_tokens": [256, 1024, 4096], "batches": [1, 8, 64], "contexts": [1024, 4096], "reps": 5}


def measure_local(shape: ModelProfile, tps: list[int], *, device: str, quick: bool,
                  kernels: str = "fused", command: str | None = None) -> list[dict]:
    """Raw measurements on this machine (clear error without torch or CUDA)."""
    try:
        import torch
    except ImportError as e:
        raise PdlabError(CUDA_NEEDED.format(why=f"torch is not importable here ({e})")) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise PdlabError(CUDA_NEEDED.format(why="torch sees no CUDA GPU on this machine"))
    from pdlab.calibrate.measure import SHAPE_KEYS, measure

    dims = {k: getattr(shape, k) for k in SHAPE_KEYS}
    return [measure(dims, tp, device=device, model=shape.name, kernels=kernels, command=command,
                    **_quick_sizes(quick)) for tp in tps]


def _write_outputs(a: argparse.Namespace, profile: GPUProfile, raws: list[dict] | None) -> None:
    from pdlab.calibrate.profile import profile_yaml

    text = profile_yaml(profile)  # rendered before anything is written
    if raws is not None:
        write_atomic(Path(a.raw or Path(a.out).with_suffix(".raw.json")), json.dumps(raws, indent=1))
    write_atomic(Path(a.out), text)


def _print_profile(profile: GPUProfile) -> None:
    print(f"profile: {profile.describe()}")
    for tp, e in sorted(profile.efficiency.items()):
        print(f"  TP{tp}: prefill {min(e.prefill.values()):.2f}–{max(e.prefill.values()):.2f} of peak; decode weight "
              f"reads {min(e.decode_weights.values()):.2f}–{max(e.decode_weights.values()):.2f}, KV reads "
              f"{min(e.decode_kv.values()):.2f}–{max(e.decode_kv.values()):.2f} of HBM bandwidth")
        if e.prefill_boost:
            slow = [e.prefill_boost[t] / e.prefill[t] - 1 for t in e.prefill_boost if t in e.prefill]
            print(f"    prefill from idle (boost clocks) {min(e.prefill_boost.values()):.2f}–"
                  f"{max(e.prefill_boost.values()):.2f} of peak: back-to-back at the power cap is "
                  f"{min(slow):.0%}–{max(slow):.0%} slower")
    ic = profile.interconnect
    print(f"  all-reduce: {ic.bw_gbps:g} GB/s per direction, {ic.latency_us:g} µs per call ({ic.kind})")
    if profile.provenance.residuals:
        print("  residuals: " + ", ".join(f"{k} {v:+.1%}" if k.endswith(("max", "rms", "median", "mean", "p90_abs"))
                                          and "running" not in k else f"{k} {v:.4g}"
                                          for k, v in profile.provenance.residuals.items()))


def from_run(a: argparse.Namespace) -> GPUProfile:
    """Fit a finished run's GPU profile factors (see `pdlab.calibrate.fromrun`)."""
    from pdlab.analysis.results import load_run
    from pdlab.calibrate.fromrun import (
        deployment_of,
        fit,
        observed_requests,
        replay,
        running_batch,
        scraped_running,
    )
    from pdlab.experiment.loader import experiment_from_dict

    run = load_run(a.from_run)
    if not run.complete:
        why = (run.incomplete or {}).get("reason", "no summary.json")
        raise PdlabError(f"{a.from_run}: the run is incomplete ({why}); --from-run needs a finished run — re-run it")
    running = scraped_running(run.server_metrics) if len(run.server_metrics) else None
    if running is None or running.empty:
        raise PdlabError(f"{a.from_run}: no server metrics (server_metrics.parquet has no sglang:num_running_reqs); "
                         "--from-run needs the workers' /metrics: run with metrics enabled")
    exp = experiment_from_dict(run.params, source=str(Path(a.from_run) / "params.yaml"))
    scale = exp.emulator.time_scale if exp.backend.engine == "emulator" else 1.0
    observed = observed_requests(run.requests, scale)
    if not observed:
        raise PdlabError(f"{a.from_run}: no completed requests to fit")
    from pdlab.experiment.profiles import gpu

    deployment = deployment_of(exp, gpu(a.base) if a.base else None)
    result = fit(observed, deployment, fit_overhead=a.fit_overhead)
    timings = replay(observed, deployment, result.profile)
    times = [t / scale for t in running.index]
    replayed = running_batch(timings, times)
    res = dict(result.residuals)
    res["request_overhead_ms"] = result.request_overhead_ms
    res["running_batch_scraped_mean"] = float(running.mean())
    res["running_batch_replay_mean"] = sum(replayed) / max(len(replayed), 1)
    base = deployment.config.gpu
    prov = Provenance(kind="fitted", summary=f"{base.name} fitted to run {run.name}: prefill ×{result.prefill:.3f}, "
                      f"decode ×{result.decode:.3f}, step overhead {result.step_overhead_ms:.2f} ms, "
                      f"per-request TTFT overhead {result.request_overhead_ms:.1f} ms (not modelled) "
                      f"({len(observed)} requests); started from: {base.describe()}",
                      gpu_name=base.provenance.gpu_name or base.name, date=run.provenance.get("started_at"),
                      command=" ".join(["pdlab", "calibrate", *map(shlex.quote, sys.argv[2:])]),
                      model=exp.model.name, raw=str(a.from_run), residuals={k: round(v, 4) for k, v in res.items()})
    return result.profile.model_copy(update=dict(name=a.name or f"{base.name}-fitted", provenance=prov,
                                                 model=exp.model.name))


def run(a: argparse.Namespace) -> int:
    """Entry point of `pdlab calibrate` (see the module docstring)."""
    from pdlab.calibrate.profile import calibrated_profile
    from pdlab.experiment.loader import load_experiment

    if a.from_run and a.from_raw:
        raise SpecError("use one of --from-run and --from-raw", field="--from-run")
    if a.from_run:
        profile = from_run(a)
        _write_outputs(a, profile, None)
        _print_profile(profile)
        print(f"wrote {a.out}")
        return 0
    exp = load_experiment(a.params) if a.params else None
    command = " ".join(["pdlab", "calibrate", *map(shlex.quote, sys.argv[2:])])
    if a.from_raw:
        try:
            raws = json.loads(Path(a.from_raw).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"cannot read raw measurements: {e}", file=a.from_raw) from None
        raws = raws if isinstance(raws, list) else [raws]
        raw_path: str | None = a.from_raw
    else:
        shape = _model(a, exp)
        tps = a.tp or (sorted({r.tp for r in _roles(exp)}) if exp is not None else [1, 2])
        if a.backend == "k8s":
            if exp is None:
                raise SpecError("--backend k8s needs a params file (its image, namespace and cluster)", field="params")
            from pdlab.calibrate.k8s_job import measure_k8s

            raws = measure_k8s(exp, shape, tps, quick=a.quick)
        else:
            raws = measure_local(shape, tps, device=a.device, quick=a.quick, kernels=a.kernels, command=command)
        raw_path = str(a.raw or Path(a.out).with_suffix(".raw.json"))
    try:
        profile = calibrated_profile(raws, name=a.name, base=a.base, command=command, raw_path=raw_path)
    except (ValueError, KeyError, TypeError) as e:
        raise PdlabError(f"cannot fit a profile to the measurements: {e}") from None
    _write_outputs(a, profile, None if a.from_raw else raws)
    _print_profile(profile)
    print(f"wrote {a.out}" + ("" if a.from_raw else f" and {raw_path}"))
    return 0


def _roles(exp: Any) -> list[Any]:
    from pdlab.experiment.topology import build

    return list(build(exp).roles)
