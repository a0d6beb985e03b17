"""``kp3d sweep``: many runs of kp3d configs on Ray Tune, each trial an ordinary run directory.

A sweep file (YAML) names base configs, the seeds, overrides for every trial, and either a grid
of overrides (every combination, every seed) or an Optuna search over config keys::

    configs: [configs/reach_state_sac.yaml, configs/reach_keypoint3d_sac.yaml]
    seeds: [1, 2, 3]
    set: [n_timesteps=30000, eval.freq=2500]        # `--set` overrides of every trial
    grid:                                           # optional: one experiment per combination
      sac.learning_rate: [0.001, 0.0003]
    search:                                         # optional, instead of grid: Optuna (TPE)
      space:
        sac.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
        sac.tau: {uniform: [0.002, 0.05]}
      samples: 16                                   # trials, each on the first seed
      metric: success_rate                          # or return; of the periodic evaluations
      mode: max
      scheduler: {asha: {grace_period: 5000, reduction_factor: 2}}   # early stopping (optional)
    cpus_per_trial: 1                               # default 1: one trial per core
    max_concurrent: null                            # default: as many as the cores allow

Config paths are relative to the current directory, else to the sweep file. Every trial is a
``kp3d train`` run in ``OUT/runs/<env>__<experiment>__s<seed>`` (``kp3d eval``, ``render``,
``plot`` and ``report`` read it as any run); its experiment name (``exp_name``) is the config's,
with its grid values or its search trial's id appended, so that runs differing only in seed pool
together. Trials report every evaluation to Tune (``success_rate``, ``return``, ``timesteps``),
which the search and the scheduler read. Tune keeps the sweep's state in ``OUT/tune``:
``--resume`` continues an interrupted sweep without repeating finished trials (an unfinished one
resumes from its run's last checkpoint). ``OUT/trials.json`` lists every trial with its status,
run directory and, for a failed one, its error.

Without ``address`` Ray starts on this machine; with ``address`` (``HOST:PORT`` of a
``ray start --head``) the trials run on that cluster, whose nodes must have kp3d installed and
see ``OUT`` at the same path (a shared filesystem).

Ray Tune and Optuna are the ``sweep`` extra (``pip install -e ".[sweep]"``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    parse_yaml,
)
from agents.config_checks import NAME_PATTERN, check_config
from agents.runs import CONFIG_FILE, MODEL_FILE, RunDirectoryError, quoted

SWEEP_FILE = "sweep.yaml"
"""In the sweep's folder: the sweep file as it was started (``--resume`` checks it)."""
RUNS_DIR = "runs"
TUNE_DIR = "tune"
TRIALS_FILE = "trials.json"
METRICS = ("success_rate", "return")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
ASHA_OPTIONS = ("grace_period", "reduction_factor", "brackets")
"""Options of ``search.scheduler.asha`` (Ray Tune's ``ASHAScheduler``; times in env steps)."""
INSTALL_HINT = 'kp3d sweep needs Ray Tune and Optuna: pip install -e ".[sweep]"'
TRIAL_OVERRIDES = ("verbose=0", "progress_bar=false", "torch_threads=1")
"""Set in every trial: one quiet single-threaded process per core."""


@dataclass(frozen=True)
class Search:
    """An Optuna search (the sweep file's ``search``)."""

    space: dict[str, dict[str, list[Any]]]
    samples: int
    metric: str = "success_rate"
    mode: str = "max"
    scheduler: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class Sweep:
    """A sweep file, read and checked (:func:`read_sweep`)."""

    configs: dict[str, dict[str, Any]]
    """Config name (file stem) → its mapping as read."""
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    search: Search | None = None
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Trial:
    """One trial of a grid sweep, or the template of a search's trials."""

    experiment: str
    config: dict[str, Any]
    overrides: list[str]
    seed: int

    @property
    def name(self) -> str:
        """The run directory's name: ``{env}__{experiment}__s{seed}``."""
        return f"{self.config['env_id'].replace('/', '-')}__{self.experiment}__s{self.seed}"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _resolve_config(entry: Any, sweep_path: Path) -> Path:
    _require(isinstance(entry, str) and entry != "", f"'configs' holds paths; got {entry!r}")
    for candidate in (Path(entry), sweep_path.parent / entry):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config {entry!r} of {str(sweep_path)!r} not found (paths are relative to the current "
        "directory or to the sweep file)"
    )


def _read_search(data: Any) -> Search:
    _require(isinstance(data, Mapping), "'search' must be a mapping with 'space' and 'samples'")
    unknown = sorted(set(data) - {"space", "samples", "metric", "mode", "scheduler"})
    _require(not unknown, f"unknown keys in 'search': {unknown}")
    space = data.get("space")
    _require(isinstance(space, Mapping) and len(space) > 0, "'search.space' must map config keys")
    for key, spec in space.items():
        _require(
            isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS,
            f"search.space.{key} must be {{KIND: [...]}} with KIND one of {DISTRIBUTIONS}; got "
            f"{spec!r}",
        )
        kind, values = next(iter(spec.items()))
        _require(
            isinstance(values, list) and len(values) >= 2, f"search.space.{key}.{kind}: a list"
        )
        if kind != "choice":
            _require(
                len(values) == 2 and all(isinstance(v, int | float) for v in values),
                f"search.space.{key}.{kind} takes [low, high]; got {values!r}",
            )
            _require(values[0] < values[1], f"search.space.{key}: low must be below high")
            _require(kind != "loguniform" or values[0] > 0, f"search.space.{key}: low must be > 0")
    samples = data.get("samples")
    _require(
        isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1,
        f"'search.samples' must be a positive integer; got {samples!r}",
    )
    metric, mode = data.get("metric", "success_rate"), data.get("mode", "max")
    _require(metric in METRICS, f"'search.metric' must be one of {METRICS}; got {metric!r}")
    _require(mode in ("max", "min"), f"'search.mode' must be max or min; got {mode!r}")
    scheduler = data.get("scheduler")
    if scheduler is not None:
        _require(
            isinstance(scheduler, Mapping)
            and set(scheduler) == {"asha"}
            and isinstance(scheduler["asha"] or {}, Mapping),
            f"'search.scheduler' must be {{asha: {{grace_period: STEPS, ...}}}}; got {scheduler!r}",
        )
        scheduler = {"asha": dict(scheduler["asha"] or {})}
        unknown = sorted(set(scheduler["asha"]) - set(ASHA_OPTIONS))
        _require(not unknown, f"unknown ASHA options {unknown}; valid: {list(ASHA_OPTIONS)}")
    return Search(
        {key: dict(spec) for key, spec in space.items()}, samples, metric, mode, scheduler
    )


def read_sweep(path: str | os.PathLike) -> Sweep:
    """Read and check a sweep file (see the module docstring).

    Raises:
        ConfigError: naming what is wrong and what is valid.
    """
    sweep_path = Path(path)
    if not sweep_path.is_file():
        raise ConfigError(f"sweep file {str(sweep_path)!r} not found")
    data = parse_yaml(sweep_path.read_text(), str(sweep_path))
    _require(isinstance(data, Mapping), f"{str(sweep_path)!r} must hold a mapping")
    valid = {"configs", "seeds", "set", "grid", "search", "cpus_per_trial", "max_concurrent"}
    unknown = sorted(set(data) - valid)
    _require(not unknown, f"unknown keys {unknown} in {str(sweep_path)!r}; valid: {sorted(valid)}")
    entries = data.get("configs")
    _require(isinstance(entries, list) and entries, "'configs' must list one or more config files")
    configs: dict[str, dict[str, Any]] = {}
    for entry in entries:
        config_path = _resolve_config(entry, sweep_path)
        _require(config_path.stem not in configs, f"two configs are named {config_path.stem!r}")
        configs[config_path.stem] = config_to_dict(load_config(config_path))
    seeds = data.get("seeds", [1])
    _require(
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        and len(set(seeds)) == len(seeds),
        f"'seeds' must list distinct non-negative integers; got {seeds!r}",
    )
    overrides = data.get("set", [])
    _require(
        isinstance(overrides, list) and all(isinstance(o, str) for o in overrides),
        "'set' must list KEY=VALUE strings",
    )
    for override in overrides:
        parse_override(override)
    grid = data.get("grid") or {}
    _require(isinstance(grid, Mapping), "'grid' must map config keys to lists of values")
    for key, values in grid.items():
        _require(
            isinstance(values, list) and values, f"grid.{key} must be a non-empty list of values"
        )
    search = None if data.get("search") is None else _read_search(data["search"])
    if search is not None:
        _require(not grid, "'grid' and 'search' cannot be combined: keep one")
        _require(len(configs) == 1, "'search' tunes one config: list exactly one under 'configs'")
        _require(
            len(seeds) == 1, "'search' runs each sample on one seed: list exactly one under 'seeds'"
        )
    cpus = data.get("cpus_per_trial", 1)
    _require(
        isinstance(cpus, int | float) and not isinstance(cpus, bool) and cpus > 0,
        f"'cpus_per_trial' must be a positive number; got {cpus!r}",
    )
    concurrent = data.get("max_concurrent")
    _require(
        concurrent is None or (isinstance(concurrent, int) and concurrent >= 1),
        f"'max_concurrent' must be a positive integer or null; got {concurrent!r}",
    )
    return Sweep(configs, list(seeds), list(overrides), dict(grid), search, float(cpus), concurrent)


def _label(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def trials(sweep: Sweep) -> list[Trial]:
    """The sweep's trials: every config x grid combination x seed (for a search, the template
    of its trials: one per config and seed, the sampled keys still unset). Each trial's config
    is checked here, before anything runs.

    Raises:
        ConfigError: for a trial whose config is invalid, naming the trial.
    """
    combos = [
        dict(zip(sweep.grid, values, strict=True))
        for values in itertools.product(*sweep.grid.values())
    ]
    result: list[Trial] = []
    for data in sweep.configs.values():
        for combo in combos:
            experiment = data["exp_name"] + "".join(
                f"+{key}-{_label(v)}" for key, v in combo.items()
            )
            _require(
                NAME_PATTERN.fullmatch(experiment) is not None,
                f"experiment name {experiment!r} is too long or has invalid characters; use "
                "fewer or shorter grid values",
            )
            grid_overrides = [f"{key}={json.dumps(value)}" for key, value in combo.items()]
            if any(t.name == Trial(experiment, data, [], t.seed).name for t in result):
                raise ConfigError(
                    f"two configs run experiment {experiment!r} on {data['env_id']}: give them "
                    "different exp_name values"
                )
            for seed in sweep.seeds:
                trial = Trial(experiment, data, [*sweep.overrides, *grid_overrides], seed)
                check_trial_config(trial)
                result.append(trial)
    return result


def trial_config(trial: Trial, sampled: Mapping[str, Any] | None = None) -> Any:
    """The :class:`~agents.config.TrainConfig` a trial runs (with a search's sampled values)."""
    overrides = [
        *trial.overrides,
        *(f"{key}={json.dumps(value)}" for key, value in (sampled or {}).items()),
        f"seed={trial.seed}",
        f"exp_name={trial.experiment}",
        *TRIAL_OVERRIDES,
    ]
    return config_from_dict(apply_overrides(trial.config, overrides))


def check_trial_config(trial: Trial, sampled: Mapping[str, Any] | None = None) -> None:
    """Check a trial's config as ``kp3d train`` would, and that it evaluates (what Tune reads).

    Raises:
        ConfigError: naming the trial.
    """
    try:
        config = trial_config(trial, sampled)
        check_config(config)
    except ConfigError as error:
        raise ConfigError(f"trial {trial.name}: {error}") from None
    _require(
        0 < config.eval.freq <= config.n_timesteps,
        f"trial {trial.name}: a sweep reads the periodic evaluations, but eval.freq is "
        f"{config.eval.freq} for n_timesteps {config.n_timesteps}; set 0 < eval.freq <= "
        "n_timesteps",
    )


def tune_trial(params: Mapping[str, Any], trial_id: str | None) -> Trial | None:
    """The trial that Tune runs with ``params``: a search trial is its own experiment, named
    with its Tune ``trial_id`` (``None`` when that is unknown)."""
    template = Trial(**params["trial"])
    if not params.get("sampled"):
        return template
    if not trial_id:
        return None
    return dataclasses.replace(template, experiment=f"{template.experiment}+{trial_id}")


def run_name(params: Mapping[str, Any], trial_id: str | None) -> str | None:
    """The run directory's name of the trial Tune runs with ``params`` (see :func:`tune_trial`)."""
    trial = tune_trial(params, trial_id)
    return None if trial is None else trial.name


# -- inside a trial (a Ray worker process) --------------------------------------------------------


def _report_evaluation(evaluation: Any) -> dict[str, float]:
    import numpy as np

    metrics = {
        "timesteps": int(evaluation.evaluations_timesteps[-1]),
        "return": float(np.mean(evaluation.evaluations_results[-1])),
    }
    if evaluation.evaluations_successes:
        metrics["success_rate"] = float(np.mean(evaluation.evaluations_successes[-1]))
    return metrics


def _last_evaluation(run_dir: Path) -> dict[str, float] | None:
    """The run's last evaluation as Tune metrics (for a run that finished before reporting)."""
    from agents.plot import read_run_curve

    try:
        curve = read_run_curve(run_dir)
    except (ValueError, RunDirectoryError):
        return None
    if not len(curve.timesteps):
        return None
    metrics = {"timesteps": int(curve.timesteps[-1]), "return": float(curve.returns[-1])}
    if curve.success_rates is not None:
        metrics["success_rate"] = float(curve.success_rates[-1])
    return metrics


def run_trial(params: dict[str, Any]) -> None:
    """Tune's function trainable: train (or resume) the trial's run, reporting evaluations."""
    from ray import tune

    from agents.pipeline import train
    from agents.training import resume

    if Path(params["cwd"]).is_dir():
        os.chdir(params["cwd"])  # relative paths in configs mean what they meant to the driver
    sampled = params.get("sampled") or {}
    template = tune_trial(params, tune.get_context().get_trial_id())
    assert template is not None
    run_dir = Path(params["runs"]) / template.name
    reported: list[int] = []

    def report(evaluation: Any) -> None:
        metrics = _report_evaluation(evaluation)
        reported.append(metrics["timesteps"])
        tune.report(metrics)

    if (run_dir / MODEL_FILE).is_file():
        resume(run_dir, on_evaluation=report)
    else:
        if run_dir.exists():  # killed before its first checkpoint: keep its logs, start anew
            aside = run_dir.parent / ".abandoned" / f"{run_dir.name}__{int(time.time())}"
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(run_dir), aside)
        train(trial_config(template, sampled), run_dir=run_dir, on_evaluation=report)
    last = _last_evaluation(run_dir)
    if last is not None and (not reported or last["timesteps"] > reported[-1]):
        tune.report(last)


# -- the driver ----------------------------------------------------------------------------------


def _import_tune() -> Any:
    try:
        import optuna  # noqa: F401  (the search algorithm's library)
        from ray import tune
    except ImportError as error:
        raise SystemExit(f"{INSTALL_HINT} ({error})") from None
    return tune


def _distribution(tune: Any, spec: Mapping[str, list[Any]]) -> Any:
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        return tune.choice(values)
    if kind == "randint":  # inclusive of high, as a config range reads
        return tune.randint(int(values[0]), int(values[1]) + 1)
    return getattr(tune, kind)(float(values[0]), float(values[1]))


def _progress_callback(tune: Any) -> Any:
    """A Tune callback printing one line per finished or failed trial (Tune itself is quiet)."""

    class Progress(tune.Callback):  # type: ignore[misc]
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            line = f"trial {run_name(trial.config, trial.trial_id)}: done at "
            line += f"{result.get('timesteps')} steps"
            if "success_rate" in result:
                line += f", success {result['success_rate']:.0%}"
            if "return" in result:
                line += f", return {result['return']:.1f}"
            print(line, flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = run_name(trial.config, trial.trial_id)
            print(f"trial {name}: failed (its error: {TRIALS_FILE})", flush=True)

    return Progress()


def _tuner(
    tune: Any, sweep: Sweep, out: Path, runs: Path, restore: bool, retry_failed: bool
) -> Any:
    trainable = tune.with_resources(run_trial, {"cpu": sweep.cpus_per_trial})
    if restore:
        return tune.Tuner.restore(
            str(out / TUNE_DIR),
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=retry_failed,
        )
    base = {"runs": str(runs), "cwd": os.getcwd()}
    tune_config: dict[str, Any] = {"max_concurrent_trials": sweep.max_concurrent}
    grid = trials(sweep)
    if sweep.search is None:
        space = {**base, "trial": tune.grid_search([dataclasses.asdict(t) for t in grid])}
    else:
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        search = sweep.search
        template = grid[0]
        space = {
            **base,
            "trial": dataclasses.asdict(template),
            "sampled": {key: _distribution(tune, spec) for key, spec in search.space.items()},
        }
        tune_config.update(
            metric=search.metric,
            mode=search.mode,
            num_samples=search.samples,
            search_alg=OptunaSearch(seed=template.seed),
        )
        if search.scheduler is not None:
            options = search.scheduler["asha"]
            tune_config["scheduler"] = ASHAScheduler(
                time_attr="timesteps",
                max_t=trial_config(template).n_timesteps,
                **options,
            )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(**tune_config),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(out.resolve()),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
            callbacks=[_progress_callback(tune)],
        ),
    )


def _trial_rows(results: Any, runs: Path) -> list[dict[str, Any]]:
    """One row per trial: its run, status, last reported metrics and error."""
    from agents.checkpoints import saved_steps
    from agents.runs import read_run_config

    rows = []
    for result in results:
        params = result.config or {}
        name = run_name(params, (result.metrics or {}).get("trial_id")) if params else None
        run_dir = None if name is None else runs / name
        steps = total = None
        if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
            total = read_run_config(run_dir).n_timesteps
            if (run_dir / MODEL_FILE).is_file():
                steps = saved_steps(run_dir / MODEL_FILE)
        if result.error is not None:
            status = "failed"
        elif steps is not None and total is not None and steps >= total:
            status = "finished"
        elif result.metrics and result.metrics.get("done"):
            status = "stopped early"
        else:
            status = "unfinished"
        metrics = (
            {k: result.metrics.get(k) for k in ("timesteps", *METRICS)} if result.metrics else {}
        )
        rows.append(
            {
                "run_dir": None if run_dir is None else str(run_dir),
                "status": status,
                "steps": steps,
                "n_timesteps": total,
                "sampled": params.get("sampled") or {},
                "last_evaluation": {k: v for k, v in metrics.items() if v is not None},
                "error": None if result.error is None else _error_text(result.error),
            }
        )
    return sorted(rows, key=lambda row: str(row["run_dir"]))


def _error_text(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def run_sweep(
    sweep_file: str | os.PathLike,
    out: str | os.PathLike | None = None,
    address: str | None = None,
    resume: bool = False,
    retry_failed: bool = False,
) -> int:
    """Run (or with ``resume`` continue) a sweep; return the exit code: 0 when every trial
    finished or was stopped early by the scheduler, 1 when one failed, 130 when interrupted.

    Raises:
        ConfigError: for an invalid sweep file or trial config (before anything runs).
        RunDirectoryError: for an ``out`` that holds something else, or one to resume that
            holds no sweep or another sweep.
    """
    sweep_path = Path(sweep_file)
    sweep = read_sweep(sweep_path)
    planned = len(trials(sweep))  # every trial's config checked before Ray starts
    if sweep.search is not None:
        planned = sweep.search.samples
    folder = Path(out) if out is not None else Path("runs") / "sweeps" / sweep_path.stem
    text = sweep_path.read_text()
    saved = folder / SWEEP_FILE
    if resume:
        if not (folder / TUNE_DIR).is_dir() or not saved.is_file():
            raise RunDirectoryError(
                f"{str(folder)!r} holds no sweep to resume; start one without --resume"
            )
        if saved.read_text() != text:
            raise RunDirectoryError(
                f"{str(sweep_path)!r} changed since sweep {str(folder)!r} started (its copy: "
                f"{saved}); resume with the same file, or start a new sweep with --out"
            )
    elif folder.exists() and any(folder.iterdir()):
        raise RunDirectoryError(
            f"{str(folder)!r} already holds files: continue that sweep with --resume, or give "
            "another --out"
        )
    tune = _import_tune()
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        saved.write_text(text)
    runs = (folder / RUNS_DIR).resolve()
    runs.mkdir(exist_ok=True)
    env_vars = {key: os.environ[key] for key in ("MUJOCO_GL",) if key in os.environ}
    ray.init(
        address=address,
        num_cpus=None if address else os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )
    try:
        results = _tuner(tune, sweep, folder, runs, resume, retry_failed).fit()
    finally:
        ray.shutdown()
    rows = _trial_rows(results, runs)
    table = folder / TRIALS_FILE
    table.write_text(json.dumps(rows, indent=2) + "\n")
    counts = {status: sum(r["status"] == status for r in rows) for status in _STATUSES}
    counts["not started"] = max(planned - len(rows), 0)
    print(
        f"sweep {quoted(folder)}: {len(rows)} trials: "
        + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    )
    for row in rows:
        if row["status"] == "failed":
            print(f"  failed: {row['run_dir']}: {row['error']}")
    print(f"trials: {table}\nreport: kp3d report {quoted(folder)}")
    if counts["unfinished"] or counts["not started"]:
        print(f"continue with: kp3d sweep {quoted(sweep_path)} --out {quoted(folder)} --resume")
        return 130
    return 1 if counts["failed"] else 0


_STATUSES = ("finished", "stopped early", "failed", "unfinished")
