"""Learning curves: reading evaluations, pooling seeds, the figure, atomic writes, the CLI."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from matplotlib.figure import Figure

from agents.cli import main
from agents.config import config_from_dict, save_config
from agents.plot import learning_curves, plot_learning_curves, read_run_curve


def _fake_run(
    root: Path,
    tiny_config,
    exp: str,
    seed: int,
    returns: list[list[float]],
    successes: list[list[bool]] | None = None,
    env_id: str = "kp3d/Reach-v0",
    **changes,
) -> Path:
    """A run directory with a config and evaluations at steps 100, 200, ... (one row each)."""
    config = config_from_dict(tiny_config(env_id=env_id, exp_name=exp, seed=seed, **changes))
    run = root / f"{env_id.replace('/', '-')}__{exp}__{seed}__1"
    (run / "eval").mkdir(parents=True)
    save_config(config, run / "config.yaml")
    timesteps = 100 * np.arange(1, len(returns) + 1)
    arrays = {
        "timesteps": timesteps,
        "results": np.array(returns),
        "ep_lengths": np.full(np.shape(returns), 100),
    }
    if successes is not None:
        arrays["successes"] = np.array(successes)
    np.savez(run / "eval" / "evaluations.npz", **arrays)
    return run


def test_runs_are_pooled_by_experiment_with_mean_and_spread(tmp_path: Path, tiny_config) -> None:
    a = [
        _fake_run(tmp_path, tiny_config, "a", 0, [[1.0, 3.0], [4.0, 6.0]], [[0, 0], [1, 0]]),
        _fake_run(tmp_path, tiny_config, "a", 1, [[5.0, 5.0], [9.0, 9.0]], [[0, 1], [1, 1]]),
        _fake_run(tmp_path, tiny_config, "a", 2, [[0.0, 0.0]], [[0, 0]]),  # interrupted early
    ]
    b = _fake_run(tmp_path, tiny_config, "b", 0, [[2.0, 2.0], [2.0, 2.0]])
    curve = read_run_curve(a[0])
    assert curve.timesteps.tolist() == [100, 200] and curve.returns.tolist() == [2.0, 5.0]
    assert curve.success_rates.tolist() == [0.0, 0.5]

    group_a, group_b = learning_curves([*a, b])
    assert (group_a.label, group_b.label) == ("a", "b") and len(group_a.runs) == 3
    assert group_a.timesteps.tolist() == [100, 200] and group_a.counts.tolist() == [3, 2]
    np.testing.assert_allclose(group_a.returns, [[7 / 3, 7.0], [0.0, 5.0], [5.0, 9.0]])
    np.testing.assert_allclose(group_a.success_rates, [[1 / 6, 0.75], [0.0, 0.5], [0.5, 1.0]])
    assert group_b.success_rates is None  # evaluations without is_success
    (std,) = learning_curves(a, spread="std")
    np.testing.assert_allclose(std.returns[1:, 1], [7.0 - 2.0, 7.0 + 2.0])
    # A folder of runs stands for the runs in it.
    assert [g.label for g in learning_curves([tmp_path])] == ["a", "b"]


def test_the_figure_is_written_as_a_png(tmp_path: Path, tiny_config) -> None:
    runs = [
        _fake_run(tmp_path, tiny_config, "a", seed, [[seed], [seed + 1.0]], [[0], [1]])
        for seed in range(2)
    ]
    runs.append(_fake_run(tmp_path, tiny_config, "a", 0, [[1.0]], [[1]], env_id="kp3d/Push-v0"))
    path = plot_learning_curves(runs, out=tmp_path / "figures" / "curves.png", dpi=50)
    image = iio.imread(path)
    # One column per env (4.6 inches each), two rows (6.4 inches), at 50 dpi; the saved figure
    # is cropped to what is drawn plus 0.1 inch of padding (it grows when a legend is wider).
    height, width = image.shape[:2]
    assert 320 <= height <= 330 and 460 <= width <= 470
    assert image[..., :3].std() > 10  # something is drawn


def test_plot_a_trained_run_from_the_command_line(trained_run: Path, tmp_path, capsys) -> None:
    (group,) = learning_curves([trained_run])
    assert group.label == "tiny" and group.timesteps.tolist() == [48, 64]
    assert group.success_rates is not None
    assert main(["plot", str(trained_run.parent), "--out", str(tmp_path / "curves.png")]) == 0
    assert capsys.readouterr().out.strip() == f"figure: {tmp_path / 'curves.png'}"
    assert iio.imread(tmp_path / "curves.png").ndim == 3


def test_a_failed_write_leaves_no_file(tmp_path: Path, tiny_config, monkeypatch) -> None:
    run = _fake_run(tmp_path / "runs", tiny_config, "a", 0, [[1.0]])

    def failing(self, path, **kwargs):
        Path(path).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing)
    with pytest.raises(OSError, match="disk full"):
        plot_learning_curves([run], out=tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_what_cannot_be_plotted_is_explained(tmp_path: Path, tiny_config) -> None:
    run = _fake_run(tmp_path, tiny_config, "a", 0, [[1.0]])
    (run / "eval" / "evaluations.npz").unlink()
    with pytest.raises(ValueError, match="no evaluations"):
        learning_curves([run])
    with pytest.raises(ValueError, match="neither a run directory"):
        learning_curves([tmp_path / "nothing"])
    with pytest.raises(ValueError, match="spread must be one of"):
        learning_curves([run], spread="sem")
    good = _fake_run(tmp_path, tiny_config, "b", 0, [[1.0]])
    other = _fake_run(tmp_path, tiny_config, "b", 1, [[1.0]], ppo={"learning_rate": 1e-3})
    with pytest.warns(UserWarning) as caught:
        (group,) = learning_curves([run, good, other])
    messages = [str(w.message) for w in caught]
    assert any("skipped" in m and "no evaluations" in m for m in messages)
    assert any("differ in ['ppo']" in m for m in messages)
    assert len(group.runs) == 2
    with pytest.raises(ValueError, match=r"cannot write 'curves\.xyz'"):
        plot_learning_curves([good], out=tmp_path / "curves.xyz")
