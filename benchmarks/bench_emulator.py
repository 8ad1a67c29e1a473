"""Emulator benchmarks (issue 4): fidelity, scale, pd-effect. Figures are printed, never asserted.

    python benchmarks/bench_emulator.py [fidelity|scale|pd-effect|all]
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import httpx

from pdlab.core.fsutil import free_port
from pdlab.emulator import perfmodel
from pdlab.experiment.profiles import gpu, model

M32 = model("Qwen3-32B")
L20 = gpu("L20")
BASE = [sys.executable, "-m", "pdlab.emulator", "--model-path", "/models/Qwen3-32B/", "--tp", "2", "--host",
        "127.0.0.1", "--enable-metrics"]


@contextmanager
def procs(cmds: list[list[str]], urls: list[str], timeout: float = 20):
    ps = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
    try:
        end = time.monotonic() + timeout
        for u in urls:
            while True:
                try:
                    if httpx.get(u, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > end:
                    raise RuntimeError(f"{u} not ready")
                time.sleep(0.2)
        yield ps
    finally:
        for p in ps:
            p.terminate()
        for p in ps:
            p.wait(timeout=10)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


# -- a minimal streaming client (raw asyncio sockets, to keep client CPU low) -------------------------
def chat_token(line: bytes) -> bool:
    """An OpenAI streaming event that carries generated text."""
    return line[6:].strip() != b"[DONE]" and b'"content"' in line and b'"content":""' not in line


async def stream_request(port: int, path: str, body: dict | bytes, sent: float | None = None,
                         is_token: Callable[[bytes], bool] = chat_token,
                         conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None) -> dict:
    """POST a streaming request (on `conn` if given: a connection opened before the clock started, as a
    keep-alive client reuses one; `body` as bytes: encoded before the clock started); returns send time,
    token-event arrival times and HTTP status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reader, writer = conn or await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    t0 = time.monotonic() if sent is None else sent
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
                 f"\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    times: list[float] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"data: ") and is_token(line):
                times.append(time.monotonic())
    finally:
        writer.close()
    return {"t0": t0, "times": times, "status": status}


def timing(r: dict) -> tuple[float, float]:
    """(TTFT, TPOT) of one streamed request, bench_serving definitions."""
    ts = r["times"]
    ttft = ts[0] - r["t0"]
    tpot = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else 0.0
    return ttft, tpot


def chat(prompt_words: int, max_tokens: int, seed: int = 0) -> dict:
    rnd = random.Random(seed)
    words = " ".join(rnd.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(prompt_words))
    return {"model": "m", "messages": [{"role": "user", "content": words}], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True}


# -- fidelity ---------------------------------------------------------------------------------------
def predicted_step(prompt: int, ctx: int, decode_kv: list[int], tp: int = 2) -> float:
    """The perf model's own step time (Qwen3-32B on the L20 profile), what the emulated worker should reproduce."""
    return perfmodel.step_time(M32, L20, tp, prefill=[(prompt, ctx)] if prompt else None,
                               decode=decode_kv or None).total_s


async def _fidelity(port: int) -> None:
    print("Fidelity (Qwen3-32B, TP2, L20, time scale 1.0, over HTTP /generate streaming)")
    print(f"{'case':<22}{'measured ms':>12}{'predicted ms':>14}{'ratio':>8}")
    for n in (1024, 4096, 8192):
        # each case its own tokens: the radix cache (on, as in SGLang) must not serve one prompt from another
        body = {"input_ids": [100 + n + i % 1000 for i in range(n)], "sampling_params": {"max_new_tokens": 1},
                "stream": True}
        async with httpx.AsyncClient(timeout=60) as c:
            await c.get(f"http://127.0.0.1:{port}/health")  # warm the connection
            t0 = time.monotonic()
            async with c.stream("POST", f"http://127.0.0.1:{port}/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and "output_ids" in line:
                        ttft = time.monotonic() - t0
                        break
            pred = predicted_step(min(n, 4096), 0, [])
            if n > 4096:  # chunked prefill: 4096-token chunks attend to the earlier chunks
                pred = sum(predicted_step(min(4096, n - c0), c0, []) for c0 in range(0, n, 4096))
        print(f"{'TTFT ' + str(n) + ' tok':<22}{ttft * 1e3:>12.1f}{pred * 1e3:>14.1f}{ttft / pred:>8.3f}")
    for b in (1, 16, 64):
        out, prompt = 64, 16
        body = {"input_ids": [100 + i for i in range(prompt)], "sampling_params": {"max_new_tokens": out,
                                                                                    "ignore_eos": True},
                "stream": True}
        rs = await asyncio.gather(*(stream_gen(port, body) for _ in range(b)))
        tpots = [(r[-1] - r[0]) / (len(r) - 1) for r in rs]
        kv = prompt + out / 2
        pred = predicted_step(0, 0, [int(kv)] * b)
        m = statistics.mean(tpots)
        print(f"{'TPOT batch ' + str(b):<22}{m * 1e3:>12.1f}{pred * 1e3:>14.1f}{m / pred:>8.3f}")


async def stream_gen(port: int, body: dict) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=120) as c:
        async with c.stream("POST", f"http://127.0.0.1:{port}/generate", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    times.append(time.monotonic())
    return times[:-1] if len(times) > 1 else times  # the last event repeats the final state


def fidelity() -> None:
    port = free_port()
    with procs([BASE + ["--port", str(port)]], [f"http://127.0.0.1:{port}/health"]):
        asyncio.run(_fidelity(port))


# -- scale ------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> tuple[float, float]:
    vals = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


async def _scale(port: int, n: int, out: int) -> list[dict]:
    body = {"model": "m", "prompt": "one two three four", "max_tokens": out, "stream": True, "ignore_eos": True}
    sem_t0 = time.monotonic()
    rs = await asyncio.gather(*(stream_request_completion(port, body) for _ in range(n)))
    print(f"  {n} streams done in {time.monotonic() - sem_t0:.1f} s wall")
    return rs


async def stream_request_completion(port: int, body: dict) -> dict:
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    chunks = 0
    while line := await reader.readline():
        if line.startswith(b"data: {"):
            chunks += 1
    writer.close()
    return {"status": status, "chunks": chunks}


def scale(n: int = 1000, out: int = 48) -> None:
    port = free_port()
    print(f"Scale: {n} concurrent streaming /v1/completions ({out} tokens each) into one emulator process "
          "(Qwen3-32B TP2 L20, time scale 1.0)")
    with procs([BASE + ["--port", str(port)]], [f"http://127.0.0.1:{port}/health"]) as ps:
        rs = asyncio.run(_scale(port, n, out))
        stats = httpx.get(f"http://127.0.0.1:{port}/emu_stats").json()
        rss, hwm = rss_mb(ps[0].pid)
    ok = sum(1 for r in rs if r["status"] == 200 and r["chunks"] >= out)
    clock = stats["clock"]
    print(f"  completed {ok}/{n}; steps {clock['steps']}; model {clock['model_s']:.2f} s vs wall {clock['wall_s']:.2f} s")
    print(f"  step-clock drift {100 * clock['drift']:.2f} % (target < 2 %); step end lateness mean "
          f"{clock['late_mean_ms']:.2f} ms, max {clock['late_max_ms']:.1f} ms")
    print(f"  server RSS {rss:.0f} MB, peak {hwm:.0f} MB (target < 300 MB)")


# -- PD effect --------------------------------------------------------------------------------------
def workload(seed: int = 1) -> list[tuple[float, dict, str]]:
    """Model-time arrivals: many short requests decoding while long prompts keep arriving."""
    rnd = random.Random(seed)
    w = [(rnd.uniform(0, 12), chat(100, 150, i), "short") for i in range(36)]
    w += [(1.0 + i * 1.5, chat(3000, 8, 100 + i), "long") for i in range(8)]
    return sorted(w, key=lambda x: x[0])


async def _drive(port: int, scale_f: float) -> list[tuple[str, dict]]:
    start = time.monotonic() + 0.2

    async def one(t: float, body: dict, kind: str):
        await asyncio.sleep(max(0.0, start + t * scale_f - time.monotonic()))
        return kind, await stream_request(port, "/v1/chat/completions", body)

    return await asyncio.gather(*(one(*x) for x in workload()))


def pd_effect(scale_f: float = 0.1) -> None:
    print(f"PD effect: 2P1D vs 3 colocated (Qwen3-32B TP2 L20 each), real sglang-router, time scale {scale_f}; "
          "36 short chats (~110 prompt tok, 150 out) decoding while 8 long prompts (~3000 tok) arrive")
    results = {}
    for topo in ("colocated", "pd"):
        ports = [free_port() for _ in range(3)]
        router = free_port()
        flags = ["--emu-time-scale", str(scale_f)]
        if topo == "pd":
            b = [free_port(), free_port()]
            cmds = [BASE + ["--port", str(ports[i]), "--disaggregation-mode", "prefill",
                            "--disaggregation-bootstrap-port", str(b[i])] + flags for i in range(2)]
            cmds.append(BASE + ["--port", str(ports[2]), "--disaggregation-mode", "decode"] + flags)
            rargs = ["--pd-disaggregation", "--prefill", f"http://127.0.0.1:{ports[0]}", str(b[0]), "--prefill",
                     f"http://127.0.0.1:{ports[1]}", str(b[1]), "--decode", f"http://127.0.0.1:{ports[2]}"]
        else:
            cmds = [BASE + ["--port", str(p)] + flags for p in ports]
            rargs = ["--worker-urls", *[f"http://127.0.0.1:{p}" for p in ports]]
        rcmd = [sys.executable, "-m", "sglang_router.launch_router", *rargs, "--policy", "round_robin", "--host",
                "127.0.0.1", "--port", str(router), "--log-level", "warn"]
        with procs(cmds, [f"http://127.0.0.1:{p}/health" for p in ports]):
            with procs([rcmd], [f"http://127.0.0.1:{router}/health"]):
                t = time.monotonic()
                rs = asyncio.run(_drive(router, scale_f))
                wall = time.monotonic() - t
        bad = [r for _, r in rs if r["status"] != 200 or not r["times"]]
        short = [timing(r) for k, r in rs if k == "short" and r["times"]]
        tpot = [x[1] / scale_f for x in short]
        ttft = [timing(r)[0] / scale_f for _, r in rs if r["times"]]
        results[topo] = (statistics.mean(tpot), pct(tpot, 99), statistics.mean(ttft), pct(ttft, 99))
        print(f"  {topo:<10} wall {wall:5.1f} s, failed {len(bad)}; emulated short-request TPOT mean "
              f"{results[topo][0] * 1e3:6.1f} ms p99 {results[topo][1] * 1e3:6.1f} ms; all TTFT mean "
              f"{results[topo][2]:.2f} s p99 {results[topo][3]:.2f} s")
    c, p = results["colocated"], results["pd"]
    print(f"  TPOT p99 colocated / PD = {c[1] / p[1]:.2f}×  (mean {c[0] / p[0]:.2f}×)")


def main(argv: list[str]) -> None:
    which = argv[0] if argv else "all"
    table = {"fidelity": fidelity, "scale": scale, "pd-effect": pd_effect}
    if which not in (*table, "all"):
        sys.exit(f"usage: bench_emulator.py [{'|'.join(table)}|all]")
    for name, fn in table.items():
        if which in (name, "all"):
            fn()
            print()


if __name__ == "__main__":
    main(sys.argv[1:])
