"""Training configurations: YAML files in ``configs/`` mapped onto typed dataclasses.

A config file is a plain YAML mapping shaped like an rl-baselines3-zoo entry (env id, budget,
algorithm hyperparameters), with nested sections for the perception module, the algorithms, the
unsupervised perception updates, evaluation and videos::

    env_id: kp3d/Reach-v0
    algo: ppo
    n_timesteps: 1000000
    perception:
      name: keypoint3d
      kwargs: {num_keypoints: 8, mean_depth: 0.95}
    ppo: {n_steps: 256}

Every key that is left out takes the default documented on its field below. An unknown key is an
error naming the valid keys of its section; ``--set section.key=value`` overrides parse the value
as a YAML scalar (``--set ppo.learning_rate=1e-4``, ``--set perception.name=null``).
Free-form mappings (``env_kwargs``, ``perception.kwargs``) take any key and are checked against
the environment's or the perception's own arguments when a run starts.

Example:
    >>> config = config_from_dict({"env_id": "kp3d/Reach-v0", "ppo": {"n_steps": 128}})
    >>> config.ppo.n_steps, config.ppo.gamma, config.perception.name
    (128, 0.99, 'keypoint3d')
    >>> config_from_dict({"env_id": "kp3d/Reach-v0", "ppo": {"nsteps": 128}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    agents.config.ConfigError: unknown key 'ppo.nsteps'; valid keys of 'ppo': activation, ...
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and what is valid."""


ConfigType = TypeVar("ConfigType")


@dataclass
class PretrainRecipe:
    """Pretrain the perception before the agent, in the same ``kp3d train``: a random-policy
    dataset of the env (``kp3d dataset``), then ``kp3d pretrain`` on it; the agent starts from
    (or, with ``freeze``, keeps) the checkpoint. Both are cached under ``runs/cache/`` by these
    settings (and the env's and perception's), so a second run with the same settings reuses
    them and an interrupted one continues them."""

    frames: int = 12_000
    """Dataset frames (random actions; the reset's frame and every step's)."""

    steps: int = 3000
    """Pretraining steps."""

    batch_size: int = 32
    """Frames per pretraining step."""

    learning_rate: float = 1e-3
    """Adam learning rate of the pretraining."""

    seed: int = 1
    """Seed of the dataset's episodes and of the pretraining (1, as a training run's ``seed``;
    the recipe is shared by runs of every seed, so it has its own)."""


@dataclass
class PerceptionConfig:
    """The perception module under the policy (:mod:`kp3d.perception`)."""

    name: str | None = "keypoint3d"
    """Registered perception (``kp3d.available_perceptions()``), e.g. ``keypoint3d``,
    ``keypoint2d``, ``pixel``, ``rad``; ``null`` for a state-based policy (then
    ``env_kwargs.obs_mode`` must be ``state``)."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters of the perception (keyword arguments of its class), e.g. ``num_keypoints``,
    ``mean_depth`` (the camera-to-scene distance of the task: about 0.95 m for Reach, 1.2 m for
    Push, 2 m for MultiReach, 3.8 m for Ant)."""

    joint: bool = True
    """Train the perception jointly with RL: the RL loss's gradients flow into the perception, and
    its auxiliary losses are added to the RL loss (the paper's "train jointly"). ``false``: the
    policy sees detached features and the perception learns from its auxiliary losses only."""

    aux_loss_coef: float = 1.0
    """Multiplier of the perception's (already weighted) auxiliary losses when added to the PPO
    loss (``joint``) or to the SAC critic loss."""

    aux_batch_size: int | None = None
    """Compute those auxiliary losses (the decoder: most of an update's cost) on this many of
    each PPO minibatch's or SAC batch's observations; ``null``: on all of them. PPO's separate
    unsupervised steps are not affected (``unsupervised.batch_size``)."""

    max_grad_norm: float = 5.0
    """Gradient-norm clip of the perception's parameters in joint PPO updates, separate from
    ``ppo.max_grad_norm`` (the policy's). The reference clips at ``max(max_grad_norm + 3,
    15 - 0.01 n_updates)``, i.e. 5 for its ``max_grad_norm`` of 2 after the first updates."""

    use_state: bool = True
    """Concatenate the proprioception (``state`` observation) to the perception's features."""

    projection_dim: int | None = 512
    """Width of the ``Linear + ReLU`` layer that the features extractor applies to
    ``[perception features, state]`` (the reference's 512); ``null`` passes them on as they are."""

    pretrained: str | None = None
    """A perception checkpoint (``perception.pt`` of a ``kp3d pretrain`` run) to start from. Its
    method must be ``name``, its camera layout the env's; ``kwargs`` may be left empty (the
    checkpoint's are used) or must equal the checkpoint's."""

    pretrain: PretrainRecipe | None = None
    """Pretrain the perception first (:class:`PretrainRecipe`) and set ``pretrained`` to the
    result; ``null``: start from ``pretrained``, or from scratch."""

    freeze: bool = False
    """Keep the (pretrained) perception fixed. It then runs once per env step, outside the policy
    (:mod:`agents.features`): the agent is an MLP on its features, and the buffers store features,
    not images. ``false`` trains it with the agent (from ``pretrained`` when given)."""


@dataclass
class PPOConfig:
    """Hyperparameters of PPO (:class:`agents.ppo.PerceptionPPO`). Defaults are the reference's
    pixel-PPO values (Chen et al. 2021, Meta-World), except ``n_steps`` (CPU-sized rollouts)."""

    learning_rate: float = 3e-4
    """Adam learning rate of the policy (and of the perception in joint updates)."""

    n_steps: int = 256
    """Steps per env per rollout; a rollout holds ``n_steps * n_envs`` transitions (reference 400
    with 16 envs; 256 with 4 envs keeps a rollout of images around 150 MB)."""

    batch_size: int = 64
    """Minibatch size of the PPO epochs."""

    n_epochs: int = 8
    """Passes over each rollout."""

    gamma: float = 0.99
    """Discount factor."""

    gae_lambda: float = 0.95
    """GAE lambda."""

    clip_range: float = 0.2
    """PPO's ratio clip."""

    ent_coef: float = 0.0
    """Entropy bonus coefficient."""

    vf_coef: float = 0.5
    """Value loss coefficient."""

    max_grad_norm: float = 2.0
    """Gradient-norm clip of the policy's own parameters (the reference's pixel PPO: 2.0; SB3's
    default for state-based PPO is 0.5)."""

    target_kl: float | None = None
    """Stop an update's epochs early when the approximate KL exceeds ``1.5 * target_kl``
    (reference 0.12 on Meta-World); ``null``: never."""

    normalize_reward: bool = True
    """Scale rewards with ``VecNormalize(norm_obs=False)`` as the reference does."""

    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layers of the policy and value MLPs (separate networks, SB3's default)."""

    activation: Literal["tanh", "relu"] = "tanh"
    """Activation of those MLPs (SB3's PPO default: tanh)."""


@dataclass
class SACConfig:
    """Hyperparameters of SAC (:class:`agents.sac.PerceptionSAC`), DrQ/SAC-AE style."""

    learning_rate: float = 3e-4
    """Adam learning rate of actor, critic (with the perception) and entropy coefficient."""

    buffer_size: int = 20_000
    """Replay buffer capacity in transitions. With a perception that trains, images are stored
    once per transition (:class:`agents.buffers.FrameReplayBuffer`): about 37 KB for 3 cameras of
    64x64, 0.75 GB for 20 000 transitions. A frozen perception's features take ~0.2 KB."""

    learning_starts: int = 1000
    """Env steps of random actions before the first update."""

    batch_size: int = 64
    """Minibatch size of each gradient step (DrQ: 128 at 84 px). A gradient step with a
    perception that trains encodes the batch three times (observations with the decoder, next
    observations, the target copy; see :class:`agents.sac.PerceptionSAC`)."""

    tau: float = 0.01
    """Polyak coefficient of the target critic and its copy of the perception (DrQ: 0.01)."""

    gamma: float = 0.99
    """Discount factor."""

    train_freq: int = 2
    """Env steps (per env) between updates."""

    gradient_steps: int = 1
    """Gradient steps per update (1 per 2 env steps: half DrQ's update ratio, for CPU time)."""

    ent_coef: str | float = "auto"
    """Entropy coefficient, or ``auto`` / ``auto_<init>`` to learn it."""

    normalize_reward: bool = False
    """Scale rewards with ``VecNormalize(norm_obs=False)``."""

    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layers of the actor and critic MLPs (SB3's default)."""

    activation: Literal["tanh", "relu"] = "relu"
    """Activation of those MLPs."""

    save_replay_buffer: bool = False
    """Also write the replay buffer with every checkpoint (large: see ``buffer_size``), so that a
    resumed run continues with it. Otherwise a resumed run starts an empty buffer and refills it
    as a new run does: ``learning_starts`` steps of random actions before updating again."""


@dataclass
class UnsupervisedConfig:
    """Extra unsupervised perception updates between PPO updates (METHODS.md §1.8).

    After each rollout, the rollout's frames go into a ring buffer and the perception takes
    ``steps`` gradient steps on its auxiliary losses over batches sampled from it. Reference: 400
    steps of batch 64 over 100 000 frames, clip 1.5. The defaults are sized for a CPU: each step
    with Keypoint3D's decoder costs about 0.2-0.3 s at batch 32 on 2 cores, and 20 000 frames of 3
    cameras at 64x64 take about 740 MB.
    """

    steps: int = 32
    """Gradient steps per PPO update (0 disables the buffer and the steps)."""

    batch_size: int = 32
    """Frames per step."""

    buffer_size: int = 20_000
    """Capacity of the frame buffer (uint8 frames, plus extrinsics for moving cameras)."""

    learning_rate: float = 3e-4
    """Adam learning rate of the perception's own optimizer (the reference uses the PPO rate)."""

    max_grad_norm: float = 1.5
    """Gradient-norm clip of these steps (reference 1.5)."""


@dataclass
class EvalConfig:
    """Periodic evaluation on a separate env (SB3 ``EvalCallback``)."""

    freq: int = 20_000
    """Env steps between evaluations (0 disables them)."""

    episodes: int = 10
    """Episodes per evaluation."""

    deterministic: bool = True
    """Act with the policy's mean action."""


@dataclass
class VideoConfig:
    """Periodic rollout videos of the agent being trained (:class:`agents.callbacks.VideoCallback`):
    ``videos/step_<N>.mp4`` in the run directory, and four of each video's frames logged to
    TensorBoard as the image ``kp3d/rollout``. Each video costs a rollout with the perception's
    decoder on: a 100-step episode takes about 5-10 s on a CPU."""

    freq: int = 0
    """Env steps between videos (0 disables them)."""

    episodes: int = 1
    """Episodes per video (always the same ones: the env is seeded like the evaluations)."""

    deterministic: bool = True
    """Act with the policy's mean action."""

    max_steps: int | None = None
    """Cut each episode after this many steps; ``null``: whole episodes."""


@dataclass
class TrainConfig:
    """One training run: environment, budget, algorithm, perception, evaluation, checkpoints."""

    env_id: str
    """Registered Gymnasium id, e.g. ``kp3d/Reach-v0``."""

    algo: Literal["ppo", "sac"] = "ppo"
    """Which algorithm trains the policy."""

    exp_name: str | None = None
    """Experiment name in the run directory's name; ``null``: the config file's stem."""

    n_timesteps: int = 1_000_000
    """Total env steps (over all envs) of the run. PPO trains whole rollouts of ``ppo.n_steps *
    n_envs`` steps, so its runs end at the next multiple of that (``kp3d train`` says so once)."""

    n_envs: int = 4
    """Parallel envs."""

    seed: int = 1
    """Seed of torch, NumPy, the envs (env ``i`` gets ``seed + i``) and the evaluation env."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``gymnasium.make`` (``size``, ``cameras``, ``obs_mode``...)."""

    vectorization: Literal["dummy", "subproc"] = "dummy"
    """``dummy``: envs in this process (as fast as workers on 2 cores, see BENCHMARKS.md);
    ``subproc``: one worker process per env."""

    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    """The perception module."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters (used when ``algo: ppo``)."""

    sac: SACConfig = field(default_factory=SACConfig)
    """SAC hyperparameters (used when ``algo: sac``)."""

    unsupervised: UnsupervisedConfig = field(default_factory=UnsupervisedConfig)
    """Extra unsupervised perception updates (PPO with a perception only)."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic evaluation."""

    video: VideoConfig = field(default_factory=VideoConfig)
    """Periodic rollout videos (off by default)."""

    checkpoint_freq: int = 50_000
    """Env steps between checkpoints (0: only at the end and on Ctrl-C)."""

    device: str = "auto"
    """Torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``..."""

    torch_threads: int | None = 1
    """CPU threads of torch (``torch.set_num_threads``); ``null``: torch's default, one per core.
    Convs on 64 px views are too little work to share: on 2 cores that also render the envs, one
    thread trained ``configs/demo.yaml`` at about 70 frames/s and two at 3-26 frames/s, their
    OpenMP threads waiting for each other (worst when other processes load the machine)."""

    progress_bar: bool = True
    """Show SB3's progress bar (when ``tqdm`` and ``rich`` are installed)."""

    verbose: int = 1
    """0: quiet; 1: the stages, a progress bar, one line per evaluation and a summary; 2: also
    SB3's periodic tables on stdout (they always go to ``logs/``: TensorBoard and CSV)."""


# -- YAML ----------------------------------------------------------------------------------------


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): nested aliases expand to exponential
    size ("billion laughs"), a 625-byte file to hundreds of MB once the mapping is copied."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML aliases (*{event.anchor}) are not allowed in kp3d configs "
                f"({event.start_mark}); write the value out"
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """Parse a config's YAML: safe types only, no aliases.

    Raises:
        ConfigError: naming ``source`` for invalid YAML or an alias.
    """
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"{source} is not valid YAML: {error.problem}{where}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from None


# -- dict <-> dataclass ---------------------------------------------------------------------------


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _number(value: Any) -> float | None:
    """A YAML number, also from strings such as ``"3e-4"`` (which YAML 1.1 reads as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against (and converted to) the type ``hint``; ``key`` names it."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _from_mapping(hint, value, key)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _number(value)
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
    elif hint is float:
        number = _number(value)
        if number is not None:
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, Sequence) and not isinstance(value, str):
            return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{key!r} must be {_describe(hint)}; got {value!r}")


def _from_mapping(cls: type, data: Any, key: str) -> Any:
    section = f"section {key!r}" if key else "the config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} must be a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{key}.{unknown[0]}" if key else str(unknown[0])
        where = f"of {key!r}" if key else "at the top level"
        raise ConfigError(f"unknown key {name!r}; valid keys {where}: {', '.join(sorted(fields))}")
    values = {}
    for name, spec in fields.items():
        path = f"{key}.{name}" if key else name
        if name in data:
            values[name] = _convert(data[name], hints[name], path)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {path!r}")
    return cls(**values)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested mapping (e.g. parsed YAML).

    Raises:
        ConfigError: for an unknown or missing key, or a value of the wrong type; the message
            names the key and lists the valid keys or types.
    """
    return _from_mapping(TrainConfig, data, "")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts (what :func:`save_config` writes)."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into ``(["a", "b"], value)``, the value parsed as a YAML scalar.

    Raises:
        ConfigError: without ``=`` or with an empty key.
    """
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"overrides look like section.key=value; got {text!r}")
    value = parse_yaml(raw, f"the value of override {text!r}") if raw.strip() else ""
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` overrides applied (sections are created)."""
    result: dict[str, Any] = _copy_mappings(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(path[: depth + 1])
                raise ConfigError(f"override {text!r}: {prefix!r} is not a section")
            node = child
        node[path[-1]] = value
    return result


def _copy_mappings(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_mappings(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def dataclass_from_dict(cls: type[ConfigType], data: Mapping[str, Any]) -> ConfigType:
    """Build the config dataclass ``cls`` (e.g. :class:`TrainConfig`) from a nested mapping,
    with the checks of :func:`config_from_dict` (unknown keys name the valid ones)."""
    return _from_mapping(cls, data, "")


def read_config_file(
    path: str | Path,
    cls: type[ConfigType],
    overrides: Sequence[str] = (),
    ignored: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> ConfigType:
    """Read a YAML config file into the dataclass ``cls``, after ``--set`` overrides;
    ``exp_name`` (if ``cls`` has one) defaults to the file's stem. ``ignored(data)`` names the
    sections that the config's other settings make meaningless: each is a warning.

    Raises:
        ConfigError: for a missing or unparsable file, or any invalid key or value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {str(path)!r}: {error.strerror}") from None
    data = parse_yaml(text, f"config {str(path)!r}")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {str(path)!r} must be a YAML mapping; got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    if ignored is not None:
        for section in ignored(data):
            warnings.warn(
                f"{path}: section {section!r} does not apply to algo "
                f"{data.get('algo', 'ppo')!r} and is ignored",
                stacklevel=2,
            )
    if "exp_name" in {f.name for f in dataclasses.fields(cls)}:
        data.setdefault("exp_name", path.stem)
    try:
        return dataclass_from_dict(cls, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


INAPPLICABLE = {"ppo": ("sac",), "sac": ("ppo", "unsupervised")}
"""Config sections that the other algorithm alone reads (``unsupervised`` is PPO's)."""


def inapplicable_sections(data: Mapping[str, Any]) -> list[str]:
    """The sections of a config mapping that its ``algo`` ignores and that set something: a
    section equal to its defaults (as every run's saved ``config.yaml`` holds) is not one."""
    hints = typing.get_type_hints(TrainConfig)
    found = []
    for key in INAPPLICABLE.get(data.get("algo", "ppo"), ()):
        if key not in data:
            continue
        try:
            unchanged = _from_mapping(hints[key], data[key], key) == hints[key]()
        except ConfigError:
            unchanged = False
        if not unchanged:
            found.append(key)
    return found


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``--set`` overrides and build the :class:`TrainConfig`.

    ``exp_name`` defaults to the file's stem.

    Raises:
        ConfigError: for a missing or unparsable file, or any invalid key or value.
    """
    return read_config_file(path, TrainConfig, overrides, ignored=inapplicable_sections)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (every field) as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


__all__ = [
    "ConfigError",
    "EvalConfig",
    "PPOConfig",
    "PerceptionConfig",
    "PretrainRecipe",
    "SACConfig",
    "TrainConfig",
    "UnsupervisedConfig",
    "VideoConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dataclass_from_dict",
    "inapplicable_sections",
    "load_config",
    "parse_override",
    "parse_yaml",
    "read_config_file",
    "save_config",
]
