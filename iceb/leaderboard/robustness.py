"""The robustness table: attack success rates (``--attacks``, :mod:`iceb.harness.attacks`) per editor and N.

One table per (task, model) that has attack rows. Rows are (editor, N); the first column is the original
prompt's success on the edited model (pre-attack ASR: the edit's own failure, the same for every attack), then
one column per attack: its ASR (pre-attack successes plus the attack's successes among the rest, over the
attacked requests). Lower is more robust. Each cell is ``value ± standard error`` over the attacked requests
(a bootstrap with requests as clusters), and the table says how many requests each N rests on.
"""
from __future__ import annotations

from iceb.leaderboard.pivot import fmt_se

ATTACK_PREFIX = "attack:"


def attack_frame(df):
    """The ASR rows of a leaderboard frame (subset ``attack:<name>``, metrics ``asr`` and ``pre_asr``)."""
    sub = df[df["subset"].astype(str).str.startswith(ATTACK_PREFIX) & df["metric"].isin(["asr", "pre_asr"])]
    return sub.assign(attack=sub["subset"].astype(str).str[len(ATTACK_PREFIX):])


#: the order of the columns: the worst case over attacks, white box, black box, the text baselines, then anything
#: else (transfer sets)
ORDER = ("any", "unlearndiff", "p4d", "ringabell", "aliases", "misspell")
NOTE = ("Share of attacked requests whose source concept the judge sees again (top-1 of the world's classifier); "
        "*original prompt*: before any attack (the edit's own miss); each attack: original successes plus the "
        "attack's successes among the rest; *any*: a request counts when any attack brings it back (the worst "
        "case). ± standard error over requests. Budgets and vocabulary are in each row's `details`.")


def robustness_table(df, task: str, model: str) -> dict | None:
    """The robustness table of ``task`` on ``model`` as data (rendered by :func:`robustness_markdown` and the
    report), or None when it has no attack rows.

    Args:
        df: Leaderboard rows (:func:`iceb.leaderboard.tables.frame`).
        task: The task.
        model: The model.

    Returns:
        ``{"attacks": [...], "requests": {N: [counts]}, "rows": [{"label", "n", "cells": [text, ...]}]}``, the
        cells being the original prompt's pre-attack ASR, then each attack's ASR (``value ± SE``).
    """
    a = attack_frame(df[(df["task"] == task) & (df["model"] == model)])
    if a.empty:
        return None
    attacks = sorted(dict.fromkeys(a["attack"]), key=lambda x: (ORDER.index(x) if x in ORDER else len(ORDER), x))
    ns = sorted({int(n) for n in a["n_edits"]})
    requests = {n: sorted({int(x) for x in a[(a["n_edits"] == n) & (a["metric"] == "asr")]["n"]}) for n in ns}

    def cell(g, metric: str) -> str:
        g = g[g["metric"] == metric]
        return "" if g.empty else fmt_se(g.iloc[0]["value"], g.iloc[0].get("stderr"))

    rows = []
    for label, g in sorted(a.groupby("label"), key=lambda kv: (kv[0].startswith("noop"), kv[0])):
        for n in ns:
            gn = g[g["n_edits"] == n]
            if gn.empty:
                continue
            pre = next((c for c in (cell(gn[gn["attack"] == at], "pre_asr") for at in attacks) if c), "")
            rows.append({"label": f"{label} (reference: no edit)" if label == "noop" else label, "n": n,
                         "cells": [pre] + [cell(gn[gn["attack"] == at], "asr") for at in attacks]})
    return {"attacks": attacks, "requests": requests, "rows": rows}


def robustness_markdown(df, task: str, model: str) -> list[str]:
    """The Markdown lines of :func:`robustness_table`; empty when there are no attack rows."""
    t = robustness_table(df, task, model)
    if t is None:
        return []
    per_n = ", ".join(f"N={n}: {'/'.join(map(str, k))}" for n, k in t["requests"].items())
    lines = [f"## {task} on {model}: robustness (attack success rate ↓)", "",
             f"{NOTE} Requests attacked per N: {per_n}.", "",
             "| editor | N | original prompt | " + " | ".join(t["attacks"]) + " |",
             "|---|---|---|" + "---|" * len(t["attacks"])]
    lines += [f"| {r['label']} | {r['n']} | " + " | ".join(r["cells"]) + " |" for r in t["rows"]]
    return lines + [""]
