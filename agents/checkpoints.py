"""A run's checkpoint files, written atomically and read back without unpickling anything.

* ``model.zip`` is SB3's format: a JSON ``data`` entry plus torch state dicts. SB3 stores the
  fields JSON cannot hold (spaces, schedules, the policy class and its kwargs...) as cloudpickle
  inside the JSON; unpickling them runs whatever a crafted file says. :func:`load_model` reads the
  JSON itself and hands SB3 a replacement for *every* pickled field (``custom_objects``), taken
  from an agent built from the run's config, so SB3 unpickles none of them; the state dicts are
  read by ``torch.load(weights_only=True)``. A pickled field kp3d cannot replace is refused.
* ``vecnormalize.npz`` (reward normalisation statistics) and ``replay_buffer.npz`` (SAC's
  replay, when saved) are plain arrays, read with ``allow_pickle=False``. The ``.pkl`` files of
  older runs are not read.

The remaining risk is torch's and SB3's own: a file they read with ``weights_only=True`` is as
safe as torch makes it.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.vec_env import VecNormalize

from agents.runs import MODEL_FILE, RunDirectoryError
from kp3d.files import atomic_write

VEC_NORMALIZE_FILE = "vecnormalize.npz"
REPLAY_BUFFER_FILE = "replay_buffer.npz"
LEGACY_PICKLES = ("vecnormalize.pkl", "replay_buffer.pkl")
"""Pickle files of runs written before kp3d stopped unpickling; never read."""

_SERIALIZED = ":serialized:"


# -- model.zip ------------------------------------------------------------------------------------


def saved_data(path: Path) -> dict[str, Any]:
    """The JSON ``data`` of an SB3 zip, as JSON (pickled fields stay base64 strings).

    Raises:
        RunDirectoryError: for a file that is not a readable SB3 zip.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data").decode())
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as error:
        raise RunDirectoryError(
            f"{str(path)!r} is not a readable checkpoint ({error}); it was left as it is"
        ) from None
    if not isinstance(data, dict):
        raise RunDirectoryError(f"{str(path)!r} is not an SB3 checkpoint (its data is no mapping)")
    return data


def pickled_fields(data: dict[str, Any]) -> list[str]:
    """The fields of a checkpoint's data that SB3 would unpickle."""
    return sorted(k for k, v in data.items() if isinstance(v, dict) and _SERIALIZED in v)


def saved_steps(path: Path) -> int:
    """Env steps done by the checkpoint at ``path`` (read from its JSON)."""
    steps = saved_data(path).get("num_timesteps")
    if not isinstance(steps, int):
        raise RunDirectoryError(f"{str(path)!r} does not say how many steps it has done")
    return steps


def saved_perception_kwargs(path: Path) -> dict[str, Any] | None:
    """The perception hyperparameters a checkpoint's policy was built with (plain JSON inside
    SB3's description of ``policy_kwargs``), ``None`` when it has no perception extractor."""
    kwargs = saved_data(path).get("policy_kwargs")
    extractor = kwargs.get("features_extractor_kwargs") if isinstance(kwargs, dict) else None
    value = extractor.get("perception_kwargs") if isinstance(extractor, dict) else None
    return value if isinstance(value, dict) else None


def load_model(
    path: Path, template: BaseAlgorithm, env: Any = None, device: str = "auto"
) -> BaseAlgorithm:
    """Load the SB3 zip at ``path`` into an agent of ``template``'s class, unpickling nothing.

    Args:
        path: the ``model.zip``.
        template: a fresh agent built from the run's config for the same env; every field SB3
            pickled is taken from it instead of from the file.
        env: the vectorised env to attach, or ``None``.
        device: torch device.

    Raises:
        RunDirectoryError: for an unreadable file, a pickled field kp3d does not know, or
            weights that do not fit the run's agent (e.g. another observation space).
    """
    fields = pickled_fields(saved_data(path))
    unknown = [name for name in fields if not hasattr(template, name)]
    if unknown:
        raise RunDirectoryError(
            f"{str(path)!r} holds pickled fields {unknown} that this run's agent "
            f"({type(template).__name__}) does not have: written by another kind of run, or "
            "crafted. It is not loaded, because unpickling a file can run any code"
        )
    custom = {name: getattr(template, name) for name in fields}
    try:
        return type(template).load(path, env=env, device=device, custom_objects=custom)
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunDirectoryError(
            f"{str(path)!r} does not fit this run's agent ({first}); was it written by another "
            "run? The file was left as it is"
        ) from None


# -- VecNormalize statistics ----------------------------------------------------------------------


def save_vec_normalize(vec_normalize: VecNormalize, path: Path) -> None:
    """Write the reward (and observation, when normalised) statistics atomically as ``.npz``."""
    arrays: dict[str, np.ndarray] = {
        "ret_mean": np.asarray(vec_normalize.ret_rms.mean),
        "ret_var": np.asarray(vec_normalize.ret_rms.var),
        "ret_count": np.asarray(vec_normalize.ret_rms.count),
    }
    obs_rms = getattr(vec_normalize, "obs_rms", None)
    if vec_normalize.norm_obs and hasattr(obs_rms, "mean"):
        arrays |= {
            "obs_mean": np.asarray(obs_rms.mean),
            "obs_var": np.asarray(obs_rms.var),
            "obs_count": np.asarray(obs_rms.count),
        }
    atomic_write(path, lambda temporary: np.savez(temporary, **arrays))


def load_vec_normalize(vec_normalize: VecNormalize, path: Path) -> None:
    """Set ``vec_normalize``'s statistics from :func:`save_vec_normalize`'s file.

    Raises:
        RunDirectoryError: for a damaged file or statistics of another shape.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            pairs = [(vec_normalize.ret_rms, "ret")]
            if vec_normalize.norm_obs and hasattr(getattr(vec_normalize, "obs_rms", None), "mean"):
                pairs.append((vec_normalize.obs_rms, "obs"))
            for stats, prefix in pairs:
                mean, var = data[f"{prefix}_mean"], data[f"{prefix}_var"]
                if mean.shape != np.shape(stats.mean):
                    raise ValueError(f"{prefix} statistics of shape {mean.shape}")
                stats.mean, stats.var = mean.astype(np.float64), var.astype(np.float64)
                stats.count = float(data[f"{prefix}_count"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise RunDirectoryError(
            f"cannot read the normalisation statistics {str(path)!r} ({error}); the file was "
            "left as it is"
        ) from None


# -- replay buffer --------------------------------------------------------------------------------


def _buffer_arrays(buffer: BaseBuffer) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, value in vars(buffer).items():
        if isinstance(value, np.ndarray):
            arrays[name] = value
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, np.ndarray) for v in value.values())
        ):
            arrays |= {f"{name}/{key}": array for key, array in value.items()}
    arrays["pos"] = np.asarray(buffer.pos)
    arrays["full"] = np.asarray(buffer.full)
    return arrays


def save_replay_buffer(buffer: BaseBuffer, path: Path) -> None:
    """Write every array of ``buffer`` (and its position) atomically as ``.npz``."""
    arrays = _buffer_arrays(buffer)
    atomic_write(path, lambda temporary: np.savez(temporary, **arrays))


def load_replay_buffer(buffer: BaseBuffer, path: Path) -> None:
    """Fill ``buffer`` (built for the same run) from :func:`save_replay_buffer`'s file.

    Raises:
        RunDirectoryError: for a damaged file, or arrays that do not fit ``buffer``.
    """
    expected = _buffer_arrays(buffer)
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != set(expected):
                raise ValueError(f"arrays {sorted(data.files)}, expected {sorted(expected)}")
            for name, target in expected.items():
                if name in ("pos", "full"):
                    continue
                array = data[name]
                if array.shape != target.shape or array.dtype != target.dtype:
                    raise ValueError(f"{name!r} is {array.dtype}{list(array.shape)}")
                target[...] = array
            buffer.pos, buffer.full = int(data["pos"]), bool(data["full"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise RunDirectoryError(
            f"cannot read the replay buffer {str(path)!r} ({error}); the file was left as it is"
        ) from None


# -- a whole checkpoint ---------------------------------------------------------------------------


def save_checkpoint(model: BaseAlgorithm, run_dir: Path, replay_buffer: bool = False) -> None:
    """Write the model (with optimizers and step count), the ``VecNormalize`` statistics and,
    if asked, the replay buffer into ``run_dir``, each file atomically."""
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        save_vec_normalize(vec_normalize, run_dir / VEC_NORMALIZE_FILE)
    buffer = getattr(model, "replay_buffer", None)
    if replay_buffer and buffer is not None:
        save_replay_buffer(buffer, run_dir / REPLAY_BUFFER_FILE)
    atomic_write(run_dir / MODEL_FILE, model.save)


def warn_legacy_pickles(run_dir: Path) -> None:
    """Say once that a run's ``.pkl`` files (from older kp3d) are ignored."""
    found = [name for name in LEGACY_PICKLES if (run_dir / name).is_file()]
    if found:
        warnings.warn(
            f"{str(run_dir)!r}: {', '.join(found)} not read (pickle files can run code); "
            "reward statistics and replay start afresh",
            stacklevel=2,
        )


__all__ = [
    "LEGACY_PICKLES",
    "REPLAY_BUFFER_FILE",
    "VEC_NORMALIZE_FILE",
    "load_model",
    "load_replay_buffer",
    "load_vec_normalize",
    "pickled_fields",
    "save_checkpoint",
    "save_replay_buffer",
    "save_vec_normalize",
    "saved_data",
    "saved_perception_kwargs",
    "saved_steps",
    "warn_legacy_pickles",
]
