"""Multi-turn chat sessions: each turn's prompt is the conversation so far plus a new user message.

Session k has a seeded number of turns (uniform in num_turns × [1 − range_ratio, 1 + range_ratio]), an optional
system prompt of `prefix_len` tokens (0: none), user messages of `input_len` tokens and assistant replies of
`output_len` tokens (both ± range_ratio). The history carries the dataset's own replies, not the model's, so
every prompt is a pure function of (spec, seed, session, turn) and a run is reproducible; the prefix a turn
shares with the previous one is the previous turn's whole prompt. Between a reply and the next turn the user
thinks for an exponential time of mean `think_time_s`. The load generator starts sessions at the level's
arrival times (or keeps `concurrency` sessions going) and runs each session's turns in order.
"""

from __future__ import annotations

from pdlab.measure.load.datasets import Dataset, Prompt, sample_length, words_text

MAX_TURNS = 1000  # request ids of a session's turns: session × MAX_TURNS + turn


class MultiTurnDataset(Dataset):
    """Seeded chat sessions (see module docstring); `ds[k]` is session k's first turn, `turns(k)` all of them."""

    kind = "multi-turn"
    multi_turn = True

    def num_turns(self, k: int) -> int:
        """Turns in session k (≥ 1)."""
        s = self.spec
        return max(1, min(MAX_TURNS - 1, sample_length(self._rng(k, "turns"), s.num_turns, s.range_ratio)))

    def think_time(self, k: int, turn: int) -> float:
        """Seconds the user of session k thinks before sending `turn` (0 for the first turn)."""
        mean = self.spec.think_time_s
        return 0.0 if turn == 0 or mean <= 0 else self._rng(k * MAX_TURNS + turn, "think").expovariate(1.0 / mean)

    def turns(self, k: int) -> list[Prompt]:
        """Every turn of session k in order."""
        s = self.spec
        msgs: list[dict[str, str]] = []
        total = 0
        if s.prefix_len:
            msgs.append({"role": "system", "content": words_text(self._rng(k, "system"), s.prefix_len)})
            total += s.prefix_len
        out = []
        for j in range(self.num_turns(k)):
            rng = self._rng(k * MAX_TURNS + j)
            n_user = sample_length(rng, s.input_len, s.range_ratio)
            n_out = sample_length(rng, s.output_len, s.range_ratio)
            msgs.append({"role": "user", "content": words_text(rng, n_user)})
            total += n_user
            text = "".join(m["content"] for m in msgs)
            out.append(Prompt(k * MAX_TURNS + j, text, total, n_out, messages=tuple(msgs)))
            msgs.append({"role": "assistant", "content": words_text(rng, n_out)})
            total += n_out
        return out

    def get(self, i: int) -> Prompt:
        return self.turns(i)[0]
