"""Prometheus metrics of one emulated worker, under the names and labels real SGLang uses with --enable-metrics.

Scheduler gauges carry SGLang's scheduler labels (model_name, engine_type = unified|prefill|decode, tp_rank,
pp_rank, moe_ep_rank); request histograms and token counters carry model_name, as SGLang's tokenizer
manager does. Names follow python/sglang/srt/metrics/collector.py. Times are wall-clock as observed, so with
--emu-time-scale F they are F × the modelled (emulated) times.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
ITL_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1,
               0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0]
E2E_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200, 1800, 2400]
QUEUE_BUCKETS = [0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 100, 200, 300, 600, 1000]

ENGINE_TYPES = {"null": "unified", "prefill": "prefill", "decode": "decode"}


class WorkerMetrics:
    """A per-server registry with SGLang's scheduler gauges and request histograms/counters."""

    def __init__(self, model_name: str, mode: str = "null"):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        slabels = {"model_name": model_name, "engine_type": ENGINE_TYPES[mode], "tp_rank": "0", "pp_rank": "0",
                   "moe_ep_rank": "0"}
        names = list(slabels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"sglang:{name}", doc, names, registry=r).labels(**slabels)

        self.num_running_reqs = gauge("num_running_reqs", "The number of running requests.")
        self.num_queue_reqs = gauge("num_queue_reqs", "The number of requests in the waiting queue.")
        self.num_used_tokens = gauge("num_used_tokens", "The number of used tokens.")
        self.token_usage = gauge("token_usage", "The token usage.")
        self.gen_throughput = gauge("gen_throughput", "The generation throughput (token/s).")
        self.last_gen_throughput = 0.0  # what gen_throughput was last set to (for /get_server_info)
        self.cache_hit_rate = gauge("cache_hit_rate", "The prefix cache hit rate.")
        self.max_total_num_tokens = gauge("max_total_num_tokens", "Maximum total number of tokens in the KV pool.")
        self.num_prefill_inflight_queue_reqs = gauge(
            "num_prefill_inflight_queue_reqs", "The number of requests in the prefill inflight queue.")
        self.num_decode_prealloc_queue_reqs = gauge(
            "num_decode_prealloc_queue_reqs", "The number of requests in the decode prealloc queue.")
        self.num_decode_transfer_queue_reqs = gauge(
            "num_decode_transfer_queue_reqs", "The number of requests in the decode transfer queue.")
        self.kv_transfer_latency_ms = gauge("kv_transfer_latency_ms", "The transfer latency of the KV cache in ms.")
        self.kv_transfer_speed_gb_s = gauge("kv_transfer_speed_gb_s", "The transfer speed of the KV cache in GB/s.")
        self.queue_time = Histogram("sglang:queue_time_seconds", "Histogram of queueing time in seconds.", names,
                                    buckets=QUEUE_BUCKETS, registry=r).labels(**slabels)
        tl = {"model_name": model_name}
        self.prompt_tokens_total = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", ["model_name"],
                                           registry=r).labels(**tl)
        self.generation_tokens_total = Counter("sglang:generation_tokens", "Number of generation tokens processed.",
                                               ["model_name"], registry=r).labels(**tl)
        self.num_requests_total = Counter("sglang:num_requests", "Number of requests processed.", ["model_name"],
                                          registry=r).labels(**tl)
        self.cached_tokens_total = Counter("sglang:cached_tokens", "Number of cached prompt tokens.",
                                           ["model_name", "cache_source"], registry=r).labels(
                                               model_name=model_name, cache_source="device")
        self.num_aborted_requests_total = Counter("sglang:num_aborted_requests", "Number of requests aborted.",
                                                  ["model_name"], registry=r).labels(**tl)
        self.ttft = Histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              ["model_name"], buckets=TTFT_BUCKETS, registry=r).labels(**tl)
        self.itl = Histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ["model_name"], buckets=ITL_BUCKETS, registry=r).labels(**tl)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
                             ["model_name"], buckets=E2E_BUCKETS, registry=r).labels(**tl)

    def render(self) -> bytes:
        """Prometheus text exposition of this worker's registry."""
        return generate_latest(self.registry)
