"""``kp3d report``: results of many runs with honest statistics (rliable).

For runs grouped by env (task) and experiment name (method), seeds pooled
(:func:`agents.plot.learning_curves`):

- a markdown table of success rate and return at fixed budgets of env steps: the interquartile
  mean (IQM) over seeds with its 95% stratified-bootstrap confidence interval (Agarwal et al.
  2021, computed by ``rliable``), the number of seeds, and each run's value at the latest
  evaluation at or before the budget (runs that stopped before it are left out);
- sample-efficiency curves with those confidence bands (``kp3d plot --spread iqm``);
- performance profiles: for each method, the fraction of its runs (over every task) whose final
  success rate exceeds ``tau``, with bootstrap bands.

A sweep folder (``kp3d sweep``) also lists its failed trials with their errors. rliable is part
of the ``sweep`` extra.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.plot import (
    BOOTSTRAP_REPS,
    CurveGroup,
    iqm_interval,
    learning_curves,
    plot_learning_curves,
    rliable,
)
from kp3d.files import atomic_write

REPORT_DIR = "report"


def value_at(steps: np.ndarray, values: np.ndarray, budget: int) -> float:
    """The value of the latest evaluation at or before ``budget``; NaN for a run that has not
    trained that far (its last evaluation comes before the budget), so that a short run is never
    reported at a budget it did not reach."""
    if not len(steps) or steps[-1] < budget:
        return float("nan")
    index = np.searchsorted(steps, budget, side="right") - 1
    return float(values[index]) if index >= 0 else float("nan")


def default_budgets(groups: Sequence[CurveGroup]) -> dict[str, list[int]]:
    """Per env: the last step every one of its runs has evaluated at, and the evaluation steps
    of all of them nearest to a quarter and a half of it."""
    budgets = {}
    for env_id in sorted({g.env_id for g in groups}):
        runs = [run for g in groups if g.env_id == env_id for run in g.runs]
        common = sorted(set.intersection(*(set(map(int, r.timesteps)) for r in runs)))
        if not common:  # evaluated at different steps: each run's latest one before the budget
            common = [min(int(r.timesteps[-1]) for r in runs)]
        last = common[-1]
        nearest = {min(common, key=lambda s, t=t: abs(s - t)) for t in (last / 4, last / 2)}
        budgets[env_id] = sorted({*nearest, last})
    return budgets


def _cell(values: np.ndarray, percent: bool) -> str:
    present = values[~np.isnan(values)]
    if not len(present):
        return "—"
    iqm, low, high = iqm_interval(present)
    if percent:
        return f"{iqm:.0%} [{low:.0%}, {high:.0%}] (n={len(present)})"
    return f"{iqm:.1f} [{low:.1f}, {high:.1f}] (n={len(present)})"


def results_table(groups: Sequence[CurveGroup], budgets: dict[str, list[int]]) -> str:
    """The markdown table of success rate and return at the budgets (see the module docstring)."""
    lines = [
        "| task | method | env steps | success rate: IQM [95% CI] | return: IQM [95% CI] |"
        " per seed (success) |",
        "|---|---|---|---|---|---|",
    ]
    for group in groups:
        for budget in budgets[group.env_id]:
            returns = np.array([value_at(r.timesteps, r.returns, budget) for r in group.runs])
            with_success = [r for r in group.runs if r.success_rates is not None]
            successes = np.array(
                [value_at(r.timesteps, r.success_rates, budget) for r in with_success]  # type: ignore[arg-type]
            )
            per_seed = ", ".join(
                f"{r.config.seed}: {s:.0%}"
                for r, s in zip(with_success, successes, strict=True)
                if not np.isnan(s)
            )
            lines.append(
                f"| {group.env_id} | {group.label} | {budget:,} | {_cell(successes, True)} | "
                f"{_cell(returns, False)} | {per_seed or '—'} |"
            )
    return "\n".join(lines)


def performance_profiles(
    groups: Sequence[CurveGroup], taus: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method (experiment name, every task pooled): the fraction of runs whose final
    success rate exceeds each ``tau``, and its ``(2, len(taus))`` bootstrap band (rliable)."""
    library, _ = rliable()
    finals: dict[str, list[list[float]]] = {}
    for group in groups:
        rates = [float(r.success_rates[-1]) for r in group.runs if r.success_rates is not None]
        if rates:
            finals.setdefault(group.label, []).append(rates)
    profiles = {}
    for label, per_task in finals.items():
        runs = min(len(rates) for rates in per_task)  # rliable wants (runs, tasks)
        table = np.array([rates[:runs] for rates in per_task]).T
        profile, band = library.create_performance_profile(
            {label: table}, taus, reps=BOOTSTRAP_REPS
        )
        profiles[label] = (profile[label], band[label])
    return profiles


def _plot_profiles(
    profiles: dict[str, tuple[np.ndarray, np.ndarray]], taus: np.ndarray, out: Path
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    figure = Figure(figsize=(5.5, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for index, (label, (profile, band)) in enumerate(sorted(profiles.items())):
        axis.plot(taus, profile, color=f"C{index % 10}", label=label)
        axis.fill_between(taus, band[0], band[1], color=f"C{index % 10}", alpha=0.2)
    axis.set_xlabel("final success rate τ")
    axis.set_ylabel("fraction of runs with success > τ")
    axis.xaxis.set_major_formatter(PercentFormatter(1.0))
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize="small")
    atomic_write(out, lambda temporary: figure.savefig(temporary, dpi=150))


def _failed_trials(folder: Path) -> list[dict[str, Any]]:
    from agents.sweep import TRIALS_FILE

    table = folder / TRIALS_FILE
    if not table.is_file():
        return []
    return [row for row in json.loads(table.read_text()) if row.get("status") == "failed"]


def write_report(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    budgets: Sequence[int] | None = None,
    out: str | os.PathLike | None = None,
) -> Path:
    """Write ``report.md``, ``curves.png`` and ``profiles.png`` for the runs in ``folders``
    (sweep folders, whose runs are in ``runs/``, or any folders of runs; one report for all)
    into ``out`` (default: the first folder's ``report/``); return the markdown file.

    Raises:
        ValueError: for a folder without runs with evaluations, or a non-positive budget.
        ImportError: without rliable (the ``sweep`` extra).
    """
    from agents.sweep import RUNS_DIR

    rliable()
    roots = (
        [Path(folders)] if isinstance(folders, str | os.PathLike) else [Path(f) for f in folders]
    )
    if not roots:
        raise ValueError("no folder of runs given")
    runs = [root / RUNS_DIR if (root / RUNS_DIR).is_dir() else root for root in roots]
    groups = learning_curves(runs)
    if budgets is not None:
        if any(b <= 0 for b in budgets):
            raise ValueError(f"budgets are positive env steps; got {list(budgets)}")
        chosen = {g.env_id: sorted(set(budgets)) for g in groups}
    else:
        chosen = default_budgets(groups)
    target = Path(out) if out is not None else roots[0] / REPORT_DIR
    target.mkdir(parents=True, exist_ok=True)
    curves = plot_learning_curves(runs, out=target / "curves.png", spread="iqm")
    taus = np.linspace(0.0, 1.0, 51)
    profiles = performance_profiles(groups, taus)
    sections = [
        f"# Results of {', '.join(map(str, roots))}",
        "",
        "Success rate and return at fixed budgets of env steps: the interquartile mean (IQM) over "
        "seeds, with its 95% stratified-bootstrap confidence interval (rliable, "
        f"{BOOTSTRAP_REPS} resamples); each run's value is its latest evaluation at or before "
        "the budget, and a run that stopped before the budget is left out (n counts the runs).",
        "",
        results_table(groups, chosen),
        "",
        f"![sample-efficiency curves]({curves.name})",
    ]
    if profiles:
        _plot_profiles(profiles, taus, target / "profiles.png")
        sections += ["", "![performance profiles of the final success rate](profiles.png)"]
    failed = [row for root in roots for row in _failed_trials(root)]
    if failed:
        sections += ["", "## Failed trials", ""]
        sections += [f"- `{row['run_dir']}`: {row['error']}" for row in failed]
    report = target / "report.md"
    text = "\n".join(sections) + "\n"
    atomic_write(report, lambda temporary: Path(temporary).write_text(text))
    return report


__all__ = [
    "default_budgets",
    "performance_profiles",
    "results_table",
    "value_at",
    "write_report",
]
