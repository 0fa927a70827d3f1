"""The tuning report for people: report.md and the frontier plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from engine.config import TUNABLE  # noqa: E402

COSTS = (
    ("negative", "negative feedback per request"),
    ("ads_per_user_day", "ads per user-day"),
    ("ads_per_household_day", "ads per household-day"),
    ("fill_rate", "fill rate"),
)


def _value(row: dict[str, Any], key: str) -> float:
    if key == "revenue":  # what trials were compared by
        return float(row["objectives"]["revenue"])
    v = row[key]
    return float(v["value"]) if isinstance(v, dict) else float(v)


def plot_frontier(rows: list[dict[str, Any]], report: dict[str, Any], path: Path) -> Path:
    """Revenue against each user-cost measure: every trial (feasible in colour), the
    frontier joined, the current weights and the recommendation marked."""
    fig, axes = plt.subplots(1, len(COSTS), figsize=(4.2 * len(COSTS), 4))
    front = {r["trial"] for r in report["frontier"]}
    chosen = report["chosen"]["trial"] if report["chosen"] else None
    for ax, (key, label) in zip(axes, COSTS, strict=True):
        for feasible, colour in ((False, "#bbbbbb"), (True, "#1f77b4")):
            pts = [r for r in rows if r["feasible"] == feasible and not r["flagged"]]
            ax.scatter(
                [_value(r, key) for r in pts],
                [_value(r, "revenue") for r in pts],
                s=12,
                c=colour,
                label="feasible" if feasible else "infeasible",
            )
        fr = sorted((r for r in rows if r["trial"] in front), key=lambda r: _value(r, key))
        ax.plot(
            [_value(r, key) for r in fr], [_value(r, "revenue") for r in fr], lw=0.8, c="#1f77b4"
        )
        for r in rows:
            if r["trial"] == 0:
                ax.scatter(
                    _value(r, key),
                    _value(r, "revenue"),
                    marker="s",
                    s=60,
                    c="black",
                    label="current",
                )
            if r["trial"] == chosen:
                ax.scatter(
                    _value(r, key), _value(r, "revenue"), marker="*", s=160, c="red", label="chosen"
                )
        ax.set_xlabel(label)
        ax.set_ylabel("revenue per request")
    axes[0].legend(fontsize=8)
    fig.suptitle("Revenue vs user cost over the trials")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _est(e: dict[str, Any]) -> str:
    return f"{e['value']:.5g} [{e['low']:.5g}, {e['high']:.5g}]"


def markdown(r: dict[str, Any]) -> str:
    """report.md: the choice, explained with its intervals, the frontier, the truth check."""
    out = [f"# Tuning on {r['log']}", ""]
    out += [
        f"{r['rows']:,} rows, {r['requests']:,} requests; model {r['model_version']}; study "
        f"`{r['study']}` ({r['trials']} trials, estimator `{r['estimator']}`).",
        "",
        f"Objective: {r['objective']}. Constraints: "
        + ", ".join(f"{k} = {v}" for k, v in r["constraints"].items() if v not in (None, {})),
        "",
    ]
    out += [f"Assumed: {a}." for a in r.get("assumptions", [])]
    out += [""] if r.get("assumptions") else []
    cur, ch = r["current"], r["chosen"]
    if ch is None:
        out += [f"**No recommendation**: {r.get('note')}", ""]
    else:
        out += [
            f"Recommended: trial {ch['trial']}, written to `{ch['config']}` (version "
            f"`{ch['config_version']}`; `admatch serve --config` loads it, and a running "
            "server reloads it when the file changes).",
            "",
            "| measure (per request, 95% interval) | current weights | recommended |",
            "|---|---|---|",
        ]
        for key in ("revenue", "revenue_smoothed", "negative", "engagement"):
            out.append(f"| {key} | {_est(cur[key]) if 'trial' in cur else '-'} | {_est(ch[key])} |")
        for key in ("ads_per_user_day", "ads_per_household_day", "fill_rate"):
            level = f"{cur[key]:.4g}" if "trial" in cur else "-"
            out.append(f"| {key} | {level} | {ch[key]:.4g} |")
        out += ["", "| parameter | current | recommended |", "|---|---|---|"]
        for name in TUNABLE:
            if name in ch["params"]:
                now = cur["params"].get(name) if "trial" in cur else None
                before = "-" if now is None else f"{now:.4g}"
                out.append(f"| {name} | {before} | {ch['params'][name]:.4g} |")
        out.append("")
    out += [
        "## Pareto frontier (trusted trials)",
        "",
        "| trial | revenue | negative | ads/user-day | fill | feasible |",
        "|---|---|---|---|---|---|",
    ]
    for f in r["frontier"]:
        out.append(
            f"| {f['trial']} | {f['objectives']['revenue']:.5g} | {f['negative']['value']:.5g} | "
            f"{f['ads_per_user_day']:.3g} | {f['fill_rate']:.3f} | "
            f"{'yes' if f['feasible'] else 'no'} |"
        )
    t = r.get("truth")
    if t:
        out += ["", "## Against the generator's truth", ""]
        if t.get("optimum"):
            best = t["optimum"]
            out.append(
                f"True optimum revenue {best['truth']['revenue']:.5g} "
                f"(found by {best['found_by']})."
            )
        if "regret_pct" in t:
            out.append(
                f"Recommendation's true revenue {t['chosen']['revenue']:.5g}: regret "
                f"**{t['regret_pct']:.2f}%**; truly feasible: {t['chosen_feasible']}."
            )
        out.append("")
    tm = r["timing"]
    out += [
        "## Speed",
        "",
        f"Preparing the log: {tm['prepare_seconds']:.1f} s; one trial: "
        + (
            f"{tm['trial_seconds_mean']:.2f} s ({tm['trials_per_minute']:.1f} trials/minute)."
            if tm["trial_seconds_mean"]
            else "-"
        ),
    ]
    return "\n".join(out)
