"""The Pareto frontier of output tok/s per GPU against tok/s per user, and its figure.

Every probe that met the SLO is a point (a configuration at a rate); the frontier keeps the points no other
point beats on both axes. `pareto_figure` draws all points by kind with the frontier, for notebooks and reports.
"""

from __future__ import annotations

from typing import Any


def frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated points (more tok/s/GPU and more tok/s/user is better), by tok/s/user ascending."""
    ranked = sorted(points, key=lambda p: (-p["tok_s_per_user"], -p["output_tok_s_per_gpu"]))
    out: list[dict[str, Any]] = []
    best = -1.0
    for p in ranked:
        if p["output_tok_s_per_gpu"] > best:
            out.append(p)
            best = p["output_tok_s_per_gpu"]
    return sorted(out, key=lambda p: p["tok_s_per_user"])


def pareto_figure(plan: dict[str, Any], ax: Any = None) -> Any:
    """Matplotlib figure: every SLO-meeting point by kind, the frontier, and the two winners labelled."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    else:
        fig = ax.figure
    points = plan.get("points") or plan["pareto"]
    for kind, marker in (("colocated", "o"), ("pd", "s")):
        sel = [p for p in points if p["kind"] == kind]
        ax.scatter([p["tok_s_per_user"] for p in sel], [p["output_tok_s_per_gpu"] for p in sel], marker=marker,
                   alpha=0.5, label="PD" if kind == "pd" else "colocated")
    front = plan["pareto"]
    ax.plot([p["tok_s_per_user"] for p in front], [p["output_tok_s_per_gpu"] for p in front], "k--", lw=1,
            label="Pareto frontier")
    for key in ("best_pd", "best_colocated"):
        b = plan.get(key)
        if b and b.get("tok_s_per_user"):
            ax.annotate(b["label"], (b["tok_s_per_user"], b["output_tok_s_per_gpu"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    ax.set_xlabel("output tok/s per user (1 / mean TPOT)")
    ax.set_ylabel("output tok/s per GPU")
    ax.set_title(f"{plan['model']} on {plan['budget']}× {plan['gpu']}: configurations meeting the SLO (emulated)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
