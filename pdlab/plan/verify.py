"""Predicted vs measured: the planner's predictions for an emitted sweep next to what `pdlab sweep` measured.

`pdlab plan --emit DIR` writes DIR/plan-predictions.json beside DIR/sweep.yaml; `pdlab sweep` records the sweep
file's path in results/<sweep>/sweep.json, which is how `predicted_vs_measured(sweep_dir)` finds the predictions.
One row per run × rate × figure: predicted, measured and the error (predicted / measured − 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from pdlab.analysis.sweepdata import load, read_sweep_json
from pdlab.core.errors import PdlabError
from pdlab.plan.emit import PLAN, PREDICTIONS

# planner figure -> measured summary column
FIGURES = {"ttft_mean_ms": "ttft_mean_ms", "ttft_p99_ms": "ttft_p99_ms", "tpot_mean_ms": "tpot_mean_ms",
           "tpot_p99_ms": "tpot_p99_ms", "output_tok_s_per_gpu": "output_throughput_per_gpu"}
COLUMNS = ["run", "arm", "rate", "figure", "predicted", "measured", "error"]


def predictions_path(sweep_dir: str | Path) -> Path | None:
    """DIR/plan-predictions.json next to the sweep file recorded in sweep.json (None if the sweep has none)."""
    meta = read_sweep_json(sweep_dir)
    if not meta.get("file"):
        return None
    p = Path(meta["file"]).parent / PREDICTIONS
    return p if p.is_file() else None


def plan_for_sweep(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The plan (plan.json, with its Pareto points) that emitted this sweep, or None."""
    p = predictions_path(sweep_dir)
    return read_predictions(p.parent / PLAN) if p is not None and (p.parent / PLAN).is_file() else None


def read_predictions(path: str | Path) -> dict[str, Any]:
    """The predictions document, with a clear error when unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PdlabError(f"{path}: unreadable predictions ({e}); re-run `pdlab plan --emit`") from None


def predicted_vs_measured(sweep_dir: str | Path, predictions: str | Path | None = None) -> pd.DataFrame:
    """Predicted and measured figures per run and rate (empty when the sweep has no predictions)."""
    path = Path(predictions) if predictions else predictions_path(sweep_dir)
    if path is None:
        return pd.DataFrame(columns=COLUMNS)
    return compare(read_predictions(path), load(sweep_dir).summary)


def compare(pred: dict[str, Any], summary: pd.DataFrame) -> pd.DataFrame:
    """Join predictions ({runs: {run: {arm, levels: [{rate, figures…}]}}}) with a sweep summary (run × level)."""
    rows = []
    for run, arm in pred.get("runs", {}).items():
        got = summary[summary["run"] == run] if len(summary) else summary
        for level in arm["levels"]:
            m = got[(got["level_value"] - level["rate"]).abs() < 1e-9] if len(got) else got
            for fig, col in FIGURES.items():
                p = level.get(fig, math.nan)
                v = float(m[col].mean()) if len(m) and col in m else math.nan
                err = p / v - 1 if v and math.isfinite(v) and math.isfinite(p) else math.nan
                rows.append({"run": run, "arm": arm["arm"], "rate": level["rate"], "figure": fig, "predicted": p,
                             "measured": v, "error": err})
    return pd.DataFrame(rows, columns=COLUMNS)


def predicted_vs_measured_figure(table: pd.DataFrame, figures: tuple[str, ...] = ("ttft_mean_ms", "tpot_mean_ms",
                                                                                 "output_tok_s_per_gpu")) -> Any:
    """One panel per figure: each arm's predicted (dashed) and measured (solid) curve against the rate."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(4.5 * len(figures), 3.6), squeeze=False)
    for ax, name in zip(axes[0], figures, strict=True):
        sel = table[table["figure"] == name]
        for i, (arm, g) in enumerate(sel.groupby("arm", sort=False)):
            g = g.sort_values("rate")
            color = f"C{i}"
            ax.plot(g["rate"], g["predicted"], "--", color=color, label=f"{arm} predicted")
            ax.plot(g["rate"], g["measured"], "-o", color=color, ms=3, label=f"{arm} measured")
        ax.set_xlabel("request rate (req/s)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
