"""Offline training of any perception module on a dataset: ``kp3d pretrain CONFIG``.

A config names a dataset (``kp3d dataset``), a registered perception with its hyperparameters and
the optimisation budget::

    dataset: data/reach
    perception:
      name: keypoint3d
      kwargs: {num_keypoints: 8, mean_depth: 0.95}
    steps: 5000
    batch_size: 32

Each step draws a batch of training frames uniformly with replacement
(:meth:`kp3d.data.FrameDataset.sample`, from a seeded generator that checkpoints keep; pairs of
frames of one episode for methods that use them, ground truth for methods that need it) and takes
one Adam step on the sum of
:meth:`Perception.training_losses <kp3d.perception.Perception.training_losses>`.
A run lives in one directory, by default ``runs/pretrain/{env}__{exp_name}__{seed}__{time}``::

    config.yaml          the resolved config
    perception.pt        the latest checkpoint (:func:`kp3d.perception.save_perception`), with the
                         optimizer state, step and random states to resume from
    evaluations.jsonl    one line of held-out metrics per evaluation
    logs/                TensorBoard event files and progress.csv

**Evaluation** (every ``eval_every`` steps, on frames of held-out episodes) follows the protocol of
unsupervised landmark learning, for every module alike: a linear map with a bias is fitted by least
squares from the module's keypoints (and confidences) on training frames to the ground-truth 3D
keypoints, and scored on held-out frames by the mean keypoint error divided by the env's
normalising length (:func:`kp3d.metrics.linear_probe`) and R². Modules trained on labels
(``requires_labels``) are also scored by PCK of their per-view detections, at fractions of the
image side and of the normalising length seen at each keypoint's depth, and, when they output the
env's keypoints in 3D, by their 3D error.

Checkpoints are written atomically every ``checkpoint_every`` steps, at the end and on Ctrl-C;
:func:`resume_pretrain` continues from the latest one with the same optimizer state, step count and
random streams. An agent config uses the result with ``perception.pretrained: RUN/perception.pt``
(:func:`pretrained_perception`).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.config import (
    ConfigError,
    apply_overrides,
    dataclass_from_dict,
    parse_yaml,
    read_config_file,
)
from agents.config_checks import check_perception_choice
from agents.pretrained import load_pretrained_weights, pretrained_perception  # re-exported
from agents.probing import (  # re-exported
    describe_probe,
    detected_pixels,
    encode,
    evaluate_perception,
    probe_features,
    probe_table,
)
from agents.progress import progress_bar
from agents.runs import lock_run_dir, quoted, resolve_device, writing_new_run
from kp3d.data import OPTIONAL_FIELDS, DatasetInfo, FrameDataset, read_info
from kp3d.files import remove_stale_partials
from kp3d.perception import (
    load_perception_checkpoint,
    make_perception,
    perception_class,
    perception_hyperparameters,
    save_perception,
)

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "perception.pt"
EVALUATIONS_FILE = "evaluations.jsonl"
LOG_DIR = "logs"


@dataclass
class PretrainPerceptionConfig:
    """The module to train."""

    name: str = "keypoint3d"
    """A registered perception (``kp3d.available_perceptions()``)."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Its hyperparameters (keyword arguments of its class). For a module trained on labels
    (``requires_labels``), those that describe the labels and are left out come from the dataset
    (:func:`label_kwargs`)."""


@dataclass
class PretrainConfig:
    """One offline training run of a perception module on a ``kp3d dataset`` directory."""

    dataset: str
    """The dataset directory (written by ``kp3d dataset``)."""

    perception: PretrainPerceptionConfig = field(default_factory=PretrainPerceptionConfig)
    """The perception module."""

    exp_name: str | None = None
    """Experiment name in the run directory's name; ``null``: the config file's stem."""

    steps: int = 5000
    """Optimizer steps of the run."""

    batch_size: int = 32
    """Frames per step."""

    learning_rate: float = 1e-3
    """Adam learning rate."""

    max_grad_norm: float | None = 1.5
    """Gradient-norm clip of each step (the reference's unsupervised steps: 1.5); ``null``: none."""

    test_fraction: float = 0.2
    """Fraction of the dataset's episodes held out for evaluation
    (:func:`kp3d.data.held_out_episodes`)."""

    pair_offset: int = 5
    """For methods that learn from two frames of an episode (``uses_pairs``): the largest step
    offset between them."""

    load: list[str] = field(default_factory=list)
    """Dataset arrays to read beyond images, camera matrices and keypoints (which are always read),
    for methods whose ``training_losses`` use them: ``depth``, ``segmentation``, ``body_poses``."""

    eval_every: int = 1000
    """Steps between evaluations on held-out episodes (0: only before the first and after the
    last step)."""

    eval_frames: int = 2000
    """Frames per split that an evaluation encodes (spread evenly over the split): the probe is
    fitted on this many training frames and scored on this many held-out ones."""

    eval_batch_size: int = 64
    """Frames per forward pass in evaluations."""

    pck_alphas: list[float] = field(default_factory=lambda: [0.05, 0.1])
    """PCK thresholds as fractions of the image side (labelled modules)."""

    pck_length_alphas: list[float] = field(default_factory=lambda: [0.5])
    """PCK thresholds as fractions of the env's normalising length at the keypoint's depth."""

    checkpoint_every: int = 1000
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""

    log_every: int = 50
    """Steps between log lines (mean losses since the last one, training frames per second)."""

    seed: int = 1
    """Seed of the module's initialisation, the batches and the augmentations (1, as a training
    run's ``seed``)."""

    device: str = "auto"
    """Torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``..."""

    torch_threads: int | None = 1
    """CPU threads of torch; ``null``: torch's default."""

    progress_bar: bool = True
    """Show a progress bar (``tqdm``)."""


RESUMABLE_KEYS = (
    "steps",
    "eval_every",
    "eval_frames",
    "eval_batch_size",
    "checkpoint_every",
    "log_every",
    "device",
    "torch_threads",
    "progress_bar",
)
"""Config keys a resumed run may change (``--set``); the others define what is trained."""


class PretrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``kp3d pretrain``, after the resumable checkpoint was saved.

    Attributes:
        run_dir: the run, to pass to :func:`resume_pretrain`.
        step: steps done.
    """

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(f"pretraining interrupted at step {step}; resume {run_dir}")
        self.run_dir = run_dir
        self.step = step


# -- configs --------------------------------------------------------------------------------------


def load_pretrain_config(path: str | Path, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a YAML pretraining config (``configs/pretrain/*.yaml``) with ``--set`` overrides.

    Raises:
        ConfigError: for a missing file, an unknown key (the message lists the valid ones) or a
            value of the wrong type.
    """
    return read_config_file(path, PretrainConfig, overrides)


def check_pretrain_config(config: PretrainConfig) -> DatasetInfo:
    """Check what the types alone cannot (ranges, the perception and its kwargs, the dataset);
    return the dataset's :class:`~kp3d.data.DatasetInfo`.

    Raises:
        ConfigError: naming the key at fault and what would be valid.
    """
    for key in ("steps", "batch_size", "eval_frames", "eval_batch_size", "log_every"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key!r} must be at least 1; got {getattr(config, key)}")
    for key in ("eval_every", "checkpoint_every"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{key!r} must be non-negative; got {getattr(config, key)}")
    if config.pair_offset < 1:
        raise ConfigError(f"'pair_offset' must be at least 1; got {config.pair_offset}")
    if not 0 < config.test_fraction < 1:
        raise ConfigError(f"'test_fraction' must be in (0, 1); got {config.test_fraction}")
    unknown = sorted(set(config.load) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ConfigError(f"unknown 'load' {unknown}; valid: {', '.join(sorted(OPTIONAL_FIELDS))}")
    check_perception_choice(config.perception.name, config.perception.kwargs)
    try:
        return read_info(config.dataset)
    except ValueError as error:
        raise ConfigError(f"'dataset': {error}") from None


def _save_config(config: PretrainConfig, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def _read_config(run_dir: Path) -> PretrainConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a kp3d pretrain run (no {CONFIG_FILE})")
    data = parse_yaml(path.read_text(), f"the run's {str(path)!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"the run's {str(path)!r} is not a config mapping")
    return dataclass_from_dict(PretrainConfig, data)


def label_kwargs(name: str, info: DatasetInfo) -> dict[str, Any]:
    """Hyperparameters of a labelled perception that the dataset determines, among those it
    takes: ``num_keypoints`` (the env's ``K``), ``keypoint_instances`` (each keypoint's instance
    id) and ``limbs``: the skeleton's index pairs, or, for a module that also takes
    ``keypoint_instances`` (OpenPose: limbs between the parts of one instance), the skeleton's
    part pairs completed into a tree (:func:`part_limbs`). Empty for unsupervised modules, whose
    ``num_keypoints`` is a free choice."""
    if not perception_class(name).requires_labels:
        return {}
    taken = perception_hyperparameters(name)
    known = {
        "num_keypoints": info.num_keypoints,
        "limbs": info.skeleton.tolist(),
        "keypoint_instances": info.instances.tolist(),
    }
    if "keypoint_instances" in taken:
        known["limbs"] = part_limbs(info.skeleton, info.instances)
    return {key: value for key, value in known.items() if key in taken}


def part_limbs(skeleton: np.ndarray, instances: np.ndarray) -> list[list[int]]:
    """A spanning tree over the parts of one instance, from a keypoint skeleton.

    Part ``p`` is the ``p``-th keypoint of each instance (instances list their parts in the same
    order). The skeleton's pairs within an instance become part pairs (each once, skipping any
    that would close a cycle); parts the skeleton leaves unconnected (MultiReach's targets) are
    joined to part 0, the instance's root.
    """
    ids = np.asarray(instances).reshape(-1)
    parts = np.zeros(len(ids), dtype=np.int64)
    for instance in np.unique(ids):
        members = np.flatnonzero(ids == instance)
        parts[members] = np.arange(len(members))
    num_parts = int(parts.max()) + 1 if len(parts) else 0
    root = list(range(num_parts))

    def find(part: int) -> int:
        while root[part] != part:
            part = root[part]
        return part

    limbs: list[list[int]] = []

    def join(first: int, second: int) -> None:
        a, b = find(first), find(second)
        if a != b:
            root[b] = a
            limbs.append([first, second])

    for i, j in np.asarray(skeleton, dtype=np.int64).reshape(-1, 2).tolist():
        if ids[i] == ids[j]:
            join(int(parts[i]), int(parts[j]))
    for part in range(1, num_parts):
        join(0, part)
    return limbs


# -- the run --------------------------------------------------------------------------------------


def _new_run_dir(config: PretrainConfig, info: DatasetInfo, run_dir: str | Path | None) -> Path:
    from agents.runs import new_run_dir

    stem = f"{info.env_id.replace('/', '-')}__{config.exp_name}__{config.seed}__{int(time.time())}"
    return new_run_dir(run_dir, Path("runs") / "pretrain" / stem)


def pretrain(config: PretrainConfig, run_dir: str | Path | None = None) -> Path:
    """Train a fresh perception module as ``config`` says; return the run directory.

    Raises:
        ConfigError: for an invalid config.
        agents.runs.RunDirectoryError: for a ``run_dir`` that holds something.
        PretrainInterrupted: on Ctrl-C, after saving a resumable checkpoint.
    """
    if config.exp_name is None:
        raise ConfigError("'exp_name' is not set (load_pretrain_config sets it to the file's stem)")
    info = check_pretrain_config(config)
    path = _new_run_dir(config, info, run_dir)
    with writing_new_run(path, CHECKPOINT_FILE):
        _save_config(config, path / CONFIG_FILE)
        return _train(config, path, resuming=False)


def resume_pretrain(run_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Continue a pretraining run from its checkpoint up to its config's ``steps``.

    Args:
        run_dir: the run directory.
        overrides: ``key=value`` changes limited to :data:`RESUMABLE_KEYS` (e.g.
            ``steps=20000`` to extend the budget).

    Raises:
        ConfigError: if ``run_dir`` is not a run with a checkpoint, or for an override of a key
            that defines what is trained.
        PretrainInterrupted: on Ctrl-C, after saving a resumable checkpoint.
    """
    path = Path(run_dir)
    saved = _read_config(path)
    if not (path / CHECKPOINT_FILE).is_file():
        raise ConfigError(f"run {str(path)!r} has no checkpoint ({CHECKPOINT_FILE}) to resume")
    before = dataclasses.asdict(saved)
    config = dataclass_from_dict(PretrainConfig, apply_overrides(before, overrides))
    after = dataclasses.asdict(config)
    fixed = sorted(k for k in after if after[k] != before[k] and k not in RESUMABLE_KEYS)
    if fixed:
        raise ConfigError(
            f"a resumed run keeps what it trains: cannot change {fixed}; resumable keys: "
            f"{', '.join(RESUMABLE_KEYS)}"
        )
    check_pretrain_config(config)
    with lock_run_dir(path):
        remove_stale_partials(path)
        if after != before:
            _save_config(config, path / CONFIG_FILE)
        return _train(config, path, resuming=True)


def _train(config: PretrainConfig, run_dir: Path, resuming: bool) -> Path:
    from agents.runs import make_logger, set_torch_threads

    set_torch_threads(config.torch_threads)
    device = resolve_device(config.device)
    name = config.perception.name
    cls = perception_class(name)
    pairs = config.pair_offset if cls.uses_pairs else False
    load = tuple(dict.fromkeys(["keypoints", "backgrounds", *config.load]))
    train_set = FrameDataset(config.dataset, "train", config.test_fraction, pairs=pairs, load=load)
    test_set = FrameDataset(config.dataset, "test", config.test_fraction, load=("keypoints",))
    info = train_set.info

    generator = torch.Generator()
    if resuming:
        payload = load_perception_checkpoint(run_dir / CHECKPOINT_FILE)
        module = make_perception(
            payload["name"],
            num_cameras=payload["num_cameras"],
            image_size=tuple(payload["image_size"]),
            **payload["kwargs"],
        )
        module.load_state_dict(payload["state_dict"])
        state = payload["extra"]
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["batch_rng"])
    else:
        torch.manual_seed(config.seed)
        generator.manual_seed(config.seed)
        module = make_perception(
            name,
            num_cameras=info.num_cameras,
            image_size=info.image_size,
            **{**label_kwargs(name, info), **config.perception.kwargs},
        )
        if train_set.background is not None:
            module.set_background(train_set.background)
        elif info.background is None:
            warnings.warn(
                f"{config.dataset} stores no empty-scene images (written by an older kp3d): "
                "foreground-weighted losses estimate it from each batch, which assumes fixed "
                "cameras. Rewrite the dataset with `kp3d dataset` to store it.",
                stacklevel=2,
            )
        step = 0
    module.to(device).train()
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    if resuming:
        optimizer.load_state_dict(state["optimizer"])
    logger = make_logger(run_dir, stdout=False, suffix=f"_from_{step}" if resuming else "")
    last_metrics: dict[str, Any] = {}

    def checkpoint() -> None:
        save_perception(
            module,
            run_dir / CHECKPOINT_FILE,
            step=step,
            optimizer=optimizer.state_dict(),
            torch_rng=torch.get_rng_state(),
            batch_rng=generator.get_state(),
            metrics=last_metrics,
            dataset=str(Path(config.dataset).resolve()),
            env_id=info.env_id,
            camera_names=list(info.camera_names),
        )

    def evaluate() -> None:
        nonlocal last_metrics
        last_metrics = evaluate_perception(
            module,
            train_set,
            test_set,
            device,
            frames=config.eval_frames,
            batch_size=config.eval_batch_size,
            pck_alphas=config.pck_alphas,
            pck_length_alphas=config.pck_length_alphas,
        )
        with open(run_dir / EVALUATIONS_FILE, "a") as file:
            file.write(json.dumps({"step": step, **last_metrics}) + "\n")
        for key, value in last_metrics.items():
            if isinstance(value, float):
                logger.record(f"eval/{key}", value)
        for keypoint, entry in last_metrics["probe_per_keypoint"].items():
            if entry["r2"] is not None:
                logger.record(f"eval/r2/{keypoint}", entry["r2"])
            logger.record(f"eval/error_m/{keypoint}", entry["error_m"])
        logger.record("train/step", step)
        logger.dump(step)

    bar = progress_bar(config.steps, step, "step", "pretrain", enabled=config.progress_bar)
    sums: dict[str, float] = defaultdict(float)
    logged_steps, clock = 0, time.perf_counter()
    try:
        if step == 0:
            evaluate()
        while step < config.steps:
            batch = train_set.sample(config.batch_size, generator).to(device)
            losses = module.training_losses(batch)
            if not losses:
                raise ValueError(
                    f"perception {name!r} returned no training losses: it learns only through an "
                    "agent's RL loss and cannot be pretrained"
                )
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
            optimizer.step()
            step += 1
            logged_steps += 1
            sums["loss"] += loss.item()
            for term, value in losses.items():
                sums[f"loss/{term}"] += value.item()
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                seconds = time.perf_counter() - clock
                for key, total in sums.items():
                    logger.record(f"train/{key}", total / logged_steps)
                logger.record("time/frames_per_second", logged_steps * batch.batch_size / seconds)
                logger.record("train/step", step)
                logger.dump(step)
                bar.set_postfix(loss=f"{sums['loss'] / logged_steps:.4g}")
                sums.clear()
                logged_steps = 0
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                evaluate()
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint()
            if logged_steps == 0:
                clock = time.perf_counter()  # evaluations and checkpoints are not training time
        if not last_metrics or json.loads(_last_line(run_dir / EVALUATIONS_FILE))["step"] != step:
            evaluate()
        checkpoint()
        bar.close()
        history = (run_dir / EVALUATIONS_FILE).read_text().splitlines()
        print(
            "held-out linear probe of the keypoints (R² of the worst axis, mean error):\n"
            + describe_probe(json.loads(history[0]), json.loads(history[-1])),
            flush=True,
        )
    except KeyboardInterrupt:
        checkpoint()
        print(
            f"\ninterrupted at step {step}/{config.steps}; checkpoint saved in {run_dir}\n"
            f"resume with: kp3d pretrain --resume {quoted(run_dir)}",
            flush=True,
        )
        raise PretrainInterrupted(run_dir, step) from None
    finally:
        bar.close()
        logger.close()
    return run_dir


def _last_line(path: Path) -> str:
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else '{"step": -1}'


__all__ = [
    "CHECKPOINT_FILE",
    "RESUMABLE_KEYS",
    "PretrainConfig",
    "PretrainInterrupted",
    "PretrainPerceptionConfig",
    "check_pretrain_config",
    "describe_probe",
    "detected_pixels",
    "encode",
    "evaluate_perception",
    "label_kwargs",
    "load_pretrain_config",
    "load_pretrained_weights",
    "part_limbs",
    "pretrain",
    "pretrained_perception",
    "probe_features",
    "probe_table",
    "resume_pretrain",
]
