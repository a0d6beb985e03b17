"""Learning curves of training runs: success rate and return against env steps, seeds pooled.

Each run directory's periodic evaluations (``eval/evaluations.npz``, written by SB3's
``EvalCallback``: ``timesteps (N,)``, ``results (N, E)`` episode returns, ``successes (N, E)``)
become one curve per run: the mean return and the success rate over the ``E`` episodes of each
evaluation. Runs are grouped by env and experiment name (``exp_name``, the config file's stem; the
run directories are named ``{env}__{exp}__{seed}__{time}``); a group's curve is the mean over its
runs (seeds) at each evaluation step, with a band for their spread: the minimum and maximum (the
default, honest for the few seeds RL papers run) or ± one standard deviation; or, with ``iqm``,
the interquartile mean over seeds and its 95% stratified-bootstrap confidence interval (rliable,
Agarwal et al. 2021; the ``sweep`` extra).

The figure has one column per env and two rows (success rate, return), one colour per experiment.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.config import TrainConfig, config_to_dict
from agents.training import CONFIG_FILE, EVAL_DIR, read_run_config
from kp3d.files import atomic_write

EVALUATIONS_FILE = "evaluations.npz"

Spread = Literal["minmax", "std", "iqm"]
SPREADS: tuple[str, ...] = ("minmax", "std", "iqm")

RUN_KEYS = ("seed", "n_timesteps", "device", "torch_threads", "progress_bar", "verbose")
"""Config keys that may differ between the runs (seeds) of one experiment."""


@dataclass(frozen=True)
class RunCurve:
    """The evaluations of one run.

    Attributes:
        run_dir: the run directory.
        config: its resolved config.
        timesteps: ``(N,)`` env steps of the evaluations.
        returns: ``(N,)`` mean episode return of each evaluation.
        success_rates: ``(N,)`` fraction of successful episodes, or ``None`` when the env reports
            no ``is_success``.
    """

    run_dir: Path
    config: TrainConfig
    timesteps: np.ndarray
    returns: np.ndarray
    success_rates: np.ndarray | None


@dataclass(frozen=True)
class CurveGroup:
    """Runs of one experiment on one env, pooled across seeds.

    Attributes:
        env_id: the env.
        label: the experiment name.
        runs: the runs pooled.
        timesteps: ``(T,)`` every evaluation step of any run, sorted.
        counts: ``(T,)`` runs evaluated at each step.
        returns: ``(3, T)`` mean (IQM with ``spread="iqm"``), low and high of the runs' mean
            returns at each step.
        success_rates: ``(3, T)`` the same for success rates (``None`` if no run has them).
        spread: what the curve and the band are: ``"minmax"`` or ``"std"`` (the mean, and the
            range or ± one standard deviation), or ``"iqm"`` (the IQM and its 95% CI).
    """

    env_id: str
    label: str
    runs: tuple[RunCurve, ...]
    timesteps: np.ndarray
    counts: np.ndarray
    returns: np.ndarray
    success_rates: np.ndarray | None
    spread: str


def read_run_curve(run_dir: str | os.PathLike) -> RunCurve:
    """The evaluations of a run directory.

    Raises:
        RunDirectoryError: if ``run_dir`` is not a run.
        ValueError: if it has no evaluations yet.
    """
    path = Path(run_dir)
    config = read_run_config(path)
    file = path / EVAL_DIR / EVALUATIONS_FILE
    if not file.is_file():
        raise ValueError(
            f"run {str(path)!r} has no evaluations ({EVAL_DIR}/{EVALUATIONS_FILE}): its "
            f"eval.freq is {config.eval.freq} and it has trained to no evaluation yet, or "
            "evaluations were off"
        )
    with np.load(file) as data:
        timesteps = np.asarray(data["timesteps"], dtype=np.int64).reshape(-1)
        returns = np.asarray(data["results"], dtype=np.float64).reshape(len(timesteps), -1)
        successes = None
        if "successes" in data and data["successes"].size:
            successes = np.asarray(data["successes"], np.float64).reshape(len(timesteps), -1)
    order = np.argsort(timesteps, kind="stable")
    return RunCurve(
        run_dir=path,
        config=config,
        timesteps=timesteps[order],
        returns=returns[order].mean(axis=1),
        success_rates=None if successes is None else successes[order].mean(axis=1),
    )


def _expand(run_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories, with folders of runs (such as ``runs/``) replaced by the runs in them."""
    paths: list[Path] = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        if (path / CONFIG_FILE).is_file():
            paths.append(path)
            continue
        inner = sorted(p.parent for p in path.glob(f"*/{CONFIG_FILE}"))
        if not path.is_dir() or not inner:
            raise ValueError(
                f"{str(path)!r} is neither a run directory (with {CONFIG_FILE}) nor a folder of "
                "run directories"
            )
        paths.extend(inner)
    return paths


BOOTSTRAP_REPS = 2000
"""Bootstrap resamples of rliable's confidence intervals."""
INSTALL_HINT = 'IQM and its confidence intervals need rliable: pip install -e ".[sweep]"'


def rliable() -> tuple[Any, Any]:
    """rliable's ``library`` and ``metrics`` modules (the ``sweep`` extra)."""
    try:
        from rliable import library, metrics
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from None
    return library, metrics


def iqm_interval(scores: np.ndarray, reps: int = BOOTSTRAP_REPS) -> tuple[float, float, float]:
    """IQM of ``scores`` ``(runs,)`` or ``(runs, tasks)`` and its 95% stratified-bootstrap
    confidence interval (runs resampled within each task), by rliable."""
    library, metrics = rliable()
    table = np.asarray(scores, dtype=float)
    table = table[:, None] if table.ndim == 1 else table
    if len(table) == 1:
        value = float(table.mean())
        return value, value, value
    with warnings.catch_warnings():
        # arch (rliable's bootstrap) deprecates the random_state rliable passes it.
        warnings.simplefilter("ignore", FutureWarning)
        point, interval = library.get_interval_estimates(
            {"x": table},
            lambda x: np.array([metrics.aggregate_iqm(x)]),
            reps=reps,
            random_state=np.random.RandomState(0),
        )
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _aggregate(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], spread: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timesteps, counts, (3, T) mean/low/high)`` of per-run ``(timesteps, values)``."""
    timesteps = np.unique(np.concatenate([t for t, _ in curves]))
    table = np.full((len(curves), len(timesteps)), np.nan)
    for row, (steps, values) in enumerate(curves):
        table[row, np.searchsorted(timesteps, steps)] = values
    counts = np.sum(~np.isnan(table), axis=0)
    if spread == "iqm":
        estimates = [iqm_interval(column[~np.isnan(column)]) for column in table.T]
        return timesteps, counts, np.array(estimates, dtype=float).T
    mean = np.nanmean(table, axis=0)
    if spread == "std":
        deviation = np.nanstd(table, axis=0)
        low, high = mean - deviation, mean + deviation
    else:
        low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
    return timesteps, counts, np.stack([mean, low, high])


def learning_curves(
    run_dirs: Iterable[str | os.PathLike], spread: Spread = "minmax"
) -> list[CurveGroup]:
    """Read runs and pool them by env and experiment name.

    Runs without evaluations are skipped with a warning. Runs of one group whose configs differ
    in more than the per-run keys (:data:`RUN_KEYS`) are pooled with a warning naming the keys.

    Args:
        run_dirs: run directories, or folders of run directories.
        spread: one of :data:`SPREADS` (see :class:`CurveGroup`).

    Returns:
        The groups, sorted by env and label.

    Raises:
        ValueError: for an unknown ``spread``, a path that is not a run, or no run with
            evaluations.
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}; got {spread!r}")
    paths = _expand(run_dirs)
    if not paths:
        raise ValueError("no run directories given")
    runs: list[RunCurve] = []
    skipped: list[str] = []
    for path in paths:
        try:
            runs.append(read_run_curve(path))
        except ValueError as error:
            skipped.append(str(error))
    if not runs:
        raise ValueError("no run has evaluations to plot:\n  " + "\n  ".join(skipped))
    for message in skipped:
        warnings.warn(f"skipped: {message}", stacklevel=2)

    grouped: dict[tuple[str, str], list[RunCurve]] = {}
    for run in runs:
        key = (run.config.env_id, run.config.exp_name or run.run_dir.name)
        grouped.setdefault(key, []).append(run)
    groups = []
    for (env_id, label), members in sorted(grouped.items()):
        settings = [config_to_dict(m.config) for m in members]
        differing = sorted(
            key
            for key in settings[0]
            if key not in RUN_KEYS and any(s[key] != settings[0][key] for s in settings)
        )
        if differing:
            warnings.warn(
                f"the runs of {label!r} on {env_id} differ in {differing}; pooled anyway (give "
                "them different exp_name values to plot them apart)",
                stacklevel=2,
            )
        timesteps, counts, returns = _aggregate([(m.timesteps, m.returns) for m in members], spread)
        with_success = [m for m in members if m.success_rates is not None]
        success_rates = None
        if with_success:
            steps, _, rates = _aggregate(
                [(m.timesteps, m.success_rates) for m in with_success], spread
            )
            success_rates = np.full((3, len(timesteps)), np.nan)
            success_rates[:, np.searchsorted(timesteps, steps)] = rates
        groups.append(
            CurveGroup(
                env_id=env_id,
                label=label,
                runs=tuple(members),
                timesteps=timesteps,
                counts=counts,
                returns=returns,
                success_rates=success_rates,
                spread=spread,
            )
        )
    return groups


def plot_learning_curves(
    run_dirs: Iterable[str | os.PathLike],
    out: str | os.PathLike | None = None,
    spread: Spread = "minmax",
    dpi: int = 150,
) -> Path:
    """Draw the learning curves of runs (see the module docstring) into an image file.

    Drawn with Matplotlib's object API on its Agg canvas (no pyplot state, no display needed) and
    written atomically: a failed write leaves no file under ``out``.

    Args:
        run_dirs: run directories, or folders of run directories.
        out: image file (``.png``, ``.pdf``, ``.svg``...). Default: ``curves.png`` in the run
            directory for one run, else in the runs' common parent folder.
        spread: the band: ``"minmax"`` (across seeds), ``"std"`` (mean ± one std) or ``"iqm"``
            (IQM over seeds with its 95% bootstrap CI).
        dpi: resolution of raster formats.

    Returns:
        The file written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, PercentFormatter

    groups = learning_curves(run_dirs, spread)
    runs = [run.run_dir for group in groups for run in group.runs]
    if out is None:
        folder = (
            runs[0] if len(runs) == 1 else Path(os.path.commonpath([p.resolve() for p in runs]))
        )
        out = folder / "curves.png"
    path = Path(out)
    envs = sorted({group.env_id for group in groups})
    labels = sorted({group.label for group in groups})
    figure = Figure(figsize=(4.6 * len(envs), 6.4), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    formats = canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ValueError(f"cannot write {path.name!r}: use one of .{', .'.join(sorted(formats))}")
    axes = figure.subplots(2, len(envs), squeeze=False, sharex="col")
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    band = {"minmax": "min-max across seeds", "std": "±1 std across seeds", "iqm": "95% CI"}[spread]
    centre = "IQM" if spread == "iqm" else "mean"
    pooled = any(len(group.runs) > 1 for group in groups)
    for column, env_id in enumerate(envs):
        success_axis, return_axis = axes[0, column], axes[1, column]
        success_axis.set_title(env_id)
        for group in (g for g in groups if g.env_id == env_id):
            seeds = len(group.runs)
            name = f"{group.label} ({seeds} seed{'s' if seeds > 1 else ''})"
            for axis, values in ((success_axis, group.success_rates), (return_axis, group.returns)):
                if values is None:
                    continue
                defined = ~np.isnan(values[0])
                steps = group.timesteps[defined]
                mean, low, high = values[:, defined]
                axis.plot(steps, mean, color=colors[group.label], label=name, marker=".")
                if seeds > 1:
                    axis.fill_between(steps, low, high, color=colors[group.label], alpha=0.2)
        success_axis.set_ylim(-0.03, 1.03)
        success_axis.yaxis.set_major_formatter(PercentFormatter(1.0))
        success_axis.set_ylabel("success rate")
        return_axis.set_ylabel("return")
        return_axis.set_xlabel("env steps")
        return_axis.xaxis.set_major_formatter(EngFormatter())
        for axis in (success_axis, return_axis):
            axis.grid(alpha=0.3)
    entries: dict[str, object] = {}
    for axis in axes[1]:
        for handle, name in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(name, handle)
    figure.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        # Two labels fit across each env's column; more columns would overflow the figure.
        ncols=min(len(entries), 2 * len(envs)),
        title=f"{centre} over seeds; shaded: {band}" if pooled else None,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=dpi, bbox_inches="tight"))
    return path


__all__ = [
    "RUN_KEYS",
    "SPREADS",
    "CurveGroup",
    "RunCurve",
    "learning_curves",
    "plot_learning_curves",
    "read_run_curve",
]
