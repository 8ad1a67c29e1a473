"""Worker and router argument lists: one code path for the k8s manifests and the local processes.

The manifests run `python3 -m sglang.launch_server ARGS`; the local backend runs
`python -m pdlab.emulator ARGS` (or the real sglang where installed) with the *same* ARGS, only the
host/port values differ. User values are list items, never parts of a shell string.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pdlab.experiment.flags import WORKER_FLAGS

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment
    from pdlab.experiment.topology import Role

SGLANG_SERVER = ["python3", "-m", "sglang.launch_server"]
SGLANG_ROUTER = ["python3", "-m", "sglang_router.launch_router"]
MINI_LB = ["python3", "-m", "sglang.srt.disaggregation.mini_lb"]


def flag_args(args: dict[str, Any]) -> list[str]:
    """{'chunked-prefill-size': 8192, 'enable-x': True, 'skip': False} → ['--chunked-prefill-size', '8192', '--enable-x']."""
    out: list[str] = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        out.append(f"--{key}")
        if value is True:
            continue
        if isinstance(value, list | tuple):
            out.extend(str(v) for v in value)
        else:
            out.append(str(value))
    return out


def worker_args(exp: Experiment, role: Role, *, host: str, port: int,
                bootstrap_port: int | None = None) -> list[str]:
    """The sglang.launch_server arguments of one worker of `role` (without the interpreter/module)."""
    args = ["--model-path", exp.model.path]
    if exp.model.name != PurePosixPath(exp.model.path.rstrip("/")).name:
        args += ["--served-model-name", exp.model.name]
    args += ["--tp", str(role.tp)]
    if role.mode in ("prefill", "decode"):
        args += ["--disaggregation-mode", role.mode]
        if role.mode == "prefill":
            args += ["--disaggregation-bootstrap-port", str(bootstrap_port or exp.topology.bootstrap_port)]
        backend = getattr(exp.topology, "transfer_backend", None)
        if backend:
            args += ["--disaggregation-transfer-backend", backend]
        ib = getattr(exp.topology, "ib_device", None)
        if ib:
            args += ["--disaggregation-ib-device", ib]
    args += ["--port", str(port), "--host", host, "--enable-metrics"]
    extra = {k: v for k, v in role.args.items() if k not in _RESERVED}
    return args + flag_args(extra)


_RESERVED = set(WORKER_FLAGS)  # the spec refuses these in engine args (pdlab.experiment.flags)
RESERVED_FLAGS = frozenset(_RESERVED)


def router_args(exp: Experiment, *, prefill: list[tuple[str, int]] | None = None, decode: list[str] | None = None,
                workers: list[str] | None = None, host: str = "0.0.0.0", port: int = 8000,
                extra: dict[str, Any] | None = None) -> list[str]:
    """The router's arguments: PD (prefill URL + bootstrap port pairs, decode URLs) or colocated worker URLs.

    Returns the full command including the module (sglang_router or mini_lb), without the interpreter.
    """
    router = exp.topology.router
    if exp.topology.kind == "pd":
        if router.impl == "mini_lb":
            cmd = MINI_LB[1:] + ["--prefill", *[u for u, _ in prefill or []],
                                 "--prefill-bootstrap-ports", *[str(b) for _, b in prefill or []],
                                 "--decode", *(decode or [])]
        else:
            cmd = SGLANG_ROUTER[1:] + ["--pd-disaggregation"]
            for url, bport in prefill or []:
                cmd += ["--prefill", url, str(bport)]
            for url in decode or []:
                cmd += ["--decode", url]
    else:
        cmd = SGLANG_ROUTER[1:] + ["--worker-urls", *(workers or [])]
    if router.impl != "mini_lb":
        cmd += flag_args({"policy": router.policy, "prefill-policy": router.prefill_policy,
                          "decode-policy": router.decode_policy, "cache-threshold": router.cache_threshold,
                          "balance-abs-threshold": router.balance_abs_threshold,
                          "balance-rel-threshold": router.balance_rel_threshold})
    cmd += ["--host", host, "--port", str(port)]
    return cmd + flag_args({**router.args, **(extra or {})})


def fault_args(exp: Experiment, role: str) -> list[str]:
    """The `--emu-fault-*` flags of a role's `faults` params section (empty when it has none)."""
    spec = getattr(exp.topology, role, None)
    faults = getattr(spec, "faults", None)
    if faults is None:
        return []
    defaults = type(faults)()
    return flag_args({f"emu-fault-{k.replace('_', '-')}": v for k, v in faults.model_dump().items()
                      if v != getattr(defaults, k)})


def emulator_args(exp: Experiment, role: str | None = None) -> list[str]:
    """The `--emu-*` flags that make `python -m pdlab.emulator` model this experiment (GPU, link, step
    overhead, time scale, model profile, and `role`'s injected faults); appended to `worker_args` by the local
    backend and, on an emulated cluster only, carried to the fake kubelet by the k8s backend."""
    from pathlib import Path

    out = ["--emu-gpu", exp.gpu.type, "--emu-link", exp.emulator.link,
           "--emu-time-scale", str(exp.emulator.time_scale)]
    if exp.gpu.profile:
        out += ["--emu-gpu-profile", str(Path(exp.gpu.profile).resolve())]
    if exp.emulator.step_overhead_ms is not None:
        out += ["--emu-step-overhead-ms", str(exp.emulator.step_overhead_ms)]
    if exp.model.config:
        out += ["--emu-model-config", str(Path(exp.model.config).resolve())]
    elif exp.model.profile:
        out += ["--emu-model", exp.model.profile]
    return out + (fault_args(exp, role) if role else [])
