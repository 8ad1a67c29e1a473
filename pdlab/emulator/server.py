"""SGLang's HTTP surface over an emulated Worker (Starlette app; `serve()` runs it under uvicorn)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pdlab.emulator import api
from pdlab.emulator.api import BadRequest, GenRequest
from pdlab.emulator.worker import Stream, Worker, WorkerConfig

VERSION = "0.5.0-pdlab-emulator"
FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting "
           "requests, the operation will not be performed.)\n")


def create_app(cfg: WorkerConfig) -> Starlette:
    """The emulated SGLang server for one worker."""
    worker = Worker(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    async def health(request: Request) -> Response:
        return Response(status_code=200 if worker.ready else 503)

    async def server_info(request: Request) -> Response:
        e = worker.engine
        info = dict(cfg.server_args)
        info.update({
            "model_path": cfg.model_path, "served_model_name": cfg.served_model_name, "tp_size": e.config.tp,
            "dp_size": 1, "disaggregation_mode": worker.mode, "disaggregation_bootstrap_port": cfg.bootstrap_port,
            "disaggregation_transfer_backend": cfg.transfer_backend, "chunked_prefill_size": e.config.chunked_prefill_size,
            "max_prefill_tokens": e.config.max_prefill_tokens, "max_running_requests": e.config.max_running_requests,
            "mem_fraction_static": e.config.mem_fraction_static, "context_length": e.config.context_length,
            "stream_interval": cfg.stream_interval, "enable_metrics": cfg.enable_metrics,
            "max_total_num_tokens": e.pool, "version": VERSION, "disable_radix_cache": e.cache is None,
            "page_size": e.config.page_size, "enable_cache_report": cfg.enable_cache_report,
            "internal_states": [{"last_gen_throughput": worker.metrics.last_gen_throughput,
                                 "memory_usage": {"token_capacity": e.pool}}],
            "emulated": {"gpu": e.config.gpu.name, "gpu_profile": e.config.gpu.describe(), "model": e.config.model.name, "link": e.config.link.name,
                         "link_bw_gbps": e.config.link.bw_gbps, "step_overhead_s": (e.config.gpu.step_overhead_ms / 1e3
                                                                       if e.config.step_overhead_s is None
                                                                       else e.config.step_overhead_s),
                         "time_scale": cfg.time_scale, "clock": worker.driver.stats.as_dict()},
        })
        return JSONResponse(info)

    async def model_info(request: Request) -> Response:
        return JSONResponse({"model_path": cfg.model_path, "tokenizer_path": cfg.model_path, "is_generation": True,
                             "preferred_sampling_params": None, "weight_version": "default",
                             "has_image_understanding": False, "has_audio_understanding": False,
                             "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": cfg.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "sglang",
            "root": cfg.served_model_name, "parent": None, "max_model_len": worker.engine.config.context_length}]})

    async def metrics(request: Request) -> Response:
        if not cfg.enable_metrics:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return Response(worker.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def get_load(request: Request) -> Response:
        return JSONResponse([{**worker.load(), "dp_rank": 0}])

    async def flush_cache(request: Request) -> Response:
        if worker.flush_cache():
            return Response(FLUSHED, status_code=200)
        return Response("Flush cache failed.\n", status_code=400)

    async def emu_stats(request: Request) -> Response:
        e = worker.engine
        return JSONResponse({"clock": worker.driver.stats.as_dict(), "running": e.num_running, "queued": e.num_queued,
                             "kv_used": e.used_tokens, "kv_pool": e.pool, "steps": e.steps,
                             "radix_cache_tokens": e.cache_size, "cached_tokens_total": e.cached_tokens_total})

    def endpoint(kind: str, parse: Callable[[dict], GenRequest],
                 reply: Callable[[Stream, GenRequest], dict],
                 chunks: Callable[[Stream, GenRequest], AsyncIterator[bytes]]) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            received = worker.driver.now()  # the request's arrival: body reading and parsing are server time
            status, crash = worker.faults.on_request()
            if crash:
                worker.crash(f"--emu-fault-crash-after {worker.faults.cfg.crash_after}")
            try:
                g = parse(api.parse_json(await request.body()))
                if status is not None:
                    msg = f"injected fault (--emu-fault-error-rate): HTTP {status}"
                    worker.reject(g, msg)
                    return JSONResponse(api.error_body(kind, msg, status), status_code=status)
                stream = worker.submit(g, received)
            except BadRequest as e:
                return JSONResponse(api.error_body(kind, e.message, e.status), status_code=e.status)
            try:
                await (stream.wait_first() if g.stream else stream.wait_done())
            except BaseException:
                worker.abort(stream)
                raise
            if stream.error is not None and (not g.stream or not stream.ids):
                return JSONResponse(api.error_body(kind, stream.error, 500), status_code=500)
            if not g.stream:
                return JSONResponse(reply(stream, g))

            async def body() -> AsyncIterator[bytes]:
                try:
                    async for b in chunks(stream, g):
                        yield b
                finally:
                    worker.abort(stream)

            return StreamingResponse(body(), media_type="text/event-stream")

        return handle

    # -- /generate -----------------------------------------------------------------------------
    def meta(s: Stream, g: GenRequest, final: bool) -> dict:
        return {"id": g.rid,
                "finish_reason": api.finish_reason_native(s.finish_reason, len(s.ids), s.matched) if final else None,
                "prompt_tokens": len(g.prompt_ids), "weight_version": "default", "completion_tokens": len(s.ids),
                "cached_tokens": s.req.cached if s.req else 0, "e2e_latency": worker.driver.now() - s.t_arrival}

    def gen_reply(s: Stream, g: GenRequest) -> dict:
        return {"text": s.text, "output_ids": list(s.ids), "meta_info": meta(s, g, True)}

    async def gen_chunks(s: Stream, g: GenRequest) -> AsyncIterator[bytes]:
        text, final = "", False
        async for new, n in s.chunks(cfg.stream_interval):
            text += new
            final = s.done and n == len(s.ids) and s.error is None
            yield api.sse({"text": text, "output_ids": s.ids[:n], "meta_info": meta(s, g, final)})
        if s.error is not None:
            yield api.sse(api.error_body("generate", s.error, 500))
        elif not final:
            yield api.sse({"text": text, "output_ids": list(s.ids), "meta_info": meta(s, g, True)})
        yield api.SSE_DONE

    # -- OpenAI --------------------------------------------------------------------------------
    def oai_reply(s: Stream, g: GenRequest) -> dict:
        choice = {"index": 0, "logprobs": None, "finish_reason": s.finish_reason, "matched_stop": s.matched}
        if g.kind == "chat":
            choice["message"] = {"role": "assistant", "content": s.text, "reasoning_content": None, "tool_calls": None}
            obj = "chat.completion"
        else:
            choice["text"] = s.text
            obj = "text_completion"
        return {"id": g.rid, "object": obj, "created": g.created, "model": g.model, "choices": [choice],
                "usage": usage(s, g)}

    def usage(s: Stream, g: GenRequest) -> dict:
        cached = (s.req.cached if s.req else 0) if cfg.enable_cache_report else None
        return api.usage(len(g.prompt_ids), len(s.ids), cached)

    async def oai_chunks(s: Stream, g: GenRequest) -> AsyncIterator[bytes]:
        chat = g.kind == "chat"
        head = {"id": g.rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": g.created,
                "model": g.model}

        def chunk(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
            c = {"index": 0, "logprobs": None, "finish_reason": finish, "matched_stop": s.matched if finish else None}
            if chat:
                delta = {} if content is None else {"content": content}
                if role:
                    delta = {"role": "assistant", "content": ""}
                c["delta"] = delta
            else:
                c["text"] = content or ""
            return api.sse({**head, "choices": [c], "usage": None})

        if chat:
            yield chunk("", role=True)
        async for new, _ in s.chunks(cfg.stream_interval):
            if new:
                yield chunk(new)
        if s.error is not None:
            yield api.sse(api.error_body(g.kind, s.error, 500))
        else:
            yield chunk(None, s.finish_reason)
            if g.include_usage:
                yield api.sse({**head, "choices": [], "usage": usage(s, g)})
        yield api.SSE_DONE

    name = cfg.served_model_name
    routes = [
        Route("/health", health), Route("/health_generate", health),
        Route("/server_info", server_info), Route("/get_server_info", server_info),
        Route("/model_info", model_info), Route("/get_model_info", model_info),
        Route("/v1/models", models), Route("/metrics", metrics), Route("/get_load", get_load),
        Route("/flush_cache", flush_cache, methods=["GET", "POST"]), Route("/emu_stats", emu_stats),
        Route("/generate", endpoint("generate", lambda b: api.parse_generate(b, name), gen_reply, gen_chunks),
              methods=["POST", "PUT"]),
        Route("/v1/chat/completions", endpoint("chat", lambda b: api.parse_openai(b, "chat", name), oai_reply,
                                               oai_chunks), methods=["POST"]),
        Route("/v1/completions", endpoint("completion", lambda b: api.parse_openai(b, "completion", name), oai_reply,
                                          oai_chunks), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.worker = worker
    return app


def serve(cfg: WorkerConfig, log_level: str = "warning") -> None:
    """Run the emulated worker under uvicorn until interrupted."""
    import uvicorn

    from pdlab.emulator import tokens

    tokens.vocabulary()  # load the tokenizer before accepting requests
    loop = "uvloop"
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    logging.getLogger("uvicorn.error").addFilter(_RouterProbeFilter())
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=log_level, loop=loop,
                access_log=False, timeout_keep_alive=60)


class _RouterProbeFilter(logging.Filter):
    """Drops uvicorn's 'Invalid HTTP request received.' warning: sglang-router's worker registration
    (`detect_connection_mode`) first probes every worker with gRPC (HTTP/2), which the HTTP/1.1 server
    rejects before the router falls back to HTTP. Harmless, expected, and otherwise in every worker log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Invalid HTTP request received" not in record.getMessage()
