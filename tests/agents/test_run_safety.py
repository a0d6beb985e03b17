"""What a careful user hits with run directories (issue 13): files that would run code when
opened, names that leave ``runs/``, configs that blow up, two writers, runs that fail at
start-up, stale temporary files, and errors that must be one line."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import agents
from agents.checkpoints import load_replay_buffer, save_replay_buffer
from agents.cli import main
from agents.config import ConfigError, config_from_dict, load_config
from agents.config_checks import check_config
from agents.runs import lock_run_dir, quoted, resolve_device
from agents.training import RunDirectoryError


class Payload:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory, tiny_config) -> Path:
    """A 24-step SAC run on states with normalised rewards and its replay buffer saved."""
    config = config_from_dict(
        tiny_config(
            algo="sac",
            n_timesteps=24,
            n_envs=1,
            env_kwargs={"obs_mode": "state"},
            perception={"name": None},
            sac={"normalize_reward": True, "save_replay_buffer": True},
        )
    )
    return agents.train(config, run_dir=tmp_path_factory.mktemp("runs") / "sac")


def _copy_run(run: Path, target: Path) -> Path:
    for path in run.rglob("*"):
        if path.is_file() and path.name != ".lock":
            destination = target / path.relative_to(run)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())
    return target


def _rewrite_zip_data(path: Path, change) -> None:
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    change(data)
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)


def _serialized(obj) -> dict:
    return {":type:": "x", ":serialized:": base64.b64encode(pickle.dumps(obj)).decode()}


# -- security -------------------------------------------------------------------------------------


def test_run_files_are_pickle_free(sac_run: Path) -> None:
    names = {p.name for p in sac_run.iterdir()}
    assert {"model.zip", "vecnormalize.npz", "replay_buffer.npz"} <= names
    assert not any(name.endswith(".pkl") for name in names)
    for name in ("vecnormalize.npz", "replay_buffer.npz"):
        with np.load(sac_run / name, allow_pickle=False) as data:
            assert all(data[key].dtype != object for key in data.files)


def test_a_poisoned_model_zip_does_not_run_code(sac_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sac_run, tmp_path / "run")
    marker = tmp_path / "pwned"

    def poison_known_field(data: dict) -> None:
        data["policy_class"] = _serialized(Payload(marker))
        data["observation_space"] = _serialized(Payload(marker))

    _rewrite_zip_data(run / "model.zip", poison_known_field)
    model = agents.load(run, device="cpu")  # every pickled field is replaced, not unpickled
    assert model.num_timesteps == 24 and not marker.exists()
    agents.evaluate(run, episodes=1)
    assert not marker.exists()

    _rewrite_zip_data(
        run / "model.zip", lambda data: data.update(extra=_serialized(Payload(marker)))
    )
    with pytest.raises(RunDirectoryError, match=r"pickled fields \['extra'\].*not loaded"):
        agents.load(run, device="cpu")
    assert not marker.exists()


def test_poisoned_statistics_and_replay_files_do_not_run_code(
    sac_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(sac_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    # Old-style pickles are never read, whatever they hold.
    for name in ("vecnormalize.pkl", "replay_buffer.pkl"):
        (run / name).write_bytes(pickle.dumps(Payload(marker)))
    # An .npz that holds an object array would unpickle it on np.load(allow_pickle=True).
    np.savez(run / "vecnormalize.npz", ret_mean=np.array([Payload(marker)], dtype=object))
    with pytest.raises(RunDirectoryError, match=r"normalisation statistics.*left as it is"):
        agents.evaluate(run, episodes=1)
    assert not marker.exists()
    (run / "vecnormalize.npz").write_bytes((sac_run / "vecnormalize.npz").read_bytes())
    with pytest.warns(UserWarning, match=r"vecnormalize.pkl, replay_buffer.pkl not read"):
        agents.resume(run, ["n_timesteps=32"])
    assert not marker.exists()
    assert agents.load(run, device="cpu").num_timesteps == 32


def test_replay_buffer_round_trip_and_damage(sac_run: Path, tmp_path: Path) -> None:
    model = agents.load(sac_run, device="cpu")
    buffer = model.replay_buffer
    load_replay_buffer(buffer, sac_run / "replay_buffer.npz")
    assert buffer.pos == 24 and not buffer.full
    save_replay_buffer(buffer, tmp_path / "copy.npz")
    observations = buffer.observations.copy()
    buffer.observations[:] = 0
    load_replay_buffer(buffer, tmp_path / "copy.npz")
    np.testing.assert_array_equal(buffer.observations, observations)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((tmp_path / "copy.npz").read_bytes()[:200])
    with pytest.raises(RunDirectoryError, match="cannot read the replay buffer"):
        load_replay_buffer(buffer, truncated)


@pytest.mark.parametrize(
    "name", ["x/../../../../escaped", "../up", ".hidden", "a b/c", "-flag", "", "x" * 200]
)
def test_exp_name_cannot_leave_the_runs_folder(name: str, tiny_config) -> None:
    with pytest.raises(ConfigError, match="'exp_name' becomes part of the run directory"):
        check_config(config_from_dict(tiny_config(exp_name=name)))


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(5)
    ]
    path = tmp_path / "laughs.yaml"
    path.write_text("env_id: kp3d/Reach-v0\n" + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match=r"YAML aliases \(\*a\) are not allowed"):
        load_config(path)
    with pytest.raises(ConfigError, match="aliases"):
        load_config(Path(__file__).parents[2] / "configs" / "demo.yaml", ["n_envs=*a"])


# -- config values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ppo": {"gamma": 2}}, r"'ppo.gamma' must be in \[0, 1\]; got 2"),
        ({"ppo": {"clip_range": -1}}, r"'ppo.clip_range' must be greater than 0"),
        ({"ppo": {"net_arch": [0]}}, r"'ppo.net_arch\[0\]' must be at least 1"),
        ({"ppo": {"learning_rate": -1}}, r"'ppo.learning_rate' must be in \(0, 1\]"),
        ({"ppo": {"learning_rate": float("nan")}}, r"'ppo.learning_rate' must be a finite"),
        ({"ppo": {"learning_rate": 1e300}}, r"'ppo.learning_rate' must be in \(0, 1\]"),
        ({"sac": {"tau": 0}}, r"'sac.tau' must be in \(0, 1\]"),
        ({"sac": {"ent_coef": "automatic"}}, r"'sac.ent_coef' must be.*auto_<initial value>"),
        ({"seed": -5}, r"'seed' must be in \[0, 4294967295\]; got -5"),
        ({"device": "bogus"}, r"'device' must be auto, cpu, cuda.*got 'bogus'"),
        ({"ppo": {"batch_size": 1}}, r"'ppo.batch_size' must be at least 2; got 1"),
        ({"sac": {"batch_size": 1}}, r"'sac.batch_size' must be at least 2"),
        ({"perception": {"pretrain": {"seed": -1}}}, r"'perception.pretrain.seed' must be"),
    ],
)
def test_every_number_has_a_range(override: dict, message: str, tiny_config) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(config_from_dict(tiny_config(**override)))


# -- runs that can be trusted ---------------------------------------------------------------------


def test_a_second_writer_is_refused(sac_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sac_run, tmp_path / "run")
    message = rf"being written by process {os.getpid()}"
    with lock_run_dir(run), pytest.raises(RunDirectoryError, match=message):
        agents.resume(run, ["n_timesteps=32"])
    assert agents.load(run, device="cpu").num_timesteps == 24  # untouched
    agents.resume(run, ["n_timesteps=32"])  # the lock went with its holder


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_run_that_fails_at_start_up_leaves_nothing(
    failure: BaseException, tmp_path: Path, tiny_config, monkeypatch
) -> None:
    import agents.training

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(agents.training, "build_model", fail)
    config = config_from_dict(tiny_config())
    with pytest.raises(type(failure)):
        agents.train(config, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    config = config_from_dict(tiny_config(n_timesteps=16, ppo={"n_steps": 8, "batch_size": 8}))
    assert agents.train(config, run_dir=tmp_path / "run") == tmp_path / "run"  # reusable


def test_bad_values_fail_before_a_directory_is_made(tmp_path: Path, tiny_config) -> None:
    for override in ({"env_kwargs": {"no_such_kwarg": 1}}, {"seed": -5}, {"device": "bogus"}):
        with pytest.raises(ConfigError):
            agents.train(config_from_dict(tiny_config(**override)), run_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_no_advice_to_resume_a_run_without_checkpoint(tmp_path: Path, tiny_config) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("env_id: kp3d/Reach-v0\n")
    with pytest.raises(RunDirectoryError, match="holds no checkpoint to resume") as error:
        agents.train(config_from_dict(tiny_config()), run_dir=tmp_path / "run")
    assert "--resume" not in str(error.value)


def test_resume_below_the_steps_done_changes_nothing(sac_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sac_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"'n_timesteps' 10 is below the 24 steps.*nothing"):
        agents.resume(run, ["n_timesteps=10"])
    agents.resume(run)  # complete: says so
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def test_stale_temporary_files_are_cleared_at_the_next_start(sac_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sac_run, tmp_path / "run")
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [run / f".model.{dead}.partial.zip", run / "videos" / f".step_8.{dead}.partial.mp4"]
    live = run / f".perception.{os.getpid()}.partial.pt"
    for path in [*stale, live]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    agents.resume(run, ["n_timesteps=32"])
    assert not any(path.exists() for path in stale)
    assert live.exists()


def test_a_broken_run_config_and_a_foreign_checkpoint_are_named(
    sac_run: Path, tmp_path: Path, tiny_config
) -> None:
    run = _copy_run(sac_run, tmp_path / "run")
    (run / "config.yaml").write_text("env_id: [unclosed\n")
    with pytest.raises(RunDirectoryError, match=r"cannot read the run's config.*untouched"):
        agents.load(run)
    # Checkpoints of other runs placed in a state SAC run on Reach: PPO on pixels, SAC on Push.
    ppo = config_from_dict(tiny_config(n_timesteps=16, ppo={"n_steps": 8, "batch_size": 8}))
    push = config_from_dict(
        tiny_config(
            env_id="kp3d/Push-v0",
            algo="sac",
            n_timesteps=16,
            n_envs=1,
            env_kwargs={"obs_mode": "state"},
            perception={"name": None},
        )
    )
    for other, message in [
        (ppo, r"pickled fields \['clip_range', .*agent \(PerceptionSAC\) does not have"),
        (push, r"does not fit this run's agent.*left as it is"),
    ]:
        other_run = agents.train(other, run_dir=tmp_path / f"other_{other.algo}")
        run = _copy_run(sac_run, tmp_path / f"run_{other.algo}")
        (run / "model.zip").write_bytes((other_run / "model.zip").read_bytes())
        with pytest.raises(RunDirectoryError, match=message):
            agents.load(run, device="cpu")


def test_cuda_without_a_gpu_warns_once(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="no CUDA GPU; running on the CPU"):
        assert resolve_device("cuda:3").type == "cpu"


def test_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, write_config, tiny_config, capsys, monkeypatch
) -> None:
    import errno

    import agents.training

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "model.zip"))

    monkeypatch.setattr(agents.training, "save_checkpoint", full)
    config = write_config(tiny_config())
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "No space left on device" in error
    assert "intact" in error
    # It had begun to learn: its logs are kept; nothing advises resuming it.
    assert (tmp_path / "run" / "logs" / "progress.csv").is_file()
    with pytest.raises(RunDirectoryError, match="holds no checkpoint to resume"):
        agents.train(config_from_dict(tiny_config()), run_dir=tmp_path / "run")


def test_os_errors_are_one_line(tmp_path: Path, write_config, tiny_config, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    config = write_config(tiny_config())
    assert main(["train", str(config), "--run-dir", str(afile / "run")]) != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert afile.read_text() == "mine"
    assert main(["dataset", "kp3d/Reach-v0", "--frames", "4", "--out", str(afile)]) != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Not a directory" in error
    assert afile.read_text() == "mine"
    assert quoted(Path("my runs/a")) == "'my runs/a'"
