"""PNG chart of latency percentiles per target: one panel per (body size, connections) cell.

p50 alone hides the tail a proxy adds under load, so each panel draws p50/p75/p90/p99 as one
line per target on a log scale, with `direct` dashed as the floor the proxies add to.
matplotlib is optional (the `bench` extra); it is used through `Figure` directly, never pyplot,
so no GUI backend or global state is involved and the PNG is rendered by Agg.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from app import Body
from load import PERCENTILES
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter
from report import Medians, Stats
from targets import Target

MARKERS = "osD^v<>ph*"


class PlainLog(LogFormatter):
    """LogFormatter's choice of which ticks to label, written 250 or 100000, not 2.5e+02."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        """Empty where LogFormatter would leave the tick unlabelled (to avoid crowding)."""
        return f"{x:g}" if super().__call__(x, pos) else ""


def draw_panel(ax: Axes, cell: dict[str, Stats], targets: list[Target], title: str) -> None:
    """One line per measured target; a target keeps its colour and marker in every panel."""
    xs = list(range(len(PERCENTILES)))
    for i, t in enumerate(targets):
        if st := cell.get(t.name):
            ax.plot(xs, st.percentiles(), label=t.label, color=f"C{i % 10}",
                    marker=MARKERS[i % len(MARKERS)], linestyle="--" if t.name == "direct" else "-")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLog(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))
    ax.set_xticks(xs, [f"p{p}" for p in PERCENTILES])
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)


def write_chart(path: Path, med: Medians, targets: list[Target], conns_list: list[int],
                bodies: list[Body], title: str) -> None:
    """Rows are body sizes, columns connection counts; one shared legend below the panels."""
    fig = Figure(figsize=(4.2 * len(conns_list), 3.2 * len(bodies) + 1.2), layout="constrained")
    axes = fig.subplots(len(bodies), len(conns_list), squeeze=False, sharex=True)
    for r, body in enumerate(bodies):
        for c, conns in enumerate(conns_list):
            draw_panel(axes[r][c], med.get((conns, body.name), {}), targets,
                       f"{conns} conn{'s' * (conns > 1)}, {body.label}")
        axes[r][0].set_ylabel("latency (us, log)")
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat),
                          key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(len(labels), 4)))
    fig.suptitle(textwrap.fill(title, 140), fontsize=8)
    fig.savefig(path, dpi=110)
