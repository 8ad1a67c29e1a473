"""Tokens for the emulator: Qwen tokenizer (loaded once per process), chat template, generated-token walk."""

from __future__ import annotations

import random
from functools import cache
from typing import Any

from pdlab.core.tokenizer import EOS_TOKEN_ID, TOKENIZER_NAME, tokenizer  # noqa: F401 (re-exported)

# Common English words; each encodes to one token (" word") in the Qwen vocabulary.
_WORDS = (
    "the of and to in is that it for was on are as with be at by this have from or one had not but what all "
    "were when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well such here take "
    "why things help put years different away again off went old number great tell men say small every found "
    "still between name should home big give air line set own under read last never us left end along while "
    "might next sound below saw something thought both few those always looked show large often together asked "
    "house world going want school important until form food keep children feet land side without boy once "
    "animals life enough took sometimes four head above kind began almost live page got earth need far hand high "
    "year mother light parts country father let night following picture being study second eyes soon times story "
    "boys since white days ever paper hard near sentence better best across during today others however sure "
    "means knew try told young miles sun ways thing whole hear example heard several change answer room sea "
    "against top turned learn point city play toward five using himself usually"
).split()


def encode(text: str) -> list[int]:
    """Token ids of `text` (special tokens such as <|im_start|> allowed)."""
    return tokenizer().encode(text)


def decode(ids: list[int]) -> str:
    """Text of token ids."""
    return tokenizer().decode(ids)


def render_chat(messages: list[dict[str, Any]]) -> str:
    """Qwen ChatML prompt of OpenAI-style messages, ending with the assistant turn's header."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|im_start|>{m.get('role', 'user')}\n{content or ''}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


@cache
def vocabulary() -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The walk's vocabulary: ids of single-token common words and their detokenised text."""
    ids, texts = [], []
    for w in _WORDS:
        enc = encode(" " + w)
        if len(enc) == 1:
            ids.append(enc[0])
            texts.append(decode(enc))
    return tuple(ids), tuple(texts)


class TokenWalk:
    """A deterministic seeded walk over common word tokens: the emulator's 'generated' text."""

    __slots__ = ("_rng", "_ids", "_texts")

    def __init__(self, seed: int | str = 0):
        self._rng = random.Random(seed)
        self._ids, self._texts = vocabulary()

    def next(self) -> tuple[int, str]:
        """The next generated token id and its text."""
        i = self._rng.randrange(len(self._ids))
        return self._ids[i], self._texts[i]
