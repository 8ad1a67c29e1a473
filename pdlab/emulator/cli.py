"""`python -m pdlab.emulator`: the sglang.launch_server flags pdlab renders, plus --emu-* emulation flags.

Emulation flags: --emu-gpu NAME (GPU profile, default L20), --emu-gpu-profile PATH (a profile file written by
`pdlab calibrate`; replaces --emu-gpu), --emu-model NAME or --emu-model-config PATH (model
profile; default inferred from --model-path's last component, else its config.json), --emu-link NAME (default
erdma) or --emu-link-bw-gbps X, --emu-step-overhead-ms X (default: the GPU profile's step_overhead_ms), --emu-time-scale F (every modelled
duration × F; /metrics and meta_info report wall-clock as observed, i.e. scaled), --emu-pd-timeout-s S (PD
handoff timeout, wall seconds), --emu-kv-pool-tokens N (override the KV pool sizing), --emu-seed N.
Injected faults (see pdlab.emulator.faults): --emu-fault-error-rate F with --emu-fault-error-status 500|503,
--emu-fault-stall-at-s T with --emu-fault-stall-s S, --emu-fault-crash-after N, --emu-fault-crash-at-s T,
--emu-fault-kv-fail-rate F, --emu-fault-kv-timeout-rate F.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdlab.core.errors import PdlabError, SpecError, closest
from pdlab.emulator.engine import EngineConfig
from pdlab.emulator.faults import FaultConfig
from pdlab.emulator.worker import WorkerConfig
from pdlab.experiment.profiles import (
    LinkProfile,
    gpu,
    link,
    load_gpu_profile,
    model,
    model_for_path,
    model_from_config,
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with its message and remembers the long flags it was given (for did-you-mean)."""

    def __init__(self, *args: object, **kw: object) -> None:
        self.long_flags: list[str] = []
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def add_argument(self, *names: str, **kw: object) -> argparse.Action:  # type: ignore[override]
        self.long_flags += [n for n in names if n.startswith("--")]
        return super().add_argument(*names, **kw)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # exit 2 with argparse's message
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> _Parser:
    """The CLI parser: sglang.launch_server's flags that pdlab renders, and --emu-* flags."""
    p = _Parser(prog="python -m pdlab.emulator", allow_abbrev=False,
                description="Emulated SGLang worker (pdlab): SGLang's HTTP surface, timing from a GPU performance model.")
    a = p.add_argument
    a("--model-path", required=True)
    a("--served-model-name", default=None)
    a("--tokenizer-path", default=None)
    a("--tp", "--tp-size", dest="tp", type=int, default=1)
    a("--dp", "--dp-size", dest="dp", type=int, default=1)
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=30000)
    a("--disaggregation-mode", choices=["null", "prefill", "decode"], default="null")
    a("--disaggregation-bootstrap-port", type=int, default=8998)
    a("--disaggregation-transfer-backend", default="mooncake")
    a("--disaggregation-ib-device", default=None)
    a("--enable-metrics", action="store_true")
    a("--chunked-prefill-size", type=int, default=None)
    a("--max-running-requests", type=int, default=None)
    a("--mem-fraction-static", type=float, default=None)
    a("--context-length", type=int, default=None)
    a("--stream-interval", type=int, default=1)
    a("--max-prefill-tokens", type=int, default=16384)
    a("--disable-radix-cache", action="store_true")
    a("--page-size", type=int, default=1)
    a("--enable-cache-report", action="store_true")
    a("--disaggregation-decode-enable-radix-cache", action="store_true")
    a("--num-reserved-decode-tokens", type=int, default=512)
    a("--trust-remote-code", action="store_true")
    a("--log-level", default="warning")
    a("--emu-gpu", default="L20")
    a("--emu-gpu-profile", default=None)
    a("--emu-model", default=None)
    a("--emu-model-config", default=None)
    a("--emu-link", default="erdma")
    a("--emu-link-bw-gbps", type=float, default=None)
    a("--emu-step-overhead-ms", type=float, default=None)
    a("--emu-time-scale", type=float, default=1.0)
    a("--emu-pd-timeout-s", type=float, default=120.0)
    a("--emu-kv-pool-tokens", type=int, default=None)
    a("--emu-seed", type=int, default=0)
    a("--emu-fault-error-rate", type=float, default=0.0)
    a("--emu-fault-error-status", type=int, default=503)
    a("--emu-fault-stall-at-s", type=float, default=None)
    a("--emu-fault-stall-s", type=float, default=0.0)
    a("--emu-fault-crash-after", type=int, default=None)
    a("--emu-fault-crash-at-s", type=float, default=None)
    a("--emu-fault-kv-fail-rate", type=float, default=0.0)
    a("--emu-fault-kv-timeout-rate", type=float, default=0.0)
    return p


def parse(argv: list[str]) -> WorkerConfig:
    """Resolve CLI arguments into a WorkerConfig; unknown flags exit 2 naming the closest supported flag."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:
        bad = extra[0].split("=", 1)[0]
        hint = closest(bad, parser.long_flags)
        parser.error(f"unknown flag {bad}" + (f" (did you mean {hint}?)" if hint else "")
                     if bad.startswith("-") else f"unexpected argument {bad!r}")
    if ns.emu_model_config:
        mprof = model_from_config(ns.emu_model_config)
    elif ns.emu_model:
        mprof = model(ns.emu_model)
    else:
        try:
            mprof = model_for_path(ns.model_path)
        except SpecError as e:
            cfg = Path(ns.model_path) / "config.json"
            if not cfg.is_file():
                raise SpecError(f"{e} — pass --emu-model NAME or --emu-model-config PATH") from None
            mprof = model_from_config(cfg)
    gprof = load_gpu_profile(ns.emu_gpu_profile, mprof.name) if ns.emu_gpu_profile else gpu(ns.emu_gpu)
    lprof = link(ns.emu_link)
    if ns.emu_link_bw_gbps is not None:
        lprof = LinkProfile(name=f"{lprof.name}@{ns.emu_link_bw_gbps:g}GB/s", bw_gbps=ns.emu_link_bw_gbps,
                            latency_us=lprof.latency_us)
    chunk = ns.chunked_prefill_size
    if chunk is None:
        chunk = 4096 if gprof.memory_gb < 60 else 8192
    for name in ("tp", "port", "stream_interval", "page_size"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if ns.emu_time_scale <= 0:
        parser.error("--emu-time-scale must be > 0")
    try:
        faults = FaultConfig(
            error_rate=ns.emu_fault_error_rate, error_status=ns.emu_fault_error_status,
            stall_at_s=ns.emu_fault_stall_at_s, stall_s=ns.emu_fault_stall_s, crash_after=ns.emu_fault_crash_after,
            crash_at_s=ns.emu_fault_crash_at_s, kv_fail_rate=ns.emu_fault_kv_fail_rate,
            kv_timeout_rate=ns.emu_fault_kv_timeout_rate, seed=ns.emu_seed)
    except ValueError as e:
        parser.error(str(e))
    ecfg = EngineConfig(
        model=mprof, gpu=gprof, tp=ns.tp, mode=ns.disaggregation_mode, chunked_prefill_size=chunk,
        max_prefill_tokens=ns.max_prefill_tokens, max_running_requests=ns.max_running_requests or 2048,
        mem_fraction_static=ns.mem_fraction_static or 0.88, context_length=ns.context_length,
        step_overhead_s=None if ns.emu_step_overhead_ms is None else ns.emu_step_overhead_ms / 1e3,
        kv_pool_tokens=ns.emu_kv_pool_tokens, link=lprof,
        radix_cache=not ns.disable_radix_cache and (ns.disaggregation_mode != "decode"
                                                    or ns.disaggregation_decode_enable_radix_cache),
        page_size=ns.page_size,
    )
    if ecfg.kv_pool_tokens <= 0:
        raise PdlabError(f"{mprof.name} does not fit on {ns.tp}× {gprof.name} at --mem-fraction-static "
                         f"{ecfg.mem_fraction_static}: no memory left for the KV cache (raise --tp)")
    return WorkerConfig(
        engine=ecfg, model_path=ns.model_path, served_model_name=ns.served_model_name or ns.model_path,
        host=ns.host, port=ns.port, bootstrap_port=ns.disaggregation_bootstrap_port,
        transfer_backend=ns.disaggregation_transfer_backend, enable_metrics=ns.enable_metrics,
        stream_interval=ns.stream_interval, time_scale=ns.emu_time_scale, pd_timeout_s=ns.emu_pd_timeout_s,
        seed=ns.emu_seed, server_args={k: v for k, v in vars(ns).items() if not k.startswith("emu_")},
        enable_cache_report=ns.enable_cache_report, faults=faults,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve until interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse(argv)
    except PdlabError as e:
        print(f"python -m pdlab.emulator: error: {e}", file=sys.stderr)
        return 2
    from pdlab.emulator.server import serve

    log_level = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--log-level"), "warning")
    serve(cfg, log_level=log_level.lower())
    return 0
