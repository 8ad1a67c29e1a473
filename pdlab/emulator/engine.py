"""Clock-agnostic scheduler core of an emulated SGLang worker, and a virtual-time simulator over it.

``Engine`` does what SGLang's scheduler does, without a clock of its own: a FCFS waiting queue, continuous
batching, chunked prefill (``chunked_prefill_size``, ``max_prefill_tokens``), a KV token pool sized by
``perfmodel.kv_pool_tokens``, ``max_running_requests``, queueing when the KV pool is full (a request
reserves prompt + max_new_tokens when admitted, so nothing is ever retracted), and — in colocated mode —
prefill batches taking priority over decode steps. A driver asks ``next_batch(now)`` for the next forward
step (with its modelled ``StepCost``), waits ``cost.total_s`` in its own clock, then calls
``complete(batch, now)``; the engine reports progress through each request's ``listener``.

PD modes: a ``prefill`` engine never decodes; after a prompt is prefilled the request waits in
``transferring`` until the driver calls ``release(req)`` (KV sent). A ``decode`` engine admits requests
into KV (``admit(now)`` returns those newly allocated, for the driver to register with the prefill's
bootstrap server) and starts decoding one only after ``kv_arrived(req, now)``.

``simulate(requests, config, ...)`` runs the same engines in virtual time (discrete events, no HTTP):
colocated workers behind round-robin, or prefill/decode workers with the KV transfer over the link.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pdlab.emulator import perfmodel
from pdlab.experiment.profiles import GPUProfile, LinkProfile, ModelProfile
from pdlab.experiment.profiles import link as link_profile

MODES = ("null", "prefill", "decode")
COALESCE_STEPS = 32  # most decode steps `simulate` runs as one event


@dataclass
class EngineConfig:
    """One worker's model, GPU, TP size, mode and SGLang scheduler settings."""

    model: ModelProfile
    gpu: GPUProfile
    tp: int = 1
    mode: str = "null"
    chunked_prefill_size: int = 8192
    max_prefill_tokens: int = 16384
    max_running_requests: int = 2048
    mem_fraction_static: float = 0.88
    context_length: int | None = None
    step_overhead_s: float | None = None  # None: the GPU profile's step_overhead_ms
    kv_pool_tokens: int | None = None
    link: LinkProfile | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.kv_pool_tokens is None:
            self.kv_pool_tokens = perfmodel.kv_pool_tokens(self.model, self.gpu, self.tp, self.mem_fraction_static)
        if self.context_length is None:
            self.context_length = self.model.max_position_embeddings
        if self.link is None:
            self.link = link_profile("erdma")


@dataclass(eq=False)
class Req:
    """One request inside an engine: sizes, progress, timestamps (in the driver's clock) and a listener."""

    rid: str
    prompt_len: int
    max_new_tokens: int
    arrival: float = 0.0
    listener: Callable[[str, Req], None] | None = None
    ctx: object = None  # the driver's per-request object (e.g. the HTTP stream)
    state: str = "new"  # waiting, prefilling, transferring, kv_wait, running, finished, aborted
    prefilled: int = 0
    generated: int = 0
    reserved: int = 0
    held: int = 0
    t_first: float | None = None
    t_last: float | None = None
    t_finish: float | None = None
    t_prefill_done: float | None = None
    max_itl: float = 0.0
    error: str | None = None

    def _emit(self, kind: str) -> None:
        if self.listener is not None:
            self.listener(kind, self)


@dataclass
class Batch:
    """One forward step: prefill items (req, new tokens) or decode requests, and its modelled cost."""

    kind: str
    prefill: list[tuple[Req, int]] = field(default_factory=list)
    decode: list[Req] = field(default_factory=list)
    cost: perfmodel.StepCost | None = None


class Engine:
    """SGLang-like scheduler over a KV pool; no clock of its own (see module docstring)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.pool = int(config.kv_pool_tokens or 0)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []  # decoding
        self.chunked: Req | None = None  # partially prefilled request
        self.transferring: dict[str, Req] = {}  # prefill mode: KV being sent; decode mode: KV awaited
        self.reserved = 0
        self.used = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.steps = 0

    # -- submission and state -------------------------------------------------------------------
    def check(self, prompt_len: int, max_new_tokens: int) -> str | None:
        """Why a request can never run here (context length, KV pool), or None if it fits."""
        ctx = self.config.context_length or 0
        if prompt_len >= ctx:
            return f"The input ({prompt_len} tokens) is longer than the model's context length ({ctx} tokens)."
        if prompt_len + max_new_tokens > ctx:
            return (
                f"Requested token count exceeds the model's maximum context length of {ctx} tokens. "
                f"You requested a total of {prompt_len + max_new_tokens} tokens: {prompt_len} tokens from "
                f"the input messages and {max_new_tokens} tokens for the completion."
            )
        if self._need(prompt_len, max_new_tokens) > self.pool:
            return f"The request needs {prompt_len + max_new_tokens} KV tokens; the KV pool has {self.pool}."
        return None

    def _need(self, prompt_len: int, max_new_tokens: int) -> int:
        return prompt_len if self.config.mode == "prefill" else prompt_len + max_new_tokens

    def submit(self, req: Req) -> None:
        """Queue a request (FCFS)."""
        req.state = "waiting"
        self.waiting.append(req)

    @property
    def num_running(self) -> int:
        """Requests holding KV and being served (SGLang's running batch plus in-flight prefill/transfer)."""
        return len(self.running) + len(self.transferring) + (1 if self.chunked else 0)

    @property
    def num_queued(self) -> int:
        """Requests waiting for admission."""
        return len(self.waiting)

    @property
    def token_usage(self) -> float:
        """Fraction of the KV pool holding tokens."""
        return self.used / self.pool if self.pool else 0.0

    def _can_admit(self, req: Req, pending: int = 0) -> bool:
        need = self._need(req.prompt_len, req.max_new_tokens)
        return (self.num_running + pending < self.config.max_running_requests
                and self.reserved + need <= self.pool)

    def _allocate(self, req: Req) -> None:
        req.reserved = self._need(req.prompt_len, req.max_new_tokens)
        self.reserved += req.reserved

    def _free(self, req: Req) -> None:
        self.reserved -= req.reserved
        self.used -= req.held
        req.reserved = 0
        req.held = 0

    # -- scheduling -----------------------------------------------------------------------------
    def next_batch(self, now: float) -> Batch | None:
        """The next forward step: a prefill batch if one can be formed (priority), else a decode step."""
        if self.config.mode != "decode":
            batch = self._prefill_batch()
            if batch is not None:
                return batch
        if self.running and self.config.mode != "prefill":
            kv = [r.prompt_len + r.generated for r in self.running]
            batch = Batch("decode", decode=list(self.running))
            batch.cost = perfmodel.step_time(
                self.config.model, self.config.gpu, self.config.tp, decode=kv, overhead_s=self.config.step_overhead_s
            )
            return batch
        return None

    def _prefill_batch(self) -> Batch | None:
        cfg = self.config
        chunk = cfg.chunked_prefill_size if cfg.chunked_prefill_size and cfg.chunked_prefill_size > 0 else 1 << 62
        budget = min(chunk, cfg.max_prefill_tokens if cfg.max_prefill_tokens > 0 else 1 << 62)
        items: list[tuple[Req, int]] = []
        if self.chunked is not None:
            r = self.chunked
            n = min(r.prompt_len - r.prefilled, budget)
            items.append((r, n))
            budget -= n
        while self.waiting and budget > 0:
            r = self.waiting[0]
            if not self._can_admit(r, len(items) - (self.chunked is not None)):
                break  # FCFS: the head waits for KV or a running slot
            self.waiting.popleft()
            self._allocate(r)
            r.state = "prefilling"
            n = min(r.prompt_len, budget)
            items.append((r, n))
            budget -= n
            if n < r.prompt_len:
                break
        if not items:
            return None
        batch = Batch("prefill", prefill=items)
        batch.cost = perfmodel.step_time(
            cfg.model, cfg.gpu, cfg.tp, prefill=[(n, r.prefilled) for r, n in items], overhead_s=cfg.step_overhead_s
        )
        return batch

    def complete(self, batch: Batch, now: float) -> None:
        """Apply a finished step at time `now`: advance prefills, emit tokens, finish requests."""
        self.steps += 1
        if batch.kind == "prefill":
            self.chunked = None
            for r, n in batch.prefill:
                if r.state != "prefilling":
                    continue  # aborted meanwhile
                r.prefilled += n
                r.held += n
                self.used += n
                self.prompt_tokens_total += n
                if r.prefilled < r.prompt_len:
                    self.chunked = r
                    continue
                r.t_prefill_done = now
                self._token(r, now)
                if r.state != "prefilling":
                    continue  # aborted by the listener (stop string)
                if self.config.mode == "prefill":
                    r.state = "transferring"
                    self.transferring[r.rid] = r
                    r._emit("prefill_done")
                elif r.generated >= r.max_new_tokens:
                    self._finish(r, now)
                else:
                    r.state = "running"
                    self.running.append(r)
        else:
            for r in batch.decode:
                if r.state != "running":
                    continue
                r.held += 1
                self.used += 1
                self._token(r, now)
                if r.state == "running" and r.generated >= r.max_new_tokens:
                    self._finish(r, now)
            self.running = [r for r in self.running if r.state == "running"]

    def complete_decode_run(self, batch: Batch, ends: list[float]) -> None:
        """Apply len(ends) consecutive decode steps of `batch`, step i ending at ends[i] (virtual time only).

        Same state as calling `complete` once per step, provided no request of the batch finishes before the last
        step and nothing else touched the engine meanwhile; emits "finished" but no "token" events.
        """
        k, now = len(ends), ends[-1]
        gap = max((b - a for a, b in zip(ends, ends[1:], strict=False)), default=0.0)
        first = ends[0]
        for r in batch.decode:
            if r.state != "running":
                continue
            r.generated += k
            r.held += k
            self.used += k
            self.generation_tokens_total += k
            r.max_itl = max(r.max_itl, gap, first - r.t_last if r.t_last is not None else 0.0)
            r.t_last = now
            if r.generated >= r.max_new_tokens:
                self._finish(r, now)
        self.steps += k
        self.running = [r for r in self.running if r.state == "running"]

    def _token(self, r: Req, now: float) -> None:
        r.generated += 1
        self.generation_tokens_total += 1
        if r.t_first is None:
            r.t_first = now
        elif r.t_last is not None:
            r.max_itl = max(r.max_itl, now - r.t_last)
        r.t_last = now
        r._emit("token")

    def _finish(self, r: Req, now: float) -> None:
        r.state = "finished"
        r.t_finish = now
        self._free(r)
        r._emit("finished")

    # -- PD -------------------------------------------------------------------------------------
    def release(self, req: Req, now: float, error: str | None = None) -> None:
        """Prefill mode: the request's KV has been sent (or the send failed); free it and finish."""
        if self.transferring.pop(req.rid, None) is None:
            return
        if error:
            req.error = error
            req.state = "aborted"
            self._free(req)
            req.t_finish = now
            req._emit("aborted")
            return
        self._finish(req, now)

    def admit(self, now: float) -> list[Req]:
        """Decode mode: allocate KV for waiting requests (FCFS); returns those now awaiting their KV."""
        out = []
        while self.waiting and self._can_admit(self.waiting[0]):
            r = self.waiting.popleft()
            self._allocate(r)
            r.state = "kv_wait"
            self.transferring[r.rid] = r
            out.append(r)
        return out

    def kv_arrived(self, req: Req, now: float) -> None:
        """Decode mode: the prompt's KV (and the prefill's first token) arrived; start decoding."""
        if self.transferring.pop(req.rid, None) is None:
            return
        req.prefilled = req.prompt_len
        req.held += req.prompt_len
        self.used += req.prompt_len
        req.t_prefill_done = now
        req.state = "running"
        self.running.append(req)
        self._token(req, now)
        if req.state == "running" and req.generated >= req.max_new_tokens:
            self.running.remove(req)
            self._finish(req, now)

    def abort(self, req: Req, now: float, error: str = "aborted") -> None:
        """Drop a request wherever it is (client gone, stop string matched, PD failure); frees its KV."""
        if req.state in ("finished", "aborted", "new"):
            return
        if req.state == "waiting":
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
            req.state = "aborted"
            req.error = error
            req._emit("aborted")
            return
        if self.chunked is req:
            self.chunked = None
        self.transferring.pop(req.rid, None)
        if req in self.running:
            self.running.remove(req)
        self._free(req)
        req.state = "aborted"
        req.error = error
        req.t_finish = now
        req._emit("aborted")


# -- virtual time ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimRequest:
    """A request for `simulate`: arrival time (s), prompt tokens, output tokens."""

    arrival: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class RequestTiming:
    """Per-request outcome of `simulate` (seconds, virtual time)."""

    index: int
    arrival: float
    prompt_tokens: int
    output_tokens: int
    ttft: float
    e2e: float
    tpot: float
    max_itl: float


def simulate(
    requests: Iterable[SimRequest],
    config: EngineConfig,
    *,
    workers: int = 1,
    prefill_workers: int = 0,
    decode_workers: int = 0,
    decode_config: EngineConfig | None = None,
    max_events: int = 50_000_000,
    stop: Callable[[float, dict[int, RequestTiming]], bool] | None = None,
    check_every: int = 256,
    coalesce: bool = True,
) -> list[RequestTiming]:
    """Run requests through emulated workers in virtual time; colocated (`workers`) or PD (`*_workers` > 0).

    `stop(now, finished)` is asked every `check_every` events whether to end early (the requests finished by then
    are returned). `coalesce` runs up to COALESCE_STEPS decode-only steps of one engine as a single event (exact:
    anything touching that engine meanwhile cuts the run at the step in progress).
    """
    reqs = sorted(enumerate(requests), key=lambda x: x[1].arrival)
    pd = prefill_workers > 0
    if pd:
        if decode_workers <= 0:
            raise ValueError("PD simulation needs decode_workers > 0")
        pcfg = _with_mode(config, "prefill")
        dcfg = _with_mode(decode_config or config, "decode")
        prefills = [Engine(pcfg) for _ in range(prefill_workers)]
        decodes = [Engine(dcfg) for _ in range(decode_workers)]
        engines = prefills + decodes
    else:
        engines = [Engine(_with_mode(config, "null")) for _ in range(workers)]
        prefills, decodes = engines, []
    seq = itertools.count()
    heap: list[tuple[float, int, str, object]] = []
    busy = {id(e): False for e in engines}
    runs: dict[int, list] = {}  # id(engine) -> [batch, step end times, event id] of a coalesced decode run
    span = {id(e): 4 for e in engines}  # steps the next run of an engine plans (grows while runs go uncut)
    link_free = {id(e): 0.0 for e in prefills}
    results: dict[int, RequestTiming] = {}
    pair: dict[str, dict] = {}  # rid -> {"p": (engine, req), "d": (engine, req), "p_done", "d_ready"}

    def push(t: float, kind: str, payload: object) -> None:
        heapq.heappush(heap, (t, next(seq), kind, payload))

    def poke(e: Engine, t: float) -> None:
        if busy[id(e)]:
            run = runs.get(id(e))
            if run is not None:  # something reached a coalesced run: it ends with the step in progress
                ends = run[1]
                j = next(i for i, end in enumerate(ends) if end > t)
                if j < len(ends) - 1:
                    span[id(e)] = max(2, j + 1)
                    del ends[j + 1:]
                    run[2] = next(seq)
                    push(ends[-1], "run", (e, run[2]))
            return
        if e.config.mode == "decode":
            for r in e.admit(t):
                pair[r.rid]["d_ready"] = t
                maybe_transfer(r.rid, t)
        b = e.next_batch(t)
        if b is None:
            return
        busy[id(e)] = True
        if coalesce and b.kind == "decode":
            k = min(span[id(e)], min(r.max_new_tokens - r.generated for r in b.decode))
            if k > 1:
                cfg = e.config
                kv = [r.prompt_len + r.generated for r in b.decode]
                ends = [t + b.cost.total_s]
                for i in range(1, k):
                    cost = perfmodel.step_time(cfg.model, cfg.gpu, cfg.tp, decode=[x + i for x in kv],
                                               overhead_s=cfg.step_overhead_s)
                    ends.append(ends[-1] + cost.total_s)
                runs[id(e)] = [b, ends, next(seq)]
                push(ends[-1], "run", (e, runs[id(e)][2]))
                return
        push(t + b.cost.total_s, "step", (e, b))

    def maybe_transfer(rid: str, t: float) -> None:
        p = pair[rid]
        if "p_done" in p and "d_ready" in p and "sent" not in p:
            p["sent"] = True
            pe, pr = p["p"]
            start = max(t, link_free[id(pe)])
            dur = perfmodel.kv_transfer_time(pr.prompt_len, pe.config.model, pe.config.link)
            link_free[id(pe)] = start + dur
            push(start + dur, "kv", rid)

    def record(i: int, sr: SimRequest, r: Req) -> None:
        ttft = r.t_first - sr.arrival
        e2e = r.t_finish - sr.arrival
        tpot = (r.t_finish - r.t_first) / (r.generated - 1) if r.generated > 1 else 0.0
        results[i] = RequestTiming(i, sr.arrival, sr.prompt_tokens, r.generated, ttft, e2e, tpot, r.max_itl)

    def listener_for(i: int, sr: SimRequest, role: str):
        def on(kind: str, r: Req) -> None:
            if role == "p" and kind == "prefill_done":
                pair[r.rid]["p_done"] = r.t_prefill_done
                maybe_transfer(r.rid, r.t_prefill_done)
            elif role in ("c", "d") and kind == "finished":
                record(i, sr, r)

        return on

    for i, sr in reqs:
        push(sr.arrival, "arrive", (i, sr))
    rr = itertools.count()
    events = 0
    while heap and events < max_events:
        events += 1
        t, _, kind, payload = heapq.heappop(heap)
        if stop is not None and events % check_every == 0 and stop(t, results):
            break
        if kind == "arrive":
            i, sr = payload
            rid = f"r{i}"
            k = next(rr)
            if pd:
                pe, de = prefills[k % len(prefills)], decodes[k % len(decodes)]
                pr = Req(rid, sr.prompt_tokens, 1, t, listener_for(i, sr, "p"))
                dr = Req(rid, sr.prompt_tokens, sr.output_tokens, t, listener_for(i, sr, "d"))
                pair[rid] = {"p": (pe, pr), "d": (de, dr)}
                pe.submit(pr)
                de.submit(dr)
                poke(pe, t)
                poke(de, t)
            else:
                e = engines[k % len(engines)]
                e.submit(Req(rid, sr.prompt_tokens, sr.output_tokens, t, listener_for(i, sr, "c")))
                poke(e, t)
        elif kind == "step":
            e, b = payload
            busy[id(e)] = False
            if coalesce and b.kind == "decode":
                e.complete_decode_run(b, [t])
            else:
                e.complete(b, t)
            poke(e, t)
        elif kind == "run":
            e, event_id = payload
            run = runs.get(id(e))
            if run is None or run[2] != event_id:
                continue  # superseded: the run was cut short
            del runs[id(e)]
            if len(run[1]) == span[id(e)]:
                span[id(e)] = min(2 * span[id(e)], COALESCE_STEPS)
            busy[id(e)] = False
            e.complete_decode_run(run[0], run[1])
            poke(e, t)
        elif kind == "kv":
            p = pair.pop(payload)
            pe, pr = p["p"]
            de, dr = p["d"]
            pe.release(pr, t)
            de.kv_arrived(dr, t)
            poke(pe, t)
            poke(de, t)
    return [results[i] for i in sorted(results)]


def _with_mode(config: EngineConfig, mode: str) -> EngineConfig:
    from dataclasses import replace

    return replace(config, mode=mode)


