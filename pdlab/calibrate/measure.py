"""Time one TP rank's forward steps of a model's layer shapes on this machine's GPU (PyTorch only).

Standalone on purpose: it imports nothing from pdlab, so `pdlab calibrate --backend k8s` can ship this
file into a Job running the experiment's SGLang image (which carries torch) and run it there as
``python3 measure.py --shape shape.json --out raw.json``. Random BF16 weights, nothing downloaded.

What it times (one TP shard: heads, KV heads, intermediate and vocab divided by TP; ``--layers``
decoder layers run and scaled to the model's depth, the LM head added once), the way SGLang runs a step:
- linear layers as ``F.linear`` on [out, in] weights (cuBLAS), the elementwise steps fused as SGLang fuses
  them (residual add + RMSNorm, SiLU × up, rotary embedding), compiled to Triton by ``torch.compile``
  (``--kernels eager``: plain PyTorch ops, one kernel each);
- prefill of one sequence of N tokens (fused attention with grouped KV heads), in a CUDA graph: back to
  back (the clocks under sustained compute, at the GPU's power cap) and, on a GPU and without the
  all-reduce, again from idle (boost clocks, ``seconds_boost``);
- decode of a batch of B sequences with C tokens of KV each, in a CUDA graph as SGLang does;
- with more than one GPU and ``--tp`` > 1: each step again with the two all-reduces per layer, as SGLang
  runs them: a one-shot all-reduce over peer memory (its custom all-reduce; here PyTorch's symmetric
  memory) for messages up to 8 MiB where that is faster, NCCL otherwise; and a sweep of both by size.
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

FORMAT = "pdlab-calibration-raw/2"  # /2: kernels and all-reduce recorded per document (/1 read the same way)
PREFILL_TOKENS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
DECODE_CONTEXTS = [1024, 2048, 4096, 8192]
ALLREDUCE_TOKENS = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
BOOST_IDLE_S = 0.3  # idle before a from-idle sample: the clocks recover from the power cap well within it
ONE_SHOT_MAX_BYTES = 8 << 20  # SGLang's custom all-reduce serves messages up to 8 MiB; NCCL the larger ones
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_rms(x: Any, residual: Any, weight: Any, eps: float = 1e-6) -> tuple[Any, Any]:
    """residual += x, then RMSNorm of it: SGLang's fused_add_rmsnorm (returns normed, new residual)."""
    import torch

    s = x.float() + residual.float()
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype), s.to(x.dtype)


def _rms(x: Any, weight: Any, eps: float = 1e-6) -> Any:
    import torch

    s = x.float()
    return (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _silu_mul(gate_up: Any) -> Any:
    """SiLU(gate) × up of the merged gate/up projection: SGLang's silu_and_mul."""
    import torch

    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _rope(q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """Rotary embedding (NeoX halves) of q (T, heads, hd) and k (T, kv_heads, hd) at cos/sin (T, hd/2)."""
    import torch

    c, s = cos[:, None, :], sin[:, None, :]

    def rot(x: Any) -> Any:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)

    return rot(q), rot(k)


def _rope_store(q: Any, k: Any, v: Any, cos: Any, sin: Any, k_slot: Any, v_slot: Any, scale: float) -> Any:
    """Decode: rotary embedding of q and k, k and v written into their KV-cache slots, q scaled for attention
    (SGLang runs rope and the KV write as fused kernels, and scales inside its attention kernel)."""
    q, k = _rope(q, k, cos, sin)
    k_slot.copy_(k)
    v_slot.copy_(v)
    return q * scale


def _add_rms_eager(x: Any, residual: Any, weight: Any, eps: float = 1e-6) -> tuple[Any, Any]:
    import torch

    s = x + residual
    return torch.nn.functional.rms_norm(s, (s.shape[-1],), weight, eps), s


def _rms_eager(x: Any, weight: Any, eps: float = 1e-6) -> Any:
    import torch

    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def _check_compiled(name: str, fn: Callable[..., Any], device: Any, dims: dict) -> None:
    """Run a compiled step once, at the shard's own widths (so only the token/batch dimension varies later and
    becomes dynamic), against its eager definition: raises if it fails or differs."""
    import torch

    bf = dict(device=device, dtype=torch.bfloat16)
    h, nh, nkv, hd = dims["h"], dims["nh"], dims["nkv"], dims["hd"]
    x, gu = torch.randn(3, h, **bf), torch.randn(3, 2 * dims["inter"], **bf)
    q, k, v = torch.randn(3, (nh + 2 * nkv) * hd, **bf).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q, k, v = q.view(3, nh, hd), k.view(3, nkv, hd), v.view(3, nkv, hd)
    cs = torch.randn(3, hd // 2, device=device)
    if name == "rope_store":
        caches = [torch.zeros(3, nkv, 5, hd, **bf) for _ in range(4)]
        got = fn(q, k, v, cs, cs, caches[0][:, :, -1], caches[1][:, :, -1], 0.125)
        want = _rope_store(q, k, v, cs, cs, caches[2][:, :, -1], caches[3][:, :, -1], 0.125)
        pairs = [(got, want), (caches[0], caches[2]), (caches[1], caches[3])]
    else:
        args = dict(add_rms=(x, x, x[0]), rms=(x, x[0]), silu_mul=(gu,), rope=(q, k, cs, cs))[name]
        eager = dict(add_rms=_add_rms, rms=_rms, silu_mul=_silu_mul, rope=_rope)[name]
        got, want = fn(*args), eager(*args)
        pairs = [(got[0], want[0])] if isinstance(got, tuple) else [(got, want)]
    for g, w in pairs:  # bf16 outputs: within a couple of units in the last place
        if not torch.allclose(g.float(), w.float(), rtol=0.03, atol=0.03):
            raise RuntimeError(f"compiled {name} differs from eager by up to {(g.float() - w.float()).abs().max():.3g}")


try:  # Triton (in the SGLang image and wherever CUDA PyTorch is): the split-KV decode kernel below
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

if triton is not None:

    @triton.jit
    def _stage1(Q, K, V, Acc, ML, C, SPLIT, NS, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                BLOCK: tl.constexpr):
        bh = tl.program_id(0)
        s = tl.program_id(1)
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + bh * G * D + offs_g[:, None] * D + offs_d[None, :], mask=offs_g[:, None] < G, other=0.0)
        m = tl.full([GP], float("-inf"), tl.float32)
        den = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        start = s * SPLIT
        end = tl.minimum(start + SPLIT, C)
        kv = bh.to(tl.int64) * C * D
        for n0 in range(start, end, BLOCK):
            offs_n = n0 + tl.arange(0, BLOCK)
            mask_n = offs_n < end
            k = tl.load(K + kv + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k))
            qk = tl.where(mask_n[None, :], qk, float("-inf"))
            m_new = tl.maximum(m, tl.max(qk, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(qk - m_new[:, None])
            den = den * alpha + tl.sum(p, 1)
            v = tl.load(V + kv + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        row = (bh * NS + s) * GP + offs_g
        tl.store(Acc + row[:, None] * D + offs_d[None, :], acc)
        tl.store(ML + row * 2, m)
        tl.store(ML + row * 2 + 1, den)


    @triton.jit
    def _stage2(Acc, ML, Out, NS, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, NSP: tl.constexpr):
        bh = tl.program_id(0)
        g = tl.program_id(1)
        offs_s = tl.arange(0, NSP)
        offs_d = tl.arange(0, D)
        ok = offs_s < NS
        row = (bh * NS + offs_s) * GP + g
        m = tl.load(ML + row * 2, mask=ok, other=float("-inf"))
        den = tl.load(ML + row * 2 + 1, mask=ok, other=0.0)
        w = tl.where(ok, tl.exp(m - tl.max(m, 0)), 0.0)
        acc = tl.load(Acc + row[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0)
        out = tl.sum(acc * w[:, None], 0) / tl.sum(den * w, 0)
        tl.store(Out + (bh * G + g) * D + offs_d, out.to(Out.dtype.element_ty))


def _split_kv_decoder(device: Any, nkv: int, group: int, hd: int) -> Callable[..., Any] | None:
    """A split-KV GQA decode attention in Triton (flash-decoding, as FlashInfer's decode kernels split a long
    context over the GPU): per (sequence, KV head, context split) an online softmax, then the splits combined.
    None off a GPU, without Triton, or if it disagrees with SDPA at this shard's head shapes."""
    import torch

    if device.type != "cuda" or triton is None:
        return None
    block_n = 64
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count

    def decode(q: Any, k_cache: Any, v_cache: Any) -> Any:
        """q (B, kv_heads, group, D) with the scale applied, caches (B, kv_heads, C, D): out shaped like q."""
        B, n, G, D = q.shape
        C = k_cache.shape[2]
        ns = max(1, min(triton.cdiv(2 * sm_count, B * n), triton.cdiv(C, 4 * block_n)))
        split = triton.cdiv(triton.cdiv(C, ns), block_n) * block_n
        ns = triton.cdiv(C, split)
        gp = max(16, triton.next_power_of_2(G))
        acc = torch.empty(B * n * ns * gp * D, device=q.device, dtype=torch.float32)
        ml = torch.empty(B * n * ns * gp * 2, device=q.device, dtype=torch.float32)
        out = torch.empty_like(q)
        _stage1[(B * n, ns)](q, k_cache, v_cache, acc, ml, C, split, ns, G=G, GP=gp, D=D, BLOCK=block_n,
                             num_warps=4, num_stages=3)
        _stage2[(B * n, G)](acc, ml, out, ns, G=G, GP=gp, D=D, NSP=triton.next_power_of_2(ns), num_warps=4)
        return out

    try:
        bf = dict(device=device, dtype=torch.bfloat16)
        for B, C in ((1, 1000), (3, 4096)):
            q = torch.randn(B, nkv, group, hd, **bf) * 0.09
            kc, vc = torch.randn(B, nkv, C, hd, **bf), torch.randn(B, nkv, C, hd, **bf)
            want = torch.nn.functional.scaled_dot_product_attention(q, kc, vc, scale=1.0)
            if not torch.allclose(decode(q, kc, vc).float(), want.float(), atol=0.02, rtol=0.02):
                raise RuntimeError("split-KV decode attention disagrees with SDPA")
    except Exception as e:  # noqa: BLE001 - no Triton kernel here: SDPA and GEMVs only, and say so
        _log(f"split-KV decode attention unavailable ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        return None
    return decode


class Ops:
    """The elementwise steps of a layer: compiled (torch.compile fuses each into Triton kernels, as SGLang's
    fused CUDA kernels do) or eager PyTorch ops. A step that fails to compile runs eager, and the note says so."""

    def __init__(self, kernels: str, device: Any, dims: dict) -> None:
        import torch

        self.add_rms, self.rms, self.silu_mul, self.rope, self.rope_store = (
            _add_rms_eager, _rms_eager, _silu_mul, _rope, _rope_store)
        self.kernels, self.note = "eager", ""
        if kernels != "fused" or device.type != "cuda":
            return
        for knob in ("recompile_limit", "cache_size_limit"):  # one compile per shape family, not per size
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
        fused, failed = [], []
        for name, f in dict(add_rms=_add_rms, rms=_rms, silu_mul=_silu_mul, rope=_rope,
                            rope_store=_rope_store).items():
            try:
                # automatic dynamic shapes: compiled for the widths first, the token/batch size made dynamic on
                # the next size (dynamic=True would make the widths symbolic too: 2-3× slower kernels)
                fn = torch.compile(f, fullgraph=True)
                _check_compiled(name, fn, device, dims)
            except Exception as e:  # noqa: BLE001 - any compiler failure: this step runs eager, and the note says so
                failed.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
                continue
            setattr(self, name, fn)
            fused.append(name)
        self.kernels = "fused" if not failed else ("partly fused" if fused else "eager")
        self.note = f"torch.compile failed for {'; '.join(failed)}: eager there" if failed else ""
        _log(f"elementwise steps: {self.kernels}" + (f" ({self.note})" if self.note else ""))


class AllReduce:
    """The TP all-reduce as SGLang runs it: one-shot over peer memory (PyTorch symmetric memory, like SGLang's
    custom all-reduce) for messages up to 8 MiB where the size sweep found it faster, NCCL otherwise."""

    def __init__(self, device: Any, dtype: Any) -> None:
        import torch

        self.torch = torch
        self.group_name = torch.distributed.group.WORLD.group_name
        self.buf, self.one_shot_upto, self.note = None, 0, ""
        try:
            import torch.distributed._symmetric_memory as symm_mem  # alpha API: any failure falls back to NCCL

            buf = symm_mem.empty(ONE_SHOT_MAX_BYTES // dtype.itemsize, dtype=dtype, device=device)
            symm_mem.rendezvous(buf, self.group_name)
            rank = torch.distributed.get_rank()
            probe, out = buf[:1024], torch.empty(1024, dtype=dtype, device=device)
            probe.fill_(rank + 1)
            torch.ops.symm_mem.one_shot_all_reduce_out(probe, "sum", self.group_name, out)
            world = torch.distributed.get_world_size()
            if not bool((out.float() == world * (world + 1) / 2).all()):
                raise RuntimeError("one-shot all-reduce gave a wrong sum")
            self.buf = buf
        except Exception as e:  # noqa: BLE001 - no symmetric memory here: NCCL only, and say so
            self.note = f"one-shot all-reduce unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); NCCL"
            _log(self.note)

    def nccl(self, x: Any) -> Any:
        self.torch.distributed.all_reduce(x)
        return x

    def one_shot(self, x: Any) -> Any:
        flat = x.view(-1)
        view = self.buf[: flat.numel()]
        view.copy_(flat)
        self.torch.ops.symm_mem.one_shot_all_reduce_out(view, "sum", self.group_name, flat)
        return x

    def __call__(self, x: Any) -> Any:
        if x.numel() * x.element_size() <= self.one_shot_upto:
            return self.one_shot(x)
        return self.nccl(x)

    def describe(self) -> str:
        if self.one_shot_upto:
            return f"one-shot (symmetric memory) up to {self.one_shot_upto} bytes, NCCL above"
        return "NCCL"


class Shard:
    """One TP rank's decoder layers (random weights) and the two forward functions SGLang runs."""

    def __init__(self, shape: dict, tp: int, layers: int, device: Any, allreduce: Any = None,
                 kernels: str = "fused") -> None:
        import torch

        self.torch = torch
        dt = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.dtype, self.device, self.tp, self.allreduce = dt, device, tp, allreduce
        h, hd = shape["hidden_size"], shape["head_dim"]
        self.h, self.hd = h, hd
        self.nh = max(1, shape["num_attention_heads"] // tp)
        self.nkv = max(1, shape["num_key_value_heads"] // tp)
        inter = max(1, shape["intermediate_size"] // tp)
        self.gen = torch.Generator(device=device).manual_seed(0)
        # [out, in] weights, applied with F.linear as SGLang's linear layers are
        self.layers = [dict(qkv=self.rand((self.nh + 2 * self.nkv) * hd, h), o=self.rand(h, self.nh * hd),
                            gu=self.rand(2 * inter, h), d=self.rand(h, inter),
                            n1=torch.ones(h, device=device, dtype=dt), n2=torch.ones(h, device=device, dtype=dt))
                       for _ in range(layers)]
        self.final_norm = torch.ones(h, device=device, dtype=dt)
        self.lm_head = self.rand(max(1, shape["vocab_size"] // tp), h)
        self.ops = Ops(kernels, device, dict(h=h, inter=inter, nh=self.nh, nkv=self.nkv, hd=hd))
        self.split_kv = _split_kv_decoder(device, self.nkv, self.nh // self.nkv, hd) if kernels == "fused" else None
        self.gqa = self._probe_gqa_attention()

    def rand(self, *size: int) -> Any:
        """Random tensor of the shard's dtype on its device (std 0.02, like initialised weights)."""
        return self.torch.randn(*size, device=self.device, dtype=self.dtype, generator=self.gen) * 0.02

    def rotary(self, positions: Any) -> tuple[Any, Any]:
        """cos and sin tables (T, head_dim/2) for these positions (base 1e6, as Qwen3)."""
        torch = self.torch
        inv = 1.0 / (1e6 ** (torch.arange(0, self.hd, 2, device=self.device, dtype=torch.float32) / self.hd))
        ang = positions.float()[:, None] * inv[None, :]
        return ang.cos(), ang.sin()

    def _probe_gqa_attention(self) -> bool:
        """Whether fused SDPA (cuDNN or flash, not the math fallback) takes grouped KV heads here."""
        torch = self.torch
        if self.device.type != "cuda":
            return False
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q = torch.randn(1, self.nh, 16, self.hd, device=self.device, dtype=self.dtype)
        kv = torch.randn(1, self.nkv, 16, self.hd, device=self.device, dtype=self.dtype)
        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
                torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
            return True
        except (RuntimeError, TypeError):
            return False

    def _reduce(self, x: Any, allreduce: bool) -> Any:
        return self.allreduce(x) if allreduce and self.allreduce is not None else x

    def _mlp(self, h: Any, p: dict, allreduce: bool) -> Any:
        F = self.torch.nn.functional
        return self._reduce(F.linear(self.ops.silu_mul(F.linear(h, p["gu"])), p["d"]), allreduce)

    def _next_norm(self, i: int) -> Any:
        return self.layers[i + 1]["n1"] if i + 1 < len(self.layers) else self.final_norm

    def prefill(self, x: Any, cos: Any, sin: Any, allreduce: bool = False) -> Any:
        """One sequence of x.shape[0] new tokens: causal attention, logits of the last token."""
        F = self.torch.nn.functional
        T, nh, nkv, hd = x.shape[0], self.nh, self.nkv, self.hd
        residual, h = x, self.ops.rms(x, self.layers[0]["n1"])
        for i, p in enumerate(self.layers):
            q, k, v = F.linear(h, p["qkv"]).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q, k = self.ops.rope(q.view(T, nh, hd), k.view(T, nkv, hd), cos, sin)
            q, k, v = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.view(T, nkv, hd).transpose(0, 1)[None]
            if self.gqa:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
                    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o = self._reduce(F.linear(a[0].transpose(0, 1).reshape(T, nh * hd), p["o"]), allreduce)
            h, residual = self.ops.add_rms(o, residual, p["n2"])
            h, residual = self.ops.add_rms(self._mlp(h, p, allreduce), residual, self._next_norm(i))
        return F.linear(h[-1:], self.lm_head)

    def decode(self, x: Any, k_cache: list, v_cache: list, cos: Any, sin: Any, allreduce: bool = False,
               attention: str = "sdpa") -> Any:
        """One new token for each of x.shape[0] sequences against KV caches of shape (B, kv_heads, C, head_dim).

        GQA: each KV head is read once for its group of query heads. attention="sdpa" runs fused
        attention (fast at large batch, but no split over the context), "gemv" two batched GEMVs that
        spread a long context over the whole GPU, "split-kv" the Triton split-KV kernel (flash-decoding,
        as FlashInfer's decode kernels); the caller keeps the fastest.
        """
        torch, F = self.torch, self.torch.nn.functional
        B, nh, nkv, hd = x.shape[0], self.nh, self.nkv, self.hd
        group = nh // nkv
        residual, h = x, self.ops.rms(x, self.layers[0]["n1"])
        for i, p in enumerate(self.layers):
            q, k, v = F.linear(h, p["qkv"]).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q = self.ops.rope_store(q.view(B, nh, hd), k.view(B, nkv, hd), v.view(B, nkv, hd), cos, sin,
                                    k_cache[i][:, :, -1], v_cache[i][:, :, -1], hd**-0.5).view(B, nkv, group, hd)
            if attention == "sdpa":
                a = F.scaled_dot_product_attention(q, k_cache[i], v_cache[i], scale=1.0)
            elif attention == "split-kv":
                a = self.split_kv(q, k_cache[i], v_cache[i])
            else:
                a = torch.matmul(torch.softmax(torch.matmul(q, k_cache[i].transpose(-1, -2)), dim=-1), v_cache[i])
            o = self._reduce(F.linear(a.reshape(B, nh * hd), p["o"]), allreduce)
            h, residual = self.ops.add_rms(o, residual, p["n2"])
            h, residual = self.ops.add_rms(self._mlp(h, p, allreduce), residual, self._next_norm(i))
        return F.linear(h, self.lm_head)


def _timer(device: Any, reps: int, per_sample: int = 3) -> Callable[[Callable[[], Any]], float]:
    """Median GPU seconds of one fn() after warm-up: CUDA events around ``per_sample`` calls queued behind an
    untimed one, so the GPU never waits for the CPU to launch the timed work (launch gaps would otherwise be
    counted, and scaled up with the layers); perf_counter on CPU."""
    import torch

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(2):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                fn()  # untimed: keeps the GPU busy while the timed calls are queued
                start.record()
                for _ in range(per_sample):
                    fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000 / per_sample)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return timed


def _from_idle(device: Any, fn: Callable[[], Any], samples: int = 3, idle_s: float = BOOST_IDLE_S) -> float | None:
    """Median GPU seconds of one fn() started after `idle_s` idle: the GPU at boost clocks, as for a request
    that arrives at an idle server (back-to-back timings run at the clocks of its power cap). None off a GPU."""
    import torch

    if device.type != "cuda":
        return None
    times = []
    for _ in range(samples):
        torch.cuda.synchronize()
        time.sleep(idle_s)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


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
                 contexts: list[int], device: Any, allreduce: Any = None, rank: int = 0,
                 kv_budget_bytes: float | None = None, kernels: str = "fused") -> dict:
    """Measured step times (rows, seconds scaled to the model's depth) for one rank's shard, and the kernels used."""
    import torch

    F = torch.nn.functional
    shard = Shard(shape, tp, layers, device, allreduce=allreduce, kernels=kernels)
    timed = _timer(device, reps)
    scale = shape["num_hidden_layers"] / layers
    variants = [False, True] if allreduce is not None else [False]
    rows: list[dict] = []

    def add(phase: str, tokens: int, context: int, batch: int, ar: bool, total: float, head: float,
            **extra: Any) -> None:
        rows.append(dict(phase=phase, tokens=tokens, context=context, batch=batch, allreduce=ar,
                         seconds=(total - head) * scale + head, **extra))
        if rank == 0:
            boost = f" (from idle {extra['seconds_boost'] * 1e3:.2f} ms)" if "seconds_boost" in extra else ""
            _log(f"tp{tp} {phase:<7} tokens={tokens:>6} context={context:>5} allreduce={int(ar)} "
                 f"{rows[-1]['seconds'] * 1e3:9.2f} ms{boost}")

    with torch.inference_mode():
        for T in prefill_tokens:
            x, last = shard.rand(T, shard.h), shard.rand(1, shard.h)
            cos, sin = shard.rotary(torch.arange(T, device=device))
            head = timed(_graphed(device, lambda last=last: F.linear(last, shard.lm_head)))
            for ar in variants:
                step = _graphed(device, lambda x=x, c=cos, s=sin, ar=ar: shard.prefill(x, c, s, ar))
                # from idle without the all-reduce only: the ranks' unsynchronised starts would be timed too
                sustained, boost = timed(step), None if ar else _from_idle(device, step)
                extra = {} if boost is None else {"seconds_boost": (boost - head) * scale + head}
                add("prefill", T, 0, 1, ar, sustained, head, **extra)
                del step
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
                cos, sin = shard.rotary(torch.full((B,), C - 1, device=device))
                head = timed(_graphed(device, lambda xh=xh: F.linear(xh, shard.lm_head)))
                for ar in variants:
                    by_kernel = {}
                    for attn in ("sdpa", "gemv") + (("split-kv",) if shard.split_kv else ()):
                        step = _graphed(device, lambda x=x, kc=kc, vc=vc, c=cos, s=sin, ar=ar, attn=attn:
                                        shard.decode(x, kc, vc, c, s, ar, attn))
                        by_kernel[attn] = timed(step)
                        del step
                    best = min(by_kernel, key=by_kernel.__getitem__)
                    add("decode", B, C, B, ar, by_kernel[best], head, attention=best,
                        **{f"seconds_{k}": (t - head) * scale + head for k, t in by_kernel.items()})
                del kc, vc
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return dict(rows=rows, kernels=shard.ops.kernels, kernels_note=shard.ops.note,
                decode_attention=["sdpa", "gemv"] + (["split-kv (Triton)"] if shard.split_kv else []),
                prefill_attention="sdpa, grouped KV heads" if shard.gqa else "sdpa, KV heads repeated")


def allreduce_sweep(hidden: int, reps: int, device: Any, tokens_list: list[int], ar: AllReduce) -> list[dict]:
    """Seconds per all-reduce of tokens × hidden BF16 values (20 calls in one CUDA graph), NCCL and one-shot;
    sets ``ar.one_shot_upto`` to the largest size up to which one-shot is the faster (rank 0 decides for all)."""
    import torch

    timed = _timer(device, reps)
    rows, upto, faster_so_far = [], 0, True
    n = 20
    for tokens in tokens_list:
        x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
        nbytes = tokens * hidden * 2
        row = dict(tokens=tokens, bytes=nbytes,
                   seconds_nccl=timed(_graphed(device, lambda x=x: [ar.nccl(x) for _ in range(n)])) / n)
        if ar.buf is not None and nbytes <= ONE_SHOT_MAX_BYTES:
            row["seconds_one_shot"] = timed(_graphed(device, lambda x=x: [ar.one_shot(x) for _ in range(n)])) / n
            faster_so_far = faster_so_far and row["seconds_one_shot"] < row["seconds_nccl"]
            if faster_so_far:
                upto = nbytes
        rows.append(row)
    decided = torch.tensor([upto], device=device, dtype=torch.int64)
    torch.distributed.broadcast(decided, 0)  # every rank must run the same all-reduce at each size
    ar.one_shot_upto = int(decided.item())
    for row in rows:
        row["seconds"] = row["seconds_one_shot"] if row["bytes"] <= ar.one_shot_upto else row["seconds_nccl"]
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

    for var in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST"):  # no NVLink multicast: plain peer access
        os.environ.setdefault(var, "0" if var.startswith("NCCL") else "1")
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank,
                                         world_size=world, device_id=dev)
    try:
        ar = AllReduce(dev, torch.bfloat16)
        sweep = allreduce_sweep(cfg["shape"]["hidden_size"], cfg["reps"], dev, ALLREDUCE_TOKENS, ar)
        if rank == 0:
            _log(f"tp{world} all-reduce: {ar.describe()}")
        got = measure_rank(cfg["shape"], world, layers=cfg["layers"], reps=cfg["reps"],
                           prefill_tokens=cfg["prefill"], batches=cfg["batches"], contexts=cfg["contexts"],
                           device=dev, allreduce=ar, rank=rank, kv_budget_bytes=cfg["kv_budget"],
                           kernels=cfg["kernels"])
        if rank == 0:
            with open(result_path, "w") as f:
                json.dump(dict(got, allreduce=sweep, allreduce_impl=ar.describe(), allreduce_note=ar.note), f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(shape: dict, tp: int, *, layers: int = 8, reps: int = 10, prefill_tokens: list[int] | None = None,
            batches: list[int] | None = None, contexts: list[int] | None = None, device: str = "cuda",
            model: str = "", kernels: str = "fused", command: str | None = None) -> dict:
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
                               reps=reps, environment=environment(dev.type),
                               command=command or " ".join(["python3", os.path.basename(sys.argv[0]), *sys.argv[1:]]))
    multi = dev.type == "cuda" and tp > 1 and torch.cuda.device_count() >= tp
    if multi:
        import tempfile

        import torch.multiprocessing as mp

        cfg = dict(shape=shape, layers=layers, reps=reps, prefill=prefill_tokens, batches=batches,
                   contexts=contexts, kv_budget=kv_budget, port=_free_port(), kernels=kernels)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "rank0.json")
            mp.spawn(_worker, args=(tp, cfg, path), nprocs=tp)
            with open(path) as f:
                got = json.load(f)
        doc.update(got, allreduce_measured=True)
    else:
        doc.update(measure_rank(shape, tp, layers=layers, reps=reps, prefill_tokens=prefill_tokens,
                                batches=batches, contexts=contexts, device=dev, kv_budget_bytes=kv_budget,
                                kernels=kernels), allreduce=[], allreduce_measured=False)
    return doc


def main(argv: list[str] | None = None) -> int:
    """Command line for running this file on its own (as the k8s Job does)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, help="JSON file with the model's config.json shape keys")
    ap.add_argument("--model", default="")
    ap.add_argument("--tp", type=int, nargs="+", default=[1])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--prefill", type=int, nargs="*")
    ap.add_argument("--batch", type=int, nargs="*")
    ap.add_argument("--context", type=int, nargs="*")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kernels", choices=["fused", "eager"], default="fused",
                    help="fused: elementwise steps compiled with torch.compile, as SGLang fuses them; eager: plain ops")
    ap.add_argument("--out", required=True, help="write a JSON list of one document per TP size here")
    a = ap.parse_args(argv)
    with open(a.shape) as f:
        shape = json.load(f)
    docs = [measure(shape, tp, layers=a.layers, reps=a.reps, prefill_tokens=a.prefill, batches=a.batch,
                    contexts=a.context, device=a.device, model=a.model, kernels=a.kernels) for tp in a.tp]
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(docs, f, indent=1)
    os.replace(tmp, a.out)
    _log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
