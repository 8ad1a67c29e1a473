"""One emulated worker: engine + real-time driver + metrics + PD handoff; turns parsed requests into token streams."""

from __future__ import annotations

import asyncio
import os
import sys
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pdlab.emulator import perfmodel
from pdlab.emulator.api import BadRequest, GenRequest
from pdlab.emulator.bootstrap import BootstrapServer, HandoffError, fetch_kv
from pdlab.emulator.driver import RealtimeDriver
from pdlab.emulator.engine import Batch, Engine, EngineConfig, Req
from pdlab.emulator.faults import FaultConfig, Faults
from pdlab.emulator.metrics import WorkerMetrics
from pdlab.emulator.tokens import TokenWalk


@dataclass
class WorkerConfig:
    """Everything a worker needs besides the engine: identity, PD wiring, emulation knobs."""

    engine: EngineConfig
    model_path: str
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 30000
    bootstrap_port: int = 8998
    transfer_backend: str = "mooncake"
    enable_metrics: bool = False
    stream_interval: int = 1
    time_scale: float = 1.0
    pd_timeout_s: float = 120.0
    seed: int = 0
    enable_cache_report: bool = False
    faults: FaultConfig = field(default_factory=FaultConfig)
    server_args: dict = field(default_factory=dict)


class Stream:
    """The tokens of one request as they are generated, plus how it ended."""

    __slots__ = ("req", "g", "walk", "ids", "texts", "stop_at", "matched", "finish_reason", "error", "done",
                 "event", "t_arrival", "room", "t_tok")

    def __init__(self, g: GenRequest, t_arrival: float, seed: int):
        self.g = g
        self.walk = TokenWalk(seed)
        self.ids: list[int] = []
        self.texts: list[str] = []
        self.stop_at: int | None = None
        self.matched: str | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.done = False
        self.event = asyncio.Event()
        self.t_arrival = t_arrival
        self.t_tok: float | None = None
        self.req: Req | None = None
        self.room = g.bootstrap[2] if g.bootstrap else None

    @property
    def text(self) -> str:
        """Generated text so far (stop string trimmed)."""
        full = "".join(self.texts)
        return full if self.stop_at is None else full[: self.stop_at]

    async def wait_first(self) -> None:
        """Until the first token or the end."""
        while not self.ids and not self.done:
            self.event.clear()
            await self.event.wait()

    async def wait_done(self) -> None:
        """Until the request ended."""
        while not self.done:
            self.event.clear()
            await self.event.wait()

    async def chunks(self, interval: int) -> AsyncIterator[tuple[str, int]]:
        """(new text, tokens so far) every `interval` tokens, and once more at the end for the rest."""
        sent_tok = sent_chr = 0
        while True:
            n = len(self.ids)
            if n - sent_tok >= interval or (self.done and n > sent_tok):
                new = "".join(self.texts[sent_tok:n])
                if self.stop_at is not None:
                    new = new[: max(0, self.stop_at - sent_chr)]
                sent_tok, sent_chr = n, sent_chr + len(new)
                yield new, n
                continue
            if self.done:
                return
            self.event.clear()
            await self.event.wait()


class Worker:
    """Engine, driver, metrics and (prefill) bootstrap server of one emulated SGLang worker."""

    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.engine = Engine(cfg.engine)
        self.metrics = WorkerMetrics(cfg.served_model_name, cfg.engine.mode)
        self.metrics.max_total_num_tokens.set(self.engine.pool)
        self.driver = RealtimeDriver(self.engine, cfg.time_scale, on_admit=self._on_admit, on_step=self._on_step)
        self.bootstrap = (BootstrapServer(cfg.host, cfg.bootstrap_port, cfg.pd_timeout_s)
                          if cfg.engine.mode == "prefill" else None)
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._link_free = 0.0
        self._tp_last = (0.0, 0)
        self.faults = Faults(cfg.faults)

    @property
    def mode(self) -> str:
        """null | prefill | decode."""
        return self.cfg.engine.mode

    async def start(self) -> None:
        """Start the engine loop and, on a prefill worker, the bootstrap server."""
        if self.bootstrap is not None:
            await self.bootstrap.start()
        self._task = asyncio.create_task(self.driver.run())
        await asyncio.sleep(0)  # let the engine loop start before the server reports ready
        self._tp_last = (self.driver.now(), 0)
        f, loop = self.cfg.faults, asyncio.get_running_loop()
        if f.crash_at_s is not None:
            loop.call_later(f.crash_at_s, self.crash, f"--emu-fault-crash-at-s {f.crash_at_s:g}")
        if f.stall_at_s is not None and f.stall_s > 0:
            loop.call_later(f.stall_at_s, self.stall, f.stall_s)

    def crash(self, why: str) -> None:
        """Injected fault: die like a crashed server (exit code 1, streams cut, port closed)."""
        print(f"pdlab emulator on port {self.cfg.port}: injected crash ({why})", file=sys.stderr, flush=True)
        os._exit(1)

    def stall(self, seconds: float) -> None:
        """Injected fault: the engine starts no step for `seconds` (wall clock)."""
        self.driver.stall_until = self.driver.now() + seconds
        self.driver.notify()

    async def stop(self) -> None:
        """Stop the engine loop and the bootstrap server."""
        if self._task is not None:
            self._task.cancel()
        if self.bootstrap is not None:
            await self.bootstrap.stop()
        for t in list(self._tasks):
            t.cancel()

    @property
    def ready(self) -> bool:
        """Whether the engine loop runs."""
        return self._task is not None and not self._task.done() and self.driver.running

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- requests -----------------------------------------------------------------------------
    def submit(self, g: GenRequest, received: float | None = None) -> Stream:
        """Validate and queue a request received at `received` (driver clock; default now); its Stream fills
        as the engine generates. Raises BadRequest."""
        why = self.engine.check(len(g.prompt_ids), g.max_new_tokens)
        if why is None and self.mode == "decode" and g.bootstrap is None:
            why = "a decode worker needs bootstrap_host, bootstrap_port and bootstrap_room (send it via the PD router)"
        if why is not None:
            if self.bootstrap is not None and g.bootstrap is not None:
                self.bootstrap.complete(g.bootstrap[2], why)
            raise BadRequest(why)
        seed = g.seed if g.seed is not None else zlib.crc32(repr(g.prompt_ids[-64:]).encode()) ^ self.cfg.seed
        stream = Stream(g, self.driver.now() if received is None else received, seed)
        max_new = 1 if self.mode == "prefill" else max(g.max_new_tokens, 1)
        req = Req(g.rid, len(g.prompt_ids), max_new, stream.t_arrival, self._listener(stream), ctx=stream,
                  tokens=g.prompt_ids, out_ids=stream.ids)
        stream.req = req
        self.engine.submit(req)
        self.driver.notify(stream.t_arrival)
        return stream

    def reject(self, g: GenRequest, why: str) -> None:
        """A request refused before it ran: a prefill worker tells its decode peer at once (no hung handoff)."""
        if self.bootstrap is not None and g.bootstrap is not None:
            self.bootstrap.complete(g.bootstrap[2], why)

    def abort(self, stream: Stream, why: str = "client disconnected") -> None:
        """Drop a request whose client went away."""
        if not stream.done and stream.req is not None:
            self.engine.abort(stream.req, self.driver.now(), why)
            self.driver.notify()

    def _listener(self, s: Stream):
        m = self.metrics
        stops = s.g.stop

        def on(kind: str, r: Req) -> None:
            if kind == "token":
                tid, text = s.walk.next()
                s.ids.append(tid)
                s.texts.append(text)
                m.generation_tokens_total.inc()
                if s.t_tok is None:
                    m.ttft.observe(r.t_last - s.t_arrival)
                else:
                    m.itl.observe(r.t_last - s.t_tok)
                s.t_tok = r.t_last
                if stops and s.finish_reason is None:
                    full = "".join(s.texts)
                    tail_from = max(0, len(full) - len(text) - max(map(len, stops)))
                    hits = [(full.find(x, tail_from), x) for x in stops if full.find(x, tail_from) >= 0]
                    if hits:
                        s.stop_at, s.matched = min(hits)
                        s.finish_reason = "stop"
                        self._end(s, r)
                        self.engine.abort(r, r.t_last, "stop")
                s.event.set()
            elif kind == "finished":
                if s.finish_reason is None:
                    s.finish_reason = "length"
                self._end(s, r)
            elif kind == "aborted":
                if s.finish_reason is None:
                    s.error = r.error or "aborted"
                    m.num_aborted_requests_total.inc()
                    if self.bootstrap is not None and s.room is not None:
                        self.bootstrap.complete(s.room, s.error)
                self._end(s, r)
            elif kind == "prefill_done":
                self._spawn(self._send_kv(s, r))

        return on

    def _end(self, s: Stream, r: Req) -> None:
        if s.done:
            return
        s.done = True
        if s.error is None:
            m = self.metrics
            m.e2e.observe(self.driver.now() - s.t_arrival)
            m.prompt_tokens_total.inc(r.prompt_len)
            m.cached_tokens_total.inc(r.cached)
            m.num_requests_total.inc()
        s.event.set()

    # -- PD -------------------------------------------------------------------------------------
    async def _send_kv(self, s: Stream, r: Req) -> None:
        """Prefill: wait for the decode worker's registration, then 'send' the KV over the link."""
        try:
            if s.room is not None:
                decode_cached = await self.bootstrap.wait_registered(s.room)
                outcome = self.faults.kv_outcome()
                now = self.driver.now()
                sent = max(r.prompt_len - decode_cached, 0)  # a decode radix cache already holds the rest
                dur = perfmodel.kv_transfer_time(sent, self.cfg.engine.model, self.cfg.engine.link)
                dur *= self.cfg.time_scale
                start = max(now, self._link_free)
                self._link_free = start + dur
                await asyncio.sleep(self._link_free - now)
                if outcome == "fail":
                    raise HandoffError(f"KV transfer of bootstrap room {s.room} failed (injected fault)")
                if outcome == "timeout":
                    await asyncio.sleep(self.cfg.pd_timeout_s)
                    raise HandoffError(f"KV transfer of bootstrap room {s.room} timed out (injected fault)")
                self.bootstrap.complete(s.room)
                self.metrics.kv_transfer_latency_ms.set(dur * 1e3)
                if dur > 0:
                    self.metrics.kv_transfer_speed_gb_s.set(
                        sent * self.cfg.engine.model.kv_bytes_per_token / dur / 1e9)
            self.engine.release(r, self.driver.now())
        except HandoffError as e:
            self.bootstrap.complete(s.room, str(e))
            self.engine.release(r, self.driver.now(), error=str(e))
        self.driver.notify()

    def _on_admit(self, r: Req) -> None:
        self._spawn(self._fetch_kv(r.ctx, r))

    async def _fetch_kv(self, s: Stream, r: Req) -> None:
        """Decode: register the room with the prefill's bootstrap server; decode once the KV arrived."""
        host, port, room = s.g.bootstrap
        try:
            await fetch_kv(host, port, room, r.prompt_len, self.cfg.pd_timeout_s, cached_tokens=r.cached)
            # this worker's own link is a FIFO too: transfers from several prefill workers into it queue here
            now = self.driver.now()
            dur = self.cfg.time_scale * perfmodel.kv_transfer_time(
                max(r.prompt_len - r.cached, 0), self.cfg.engine.model, self.cfg.engine.link)
            self._link_free = max(now - dur, self._link_free) + dur
            if self._link_free > now:
                await asyncio.sleep(self._link_free - now)
            self.engine.kv_arrived(r, self.driver.now())
        except HandoffError as e:
            self.engine.abort(r, self.driver.now(), str(e))
        self.driver.notify()

    # -- metrics --------------------------------------------------------------------------------
    def _on_step(self, batch: Batch, now: float) -> None:
        e, m = self.engine, self.metrics
        m.num_running_reqs.set(len(e.running) if self.mode != "prefill" else e.num_running)
        m.num_queue_reqs.set(e.num_queued)
        m.num_used_tokens.set(e.used_tokens)
        m.token_usage.set(e.token_usage)
        if batch.kind == "prefill":
            m.cache_hit_rate.set(e.last_hit_rate)
        if self.mode == "prefill":
            m.num_prefill_inflight_queue_reqs.set(len(e.transferring))
        elif self.mode == "decode":
            m.num_decode_prealloc_queue_reqs.set(len(e.waiting))
            m.num_decode_transfer_queue_reqs.set(len(e.transferring))
        t0, g0 = self._tp_last
        if now - t0 >= 1.0:
            m.last_gen_throughput = (e.generation_tokens_total - g0) / (now - t0)
            m.gen_throughput.set(m.last_gen_throughput)
            self._tp_last = (now, e.generation_tokens_total)

    def load(self) -> dict:
        """SGLang /get_load-style load figures."""
        e = self.engine
        return {"num_reqs": e.num_running + e.num_queued, "num_waiting_reqs": e.num_queued,
                "num_tokens": e.used_tokens}

    def flush_cache(self) -> bool:
        """SGLang's /flush_cache: empty the radix cache unless requests are queued or running."""
        return self.engine.flush()
