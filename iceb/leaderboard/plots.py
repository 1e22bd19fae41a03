"""Plots of each panel metric against the number of edits (log x), one line per editor, as EMCID's figure.

Drawn from tidy rows (never from parsed keys) with matplotlib's Agg backend, so they work headless.
Bounds, where a metric gives one, are dashed lines in the editor's colour; the bootstrap 95% interval, where
the rows have one, is a translucent band in that colour. Smoke runs say so in the title.
"""
from __future__ import annotations

from pathlib import Path

from iceb.leaderboard.results import SMOKE_MARK


def _draw(ax, d, colors) -> None:
    for label, g in d.groupby("label", sort=True):
        g = g.sort_values("n_edits")
        color = colors[label]
        ax.plot(g["n_edits"], g["value"], marker="o", ms=3, lw=1.5, color=color, label=label)
        # the bootstrap 95% interval (requests as clusters), where the rows have one
        ci = g.reindex(columns=["n_edits", "ci_low", "ci_high"]).dropna()
        if len(ci) > 1:
            ax.fill_between(ci["n_edits"].astype(float), ci["ci_low"].astype(float), ci["ci_high"].astype(float),
                            color=color, alpha=0.2, lw=0)
        elif len(ci) == 1:  # a band of one point has no width: a vertical bar instead
            ax.vlines(ci["n_edits"].astype(float), ci["ci_low"].astype(float), ci["ci_high"].astype(float),
                      color=color, alpha=0.4, lw=3)
        b = g.dropna(subset=["bound"])
        if len(b):
            ax.plot(b["n_edits"], b["bound"].astype(float), ls="--", lw=1, color=color, label=f"{label} bound")
    ax.set_xscale("log")
    ns = sorted({int(n) for n in d["n_edits"]})
    if len(ns) <= 12:  # label the edit counts themselves, not powers of ten
        from matplotlib.ticker import NullLocator, ScalarFormatter

        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="both", alpha=0.3)


def plot_all(df, out_dir: str | Path) -> list[Path]:
    """One PNG per (task, model, subset, metric) plus one panel figure per (task, model); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iceb.utils.io import atomic_path
    from iceb.utils.paths import inside, safe_filename

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if df.empty:
        return written
    cmap = plt.get_cmap("tab10")
    labels = sorted(df["label"].unique())
    colors = {lab: cmap(i % 10) for i, lab in enumerate(labels)}

    def save(fig, path: Path) -> None:
        with atomic_path(inside(out_dir, path)) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    for (task, model), d in df.groupby(["task", "model"], sort=True):
        smoke = " — " + SMOKE_MARK if d["smoke"].astype(bool).any() else ""
        panels = sorted({(s, m) for s, m in zip(d["subset"], d["metric"])}, key=lambda x: (x[0].startswith("cost"), x))
        for subset, metric in panels:
            g = d[(d["subset"] == subset) & (d["metric"] == metric)]
            fig, ax = plt.subplots(figsize=(5, 3.5))
            _draw(ax, g, colors)
            arrow = "↑" if bool(g["higher_is_better"].iloc[0]) else "↓"
            ax.set_title(f"{task} on {model}: {subset}/{metric} {arrow}{smoke}", fontsize=9)
            ax.set_xlabel("number of edited concepts (log)")
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
            save(fig, out_dir / f"{safe_filename(task)}__{safe_filename(model)}__{safe_filename(subset)}__{safe_filename(metric)}.png")
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, (subset, metric) in zip(axes.flat, panels):
            g = d[(d["subset"] == subset) & (d["metric"] == metric)]
            _draw(ax, g, colors)
            ax.set_title(f"{subset}/{metric}", fontsize=9)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        legend: dict[str, object] = {}
        for ax in axes.flat:
            for h, name in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(name, h)
        handles, names = list(legend.values()), list(legend)
        rows = 1 + (len(names) - 1) // 4
        fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), frameon=False)
        fig.suptitle(f"{task} on {model}: metrics vs number of edits{smoke}", fontsize=10)
        # the axis label sits above the legend rows, never under them
        fig.supxlabel("number of edited concepts (log)", fontsize=9, y=0.035 + 0.035 * rows)
        fig.tight_layout(rect=(0, 0.07 + 0.035 * rows, 1, 1))
        save(fig, out_dir / f"{safe_filename(task)}__{safe_filename(model)}__panel.png")
    return written
