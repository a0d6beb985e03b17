"""Vectorised kp3d environments (Stable-Baselines3 ``SubprocVecEnv`` / ``DummyVecEnv``)."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs import gl

START_METHODS = ("forkserver", "spawn")


def make_vec_env(
    env_id: str | Callable[..., gym.Env],
    n_envs: int = 1,
    seed: int | None = None,
    vectorization: Literal["subproc", "dummy"] = "subproc",
    start_method: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    monitor_dir: str | None = None,
) -> VecEnv:
    """Build ``n_envs`` copies of an env, each wrapped in SB3's ``Monitor``.

    With ``vectorization="subproc"`` each env lives in its own worker process, started with
    ``forkserver`` (or ``spawn``): never ``fork``, because a process that already holds a GL context
    cannot fork safely. Workers create their renderer on first use and free it on ``close()``.
    ``"dummy"`` runs all envs in this process (one shared GL context).

    Workers do not run the calling script again when it has no file to import (``python -``,
    ``python -c``, a REPL): envs from a registered id or from a callable still work there, since
    workers import :mod:`envs`, but anything else the callable needs must be importable.

    Args:
        env_id: a registered id (``"kp3d/Reach-v0"`` is imported in workers as
            ``"envs:kp3d/Reach-v0"``), or a callable returning an env.
        n_envs: number of envs.
        seed: seed of the first env; env ``i`` gets ``seed + i``.
        vectorization: ``"subproc"`` or ``"dummy"``.
        start_method: ``"forkserver"`` (default where available) or ``"spawn"``.
        env_kwargs: keyword arguments of the env (``cameras``, ``size``, ``obs_mode``...).
        monitor_dir: where ``Monitor`` writes its episode logs (None: not written).

    Returns:
        An SB3 ``VecEnv``.
    """
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1; got {n_envs}")
    if vectorization not in ("subproc", "dummy"):
        raise ValueError(f"vectorization must be 'subproc' or 'dummy'; got {vectorization!r}")
    if isinstance(env_id, str) and env_id.startswith("kp3d/"):
        env_id = f"envs:{env_id}"  # makes worker processes import (and so register) envs
    elif callable(env_id):
        # Unpickling this partial imports envs.vector, and so registers the kp3d envs, in workers.
        env_id = functools.partial(_call, env_id)
    vec_env_kwargs: dict[str, Any] = {}
    vec_env_cls: type[VecEnv] = DummyVecEnv
    if vectorization == "subproc":
        available = multiprocessing.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in available else "spawn"
        if start_method not in START_METHODS or start_method not in available:
            raise ValueError(
                f"start_method must be one of {[m for m in START_METHODS if m in available]}; "
                f"got {start_method!r} (fork is unsafe once a GL context exists: "
                f"{'one exists in this process' if gl.context_exists() else 'none exists yet'})"
            )
        vec_env_cls = SubprocVecEnv
        vec_env_kwargs["start_method"] = start_method
    with _main_without_missing_file():
        return sb3_make_vec_env(
            env_id,
            n_envs=n_envs,
            seed=seed,
            vec_env_cls=vec_env_cls,
            vec_env_kwargs=vec_env_kwargs,
            env_kwargs=env_kwargs,
            monitor_dir=monitor_dir,
        )


def _call(make_env: Callable[..., gym.Env], **kwargs: Any) -> gym.Env:
    return make_env(**kwargs)


@contextlib.contextmanager
def _main_without_missing_file() -> Iterator[None]:
    """Within the block, ``__main__`` has no ``__file__`` if that file does not exist.

    A ``forkserver`` or ``spawn`` worker runs the parent's main script again from
    ``__main__.__file__``. A script read from stdin (``python -``) has ``__file__ == "<stdin>"``,
    which no worker can open (``FileNotFoundError`` in every worker, then SubprocVecEnv's
    ``ConnectionResetError``). Without ``__file__`` workers skip that step, as they do for
    ``python -c`` and the REPL.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if (
        main is None
        or getattr(main, "__spec__", None) is not None  # `python -m`: workers import it by name
        or not isinstance(path, str)
        or os.path.isfile(path)
    ):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
