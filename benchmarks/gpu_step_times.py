"""Measure real GPU forward-step times of a model's layer shapes and compare them with pdlab's perf model.

Two halves, so the GPU half needs only PyTorch (no pdlab install on the GPU machine):

    # on a machine with a CUDA GPU and PyTorch: writes measured step times as JSON
    python3 benchmarks/gpu_step_times.py measure --model Qwen3-32B --tp 2 --out h100-qwen3-32b-tp2.json
    # anywhere pdlab is installed: predicted (perf model, all-reduce left out) vs measured
    python benchmarks/gpu_step_times.py compare --gpu H100 h100-*.json

What is measured: one TP shard of the model (heads, KV heads and intermediate divided by TP; no
all-reduce), BF16, `--layers` decoder layers (RMSNorm, fused QKV, SDPA attention with GQA, O proj,
SwiGLU MLP) timed with CUDA events and scaled to the model's layer count, plus the LM head on the last
token of each sequence. Prefill: one sequence of N tokens. Decode: a batch of B sequences with C tokens
of KV each, replayed as a CUDA graph as SGLang does. `compare` prints measured ÷ predicted and the
efficiency each measurement implies, i.e. the numbers a calibration of `pdlab/experiment/profiles/gpus.yaml` uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFILL_TOKENS = [256, 1024, 2048, 4096, 8192]
DECODE_BATCHES = [1, 16, 64, 128]
DECODE_CONTEXTS = [1024, 4096]


def _model_shape(name: str) -> dict:
    import yaml

    table = yaml.safe_load((ROOT / "pdlab" / "profiles" / "models.yaml").read_text())
    for key, value in table.items():
        if key.lower() == name.lower():
            return {"name": key, **value}
    raise SystemExit(f"unknown model {name}; known: {', '.join(table)}")


def measure(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    assert torch.cuda.is_available(), "measure needs a CUDA GPU"
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    m = _model_shape(args.model)
    tp = args.tp
    h, hd = m["hidden_size"], m["head_dim"]
    nh, nkv, inter = m["num_attention_heads"] // tp, max(1, m["num_key_value_heads"] // tp), m["intermediate_size"] // tp
    L = args.layers

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=dev, dtype=dt) * 0.02

    layers = [dict(qkv=w(h, (nh + 2 * nkv) * hd), o=w(nh * hd, h), gu=w(h, 2 * inter), d=w(inter, h),
                   n1=torch.ones(h, device=dev, dtype=dt), n2=torch.ones(h, device=dev, dtype=dt)) for _ in range(L)]
    lm_head = w(h, m["vocab_size"] // tp)

    def rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * g

    def mlp(x: torch.Tensor, p: dict) -> torch.Tensor:
        gate, up = (rms(x, p["n2"]) @ p["gu"]).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ p["d"]

    def prefill(x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        for p in layers:
            q, k, v = (rms(x, p["n1"]) @ p["qkv"]).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q = q.view(1, T, nh, hd).transpose(1, 2)
            k = k.view(1, T, nkv, hd).transpose(1, 2)
            v = v.view(1, T, nkv, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + a.transpose(1, 2).reshape(T, nh * hd) @ p["o"]
            x = mlp(x, p)
        return x[-1:] @ lm_head

    def timed(fn, reps: int = args.reps) -> float:
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1000)
        return statistics.median(times)

    def lm_time(rows: int) -> float:
        x = w(rows, h)
        return timed(lambda: x @ lm_head)

    scale = m["num_hidden_layers"] / L
    rows = []
    with torch.inference_mode():
        for T in args.prefill or PREFILL_TOKENS:
            x = w(T, h)
            t_layers = timed(lambda x=x: prefill(x)) - lm_time(1)
            rows.append({"phase": "prefill", "tokens": T, "context": 0, "batch": 1,
                         "seconds": t_layers * scale + lm_time(1)})
            print(f"prefill {T:>6} tokens: {rows[-1]['seconds'] * 1e3:8.2f} ms", flush=True)
        for C in args.context or DECODE_CONTEXTS:
            for B in args.batch or DECODE_BATCHES:
                kc = [w(B, nkv, C, hd) for _ in range(L)]
                vc = [w(B, nkv, C, hd) for _ in range(L)]
                x = w(B, h)

                def decode(x: torch.Tensor = x, kc: list = kc, vc: list = vc, B: int = B) -> torch.Tensor:
                    for i, p in enumerate(layers):
                        q, k, v = (rms(x, p["n1"]) @ p["qkv"]).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
                        # the new token's K/V are written into the cache's last slot (cache length C)
                        kc[i][:, :, -1] = k.view(B, nkv, hd)
                        vc[i][:, :, -1] = v.view(B, nkv, hd)
                        a = F.scaled_dot_product_attention(q.view(B, nh, 1, hd), kc[i], vc[i], enable_gqa=True)
                        x = x + a.reshape(B, nh * hd) @ p["o"]
                        x = mlp(x, p)
                    return x @ lm_head

                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    decode()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    decode()
                t_all = timed(graph.replay)
                t_lm = lm_time(B)
                rows.append({"phase": "decode", "tokens": B, "context": C, "batch": B,
                             "seconds": (t_all - t_lm) * scale + t_lm})
                print(f"decode batch {B:>4} ctx {C:>5}: {rows[-1]['seconds'] * 1e3:8.2f} ms", flush=True)
                del kc, vc, graph
                torch.cuda.empty_cache()
    out = {"model": m["name"], "tp": tp, "gpu_name": torch.cuda.get_device_name(), "torch": torch.__version__,
           "layers_measured": L, "dtype": "bf16", "allreduce": False, "measured_at": time.strftime("%Y-%m-%d"),
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def compare(args: argparse.Namespace) -> None:
    from pdlab.emulator.perfmodel import flops_per_step, step_time
    from pdlab.experiment.profiles import gpu as gpu_profile
    from pdlab.experiment.profiles import model as model_profile

    g = gpu_profile(args.gpu)
    print(f"{'file':<28} {'phase':<8} {'tok/batch':>9} {'ctx':>6} {'measured ms':>12} {'predicted ms':>13} "
          f"{'ratio':>6} {'implied eff':>11}")
    for f in args.files:
        data = json.loads(Path(f).read_text())
        m, tp = model_profile(data["model"]), data["tp"]
        for r in data["rows"]:
            if r["phase"] == "prefill":
                pre, dec = [(r["tokens"], 0)], []
            else:
                pre, dec = [], [r["context"]] * r["batch"]
            cost = step_time(m, g, tp, prefill=pre, decode=dec, overhead_s=0.0, allreduce=False)
            measured = r["seconds"]
            if r["phase"] == "prefill":  # fraction of dense BF16 peak the measurement reached
                implied = flops_per_step(m, pre, dec) / tp / measured / (g.bf16_tflops * 1e12)
            else:  # fraction of HBM bandwidth the measurement reached
                implied = cost.bytes / measured / (g.mem_bw_gbps * 1e9)
            print(f"{Path(f).name[:28]:<28} {r['phase']:<8} {r['tokens']:>9} {r['context']:>6} "
                  f"{measured * 1e3:>12.2f} {cost.total_s * 1e3:>13.2f} {measured / cost.total_s:>6.2f} "
                  f"{implied:>11.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("measure", help="time forward steps on this machine's GPU (needs torch + CUDA)")
    p.add_argument("--model", default="Qwen3-32B")
    p.add_argument("--tp", type=int, default=2, help="shard the layers as one rank of this TP size")
    p.add_argument("--layers", type=int, default=8, help="layers actually run (scaled to the model's count)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--prefill", type=int, nargs="*")
    p.add_argument("--batch", type=int, nargs="*")
    p.add_argument("--context", type=int, nargs="*")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=measure)
    p = sub.add_parser("compare", help="perf-model predictions vs measured JSON files")
    p.add_argument("--gpu", default="H100")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=compare)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main(sys.argv[1:])
