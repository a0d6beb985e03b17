"""Run directories and what every run of kp3d shares: fresh directories that never overwrite
another run, one writer at a time (:func:`lock_run_dir`), SB3's logger writing into them, the
device and torch's CPU threads.

Training (:mod:`agents.training`), pretraining (:mod:`agents.pretrain`) and the benchmarks create
their directories and loggers here, so that they all behave alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import shlex
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from stable_baselines3.common.logger import Logger, make_output_format

from agents.config import ConfigError, TrainConfig, config_from_dict, parse_yaml

LOG_DIR = "logs"
"""Logs of a run (CSV, TensorBoard), below its directory."""

MODEL_FILE = "model.zip"
"""A training run's latest checkpoint (:mod:`agents.checkpoints`)."""

CONFIG_FILE = "config.yaml"
"""A run's resolved config (every field)."""

EVAL_DIR = "eval"
"""Periodic evaluations of a run (``evaluations.npz``)."""

VIDEO_DIR = "videos"
"""Rollout videos of a run."""

EVAL_SEED_OFFSET = 10_000
"""The evaluation env's seed is the run's seed plus this, away from the training envs' seeds."""

LOCK_FILE = ".lock"
"""Held (``flock``) by the process writing a run; it holds that process's id."""


class RunDirectoryError(ValueError):
    """A run directory that cannot be used (taken by another run, or not a run)."""


def quoted(path: str | os.PathLike) -> str:
    """A path as a shell word, for the commands kp3d prints (``--resume 'my run'``)."""
    return shlex.quote(str(path))


def check_new_run_dir(path: Path) -> None:
    """Refuse a directory that holds anything: a run never overwrites another."""
    if not path.exists():
        return
    if not path.is_dir():
        raise RunDirectoryError(f"run directory {str(path)!r} is a file; choose another --run-dir")
    if not any(path.iterdir()):
        return
    advice = (
        f"continue that run with --resume {quoted(path)}"
        if (path / MODEL_FILE).is_file()
        else "it holds no checkpoint to resume: remove it if it is not needed"
    )
    raise RunDirectoryError(
        f"run directory {str(path)!r} already exists and is not empty; choose another "
        f"--run-dir, or {advice}"
    )


@contextlib.contextmanager
def lock_run_dir(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold the run's lock while the body writes the run: a second writer (``kp3d train
    --resume`` of a run still training) is refused, or with ``wait`` waits its turn (trials of
    a sweep that share a pretraining cache). The OS releases the lock when the process exits or
    dies; where ``fcntl`` is missing (Windows) nothing is locked.

    Raises:
        RunDirectoryError: naming the process that holds the lock (not with ``wait``).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115  (held until the body ends)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                raise RunDirectoryError(
                    f"run {str(path)!r} is being written by process {holder}; wait for it to "
                    "end or stop it (Ctrl-C saves its checkpoint), then try again"
                ) from None
            print(f"waiting for process {holder} to finish writing {path}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def new_run_dir(run_dir: str | Path | None, default: Path) -> Path:
    """Make a fresh directory: ``run_dir`` if given (it must not hold anything yet), else
    ``default`` (with a ``_2``, ``_3``... suffix if taken)."""
    if run_dir is not None:
        path = Path(run_dir)
        check_new_run_dir(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = default
    for attempt in range(1, 1000):
        path = base if attempt == 1 else base.with_name(f"{base.name}_{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RunDirectoryError(f"could not create a fresh run directory next to {base}")


@contextlib.contextmanager
def writing_new_run(path: Path, checkpoint: str) -> Iterator[None]:
    """Hold a fresh run's lock (:func:`lock_run_dir`) while the body starts and trains it; if the
    body fails during start-up (before the run has a ``checkpoint`` file or logs: a bad value
    found late, Ctrl-C, a damaged dataset), remove the directory, so that its name is free again
    and nothing points at a run that cannot be resumed. A run that had begun to learn keeps its
    logs, whatever stopped it."""
    try:
        with lock_run_dir(path):
            yield
    except BaseException:
        if not (path / checkpoint).is_file() and not (path / LOG_DIR).exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config of a run directory.

    Raises:
        RunDirectoryError: if there is no readable, valid ``config.yaml``.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{str(run_dir)!r} is not a kp3d run directory (no {CONFIG_FILE})")
    try:
        data = parse_yaml(path.read_text(), "it")
        if not isinstance(data, dict):
            raise ConfigError("it is not a mapping")
        return config_from_dict(data)
    except (ConfigError, OSError, UnicodeDecodeError) as error:
        raise RunDirectoryError(
            f"cannot read the run's config {str(path)!r}: {error}; the run's files are untouched"
        ) from None


def make_logger(run_dir: Path, stdout: bool, suffix: str) -> Logger:
    """SB3 logger of a run: CSV (and TensorBoard when installed) in ``run_dir/logs``, and SB3's
    tables on stdout when ``stdout``; file names end with ``suffix``."""
    folder = str(run_dir / LOG_DIR)
    formats = ["csv"]
    if stdout:
        formats.append("stdout")
    if importlib.util.find_spec("tensorboard") is not None:
        formats.append("tensorboard")
    return Logger(folder, [make_output_format(name, folder, suffix) for name in formats])


def set_torch_threads(threads: int | None) -> None:
    """Set up the process for training: ``torch.set_num_threads(threads)`` unless ``threads`` is
    ``None``, and the allocator as :func:`keep_freed_memory` sets it."""
    keep_freed_memory()
    if threads is not None:
        torch.set_num_threads(threads)


MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest ``M_MMAP_THRESHOLD``: blocks up to this size come from the heap."""

TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Free heap memory kept by the process before glibc returns it to the system."""


@functools.cache
def keep_freed_memory() -> bool:
    """Keep freed memory for reuse instead of handing it back to the system (glibc only).

    A training step allocates and frees tensors of tens of MB (a batch of 256 crops of 3 views is
    29 MB). glibc serves such blocks with fresh ``mmap`` pages and unmaps them on free, so every
    step page-faults its tensors in again; on the 2-core machine that made elementwise ops
    5-10x slower than on warm memory. With the mmap threshold at its maximum and trimming above
    1 GB, they are reused: a Keypoint3D SAC gradient step (batch 256) went from 430 to 300 ms, SB3's
    pixel SAC from 770 to 730 ms (BENCHMARKS.md). The process keeps up to its peak memory.

    Returns:
        Whether the allocator was set (``False`` where ``mallopt`` is missing, e.g. macOS).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(
        mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else as torch reads it, except that
    ``cuda`` without a GPU falls back to the CPU with a warning (once per process)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"'device' {device!r} is not a torch device: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        _warn_no_cuda(device)
        return torch.device("cpu")
    return resolved


@functools.cache
def _warn_no_cuda(device: str) -> None:
    warnings.warn(
        f"device {device!r} was asked for but torch sees no CUDA GPU; running on the CPU",
        stacklevel=3,
    )


__all__ = [
    "CONFIG_FILE",
    "EVAL_DIR",
    "EVAL_SEED_OFFSET",
    "LOCK_FILE",
    "LOG_DIR",
    "MODEL_FILE",
    "VIDEO_DIR",
    "RunDirectoryError",
    "check_new_run_dir",
    "keep_freed_memory",
    "lock_run_dir",
    "make_logger",
    "new_run_dir",
    "quoted",
    "read_run_config",
    "resolve_device",
    "set_torch_threads",
    "writing_new_run",
]
