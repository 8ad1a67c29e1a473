"""SGLang's request and response JSON shapes: parsing /generate and OpenAI bodies, building replies and chunks."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pdlab.emulator import tokens

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's /generate default; used for OpenAI requests without max_tokens too


class BadRequest(Exception):
    """A request the server rejects with a 4xx and an SGLang-style error body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class GenRequest:
    """A parsed generation request, whichever endpoint it came from."""

    kind: str  # generate | chat | completion
    prompt_ids: list[int]
    max_new_tokens: int
    rid: str
    model: str
    stream: bool = False
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    include_usage: bool = False
    seed: int | None = None
    bootstrap: tuple[str, int, int] | None = None  # host, port, room
    created: int = field(default_factory=lambda: int(time.time()))


def _num(d: dict, key: str, kind: type, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False) -> Any:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise BadRequest(f"{key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise BadRequest(f"{key} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise BadRequest(f"{key} must be <= {hi}, got {v}")
    return kind(v)


def _sampling(d: dict, max_key: str) -> tuple[int | None, list[str], bool, int | None]:
    """Validate sampling parameters shared by all endpoints; returns (max_new, stop, ignore_eos, seed)."""
    if not isinstance(d, dict):
        raise BadRequest("sampling_params must be an object")
    _num(d, "temperature", float, 0.0)
    _num(d, "top_p", float, 0.0, 1.0, lo_open=True)
    top_k = _num(d, "top_k", int)
    if top_k is not None and (top_k == 0 or top_k < -1):
        raise BadRequest(f"top_k must be -1 (disable) or at least 1, got {top_k}")
    _num(d, "min_p", float, 0.0, 1.0)
    for k in ("frequency_penalty", "presence_penalty"):
        _num(d, k, float, -2.0, 2.0)
    _num(d, "repetition_penalty", float, 0.0, 2.0, lo_open=True)
    n = _num(d, "n", int, 1)
    if n is not None and n != 1:
        raise BadRequest("n > 1 is not supported by the emulator")
    max_new = None
    for key in max_key.split("|"):
        v = _num(d, key, int, 0)
        if v is not None:
            max_new = v
            break
    min_new = _num(d, "min_new_tokens", int, 0) or _num(d, "min_tokens", int, 0)
    if min_new is not None and max_new is not None and min_new > max_new:
        raise BadRequest(f"min_new_tokens must be <= max_new_tokens, got {min_new} > {max_new}")
    stop = d.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or a list of strings")
    ignore_eos = d.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequest("ignore_eos must be a boolean")
    seed = _num(d, "seed", int)
    return max_new, [s for s in stop if s], ignore_eos, seed


def _bootstrap(body: dict) -> tuple[str, int, int] | None:
    host, port, room = body.get("bootstrap_host"), body.get("bootstrap_port"), body.get("bootstrap_room")
    if host is None and room is None:
        return None
    if not isinstance(host, str) or not isinstance(room, int) or not isinstance(port, int | None):
        raise BadRequest("bootstrap_host (string), bootstrap_port and bootstrap_room (integers) must come together")
    return host, int(port or 8998), int(room)


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or BadRequest."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def parse_generate(body: dict, model: str) -> GenRequest:
    """A native /generate body: text or input_ids, sampling_params, stream, rid, bootstrap_*."""
    text, ids = body.get("text"), body.get("input_ids")
    if isinstance(text, list) or (isinstance(ids, list) and ids and isinstance(ids[0], list)):
        if len(text or ids) != 1:
            raise BadRequest("batched /generate requests are not supported by the emulator; send one prompt")
        text, ids = (text[0] if text else None), (ids[0] if ids else None)
    if isinstance(text, str):
        prompt_ids = tokens.encode(text)
    elif isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        prompt_ids = ids
    else:
        raise BadRequest("Either text or input_ids should be provided.")
    if not prompt_ids:
        raise BadRequest("the prompt is empty")
    max_new, stop, ignore_eos, seed = _sampling(body.get("sampling_params") or {}, "max_new_tokens")
    return GenRequest("generate", prompt_ids, DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new,
                      str(body.get("rid") or uuid.uuid4().hex), model, stream=bool(body.get("stream")), stop=stop,
                      ignore_eos=ignore_eos, seed=seed, bootstrap=_bootstrap(body))


def parse_openai(body: dict, kind: str, model: str) -> GenRequest:
    """An OpenAI /v1/chat/completions (kind='chat') or /v1/completions (kind='completion') body."""
    if kind == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequest("messages must be a non-empty list of {role, content} objects")
        prompt_ids = tokens.encode(tokens.render_chat(msgs))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            prompt_ids = tokens.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt):
            prompt_ids = prompt
        else:
            raise BadRequest("prompt must be a non-empty string or list of token ids (one prompt)")
    max_new, stop, ignore_eos, seed = _sampling(body, "max_completion_tokens|max_tokens")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise BadRequest("stream_options must be an object")
    return GenRequest(kind, prompt_ids, DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new,
                      uuid.uuid4().hex, str(body.get("model") or model), stream=bool(body.get("stream")), stop=stop,
                      ignore_eos=ignore_eos, include_usage=bool(so.get("include_usage")), seed=seed,
                      bootstrap=_bootstrap(body))


def error_body(kind: str, message: str, status: int) -> dict:
    """SGLang's error JSON: OpenAI ErrorResponse for /v1/*, {"error": {...}} for native endpoints."""
    etype = "BadRequestError" if status < 500 else "InternalServerError"
    if kind in ("chat", "completion"):
        return {"object": "error", "message": message, "type": etype, "param": None, "code": status}
    return {"error": {"message": message, "type": etype, "code": status}}


def finish_reason_native(reason: str, n: int, matched: str | None) -> dict:
    """/generate meta_info.finish_reason."""
    if reason == "stop":
        return {"type": "stop", "matched": matched}
    return {"type": "length", "length": n}


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    """OpenAI usage block; `cached` (with --enable-cache-report) fills prompt_tokens_details.cached_tokens."""
    details = None if cached is None else {"cached_tokens": cached}
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": details}


def sse(obj: Any) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
