"""Time one TP rank's forward steps of a model's layer shapes on this machine's GPU (PyTorch only).

Standalone on purpose: it imports nothing from pdlab, so `pdlab calibrate --backend k8s` can ship this
file into a Job running the experiment's SGLang image (which carries torch) and run it there as
``python3 measure.py --shape shape.json --out raw.json``. Random BF16 weights, nothing downloaded.

What it times (one TP shard: heads, KV heads, intermediate and vocab divided by TP; ``--layers``
decoder layers run and scaled to the model's depth, the LM head added once):
- prefill of one sequence of N tokens, captured in a CUDA graph (GPU time, no Python launch gaps);
- decode of a batch of B sequences with C tokens of KV each, captured in a CUDA graph as SGLang does;
- with more than one GPU and ``--tp`` > 1: each step again with the two all-reduces per layer through
  NCCL (one process per GPU), and an all-reduce sweep by message size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

FORMAT = "pdlab-calibration-raw/1"
PREFILL_TOKENS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
DECODE_CONTEXTS = [1024, 2048, 4096, 8192]
ALLREDUCE_TOKENS = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Shard:
    """One TP rank's decoder layers (random weights) and the two forward functions SGLang runs."""

    def __init__(self, shape: dict, tp: int, layers: int, device: Any, allreduce_group: Any = None) -> None:
        import torch

        self.torch = torch
        dt = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.dtype, self.device, self.tp, self.group = dt, device, tp, allreduce_group
        h, hd = shape["hidden_size"], shape["head_dim"]
        self.h, self.hd = h, hd
        self.nh = max(1, shape["num_attention_heads"] // tp)
        self.nkv = max(1, shape["num_key_value_heads"] // tp)
        inter = max(1, shape["intermediate_size"] // tp)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.layers = [dict(qkv=self.rand(h, (self.nh + 2 * self.nkv) * hd), o=self.rand(self.nh * hd, h),
                            gu=self.rand(h, 2 * inter), d=self.rand(inter, h),
                            n1=torch.ones(h, device=device, dtype=dt), n2=torch.ones(h, device=device, dtype=dt))
                       for _ in range(layers)]
        self.lm_head = self.rand(h, max(1, shape["vocab_size"] // tp))

    def rand(self, *size: int) -> Any:
        """Random tensor of the shard's dtype on its device (std 0.02, like initialised weights)."""
        return self.torch.randn(*size, device=self.device, dtype=self.dtype, generator=self.gen) * 0.02

    def _rms(self, x: Any, g: Any) -> Any:
        return self.torch.nn.functional.rms_norm(x, (self.h,), g, 1e-6)

    def _reduce(self, x: Any, allreduce: bool) -> Any:
        if allreduce:
            self.torch.distributed.all_reduce(x, group=self.group)
        return x

    def _mlp(self, x: Any, p: dict, allreduce: bool) -> Any:
        gate, up = (self._rms(x, p["n2"]) @ p["gu"]).chunk(2, dim=-1)
        return x + self._reduce((self.torch.nn.functional.silu(gate) * up) @ p["d"], allreduce)

    def prefill(self, x: Any, allreduce: bool = False) -> Any:
        """One sequence of x.shape[0] new tokens: causal attention, logits of the last token."""
        F = self.torch.nn.functional
        T, nh, nkv, hd = x.shape[0], self.nh, self.nkv, self.hd
        for p in self.layers:
            q, k, v = (self._rms(x, p["n1"]) @ p["qkv"]).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q = q.view(1, T, nh, hd).transpose(1, 2)
            k = k.view(1, T, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
            v = v.view(1, T, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self._reduce(a.transpose(1, 2).reshape(T, nh * hd) @ p["o"], allreduce)
            x = self._mlp(x, p, allreduce)
        return x[-1:] @ self.lm_head

    def decode(self, x: Any, k_cache: list, v_cache: list, allreduce: bool = False, attention: str = "sdpa") -> Any:
        """One new token for each of x.shape[0] sequences against KV caches of shape (B, kv_heads, C, head_dim).

        GQA: each KV head is read once for its group of query heads. attention="sdpa" runs fused
        attention (fast at large batch, but no split over the context), "gemv" two batched GEMVs that
        spread a long context over the whole GPU (fast at small batch); a split-KV decode kernel such as
        FlashInfer's does about as well as the faster of the two.
        """
        B, nh, nkv, hd = x.shape[0], self.nh, self.nkv, self.hd
        group = nh // nkv
        for i, p in enumerate(self.layers):
            q, k, v = (self._rms(x, p["n1"]) @ p["qkv"]).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            k_cache[i][:, :, -1] = k.view(B, nkv, hd)
            v_cache[i][:, :, -1] = v.view(B, nkv, hd)
            q = q.view(B, nkv, group, hd)
            if attention == "sdpa":
                a = self.torch.nn.functional.scaled_dot_product_attention(q, k_cache[i], v_cache[i])
            else:
                s = self.torch.matmul(q, k_cache[i].transpose(-1, -2)) * hd**-0.5
                a = self.torch.matmul(self.torch.softmax(s, dim=-1), v_cache[i])
            x = x + self._reduce(a.reshape(B, nh * hd) @ p["o"], allreduce)
            x = self._mlp(x, p, allreduce)
        return x @ self.lm_head


def _timer(device: Any, reps: int) -> Callable[[Callable[[], Any]], float]:
    """Median seconds of fn() after warm-up: CUDA events on a GPU, perf_counter on CPU."""
    import torch

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(2):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return timed


def _graphed(device: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn captured in a CUDA graph (replayed as one launch), or fn itself off a GPU."""
    import torch

    if device.type != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_rank(shape: dict, tp: int, *, layers: int, reps: int, prefill_tokens: list[int], batches: list[int],
                 contexts: list[int], device: Any, with_allreduce: bool, rank: int = 0,
                 kv_budget_bytes: float | None = None) -> list[dict]:
    """Rows of measured step times (seconds, scaled to the model's depth) for one rank's shard."""
    import torch

    shard = Shard(shape, tp, layers, device)
    timed = _timer(device, reps)
    scale = shape["num_hidden_layers"] / layers
    variants = [False, True] if with_allreduce else [False]
    rows: list[dict] = []

    def add(phase: str, tokens: int, context: int, batch: int, ar: bool, total: float, head: float,
            **extra: Any) -> None:
        rows.append(dict(phase=phase, tokens=tokens, context=context, batch=batch, allreduce=ar,
                         seconds=(total - head) * scale + head, **extra))
        if rank == 0:
            _log(f"tp{tp} {phase:<7} tokens={tokens:>6} context={context:>5} allreduce={int(ar)} "
                 f"{rows[-1]['seconds'] * 1e3:9.2f} ms")

    with torch.inference_mode():
        for T in prefill_tokens:
            x, last = shard.rand(T, shard.h), shard.rand(1, shard.h)
            head = timed(_graphed(device, lambda last=last: last @ shard.lm_head))
            for ar in variants:
                add("prefill", T, 0, 1, ar, timed(_graphed(device, lambda x=x, ar=ar: shard.prefill(x, ar))), head)
            del x
        for C in contexts:
            for B in batches:
                kv_bytes = 2 * layers * B * shard.nkv * C * shard.hd * shard.dtype.itemsize
                if kv_budget_bytes is not None and kv_bytes > kv_budget_bytes:
                    if rank == 0:
                        _log(f"skip decode batch={B} context={C}: {kv_bytes / 2**30:.1f} GiB of KV does not fit")
                    continue
                kc = [shard.rand(B, shard.nkv, C, shard.hd) for _ in range(layers)]
                vc = [shard.rand(B, shard.nkv, C, shard.hd) for _ in range(layers)]
                x, xh = shard.rand(B, shard.h), shard.rand(B, shard.h)
                head = timed(_graphed(device, lambda xh=xh: xh @ shard.lm_head))
                for ar in variants:
                    by_kernel = {}
                    for attn in ("sdpa", "gemv"):
                        step = _graphed(device, lambda x=x, kc=kc, vc=vc, ar=ar, attn=attn:
                                        shard.decode(x, kc, vc, ar, attn))
                        by_kernel[attn] = timed(step)
                        del step
                    best = min(by_kernel, key=by_kernel.__getitem__)
                    add("decode", B, C, B, ar, by_kernel[best], head, attention=best,
                        **{f"seconds_{k}": (t - head) * scale + head for k, t in by_kernel.items()})
                del kc, vc
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def allreduce_sweep(hidden: int, reps: int, device: Any, tokens_list: list[int]) -> list[dict]:
    """Seconds per NCCL all-reduce of tokens × hidden BF16 values (20 calls in one CUDA graph)."""
    import torch

    timed = _timer(device, reps)
    rows = []
    for tokens in tokens_list:
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
        n = 20
        fn = _graphed(device, lambda x=x, n=n: [torch.distributed.all_reduce(x) for _ in range(n)])
        rows.append(dict(tokens=tokens, bytes=tokens * hidden * 2, seconds=timed(fn) / n))
    return rows


def environment(device_type: str = "cuda") -> dict:
    """Provenance of a measurement: GPU, driver, torch/CUDA/NCCL versions, host, date."""
    import torch

    env: dict[str, Any] = dict(torch=torch.__version__, cuda=torch.version.cuda, python=sys.version.split()[0],
                               host=os.uname().nodename,
                               measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if device_type == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu_name=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=p.total_memory,
                   sm_count=p.multi_processor_count, nccl=".".join(map(str, torch.cuda.nccl.version())))
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
            env["driver"] = out[0] if out else None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env.update(gpu_name="cpu", gpu_count=0)
    return env


def _worker(rank: int, world: int, cfg: dict, result_path: str) -> None:
    import torch

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank,
                                         world_size=world, device_id=dev)
    try:
        sweep = allreduce_sweep(cfg["shape"]["hidden_size"], cfg["reps"], dev, ALLREDUCE_TOKENS)
        rows = measure_rank(cfg["shape"], world, layers=cfg["layers"], reps=cfg["reps"],
                            prefill_tokens=cfg["prefill"], batches=cfg["batches"], contexts=cfg["contexts"],
                            device=dev, with_allreduce=True, rank=rank, kv_budget_bytes=cfg["kv_budget"])
        if rank == 0:
            with open(result_path, "w") as f:
                json.dump(dict(rows=rows, allreduce=sweep), f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(shape: dict, tp: int, *, layers: int = 8, reps: int = 15, prefill_tokens: list[int] | None = None,
            batches: list[int] | None = None, contexts: list[int] | None = None, device: str = "cuda",
            model: str = "") -> dict:
    """All measurements for one model at one TP size, as the raw JSON document `pdlab calibrate` keeps."""
    import torch

    missing = [k for k in SHAPE_KEYS if k not in shape]
    if missing:
        raise ValueError(f"model shape lacks {', '.join(missing)}")
    dev = torch.device(device)
    prefill_tokens = prefill_tokens or PREFILL_TOKENS
    batches, contexts = batches or DECODE_BATCHES, contexts or DECODE_CONTEXTS
    kv_budget = None
    if dev.type == "cuda":
        weights = 2 * layers * (shape["hidden_size"] * (shape["num_attention_heads"] * 2
                                + shape["num_key_value_heads"] * 2) * shape["head_dim"]
                                + 3 * shape["hidden_size"] * shape["intermediate_size"]) / tp
        kv_budget = 0.6 * torch.cuda.get_device_properties(dev).total_memory - weights
    doc: dict[str, Any] = dict(format=FORMAT, model=model, shape={k: shape[k] for k in SHAPE_KEYS}, tp=tp,
                               layers_measured=layers, dtype="bf16" if dev.type == "cuda" else "fp32",
                               reps=reps, environment=environment(dev.type), command=" ".join(sys.argv))
    multi = dev.type == "cuda" and tp > 1 and torch.cuda.device_count() >= tp
    if multi:
        import tempfile

        import torch.multiprocessing as mp

        cfg = dict(shape=shape, layers=layers, reps=reps, prefill=prefill_tokens, batches=batches,
                   contexts=contexts, kv_budget=kv_budget, port=_free_port())
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "rank0.json")
            mp.spawn(_worker, args=(tp, cfg, path), nprocs=tp)
            with open(path) as f:
                got = json.load(f)
        doc.update(rows=got["rows"], allreduce=got["allreduce"], allreduce_measured=True)
    else:
        doc["rows"] = measure_rank(shape, tp, layers=layers, reps=reps, prefill_tokens=prefill_tokens,
                                   batches=batches, contexts=contexts, device=dev, with_allreduce=False,
                                   kv_budget_bytes=kv_budget)
        doc.update(allreduce=[], allreduce_measured=False)
    return doc


def main(argv: list[str] | None = None) -> int:
    """Command line for running this file on its own (as the k8s Job does)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, help="JSON file with the model's config.json shape keys")
    ap.add_argument("--model", default="")
    ap.add_argument("--tp", type=int, nargs="+", default=[1])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--prefill", type=int, nargs="*")
    ap.add_argument("--batch", type=int, nargs="*")
    ap.add_argument("--context", type=int, nargs="*")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="write a JSON list of one document per TP size here")
    a = ap.parse_args(argv)
    with open(a.shape) as f:
        shape = json.load(f)
    docs = [measure(shape, tp, layers=a.layers, reps=a.reps, prefill_tokens=a.prefill, batches=a.batch,
                    contexts=a.context, device=a.device, model=a.model) for tp in a.tp]
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(docs, f, indent=1)
    os.replace(tmp, a.out)
    _log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
