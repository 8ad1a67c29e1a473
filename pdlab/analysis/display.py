"""Display helpers for notebooks and reports: headings with an 'emulated' badge, warning boxes, tables."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any


def warnings_box(warnings: Iterable[str], ok: str = "No fairness problems found: the arms differ only in "
                 "their disaggregation settings, at equal GPU count, and no run was client-bound.") -> object:
    """An HTML block listing warnings (orange), or a green 'all good' line when there are none."""
    from IPython.display import HTML

    items = list(warnings)
    if not items:
        return HTML(f'<div class="pdlab-ok">✔ {html.escape(ok)}</div>')
    md = "".join(f'<div class="pdlab-warn">⚠ {_inline_code(html.escape(w))}</div>' for w in items)
    return HTML(md)


def table(df: Any, precision: int = 3) -> Any:
    """A DataFrame for the report: no index column, floats rounded, NaN as '–'."""
    if df is None or len(df) == 0:
        from IPython.display import HTML

        return HTML("<p><i>(nothing to show)</i></p>")
    return df.style.hide(axis="index").format(precision=precision, na_rep="–")


def _inline_code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def title(text: str, *, emulated: bool, subtitle: str = "") -> object:
    """A report heading with an 'emulated' badge when the numbers come from pdlab's emulator."""
    from IPython.display import HTML

    badge = ' <span class="pdlab-badge">emulated</span>' if emulated else ""
    sub = f"<p>{_inline_code(html.escape(subtitle))}</p>" if subtitle else ""
    note = ("<p><i>Every figure and number below comes from pdlab's emulated SGLang workers (a performance model "
            "of the GPUs, not real hardware); use it to plan, then confirm on a cluster.</i></p>") if emulated else ""
    return HTML(f"<h1>{html.escape(text)}{badge}</h1>{sub}{note}")
