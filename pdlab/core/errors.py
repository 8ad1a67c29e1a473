"""Exceptions pdlab raises for things a user can fix; the CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PdlabError(Exception):
    """An error with a message a user can act on (the CLI exits 2 for these)."""

    exit_code = 2


class SpecError(PdlabError):
    """A params or sweep file (or a --set override) is invalid: names the file, the field and the fix."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file = file
        self.field = field
        self.message = message
        where = []
        if file:
            where.append(str(file))
        if field:
            where.append(f"field '{field}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class DeployError(PdlabError):
    """A backend could not bring a topology up, or lost it; the message carries the diagnosis."""


class ResourceError(PdlabError):
    """The machine (or cluster) cannot host what was asked; says what to change."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest match to `word` among `choices`, for 'did you mean' hints."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' or '' — appended to messages about unknown names."""
    match = closest(word, choices)
    return f" (did you mean '{match}'?)" if match else ""
