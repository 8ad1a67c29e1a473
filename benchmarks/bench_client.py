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


def _serve(port: int, core: int, ready, gap_s: float = TOKEN_GAP_S) -> None:
    global TOKEN_GAP_S
    import uvloop

    TOKEN_GAP_S = gap_s

    os.sched_setaffinity(0, {core})
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(loop.create_server(_Proto, "127.0.0.1", port, backlog=4096, reuse_address=True))
    ready.set()
    loop.run_until_complete(srv.serve_forever())


def start_server(core: int, gap_s: float = TOKEN_GAP_S) -> tuple[mp.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_serve, args=(port, core, ready, gap_s), daemon=True)
    p.start()
    if not ready.wait(20):
        p.kill()
        raise RuntimeError("benchmark server did not start")
    return p, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- pdlab's client


def run_pdlab(url: str, arrival: str, rate: float, duration_s: float, *, spill_dir: Path | None = None,
              num_prompts: int | None = None, input_len: int = 64) -> dict:
    from pdlab.core.stats import summarize_level
    from pdlab.experiment.spec import DatasetSpec
    from pdlab.measure.load import LevelPlan, RecordSink, make_dataset, run_level_sync

    ds = make_dataset(DatasetSpec(input_len=input_len, output_len=TOKENS), seed=0)
    sink = RecordSink(spill_dir)
    plan = LevelPlan(0, "rate", rate, arrival=arrival, duration_s=None if num_prompts else duration_s,
                     num_prompts=num_prompts, warmup=0, max_inflight=2048, seed=1)
    t0 = time.perf_counter()
    w0 = _cpu_wait_ms()
    run_level_sync(url, ds, plan, sink, t0=t0, api="chat", model="bench", timeout_s=60)
    waited = _cpu_wait_ms() - w0
    df = sink.table().to_pandas()
    s = summarize_level(df)
    sink.close()
    return {**_criterion(s, df), "cpu_wait_ms": waited}


def _cpu_wait_ms() -> float:
    """Time this thread was runnable but waiting for its core (other processes on it), from schedstat."""
    try:
        return int(open("/proc/thread-self/schedstat").read().split()[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return float("nan")


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


GL_WARMUP = (20.0, 40)  # a first sub-benchmark (rate, requests) that is run and discarded: startup transients


def run_guidellm(url: str, arrival: str, rates: list[float], duration_s: float, workdir: Path,
                 workers: int = 1) -> tuple[list[dict], str]:
    """guidellm 0.8.1 at each rate in one invocation (`guidellm run`, one sub-benchmark per rate).

    Offline: a text-file dataset (one prompt per line), no tokenizer download (usage comes from the server),
    `max_tokens` 16; each rate is bounded to rate × duration requests, as pdlab's level is by duration.
    Pinned to the client's core like pdlab's client, with `workers` worker processes.
    Returns (per-rate figures, error text or "").
    """
    counts = [int(r * duration_s) for r in rates]
    data = workdir / "prompts.txt"
    data.write_text("\n".join(f"prompt number {i} with a few words" for i in range(max(counts) + 100)) + "\n")
    out = workdir / f"guidellm-{arrival}.json"
    all_rates = [GL_WARMUP[0], *rates]
    cmd = [str(GUIDELLM), "run",
           "--backend", f"kind=openai_http,target={url},model=bench,max_tokens={TOKENS}",
           "--profile", json.dumps({"kind": arrival, "rate": all_rates}),
           "--constraint", json.dumps({"kind": "max_requests", "count": [GL_WARMUP[1], *counts]}),
           "--data", f"kind=text_file,path={data}",
           "--output", f"kind=json,path={out}", "--disable-console"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GUIDELLM__MAX_WORKER_PROCESSES=str(workers))
    limit = sum(counts) / 50 + 120  # generous: guidellm far behind schedule still finishes every request
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env, cwd=workdir,
                           preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    except subprocess.TimeoutExpired:
        return [], f"timed out after {limit:.0f} s"
    if r.returncode != 0 or not out.exists():
        return [], f"exit {r.returncode}: {(r.stderr or r.stdout)[-600:]}"
    benches = json.loads(out.read_text())["benchmarks"][1:]  # drop the warm-up sub-benchmark
    return [_guidellm_figures(b) for b in benches], ""


def _pct_ms(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q) * 1000) if a.size else float("nan")


def _guidellm_figures(bench: dict) -> dict:
    """The pdlab criterion on one guidellm sub-benchmark's per-request timings.

    lag = resolve_start − targeted_start: when guidellm's worker begins the request vs its schedule (its
    `request_start`, at the first header write, is later: shown as `lag p99 hdr`). Achieved = completed /
    (last end − first start) over the schedule's rate, as for pdlab.
    """
    req = bench["requests"]
    ok, failed = req.get("successful") or [], req.get("errored") or []
    every = ok + failed + (req.get("incomplete") or [])
    tm = [q["info"]["timings"] for q in every]
    tgt = np.sort([t["targeted_start"] for t in tm if t.get("targeted_start")])
    lag = np.array([t["resolve_start"] - t["targeted_start"] for t in tm
                    if t.get("resolve_start") and t.get("targeted_start")])
    lag_hdr = np.array([t["request_start"] - t["targeted_start"] for t in tm
                        if t.get("request_start") and t.get("targeted_start")])
    sched_rate = (len(tgt) - 1) / (tgt[-1] - tgt[0]) if len(tgt) > 1 and tgt[-1] > tgt[0] else float("nan")
    if ok:
        start = min(q["info"]["timings"]["resolve_start"] for q in ok)
        end = max(q["info"]["timings"]["request_end"] or q["info"]["timings"]["resolve_end"] for q in ok)
        done_rate = len(ok) / (end - start) if end > start else float("nan")
    else:
        done_rate = 0.0
    achieved = done_rate / sched_rate if sched_rate == sched_rate and sched_rate > 0 else 0.0
    okf = len(ok) / (len(ok) + len(failed)) if ok or failed else 0.0
    return {"requests": len(every), "completed_rate": done_rate, "scheduled_rate": sched_rate,
            "achieved_ratio": achieved, "lag_p50_ms": _pct_ms(lag, 50), "lag_p99_ms": _pct_ms(lag, 99),
            "lag_hdr_p99_ms": _pct_ms(lag_hdr, 99), "ok_fraction": okf, "client_bound": None,
            "pass": bool(achieved >= 0.99 and _pct_ms(lag, 99) <= 5.0 and okf >= 0.999)}


# --------------------------------------------------------------------------- the benchmarks


def _row(client: str, arrival: str, rate: float, r: dict) -> str:
    extra = f"{r['lag_hdr_p99_ms']:8.2f}" if "lag_hdr_p99_ms" in r else f"{'':8}"
    cb = "" if r["client_bound"] is None else str(r["client_bound"])
    wait = f"{r['cpu_wait_ms']:9.0f}" if "cpu_wait_ms" in r else f"{'':9}"
    return (f"{client:8} {arrival:9} {rate:7g} {r['scheduled_rate']:7.1f} {r['completed_rate']:7.1f} "
            f"{r['achieved_ratio']:6.3f} {r['lag_p50_ms']:8.2f} {r['lag_p99_ms']:8.2f} {extra}  "
            f"{'yes' if r['pass'] else 'NO ':4} {wait}  {cb}")


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def overhead(args) -> None:
    """Both clients, both arrivals, against one server; highest on-schedule rates and the ratios."""
    os.sched_setaffinity(0, {0})
    srv, url = start_server(core=os.cpu_count() - 1)
    rates = [100, 200, 300, 400, 500, 600, 800, 1200] if not args.quick else [100, 200, 300, 400, 600, 1000]
    gl_rates = [25, 50, 100, 150, 200, 300] if not args.quick else [50, 100, 150, 200]
    dur = 4.0 if args.quick else 6.0
    best: dict[str, float] = {}
    gl_best: dict[str, float] = {}
    peak: dict[str, float] = {}
    use_gl = GUIDELLM.exists() and not args.no_guidellm
    print(f"client overhead: server on core {os.cpu_count() - 1}, clients on core 0, {TOKENS} tokens/request, "
          f"{dur:g} s per rate; guidellm: {'0.8.1, ' + str(args.guidellm_workers) + ' worker process(es)' if use_gl else 'not run'}")
    print(f"criterion: achieved ≥ 99% of the schedule's rate, p99 dispatch lag ≤ 5 ms, ≥ 99.9% ok;  {_load()}")
    print(f"{'client':8} {'arrival':9} {'target':>7} {'sched':>7} {'done/s':>7} {'ratio':>6} {'lag p50':>8} "
          f"{'lag p99':>8} {'p99 hdr':>8}  pass  cpu wait  client_bound")
    print("(cpu wait: ms the client was runnable but its core ran another process, during the level)")
    try:
        run_pdlab(url, "constant", 50, 1.0)  # warm up imports, tokenizer, connections
        for arrival in ("poisson", "constant"):
            for rate in rates:
                r = run_pdlab(url, arrival, rate, dur)
                print(_row("pdlab", arrival, rate, r), flush=True)
                peak[arrival] = max(peak.get(arrival, 0), r["completed_rate"])
                if r["pass"]:
                    best[arrival] = max(best.get(arrival, 0), rate)
                if rate == rates[-1]:
                    print(f"{'':8} {arrival:9} past saturation: completed {r['completed_rate']:.0f}/s = "
                          f"{r['completed_rate'] / peak[arrival]:.0%} of this sweep's peak {peak[arrival]:.0f}/s, "
                          f"client_bound={r['client_bound']}")
            if use_gl:
                with tempfile.TemporaryDirectory() as td:
                    figs, err = run_guidellm(url, arrival, gl_rates, dur, Path(td), workers=args.guidellm_workers)
                if err:
                    print(f"guidellm {arrival}: failed: {err}")
                for rate, g in zip(gl_rates, figs, strict=False):
                    print(_row("guidellm", arrival, rate, g), flush=True)
                    if g["pass"]:
                        gl_best[arrival] = max(gl_best.get(arrival, 0), rate)
    finally:
        srv.kill()
        srv.join(5)
    print(f"\n{_load()}")
    for arrival in ("poisson", "constant"):
        target = 300 if arrival == "poisson" else 400
        p = best.get(arrival, 0)
        line = f"highest on-schedule rate, {arrival:8}: pdlab {p:g} req/s (target ≥ {target})"
        if use_gl:
            g = gl_best.get(arrival, 0)
            if g:
                line += f", guidellm {g:g} req/s, ratio {p / g:.1f}x (target ≥ 3x)"
            else:
                line += f", guidellm < {gl_rates[0]:g} req/s (on schedule at no rate tried), ratio > {p / gl_rates[0]:.0f}x"
        print(line)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


MEM_REAL_RATE = 100_000 / 1800  # 100,000 requests in 30 minutes: 55.6 req/s
MEM_REAL_E2E_S = 3.0  # modelled end-to-end latency of a request in that real run (→ ≈ 167 in flight)


def memory(args) -> None:
    """100,000 requests of a 30-minute run, time-compressed ×K with the same requests and the same in-flight."""
    os.sched_setaffinity(0, {0})
    n = 10_000 if args.quick else 100_000
    k = args.memory_compress
    rate = MEM_REAL_RATE * k
    gap = MEM_REAL_E2E_S / k / TOKENS  # server latency shrinks by K too, so in-flight (rate × E2E) is unchanged
    srv, url = start_server(core=os.cpu_count() - 1, gap_s=gap)
    print(f"memory: {n:,} requests, 1024-token prompts, {TOKENS} output tokens, constant arrivals; {_load()}")
    print(f"  real workload: {MEM_REAL_RATE:.1f} req/s for {n / MEM_REAL_RATE / 60:.0f} min, E2E {MEM_REAL_E2E_S:g} s "
          f"→ {MEM_REAL_RATE * MEM_REAL_E2E_S:.0f} requests in flight")
    print(f"  compressed ×{k:g}: {rate:.1f} req/s for {n / rate / 60:.1f} min, server E2E {gap * TOKENS:.2f} s "
          f"({gap * 1000:.1f} ms/token) → same {rate * gap * TOKENS:.0f} in flight; same prompts, records, spill parts")
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.2)

    spill = Path(tempfile.mkdtemp(prefix="pdlab-mem-"))
    import pandas  # noqa: F401 - count the libraries' own footprint in the baseline
    import pyarrow  # noqa: F401

    from pdlab.measure.load.datasets import word_tokens

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
    print(f"  ran in {wall:.0f} s: scheduled {r['scheduled_rate']:.1f}/s, completed {r['completed_rate']:.1f}/s "
          f"({r['achieved_ratio']:.3f}), lag p50 {r['lag_p50_ms']:.2f} ms p99 {r['lag_p99_ms']:.2f} ms, "
          f"ok {r['ok_fraction']:.4f}, client_bound={r['client_bound']}")
    print(f"  RSS before {base:.0f} MB, peak during run + summary {peak[0]:.0f} MB (ru_maxrss {maxrss:.0f} MB), "
          f"growth {peak[0] - base:.0f} MB; target < 500 MB: {'met' if maxrss < 500 else 'NOT met'};  {_load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shortened run (fewer rates, 10,000-request memory run)")
    ap.add_argument("--only", choices=["overhead", "memory"])
    ap.add_argument("--no-guidellm", action="store_true")
    ap.add_argument("--memory-compress", type=float, default=5.0,
                    help="time compression of the memory run (1 = the real 30 minutes; default 5)")
    ap.add_argument("--guidellm-workers", type=int, default=1, help="guidellm worker processes (default 1)")
    args = ap.parse_args()
    if args.only in (None, "overhead"):
        overhead(args)
    if args.only in (None, "memory"):
        print()
        memory(args)


if __name__ == "__main__":
    main()
