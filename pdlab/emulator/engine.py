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

Prefix cache (SGLang's RadixAttention, ``radix.RadixCache``; on unless ``radix_cache=False``): a request that
carries its prompt's token ids (``Req.tokens``) is matched against the cache when admitted; the cached tokens
(whole pages, at least one prompt token left to compute) skip prefill compute but their KV stays shared in the
pool. The prompt is inserted after its prefill (so concurrent requests with the same prefix hit), prompt +
output at finish. KV accounting: every admitted request reserves its uncached tokens; reserved + cache size
never exceeds the pool, least-recently-used unlocked prefixes are evicted to make room.

KV link contention (PD): every worker's link is a FIFO at the link's bandwidth; a transfer occupies the
prefill's link and then (overlapping in time) the decode's, so transfers leaving one prefill worker or entering
one decode worker queue: n of them at once take n × one transfer's time (the real-time worker does the same).

``simulate(requests, config, ...)`` runs the same engines in virtual time (discrete events, no HTTP):
colocated workers or prefill/decode workers with the KV transfer over the link, requests placed by a
router policy (``routing``; round-robin unless told otherwise).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pdlab.emulator import perfmodel, routing
from pdlab.emulator.radix import Node, RadixCache
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
    radix_cache: bool = True
    page_size: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
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
    tokens: Sequence[int] | None = None  # prompt token ids (prefix caching); None: never cached
    out_ids: list[int] | None = None  # generated ids (the driver appends); cached with the prompt at finish
    cached: int = 0  # prompt tokens found in the prefix cache at admission
    covered: int = 0  # prompt tokens of this request held by the cache (shared, not in `reserved`)
    node: Node | None = None  # the cache node this request locks

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
        self.cached_tokens_total = 0
        self.last_hit_rate = 0.0
        self.steps = 0
        self.cache = RadixCache(config.page_size) if config.radix_cache else None
        self.power = perfmodel.PowerState()  # boost clocks from idle, the power cap under sustained prefill

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
    def used_tokens(self) -> int:
        """KV tokens in use: requests' own tokens plus cached prefixes a request holds (SGLang's num_used_tokens)."""
        return self.used + (self.cache.protected if self.cache else 0)

    @property
    def cache_size(self) -> int:
        """Tokens in the prefix cache."""
        return self.cache.size if self.cache else 0

    @property
    def token_usage(self) -> float:
        """Fraction of the KV pool holding tokens in use (evictable cached prefixes not counted, as in SGLang)."""
        return self.used_tokens / self.pool if self.pool else 0.0

    def _try_admit(self, req: Req, pending: int = 0) -> bool:
        """Give `req` KV if a running slot and memory are free: match its cached prefix, lock it, reserve the
        rest (evicting unused cached prefixes when short). False leaves everything as it was."""
        if self.num_running + pending >= self.config.max_running_requests:
            return False
        m, node = 0, None
        if self.cache is not None and req.tokens is not None:
            m, node = self.cache.match(req.tokens[: req.prompt_len - 1])
            self.cache.lock(node)
        need = self._need(req.prompt_len, req.max_new_tokens) - m
        short = self.reserved + need + self.cache_size - self.pool
        if short > 0 and self.cache is not None:
            self.cache.evict(short)
            short = self.reserved + need + self.cache_size - self.pool
        if short > 0:
            if node is not None:
                self.cache.unlock(node)  # type: ignore[union-attr]
            return False
        req.node, req.cached, req.covered = node, m, m
        req.reserved = need
        self.reserved += need
        return True

    def _cache_tokens(self, req: Req, tokens: Sequence[int]) -> None:
        """Insert `tokens` (a prefix of the request's sequence, KV computed) into the cache; the tokens now held
        by the cache stop counting against the request (a duplicate of a prefix cached meanwhile is freed)."""
        if self.cache is None or req.tokens is None:
            return
        _, node = self.cache.insert(tokens)
        self.cache.lock(node)
        if req.node is not None:
            self.cache.unlock(req.node)
        req.node = node
        moved = min(self.cache._aligned(len(tokens)), req.prompt_len + req.generated) - req.covered
        if moved > 0:
            req.covered += moved
            req.reserved -= moved
            self.reserved -= moved
            req.held -= moved
            self.used -= moved

    def _free(self, req: Req) -> None:
        self.reserved -= req.reserved
        self.used -= req.held
        req.reserved = 0
        req.held = 0
        if req.node is not None and self.cache is not None:
            self.cache.unlock(req.node)
        req.node = None

    def flush(self) -> bool:
        """SGLang's /flush_cache: empty the prefix cache, refused (False) while requests are queued or running."""
        if self.waiting or self.running or self.chunked or self.transferring:
            return False
        if self.cache is not None:
            self.cache.reset()
        return True

    # -- scheduling -----------------------------------------------------------------------------
    def next_batch(self, now: float) -> Batch | None:
        """The next forward step: a prefill batch if one can be formed (priority), else a decode step."""
        if self.config.mode != "decode":
            batch = self._prefill_batch(now)
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

    def _prefill_batch(self, now: float) -> Batch | None:
        cfg = self.config
        chunk = cfg.chunked_prefill_size if cfg.chunked_prefill_size and cfg.chunked_prefill_size > 0 else 1 << 62
        budget = min(chunk, cfg.max_prefill_tokens if cfg.max_prefill_tokens > 0 else 1 << 62)
        items: list[tuple[Req, int]] = []
        hit = new = 0
        if self.chunked is not None:
            r = self.chunked
            n = min(r.prompt_len - r.prefilled, budget)
            items.append((r, n))
            budget -= n
        while self.waiting and budget > 0:
            r = self.waiting[0]
            if not self._try_admit(r, len(items) - (self.chunked is not None)):
                break  # FCFS: the head waits for KV or a running slot
            self.waiting.popleft()
            r.state = "prefilling"
            r.prefilled = r.cached
            self.cached_tokens_total += r.cached
            hit += r.cached
            new += r.prompt_len - r.cached
            n = min(r.prompt_len - r.prefilled, budget)
            items.append((r, n))
            budget -= n
            if r.prefilled + n < r.prompt_len:
                break
        if not items:
            return None
        if hit + new:
            self.last_hit_rate = hit / (hit + new)
        batch = Batch("prefill", prefill=items)
        batch.cost = perfmodel.step_time(
            cfg.model, cfg.gpu, cfg.tp, prefill=[(n, r.prefilled) for r, n in items], overhead_s=cfg.step_overhead_s,
            heat=self.power.heat_at(now),
        )
        return batch

    def complete(self, batch: Batch, now: float) -> None:
        """Apply a finished step at time `now`: advance prefills, emit tokens, finish requests."""
        self.steps += 1
        if perfmodel.PowerState.is_hot(batch.cost):
            self.power.hot_step(batch.cost.total_s, now)
        if batch.kind == "prefill":
            self.chunked = None
            for r, n in batch.prefill:
                if r.state != "prefilling":
                    continue  # aborted meanwhile
                r.prefilled += n
                r.held += n
                self.used += n
                self.prompt_tokens_total += n
                if r.tokens is not None:
                    self._cache_tokens(r, r.tokens[: r.prefilled])
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
        if r.tokens is not None and self.config.mode != "prefill":
            out = list(r.out_ids or ())[: max(r.generated - 1, 0)]
            self._cache_tokens(r, list(r.tokens[: r.prompt_len]) + out)
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
        while self.waiting and self._try_admit(self.waiting[0]):
            r = self.waiting.popleft()
            self.cached_tokens_total += r.cached
            r.state = "kv_wait"
            self.transferring[r.rid] = r
            out.append(r)
        return out

    def kv_arrived(self, req: Req, now: float) -> None:
        """Decode mode: the prompt's KV (and the prefill's first token) arrived; start decoding."""
        if self.transferring.pop(req.rid, None) is None:
            return
        req.prefilled = req.prompt_len
        req.held += req.prompt_len - req.covered
        self.used += req.prompt_len - req.covered
        if req.tokens is not None:
            self._cache_tokens(req, req.tokens[: req.prompt_len])
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
    """A request for `simulate`: arrival time (s), prompt tokens, output tokens; optionally the prompt's token
    ids (prefix caching, cache-aware routing), the output ids cached after it, and `after`: the index of the
    request this one follows in a session — then `arrival` is the think time after that one finished."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    tokens: tuple[int, ...] | None = None
    output_ids: tuple[int, ...] | None = None
    after: int | None = None


@dataclass(frozen=True)
class RequestTiming:
    """Per-request outcome of `simulate` (seconds, virtual time); cached tokens on the prefill (or colocated)
    worker and on the decode worker."""

    index: int
    arrival: float
    prompt_tokens: int
    output_tokens: int
    ttft: float
    e2e: float
    tpot: float
    max_itl: float
    cached_tokens: int = 0
    decode_cached_tokens: int = 0


def simulate(
    requests: Iterable[SimRequest],
    config: EngineConfig,
    *,
    workers: int = 1,
    prefill_workers: int = 0,
    decode_workers: int = 0,
    decode_config: EngineConfig | None = None,
    policy: routing.Policy | None = None,
    prefill_policy: routing.Policy | None = None,
    decode_policy: routing.Policy | None = None,
    seed: int = 0,
    max_events: int = 50_000_000,
    stop: Callable[[float, dict[int, RequestTiming]], bool] | None = None,
    check_every: int = 256,
    coalesce: bool = True,
) -> list[RequestTiming]:
    """Run requests through emulated workers in virtual time; colocated (`workers`) or PD (`*_workers` > 0).

    `stop(now, finished)` is asked every `check_every` events whether to end early (the requests finished by then
    are returned). `coalesce` runs up to COALESCE_STEPS decode-only steps of one engine as a single event (exact:
    anything touching that engine meanwhile cuts the run at the step in progress). Requests are placed by `policy`
    (round-robin when None), in PD by `prefill_policy` / `decode_policy` when given (as sglang-router's
    --prefill-policy / --decode-policy override --policy).
    """
    reqs = list(requests)
    followers: dict[int, list[int]] = {}
    for i, sr in enumerate(reqs):
        if sr.after is not None:
            followers.setdefault(sr.after, []).append(i)
    pd = prefill_workers > 0
    base = policy or routing.Policy("round_robin")
    if pd:
        if decode_workers <= 0:
            raise ValueError("PD simulation needs decode_workers > 0")
        pcfg = _with_mode(config, "prefill")
        dcfg = _with_mode(decode_config or config, "decode")
        prefills = [Engine(pcfg) for _ in range(prefill_workers)]
        decodes = [Engine(dcfg) for _ in range(decode_workers)]
        engines = prefills + decodes
        pick_p = routing.Picker(prefill_workers, prefill_policy or base, seed)
        pick_d = routing.Picker(decode_workers, decode_policy or base, seed + 1)
    else:
        engines = [Engine(_with_mode(config, "null")) for _ in range(workers)]
        prefills, decodes = engines, []
        pick_p = pick_d = routing.Picker(workers, base, seed)
    index = {id(e): k for k, e in enumerate(prefills)} | {id(e): k for k, e in enumerate(decodes)}
    seq = itertools.count()
    heap: list[tuple[float, int, str, object]] = []
    busy = {id(e): False for e in engines}
    runs: dict[int, list] = {}  # id(engine) -> [batch, step end times, event id] of a coalesced decode run
    span = {id(e): 4 for e in engines}  # steps the next run of an engine plans (grows while runs go uncut)
    link_free = {id(e): 0.0 for e in engines}  # each worker's KV link: a FIFO (prefill sends, decode receives)
    results: dict[int, RequestTiming] = {}
    pair: dict[str, dict] = {}  # rid -> {"p": (engine, req), "d": (engine, req), "p_done", "d_ready"}
    arrived: dict[int, float] = {}
    p_cached: dict[str, int] = {}  # PD: prefill-side cached tokens of requests whose KV was sent

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
            de, dr = p["d"]
            dur = perfmodel.kv_transfer_time(pr.prompt_len - dr.cached, pe.config.model, pe.config.link)
            sent = link_free[id(pe)] = max(t, link_free[id(pe)]) + dur
            got = link_free[id(de)] = max(sent - dur, link_free[id(de)]) + dur
            push(got, "kv", rid)

    def record(i: int, r: Req, cached: int, t: float) -> None:
        t0 = arrived[i]
        ttft = r.t_first - t0
        e2e = r.t_finish - t0
        tpot = (r.t_finish - r.t_first) / (r.generated - 1) if r.generated > 1 else 0.0
        dcached = r.cached if pd else 0
        results[i] = RequestTiming(i, t0, r.prompt_len, r.generated, ttft, e2e, tpot, r.max_itl, cached, dcached)
        for j in followers.get(i, ()):
            push(t + reqs[j].arrival, "arrive", j)

    def listener_for(i: int, role: str, e: Engine):
        def on(kind: str, r: Req) -> None:
            if role == "p" and kind == "prefill_done":
                pair[r.rid]["p_done"] = r.t_prefill_done
                maybe_transfer(r.rid, r.t_prefill_done)
            elif role == "p" and kind == "finished":
                pick_p.done(index[id(e)])
            elif role in ("c", "d") and kind == "finished":
                (pick_d if pd else pick_p).done(index[id(e)])
                cached = p_cached.pop(r.rid, 0) if pd else r.cached
                record(i, r, cached, r.t_finish)

        return on

    for i, sr in enumerate(reqs):
        if sr.after is None:
            push(sr.arrival, "arrive", i)
    events = 0
    while heap and events < max_events:
        events += 1
        t, _, kind, payload = heapq.heappop(heap)
        if stop is not None and events % check_every == 0 and stop(t, results):
            break
        if kind == "arrive":
            i = payload
            sr = reqs[i]
            arrived[i] = t
            rid = f"r{i}"
            hashes = routing.block_hashes(sr.tokens)
            out = list(sr.output_ids) if sr.output_ids is not None else None
            if pd:
                pe = prefills[pick_p.pick(sr.tokens, hashes, sr.prompt_tokens)]
                de = decodes[pick_d.pick(sr.tokens, hashes, sr.prompt_tokens)]
                pr = Req(rid, sr.prompt_tokens, 1, t, listener_for(i, "p", pe), tokens=sr.tokens)
                dr = Req(rid, sr.prompt_tokens, sr.output_tokens, t, listener_for(i, "d", de), tokens=sr.tokens,
                         out_ids=out)
                pair[rid] = {"p": (pe, pr), "d": (de, dr)}
                pe.submit(pr)
                de.submit(dr)
                poke(pe, t)
                poke(de, t)
            else:
                e = engines[pick_p.pick(sr.tokens, hashes, sr.prompt_tokens)]
                e.submit(Req(rid, sr.prompt_tokens, sr.output_tokens, t, listener_for(i, "c", e), tokens=sr.tokens,
                             out_ids=out))
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
            p_cached[payload] = pr.cached
            pe.release(pr, t)
            de.kv_arrived(dr, t)
            poke(pe, t)
            poke(de, t)
    return [results[i] for i in sorted(results)]


def _with_mode(config: EngineConfig, mode: str) -> EngineConfig:
    from dataclasses import replace

    return replace(config, mode=mode)


