"""Plots against the number of edits (log x), one line per editor: the headline figure first
(:mod:`iceb.leaderboard.headline`), then one plot per (subset, metric) for the appendix.

Drawn from tidy rows (never from parsed keys) with matplotlib's Agg backend, so they work headless. The
bootstrap 95% interval, where the rows have one, is a translucent band in the editor's colour. A bound, where
a metric has one, is one grey line per plot (the unedited model's, shared by every editor), labelled by what it
is: the best value reachable (dashed), or for Holdout Delta and Dest Forget the worst (dotted). Smoke runs say so
in the title.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from iceb.leaderboard.results import SMOKE_MARK


def draw_lines(ax, d, colors) -> None:
    """One line per legend label, its 95% band, and the metric's one shared bound line.

    Args:
        ax: A matplotlib axis.
        d: Rows of one (subset, metric).
        colors: Legend label -> colour.
    """
    from iceb.leaderboard.headline import bound_label, bound_style

    for label, g in d.groupby("label", sort=True):
        g = g.sort_values("n_edits")
        color = colors[label]
        ax.plot(g["n_edits"], g["value"], marker="o", ms=3, lw=1.5, color=color, label=label)
        ci = g.reindex(columns=["n_edits", "ci_low", "ci_high"]).dropna()
        if len(ci) > 1:
            ax.fill_between(ci["n_edits"].astype(float), ci["ci_low"].astype(float), ci["ci_high"].astype(float),
                            color=color, alpha=0.2, lw=0)
        elif len(ci) == 1:  # a band of one point has no width: a vertical bar instead
            ax.vlines(ci["n_edits"].astype(float), ci["ci_low"].astype(float), ci["ci_high"].astype(float),
                      color=color, alpha=0.4, lw=3)
    if len(d):
        b = d.dropna(subset=["bound"]).groupby("n_edits")["bound"].mean().sort_index()
        if len(b):
            metric = str(d["metric"].iloc[0])
            ax.plot(b.index, b.values.astype(float), ls=bound_style(metric), lw=1, color="0.45",
                    label=bound_label(metric))
    ax.set_xscale("log")
    ns = sorted({int(n) for n in d["n_edits"]})
    if ns and len(ns) <= 12:  # label the edit counts themselves, not powers of ten
        from matplotlib.ticker import NullLocator, ScalarFormatter

        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="both", alpha=0.3)


def save_png(fig, path: Path) -> None:
    """Write a figure atomically and close it."""
    import matplotlib.pyplot as plt

    from iceb.utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def label_colors(df) -> dict:
    """One colour per legend label, stable across all plots of a leaderboard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {lab: cmap(i % 10) for i, lab in enumerate(sorted(df["label"].unique()))}


def plot_headline(d, task: str, model: str, path: Path, colors: dict[str, Any], smoke: str = "") -> bool:
    """The six-panel (four for rectification) figure of one (task, model), as the paper draws it.

    Args:
        d: Leaderboard rows of one task and model.
        task: Its task (selects the panels).
        model: Its model (for the title).
        path: The PNG to write.
        colors: Legend label -> colour (shared with the other plots).
        smoke: A note for the title when rows come from smoke runs.

    Returns:
        Whether a figure was written (False when the task has no headline panels in the rows).
    """
    import matplotlib.pyplot as plt

    from iceb.leaderboard.headline import erase_only_labels, panels_for

    panels = [p for p in panels_for(task) if ((d["subset"] == p.subset) & (d["metric"] == p.metric)).any()]
    if not panels:
        return False
    erasers = erase_only_labels(d)
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows + 0.9), squeeze=False)
    legend: dict[str, Any] = {}
    for ax, p in zip(axes.flat, panels):
        sel = d[(d["subset"] == p.subset) & (d["metric"] == p.metric)]
        if not p.for_erasers:
            sel = sel[[not erasers.get(lab, False) for lab in sel["label"]]]
        draw_lines(ax, sel, colors)  # lines, bands and the panel's one bound
        hib = bool(sel["higher_is_better"].iloc[0]) if len(sel) else True
        ax.set_title(f"{p.title} {'↑' if hib else '↓'}", fontsize=10)
        ax.set_ylim(*p.ylim)
        ax.set_xlabel("number of edited concepts (log)", fontsize=8)
        for h, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, h)
    _finish_panels(fig, axes, len(panels), legend, "classifier score", f"{task} on {model}{smoke}", path)
    return True


def _finish_panels(fig, axes, used: int, legend: dict[str, Any], ylabel: str, title: str, path: Path) -> None:
    """A panel figure's end: unused panels off, the y label, one legend for all panels at the top under the
    title (where a reader looks first; bound lines last), then the PNG."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    axes[0][0].set_ylabel(ylabel)
    names = sorted(legend, key=lambda n: (n in ("best reachable", "worst: all lost", "unedited model"), n))
    height = fig.get_size_inches()[1]
    legend_rows = 1 + (len(names) - 1) // 8
    top = 1 - (0.45 + 0.22 * legend_rows) / height
    fig.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
    fig.legend([legend[n] for n in names], names, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.32 / height),
               ncol=min(8, len(names)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    save_png(fig, path)


def plot_robustness(d, task: str, model: str, path: Path, colors: dict[str, Any], smoke: str = "") -> bool:
    """The robustness figure of one (task, model): ASR against N, one panel for the original prompt (pre-attack
    ASR) and one per attack, one line per editor with its 95% band, the unedited model's rate dotted.

    Args:
        d: Leaderboard rows of one task and model.
        task: Its task (for the title).
        model: Its model (for the title).
        path: The PNG to write.
        colors: Legend label -> colour (shared with the other plots).
        smoke: A note for the title when rows come from smoke runs.

    Returns:
        Whether a figure was written (False without attack rows).
    """
    import matplotlib.pyplot as plt

    from iceb.leaderboard.robustness import ORDER, attack_frame

    a = attack_frame(d)
    if a.empty:
        return False
    attacks = sorted(dict.fromkeys(a["attack"]), key=lambda x: (ORDER.index(x) if x in ORDER else len(ORDER), x))
    first = a[a["attack"] == attacks[0]]
    panels = [("original prompt", first[first["metric"] == "pre_asr"])]
    panels += [(name, a[(a["attack"] == name) & (a["metric"] == "asr")]) for name in attacks]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows + 0.9), squeeze=False)
    legend: dict[str, Any] = {}
    for ax, (title, sel) in zip(axes.flat, panels):
        draw_lines(ax, sel, colors)
        ax.set_title(f"{title} ↓", fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("number of edited concepts (log)", fontsize=8)
        for h, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, h)
    _finish_panels(fig, axes, len(panels), legend, "attack success rate", f"{task} on {model}: robustness{smoke}",
                   path)
    return True


def plot_all(df, out_dir: str | Path) -> list[Path]:
    """Per (task, model) the headline figure (``<task>__<model>__headline.png``), the robustness figure where
    there are attack rows (``<task>__<model>__robustness.png``) and one PNG per (subset, metric).

    Args:
        df: Leaderboard rows (:func:`iceb.leaderboard.tables.frame`).
        out_dir: The folder to write into.

    Returns:
        The files written, each task's headline figure first.
    """
    import matplotlib.pyplot as plt

    from iceb.utils.paths import inside, safe_filename

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if df.empty:
        return written
    colors = label_colors(df)
    for (task, model), d in df.groupby(["task", "model"], sort=True):
        smoke = " — " + SMOKE_MARK if d["smoke"].astype(bool).any() else ""
        stem = f"{safe_filename(task)}__{safe_filename(model)}"
        head = inside(out_dir, out_dir / f"{stem}__headline.png")
        if plot_headline(d, task, model, head, colors, smoke):
            written.append(head)
        robust = inside(out_dir, out_dir / f"{stem}__robustness.png")
        if plot_robustness(d, task, model, robust, colors, smoke):
            written.append(robust)
        for subset, metric in sorted({(s, m) for s, m in zip(d["subset"], d["metric"])},
                                     key=lambda x: (x[0].startswith("cost"), x)):
            g = d[(d["subset"] == subset) & (d["metric"] == metric)]
            fig, ax = plt.subplots(figsize=(5, 3.5))
            draw_lines(ax, g, colors)
            arrow = "↑" if bool(g["higher_is_better"].iloc[0]) else "↓"
            ax.set_title(f"{task} on {model}: {subset}/{metric} {arrow}{smoke}", fontsize=9)
            ax.set_xlabel("number of edited concepts (log)")
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
            path = inside(out_dir, out_dir / f"{stem}__{safe_filename(subset)}__{safe_filename(metric)}.png")
            save_png(fig, path)
            written.append(path)
    return written
