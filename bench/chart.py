"""One PNG of P1: the distribution of every case's wall times (box plot plus every sample)."""

from __future__ import annotations

import random
from pathlib import Path

COLORS = {"crashcart": "#d95f02", "baseline": "#1b9e77", "diagnostic": "#7570b3"}


def draw(p1: dict[str, object], title: str, out: Path) -> bool:
    """Write the chart to ``out``; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = p1["cases"]
    assert isinstance(cases, dict)
    order = {"crashcart": 0, "baseline": 1, "diagnostic": 2}
    keys = sorted(
        (k for k, c in cases.items() if c["wall_ms"].get("n")),
        key=lambda k: (order[cases[k]["kind"]], cases[k]["wall_ms"]["median"]),
    )
    keys.reverse()  # matplotlib draws the first row at the bottom
    data = [[s for s in cases[k]["samples_ms"] if s is not None] for k in keys]
    labels = [f"{cases[k]['label']}  ({cases[k]['wall_ms']['median']:.1f} ms)" for k in keys]
    colors = [COLORS[cases[k]["kind"]] for k in keys]

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(keys) + 1.6), dpi=110)
    box = ax.boxplot(
        data,
        vert=False,
        whis=(5, 95),
        showfliers=False,
        widths=0.6,
        patch_artist=True,
        medianprops={"color": "black"},
    )
    for patch, color in zip(box["boxes"], colors, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.35)
    rng = random.Random(0)
    for i, (values, color) in enumerate(zip(data, colors, strict=True), start=1):
        ys = [i + rng.uniform(-0.18, 0.18) for _ in values]
        ax.scatter(values, ys, s=6, color=color, alpha=0.7, linewidths=0)
    ax.axvline(40, color="#d95f02", linestyle="--", linewidth=1)
    ax.text(40, len(keys) + 0.6, " 40 ms target", color="#d95f02", fontsize=8, va="center")
    ax.set_yticks(range(1, len(keys) + 1), labels, fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ticks = [
        t
        for t in (1, 2, 5, 10, 20, 40, 100, 200, 500, 1000, 2000)
        if min(map(min, data)) / 2 <= t <= max(map(max, data)) * 2
    ]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("wall time per command, ms (log scale; box: quartiles, whiskers: p5-p95)")
    ax.set_ylim(0.4, len(keys) + 1)
    ax.grid(axis="x", which="both", alpha=0.25)
    ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.5) for c in COLORS.values()]
    ax.legend(
        handles,
        ["crashcart", "runtime exec / nsenter (busybox)", "diagnostic"],
        fontsize=7,
        loc="lower right",
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return True
