"""Client-overhead and memory benchmarks of pdlab's load generator (issue 6).

    python benchmarks/bench_client.py            # both benchmarks (memory: 100,000 requests)
    python benchmarks/bench_client.py --quick    # shortened (memory: 10,000 requests, fewer rates)
    python benchmarks/bench_client.py --only overhead|memory [--guidellm PATH]

Server: a minimal uvloop HTTP/1.1 streaming server written here (16 SSE tokens per request, 1 ms apart,
usage + [DONE]; answers /health and /v1/models), in its own process pinned to the last core; the client
runs pinned to core 0. Criterion per (arrival, rate): achieved completed rate ≥ 99% of the schedule's rate
and p99 dispatch lag (actual − scheduled send) ≤ 5 ms. guidellm, if installed at
benchmarks/out/guidellm-venv, is run against the same server in the same invocation for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKENS = 16
TOKEN_GAP_S = 0.001
GUIDELLM = ROOT / "benchmarks" / "out" / "guidellm-venv" / "bin" / "guidellm"


# --------------------------------------------------------------------------- the server


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_TOKEN = [_chunk(b'data: {"choices":[{"index":0,"delta":{"content":" tok"},"text":" tok"}]}\n\n')] * TOKENS
_TAIL = (_chunk(b'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":%d}}\n\n' % TOKENS)
         + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
             b"connection: keep-alive\r\n\r\n")


class _Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf, self.loop = transport, b"", asyncio.get_running_loop()

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].decode("latin1")
            n = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    n = int(v)
            if len(self.buf) < i + 4 + n:
                return
            self.buf = self.buf[i + 4 + n:]
            path = head.split(" ", 2)[1]
            if path.startswith("/v1/") and "completions" in path:
                self.t.write(_SSE_HEAD + _TOKEN[0])
                self.loop.call_later(TOKEN_GAP_S, self._more, 1)
            else:
                body = (b'{"object":"list","data":[{"id":"bench","object":"model","created":0,"owned_by":"x"}]}'
                        if "models" in path else b"ok")
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))

    def _more(self, i):
        if self.t.is_closing():
            return
        if i < TOKENS:
            self.t.write(_TOKEN[i])
            self.loop.call_later(TOKEN_GAP_S, self._more, i + 1)
        else:
            self.t.write(_TAIL)


def _serve(port: int, core: int, ready) -> None:
    import uvloop

    os.sched_setaffinity(0, {core})
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(loop.create_server(_Proto, "127.0.0.1", port, backlog=4096, reuse_address=True))
    ready.set()
    loop.run_until_complete(srv.serve_forever())


def start_server(core: int) -> tuple[mp.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_serve, args=(port, core, ready), daemon=True)
    p.start()
    if not ready.wait(20):
        p.kill()
        raise RuntimeError("benchmark server did not start")
    return p, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- pdlab's client


def run_pdlab(url: str, arrival: str, rate: float, duration_s: float, *, spill_dir: Path | None = None,
              num_prompts: int | None = None, input_len: int = 64) -> dict:
    from pdlab.load import LevelPlan, RecordSink, make_dataset, run_level_sync
    from pdlab.metrics import summarize_level
    from pdlab.spec import DatasetSpec

    ds = make_dataset(DatasetSpec(input_len=input_len, output_len=TOKENS), seed=0)
    sink = RecordSink(spill_dir)
    plan = LevelPlan(0, "rate", rate, arrival=arrival, duration_s=None if num_prompts else duration_s,
                     num_prompts=num_prompts, warmup=0, max_inflight=2048, seed=1)
    t0 = time.perf_counter()
    run_level_sync(url, ds, plan, sink, t0=t0, api="chat", model="bench", timeout_s=60)
    df = sink.table().to_pandas()
    s = summarize_level(df)
    sink.close()
    return _criterion(s, df)


def _criterion(s: dict, df) -> dict:
    sched = df["t_sched"].to_numpy()
    sched_rate = (len(sched) - 1) / (sched.max() - sched.min()) if len(sched) > 1 else float("nan")
    ok = s["completed"] / s["requests"] if s["requests"] else 0
    achieved = s["request_rate"] / sched_rate if sched_rate else 0
    return {"requests": s["requests"], "completed_rate": s["request_rate"], "scheduled_rate": sched_rate,
            "achieved_ratio": achieved, "lag_p50_ms": s["dispatch_lag_p50_ms"], "lag_p99_ms": s["dispatch_lag_p99_ms"],
            "ok_fraction": ok, "client_bound": s["client_bound"],
            "pass": bool(achieved >= 0.99 and s["dispatch_lag_p99_ms"] <= 5.0 and ok >= 0.999)}


# --------------------------------------------------------------------------- guidellm


def run_guidellm(url: str, arrival: str, rate: float, duration_s: float, workdir: Path) -> dict | None:
    """One guidellm benchmark at `rate`; lag = request start − targeted start from its per-request output."""
    data = workdir / "prompts.txt"
    if not data.exists():
        data.write_text("\n".join(f"prompt number {i} with a few words" for i in range(5000)) + "\n")
    out = workdir / f"gl-{arrival}-{rate:g}.json"
    cmd = [str(GUIDELLM), "benchmark", "--target", url, "--rate-type", arrival if arrival == "poisson" else "constant",
           "--rate", str(rate), "--max-seconds", str(duration_s), "--data", f"kind=text_file,path={data}",
           "--output-path", str(out), "--processor", "Qwen/Qwen2.5-0.5B"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", GUIDELLM__MAX_WORKER_PROCESSES="1")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s * 4 + 60, env=env,
                           preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if r.returncode != 0 or not out.exists():
        return {"error": (r.stderr or r.stdout)[-400:]}
    return _guidellm_figures(json.loads(out.read_text()))


def _guidellm_figures(doc: dict) -> dict:
    bench = doc["benchmarks"][0]
    reqs = bench.get("requests", {}).get("successful", [])
    lag, start, end = [], [], []
    for q in reqs:
        info = q.get("scheduler_info") or q.get("info") or {}
        timings = info.get("request_timings") or info
        tgt = timings.get("targeted_start") or timings.get("targeted_start_time")
        st = timings.get("request_start") or timings.get("resolve_start") or q.get("start_time")
        if tgt is not None and st is not None:
            lag.append(st - tgt)
        if q.get("start_time") and q.get("end_time"):
            start.append(q["start_time"])
            end.append(q["end_time"])
    dur = (max(end) - min(start)) if start else float("nan")
    return {"completed": len(reqs), "completed_rate": len(reqs) / dur if dur else float("nan"),
            "lag_p99_ms": float(np.percentile(lag, 99) * 1000) if lag else float("nan")}


# --------------------------------------------------------------------------- the benchmarks


def overhead(args) -> None:
    os.sched_setaffinity(0, {0})
    srv, url = start_server(core=os.cpu_count() - 1)
    rates = [100, 200, 300, 400, 600] if args.quick else [100, 200, 300, 400, 500, 700, 1000]
    dur = 4.0 if args.quick else 6.0
    best: dict[str, float] = {}
    gl_best: dict[str, float] = {}
    use_gl = GUIDELLM.exists() and not args.no_guidellm
    print(f"client overhead: server on core {os.cpu_count() - 1}, client on core 0, {TOKENS} tokens/request, "
          f"{dur:g} s per rate; guidellm: {'yes' if use_gl else 'not installed (pdlab only)'}")
    print(f"{'client':8} {'arrival':9} {'target':>7} {'sched':>7} {'done/s':>7} {'ratio':>6} {'lag p50':>8} "
          f"{'lag p99':>8}  pass  client_bound")
    try:
        run_pdlab(url, "constant", 50, 1.0)  # warm up imports, tokenizer, connections
        for arrival in ("poisson", "constant"):
            for rate in rates:
                r = run_pdlab(url, arrival, rate, dur)
                print(f"{'pdlab':8} {arrival:9} {rate:7g} {r['scheduled_rate']:7.1f} {r['completed_rate']:7.1f} "
                      f"{r['achieved_ratio']:6.3f} {r['lag_p50_ms']:8.2f} {r['lag_p99_ms']:8.2f}  "
                      f"{'yes' if r['pass'] else 'NO ':4}  {r['client_bound']}")
                if r["pass"]:
                    best[arrival] = max(best.get(arrival, 0), rate)
                if use_gl:
                    with tempfile.TemporaryDirectory() as td:
                        g = run_guidellm(url, arrival, rate, dur, Path(td))
                    if g and "error" not in g:
                        ok = g["completed_rate"] >= 0.99 * rate * 0.97 and g["lag_p99_ms"] <= 5.0
                        print(f"{'guidellm':8} {arrival:9} {rate:7g} {'':7} {g['completed_rate']:7.1f} {'':6} "
                              f"{'':8} {g['lag_p99_ms']:8.2f}  {'yes' if ok else 'NO ':4}")
                        if ok:
                            gl_best[arrival] = max(gl_best.get(arrival, 0), rate)
                    else:
                        print(f"guidellm  {arrival} {rate:g}: failed: {(g or {}).get('error', '?')[:200]}")
                        use_gl = False
    finally:
        srv.kill()
        srv.join(5)
    print()
    for arrival in ("poisson", "constant"):
        line = f"highest on-schedule rate, {arrival:8}: pdlab {best.get(arrival, 0):g} req/s"
        if gl_best or GUIDELLM.exists():
            g = gl_best.get(arrival, 0)
            line += f", guidellm {g:g} req/s" + (f", ratio {best.get(arrival, 0) / g:.1f}x" if g else "")
        target = 300 if arrival == "poisson" else 400
        line += f"  (target ≥ {target})"
        print(line)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory(args) -> None:
    os.sched_setaffinity(0, {0})
    n = 10_000 if args.quick else 100_000
    rate = 400.0
    srv, url = start_server(core=os.cpu_count() - 1)
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.2)

    spill = Path(tempfile.mkdtemp(prefix="pdlab-mem-"))
    import pandas  # noqa: F401 - count the libraries' own footprint in the baseline
    import pyarrow  # noqa: F401

    from pdlab.load.datasets import word_tokens

    word_tokens()
    base = _rss_mb()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    try:
        r = run_pdlab(url, "constant", rate, 0, spill_dir=spill, num_prompts=n, input_len=1024)
    finally:
        stop.set()
        th.join()
        srv.kill()
        shutil.rmtree(spill, ignore_errors=True)
    wall = time.perf_counter() - t
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"memory: {n} requests (1024-token prompts, {TOKENS} output tokens) at {rate:g} req/s in {wall:.0f} s; "
          f"completed {r['completed_rate']:.1f}/s, lag p99 {r['lag_p99_ms']:.2f} ms")
    print(f"  RSS before {base:.0f} MB, peak during run + summary {peak[0]:.0f} MB (ru_maxrss {maxrss:.0f} MB), "
          f"growth {peak[0] - base:.0f} MB; target < 500 MB: {'PASS' if maxrss < 500 else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shortened run (fewer rates, 10,000-request memory run)")
    ap.add_argument("--only", choices=["overhead", "memory"])
    ap.add_argument("--no-guidellm", action="store_true")
    args = ap.parse_args()
    if args.only in (None, "overhead"):
        overhead(args)
    if args.only in (None, "memory"):
        print()
        memory(args)


if __name__ == "__main__":
    main()
