"""How much a GPU slows down under sustained load (its power cap), with `pdlab calibrate`'s own layers.

    python benchmarks/gpu_power_cap.py          # on a CUDA GPU with PyTorch (the device machine)

`pdlab calibrate` times each step back-to-back, so its prefill figures are at the clocks a GPU holds under
sustained compute. A request that arrives at an idle GPU runs at boost clocks. This prints, for 8 decoder
layers of Qwen3-32B at TP1 (random weights):
1. prefill steps (1k and 4k tokens) and decode steps, one after another from idle, by elapsed time: when
   the slowdown sets in and how large it is;
2. 1k-token prefill steps with idle gaps between them: the duty cycle below which the clock holds;
3. the SM clock before and after (NVML through torch, where available).
Nothing is asserted; the output is kept as data (benchmarks/data/calibration/*-power-cap.log).
"""

from __future__ import annotations

import statistics
import time

import torch

from pdlab.calibrate.measure import Shard, _graphed

QWEN3_32B = dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=64, num_key_value_heads=8,
                 head_dim=128, intermediate_size=25600, vocab_size=151936)
LAYERS = 8


def clock() -> str:
    """The SM clock in MHz, or why it cannot be read."""
    try:
        return f"{torch.cuda.clock_rate()} MHz"
    except Exception as e:  # noqa: BLE001 - NVML missing or not permitted: say so
        return f"n/a ({type(e).__name__})"


def series(step, n: int, label: str) -> None:
    """n steps back-to-back after 1 s idle; the step time at points of the elapsed time."""
    time.sleep(1.0)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in events]
    marks, elapsed = [], 0.0
    for i, t in enumerate(times):
        elapsed += t
        if i in (0, 2, 4, 8, 16, 32, 64, 128, n - 1):
            marks.append(f"{elapsed:.0f} ms: {t:.2f}")
    first, last = statistics.median(times[:3]), statistics.median(times[-20:])
    print(f"{label}: {first:.2f} ms from idle, {last:.2f} ms sustained ({last / first - 1:+.1%}); clock now "
          f"{clock()}\n    step time by elapsed time: " + ", ".join(marks), flush=True)


def duty(step, idle_s: float, n: int = 150) -> None:
    """n steps each followed by `idle_s` of idle: the sustained step time at that duty cycle."""
    time.sleep(1.0)
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if idle_s:
            time.sleep(idle_s)
    t = statistics.median(times[-50:])
    print(f"  {idle_s * 1e3:4.0f} ms idle after each step (duty {t / (t + idle_s * 1e3):4.0%}): {t:.2f} ms "
          f"({t / times[0] - 1:+.1%} on the first)", flush=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU with PyTorch")
        return 2
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; SM clock at idle {clock()}; "
          f"{LAYERS} Qwen3-32B layers at TP1", flush=True)
    shard = Shard(QWEN3_32B, 1, LAYERS, dev)
    with torch.inference_mode():
        for tokens, n in ((1024, 300), (4096, 80)):
            x = shard.rand(tokens, shard.h)
            cos, sin = shard.rotary(torch.arange(tokens, device=dev))
            series(_graphed(dev, lambda x=x, c=cos, s=sin: shard.prefill(x, c, s)), n, f"prefill {tokens} tokens")
        for batch, context in ((8, 2048), (64, 4096), (128, 1024)):
            kc = [shard.rand(batch, shard.nkv, context, shard.hd) for _ in range(LAYERS)]
            vc = [shard.rand(batch, shard.nkv, context, shard.hd) for _ in range(LAYERS)]
            x = shard.rand(batch, shard.h)
            cos, sin = shard.rotary(torch.full((batch,), context - 1, device=dev))
            series(_graphed(dev, lambda x=x, kc=kc, vc=vc, c=cos, s=sin: shard.decode(x, kc, vc, c, s)), 400,
                   f"decode batch {batch} × context {context}")
            del kc, vc
        x = shard.rand(1024, shard.h)
        cos, sin = shard.rotary(torch.arange(1024, device=dev))
        step = _graphed(dev, lambda: shard.prefill(x, cos, sin))
        print("prefill 1024 tokens with idle gaps:")
        for idle_s in (0.0, 0.005, 0.012, 0.03):
            duty(step, idle_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
