"""Build a calibrated GPU profile from raw measurements and write it as YAML (with provenance and the raw data)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pdlab.calibrate.fit import fit_allreduce, fit_tp, model_of, predict
from pdlab.core.fsutil import write_atomic
from pdlab.experiment.profiles import GPUProfile, Provenance, gpus


def base_profile(gpu_name: str, base: str | None = None) -> GPUProfile:
    """The built-in profile whose datasheet peaks a measurement is expressed against (by name, or --base)."""
    table = gpus()
    if base:
        for key, prof in table.items():
            if key.lower() == base.lower():
                return prof
        raise ValueError(f"unknown --base GPU profile '{base}'; known: {', '.join(table)}")
    words = gpu_name.upper().replace("-", " ").split()
    for key, prof in table.items():
        if key.upper() in words:
            return prof
    raise ValueError(f"no built-in GPU profile matches '{gpu_name}': pass --base NAME (one of {', '.join(table)}) "
                     "for its datasheet bandwidth and peak FLOP/s")


def calibrated_profile(raws: list[dict], *, name: str | None = None, base: str | None = None,
                       command: str = "", raw_path: str | None = None) -> GPUProfile:
    """A GPU profile fitted to raw measurements of one model on one GPU type (one document per TP size)."""
    if not raws:
        raise ValueError("no measurements to fit")
    env = raws[0].get("environment", {})
    gpu_name = env.get("gpu_name") or "unknown GPU"
    ref = base_profile(gpu_name, base)
    models = {r.get("model") for r in raws}
    if len(models) > 1:
        raise ValueError(f"measurements of several models ({', '.join(map(str, models))}) cannot make one profile")
    efficiency, residuals = {}, {}
    interconnect = ref.interconnect
    for raw in raws:
        eff, res = fit_tp(raw, ref)
        efficiency[int(raw["tp"])] = eff
        residuals.update(res)
        measured = fit_allreduce(raw, ref.interconnect.kind)
        if measured is not None:
            interconnect = measured
    memory = env.get("gpu_memory_bytes")
    kernels = {r.get("kernels", "eager") for r in raws}
    prov = Provenance(kind="calibrated",
                      summary=f"measured with PyTorch CUDA graphs on TP {', '.join(str(t) for t in sorted(efficiency))}"
                      + ("; elementwise steps fused by torch.compile" if kernels == {"fused"} else "; eager kernels")
                      + ("; prefill also from idle (boost clocks)" if any(e.prefill_boost for e in efficiency.values())
                         else "")
                      + (f"; all-reduce measured ({interconnect.kind.split('(')[-1].split(',')[0]})"
                         if interconnect is not ref.interconnect else "; all-reduce from the datasheet (one GPU)"),
                      gpu_name=gpu_name, driver=env.get("driver"), torch=env.get("torch"),
                      date=env.get("measured_at"), command=command or raws[0].get("command"),
                      model=raws[0].get("model") or None, raw=raw_path, residuals={})
    prof = ref.model_copy(update=dict(
        name=name or ref.name, memory_gb=round(memory / 2**30, 2) if memory else ref.memory_gb,
        memory_unit="GiB" if memory else ref.memory_unit, interconnect=interconnect, efficiency=efficiency,
        step_overhead_ms=0.0, model=raws[0].get("model") or None, provenance=prov,
        sources=[f"datasheet peaks and bandwidth: {s}" for s in ref.sources[:1]]))
    # residuals of the whole model against every measured row, all-reduce rows included
    for raw in raws:
        m, tp = model_of(raw), int(raw["tp"])
        for phase in ("prefill", "decode"):
            rel = [predict(m, prof, r, tp) / r["seconds"] - 1 for r in raw["rows"] if r["phase"] == phase]
            if rel:
                residuals[f"tp{tp}_{phase}_model_max"] = max(abs(x) for x in rel)
    prov.residuals = {k: round(v, 4) for k, v in sorted(residuals.items())}
    return prof


def profile_yaml(profile: GPUProfile) -> str:
    """The YAML text of a profile file: a 'gpu' section that `gpu.profile: PATH` loads."""
    data = profile.model_dump(mode="json", exclude_none=True)
    data["efficiency"] = {int(k): v for k, v in data["efficiency"].items()}
    tables = [(data["interconnect"], ("allreduce_us", "allreduce_decode_us"))]
    tables += [(eff, ("prefill", "prefill_boost", "decode_weights", "decode_kv")) for eff in data["efficiency"].values()]
    for section, keys in tables:  # JSON mode made the size keys strings: back to ints; empty tables left out
        for key in keys:
            if section.get(key):
                section[key] = {int(k): v for k, v in section[key].items()}
            else:
                section.pop(key, None)
    head = ("# GPU profile written by `pdlab calibrate`. Load it with `gpu.profile: PATH` in an experiment file\n"
            "# or `--emu-gpu-profile PATH` on an emulated worker. Efficiencies are fractions of the datasheet\n"
            "# peaks below, measured without the all-reduce; see pdlab/emulator/perfmodel.py for the model.\n")
    return head + yaml.safe_dump({"gpu": data}, sort_keys=False, width=110)


def write_profile(path: str | Path, profile: GPUProfile) -> None:
    """Write a profile file atomically (nothing half-written)."""
    write_atomic(Path(path), profile_yaml(profile))
