"""Tests of ``kp3d sweep`` and ``kp3d report`` (:mod:`agents.sweep`, :mod:`agents.report`).

Reading and checking sweep files needs nothing but kp3d; the sweeps themselves run on a local
Ray (the ``sweep`` extra, which ``make test`` installs): the smoke sweep of configs/sweeps, its
resumption, a failing trial, and an Optuna search with ASHA, each with a budget of a few hundred
env steps. Interrupting a sweep with Ctrl-C and joining a ``ray start --head`` cluster are
``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.config import ConfigError
from agents.plot import learning_curves
from agents.report import default_budgets, value_at, write_report
from agents.runs import MODEL_FILE, RunDirectoryError, read_run_config
from agents.sweep import TRIALS_FILE, read_sweep, run_sweep, trial_config, trials

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "sweeps" / "smoke.yaml"
TINY = [
    "n_timesteps=300",
    "sac.learning_starts=100",
    "sac.buffer_size=1000",
    "eval.freq=150",
    "eval.episodes=2",
    "checkpoint_freq=150",
]


def write_sweep(path: Path, **content) -> Path:
    content.setdefault("configs", [str(ROOT / "configs" / "reach_state_sac.yaml")])
    content.setdefault("set", TINY)
    path.write_text(json.dumps(content))  # JSON is YAML
    return path


# -- sweep files ---------------------------------------------------------------------------------


def test_a_grid_sweep_runs_every_config_combination_and_seed(tmp_path) -> None:
    sweep = read_sweep(
        write_sweep(
            tmp_path / "grid.yaml",
            configs=[str(ROOT / "configs" / name) for name in ("reach_state_sac.yaml",)],
            seeds=[1, 2],
            grid={"sac.learning_rate": [0.001, 0.0003], "sac.tau": [0.01]},
        )
    )
    runs = trials(sweep)
    assert sorted(t.name for t in runs) == sorted(
        f"kp3d-Reach-v0__state_sac+sac.learning_rate-{lr}+sac.tau-0.01__s{seed}"
        for lr in ("0.001", "0.0003")
        for seed in (1, 2)
    )
    config = trial_config(next(t for t in runs if "0.0003" in t.name and t.seed == 2))
    assert (config.seed, config.sac.learning_rate, config.sac.tau) == (2, 0.0003, 0.01)
    assert config.exp_name == "state_sac+sac.learning_rate-0.0003+sac.tau-0.01"
    assert (config.n_timesteps, config.torch_threads, config.verbose) == (300, 1, 0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"sedes": [1]}, r"unknown keys \['sedes'\]"),
        ({"configs": ["nowhere.yaml"]}, "not found"),
        ({"seeds": [1, 1]}, "distinct non-negative"),
        ({"set": ["n_timesteps"]}, "KEY=VALUE|key=value"),
        ({"grid": {"sac.tau": []}}, "non-empty list"),
        ({"grid": {"sac.tau": [2.0]}}, r"trial .*sac\.tau"),
        ({"set": [*TINY, "eval.freq=0"]}, "reads the periodic evaluations"),
        ({"search": {"space": {"sac.tau": {"normal": [0, 1]}}, "samples": 2}}, "KIND one of"),
        ({"search": {"space": {"sac.tau": {"uniform": [1, 0]}}, "samples": 2}}, "below high"),
        ({"search": {"space": {"sac.tau": {"uniform": [0, 1]}}, "samples": 0}}, "positive"),
        (
            {"search": {"space": {"sac.tau": {"uniform": [0, 1]}}, "samples": 2}, "seeds": [1, 2]},
            "one seed",
        ),
        (
            {
                "search": {
                    "space": {"sac.tau": {"uniform": [0, 1]}},
                    "samples": 2,
                    "scheduler": {"asha": {"patience": 3}},
                }
            },
            "unknown ASHA options",
        ),
    ],
)
def test_an_invalid_sweep_says_what_is_wrong(tmp_path, content, message) -> None:
    path = write_sweep(tmp_path / "bad.yaml", **content)
    with pytest.raises(ConfigError, match=message):
        trials(read_sweep(path))


def test_a_sweep_folder_is_neither_overwritten_nor_resumed_by_mistake(tmp_path) -> None:
    sweep = write_sweep(tmp_path / "s.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(RunDirectoryError, match="--resume"):
        run_sweep(sweep, out=tmp_path / "out")
    with pytest.raises(RunDirectoryError, match="no sweep to resume"):
        run_sweep(sweep, out=tmp_path / "elsewhere", resume=True)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=str)
def test_every_shipped_sweep_file_is_valid(path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert trials(read_sweep(path))


# -- statistics ----------------------------------------------------------------------------------


def test_budget_values_are_the_latest_evaluation_before_them() -> None:
    steps, values = np.array([100, 200, 300]), np.array([0.1, 0.2, 0.3])
    assert np.isnan(value_at(steps, values, 99))
    assert value_at(steps, values, 250) == 0.2
    assert value_at(steps, values, 300) == 0.3
    assert np.isnan(value_at(steps, values, 301))  # the run never trained that far


def test_iqm_and_its_interval() -> None:
    pytest.importorskip("rliable")
    from agents.plot import iqm_interval

    # The IQM of 8 runs is the mean of the middle 4; an outlier does not move it.
    scores = np.array([0.0, 0.5, 0.5, 0.6, 0.6, 0.7, 0.7, 100.0])
    iqm, low, high = iqm_interval(scores)
    assert iqm == pytest.approx(0.6)
    assert low <= iqm <= high < 100.0
    assert iqm_interval(np.array([0.3])) == (0.3, 0.3, 0.3)


# -- sweeps on a local Ray -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> Path:
    pytest.importorskip("ray")
    out = tmp_path_factory.mktemp("sweeps") / "smoke"
    assert run_sweep(SMOKE, out=out) == 0
    return out


def test_the_smoke_sweep_makes_one_run_per_trial_and_a_report(smoke_sweep) -> None:
    runs = sorted((smoke_sweep / "runs").iterdir())
    assert [run.name for run in runs] == [
        f"kp3d-{env}-v0__state_sac__s{seed}" for env in ("Push", "Reach") for seed in (1, 2)
    ]
    for run in runs:
        config = read_run_config(run)
        assert config.seed == int(run.name[-1]) and config.n_timesteps == 400
        assert (run / MODEL_FILE).is_file()
    rows = json.loads((smoke_sweep / TRIALS_FILE).read_text())
    assert [row["status"] for row in rows] == ["finished"] * 4
    assert all(row["last_evaluation"]["timesteps"] == 400 for row in rows)

    report = write_report(smoke_sweep)
    text = report.read_text()
    assert "IQM" in text and "95%" in text
    for env in ("kp3d/Reach-v0", "kp3d/Push-v0"):
        assert f"| {env} | state_sac | 400 |" in text
    assert (report.parent / "curves.png").is_file() and (report.parent / "profiles.png").is_file()
    assert default_budgets(learning_curves([runs[0]])) == {"kp3d/Push-v0": [200, 400]}


def test_resuming_a_finished_sweep_repeats_no_trial(smoke_sweep) -> None:
    models = sorted((smoke_sweep / "runs").glob(f"*/{MODEL_FILE}"))
    before = [m.stat().st_mtime_ns for m in models]
    assert run_sweep(SMOKE, out=smoke_sweep, resume=True) == 0
    assert [m.stat().st_mtime_ns for m in models] == before


def test_a_failed_trial_is_reported_with_its_error(tmp_path) -> None:
    pytest.importorskip("ray")
    sweep = write_sweep(tmp_path / "fails.yaml", set=[*TINY, "env_kwargs.cameras=[nowhere]"])
    assert run_sweep(sweep, out=tmp_path / "out") == 1
    (row,) = json.loads((tmp_path / "out" / TRIALS_FILE).read_text())
    assert row["status"] == "failed"
    assert "nowhere" in row["error"]


def test_an_optuna_search_with_asha_runs_end_to_end(tmp_path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("optuna")
    space = {
        "sac.learning_rate": {"loguniform": [1e-4, 1e-2]},
        "sac.tau": {"uniform": [0.005, 0.05]},
    }
    search = {
        "space": space,
        "samples": 3,
        "metric": "return",
        "mode": "max",
        "scheduler": {"asha": {"grace_period": 150, "reduction_factor": 2}},
    }
    sweep = write_sweep(tmp_path / "search.yaml", search=search)
    assert run_sweep(sweep, out=tmp_path / "out") == 0
    rows = json.loads((tmp_path / "out" / TRIALS_FILE).read_text())
    assert len(rows) == 3
    for row in rows:
        assert row["status"] in ("finished", "stopped early")
        sampled = row["sampled"]
        assert 1e-4 <= sampled["sac.learning_rate"] <= 1e-2
        assert 0.005 <= sampled["sac.tau"] <= 0.05
        config = read_run_config(row["run_dir"])
        assert config.sac.learning_rate == pytest.approx(sampled["sac.learning_rate"])
        assert config.exp_name.startswith("state_sac+")
    assert len({row["run_dir"] for row in rows}) == 3


# -- slow: Ctrl-C and a Ray cluster ----------------------------------------------------------------


def _kp3d(*args: str) -> list[str]:
    return [sys.executable, "-m", "agents.cli", *args]


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path) -> None:
    pytest.importorskip("ray")
    sweep = write_sweep(tmp_path / "seq.yaml", seeds=[1, 2, 3], max_concurrent=1)
    out = tmp_path / "out"
    process = subprocess.Popen(
        _kp3d("sweep", str(sweep), "--out", str(out)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    first = out / "runs" / "kp3d-Reach-v0__state_sac__s1" / MODEL_FILE
    deadline = time.monotonic() + 300
    assert process.stdout is not None
    for line in process.stdout:  # trials run one at a time: wait for the first to finish
        if "done at" in line or time.monotonic() > deadline:
            break
    assert first.is_file()
    finished_at = first.stat().st_mtime_ns
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "--resume" in output

    resumed = subprocess.run(
        _kp3d("sweep", str(sweep), "--out", str(out), "--resume"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert first.stat().st_mtime_ns == finished_at  # not trained again
    rows = json.loads((out / TRIALS_FILE).read_text())
    assert [row["status"] for row in rows] == ["finished"] * 3


@pytest.mark.slow
def test_a_sweep_joins_a_ray_cluster(tmp_path) -> None:
    pytest.importorskip("ray")
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port = "6391"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    started = subprocess.run(
        [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        sweep = write_sweep(tmp_path / "cluster.yaml", seeds=[1, 2])
        result = subprocess.run(
            _kp3d(
                "sweep",
                str(sweep),
                "--out",
                str(tmp_path / "out"),
                "--address",
                f"127.0.0.1:{port}",
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rows = json.loads((tmp_path / "out" / TRIALS_FILE).read_text())
        assert [row["status"] for row in rows] == ["finished"] * 2
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
