"""The ``kp3d`` command line: environments, training, evaluation, videos, datasets, perception
pretraining, benchmarks, sweeps and reports (the last two in :mod:`agents.cli_sweep`).
``kp3d COMMAND --help`` describes a command and its options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agents.cli_sweep import add_commands as add_sweep_commands


def _cmd_envs(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import envs

    for env_id in envs.TASKS:
        env = gym.make(env_id)
        base = env.unwrapped
        cameras = base.cameras
        print(
            f"{env_id}  ({type(base).__name__}, {env.spec.max_episode_steps} steps, "
            f"dt={base.dt:.3f} s)"
        )
        for name, spec, moving in zip(cameras.names, cameras.specs, cameras.moving, strict=True):
            print(f"  camera {name:<8} {spec.kind:<8} {'moving' if moving else 'fixed'}")
        print(f"  image    {cameras.height}x{cameras.width} RGB uint8 per camera")
        print(f"  action   {env.action_space}")
        for key, space in env.observation_space.spaces.items():
            print(f"  obs      {key}: {space}")
        print(f"  keypoints ({len(base.keypoint_names)}): {', '.join(base.keypoint_names)}")
        env.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from agents.demo import rollout_videos

    videos = rollout_videos(
        Path(args.out),
        steps=args.steps,
        size=args.size,
        seed=args.seed,
        upscale_factor=args.upscale,
    )
    print(f"wrote {len(videos)} videos ({args.steps} random steps each):")
    task_width = max(len(video.env_id) for video in videos)
    cameras_width = max(len(", ".join(video.cameras)) for video in videos)
    for video in videos:
        print(f"  {video.line(task_width, cameras_width)}")
    return 0


def _start_or_resume(
    args: argparse.Namespace,
    start: Callable[[], Path],
    resume: Callable[[], Path],
    interrupted: type[BaseException],
) -> Path | None:
    """Run ``start()`` (a CONFIG was given) or ``resume()`` (``--resume RUN_DIR``) for a command
    made by :func:`_add_run_arguments`; the run directory, or ``None`` when interrupted (exit
    code 130; ``interrupted`` is the runner's "saved a checkpoint and stopped" exception)."""
    if (args.config is None) == (args.resume is None):
        raise ValueError("give a CONFIG file to start a run, or --resume RUN_DIR to continue one")
    if args.resume is not None and args.run_dir is not None:
        raise ValueError("--run-dir names a new run; --resume continues the run it is given")
    try:
        return resume() if args.resume is not None else start()
    except interrupted:
        return None
    except KeyboardInterrupt:
        outcome = (
            "the run is as it was"
            if args.resume is not None
            else "nothing to resume: the new run's directory was removed, or keeps only its logs"
        )
        print(f"\ninterrupted before the first checkpoint; {outcome}", file=sys.stderr)
        return None


def _cmd_train(args: argparse.Namespace) -> int:
    from agents.config import load_config
    from agents.pipeline import train
    from agents.runs import quoted
    from agents.training import LOG_DIR, TrainingInterrupted, resume

    overrides = [*args.set, *(["verbose=2"] if args.verbose else [])]
    run_dir = _start_or_resume(
        args,
        start=lambda: train(load_config(args.config, overrides), run_dir=args.run_dir),
        resume=lambda: resume(args.resume, overrides),
        interrupted=TrainingInterrupted,
    )
    if run_dir is None:
        return 130
    print(f"run: {run_dir}\ntensorboard: tensorboard --logdir {quoted(run_dir / LOG_DIR)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from agents.evaluation import evaluate

    video = args.video
    if video == "":
        video = str(Path(args.run_dir) / "videos" / "eval.mp4")
    # With --json, stdout carries the JSON object alone: anything else printed goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        result = evaluate(
            args.run_dir,
            episodes=args.episodes,
            deterministic=args.deterministic,
            video=video,
            video_episodes=args.video_episodes,
        )
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{args.run_dir}: {result.summary()}")
    if result.video is not None:
        print(f"video: {result.video} ({args.video_episodes} episodes)")
    else:
        print("nothing written (--video writes a rollout video)")
    return 0


def _default_video_path(args: argparse.Namespace) -> Path:
    """RUN_DIR/videos/rollout.mp4; next to a perception checkpoint; else runs/render/."""
    env = (args.env_id or "").replace("/", "-")
    if args.run_dir is not None:
        return Path(args.run_dir) / "videos" / "rollout.mp4"
    if args.perception is not None:
        checkpoint = Path(args.perception)
        return checkpoint.parent / "videos" / f"{checkpoint.stem}__{env}.mp4"
    return Path("runs") / "render" / f"{env}__random.mp4"


def _cmd_render(args: argparse.Namespace) -> int:
    from agents.render import render_video

    if args.run_dir is None and args.env_id is None:
        raise ValueError("give a RUN_DIR, or --env ENV_ID with --random-policy")
    if args.run_dir is None and not args.random_policy:
        raise ValueError("without a RUN_DIR there is no trained policy: add --random-policy")
    out = Path(args.out) if args.out is not None else _default_video_path(args)
    try:
        result = render_video(
            args.run_dir,
            out,
            env_id=args.env_id,
            perception=args.perception,
            random_policy=args.random_policy,
            episodes=args.episodes,
            deterministic=args.deterministic,
            cameras=args.camera,
            seed=args.seed,
            max_steps=args.max_steps,
            upscale=args.upscale,
            fps=args.fps,
            device=args.device,
            progress=True,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing written to {out}", file=sys.stderr)
        return 130
    print(result.summary())
    print(f"video: {result.path}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from agents.plot import plot_learning_curves

    path = plot_learning_curves(args.run_dirs, out=args.out, spread=args.spread)
    print(f"figure: {path}")
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    from agents.dataset import write_dataset

    try:
        meta = write_dataset(
            args.env_id,
            frames=args.frames,
            out=args.out,
            policy=args.policy,
            size=args.size,
            seed=args.seed,
            shard_size=args.shard_size,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; the frames so far are in {args.out} (re-run to continue)")
        return 130
    print(f"dataset: {args.out} ({meta['frames']} frames in {len(meta['shards'])} shards)")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from agents.pretrain import (
        CHECKPOINT_FILE,
        LOG_DIR,
        PretrainInterrupted,
        load_pretrain_config,
        pretrain,
        resume_pretrain,
    )
    from agents.runs import quoted

    run_dir = _start_or_resume(
        args,
        start=lambda: pretrain(load_pretrain_config(args.config, args.set), run_dir=args.run_dir),
        resume=lambda: resume_pretrain(args.resume, args.set),
        interrupted=PretrainInterrupted,
    )
    if run_dir is None:
        return 130
    print(
        f"run: {run_dir}\ncheckpoint: {run_dir / CHECKPOINT_FILE}\n"
        f"tensorboard: tensorboard --logdir {quoted(run_dir / LOG_DIR)}"
    )
    return 0


def _cmd_bench_envs(args: argparse.Namespace) -> int:
    from envs.benchmark import run_env_benchmark

    run_env_benchmark(
        env_id=args.env,
        steps=args.steps,
        repeats=args.repeats,
        sizes=tuple(args.sizes),
        workers=args.workers,
        json_path=args.json,
    )
    print(
        f"results: {args.json}" if args.json else "nothing written (--json FILE saves the results)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kp3d",
        description="kp3d: robot learning from pixels through keypoints, on multi-camera MuJoCo "
        "environments.",
        epilog="Run `kp3d COMMAND --help` for what a command does and its options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envs_parser = commands.add_parser(
        "envs",
        help="list the registered environments",
        description="List every registered kp3d environment: its cameras (fixed or moving), "
        "image size, action and observation spaces, and keypoint names. Writes nothing.",
    )
    envs_parser.set_defaults(handler=_cmd_envs)

    demo = commands.add_parser(
        "demo",
        help="roll out every env and write multi-camera videos",
        description="Roll out random actions in every registered environment and write one MP4 "
        "each: the cameras side by side with the ground-truth keypoints drawn where the camera "
        "matrices project them (filled: visible, outline: occluded), under a title naming the "
        "task and the cameras. Prints the list of files written.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--steps", type=_positive_int, default=100, help="steps per env (default: %(default)s)"
    )
    demo.add_argument(
        "--size",
        type=_positive_int,
        default=64,
        help="camera image side in pixels (default: %(default)s)",
    )
    demo.add_argument(
        "--upscale",
        type=_positive_int,
        default=4,
        help="nearest-neighbour upscaling of the frames (default: %(default)s)",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="env and action seed (default: %(default)s)"
    )
    demo.set_defaults(handler=_cmd_demo)

    train = commands.add_parser(
        "train",
        help="train an agent from a YAML config",
        description="Train an agent from a YAML config (configs/*.yaml), or resume a run. A run "
        "directory holds the resolved config, checkpoints, TensorBoard logs and evaluations; "
        "Ctrl-C saves a resumable checkpoint.",
    )
    _add_run_arguments(
        train,
        set_help="override a config key, e.g. --set ppo.learning_rate=1e-4 (repeatable; the "
        "value is read as YAML; default: none)",
        run_dir_help="directory of the new run (default: runs/{env}__{exp}__{seed}__{time}); it "
        "must not hold anything yet",
        resume_help="continue this run from its checkpoint up to its n_timesteps",
    )
    train.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print SB3's tables and messages (the config's verbose: 2; default: off, they "
        "go to the run's logs/)",
    )
    train.set_defaults(handler=_cmd_train)

    evaluation = commands.add_parser(
        "eval",
        help="evaluate a trained agent",
        description="Run a trained agent for some episodes on a fresh env seeded like the run's "
        "periodic evaluations and print the mean return, success rate and episode length; "
        "optionally write a video of the first episodes with the perceived keypoints.",
    )
    evaluation.add_argument("run_dir", help="run directory written by kp3d train")
    evaluation.add_argument(
        "--episodes", type=_positive_int, default=10, help="episodes to run (default: %(default)s)"
    )
    evaluation.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (success_rate, return_mean, return_std, episode_lengths, "
        "episodes, seed) and nothing else on stdout",
    )
    _add_deterministic_argument(evaluation)
    evaluation.add_argument(
        "--video",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write the first episodes with the perceived keypoints as a video (default: no "
        "video; PATH defaults to RUN_DIR/videos/eval.mp4)",
    )
    evaluation.add_argument(
        "--video-episodes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="episodes recorded by --video (default: %(default)s)",
    )
    evaluation.set_defaults(handler=_cmd_eval)

    render = commands.add_parser(
        "render",
        help="write a rollout video with the perceived keypoints",
        description="Roll out a trained agent (or random actions) and write an MP4 (a GIF for "
        "--out FILE.gif, or when ffmpeg is missing). Each frame shows every camera with the "
        "keypoints the perception places in it, its reconstruction and per-keypoint heatmaps, "
        "and the learned and ground-truth 3D keypoints in the world; episode, step, return and "
        "success in the header. A failed or interrupted render leaves no file behind.",
    )
    render.add_argument(
        "run_dir", nargs="?", default=None, help="run directory written by kp3d train"
    )
    render.add_argument(
        "--env",
        dest="env_id",
        default=None,
        help="env id, for rendering without a run directory (with --random-policy)",
    )
    render.add_argument(
        "--perception",
        default=None,
        metavar="CHECKPOINT",
        help="perception checkpoint of kp3d pretrain to draw (with --env and --random-policy)",
    )
    render.add_argument(
        "--random-policy", action="store_true", help="act uniformly at random, not with the agent"
    )
    render.add_argument(
        "--episodes",
        type=_positive_int,
        default=1,
        help="episodes to render (default: %(default)s)",
    )
    render.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help=".mp4 or .gif (default: RUN_DIR/videos/rollout.mp4; next to the checkpoint; or "
        "runs/render/)",
    )
    _add_deterministic_argument(render)
    render.add_argument(
        "--camera",
        nargs="+",
        default=None,
        metavar="NAME",
        help="cameras to show, in this order (default: all; the agent still sees all)",
    )
    render.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="cut episodes after N steps (default: the env's episode length)",
    )
    render.add_argument(
        "--seed", type=int, default=None, help="env seed (default: the run's evaluation seed)"
    )
    render.add_argument(
        "--upscale",
        type=_positive_int,
        default=None,
        help="nearest-neighbour upscaling of the views (default: to at least 160 px)",
    )
    render.add_argument(
        "--fps", type=float, default=None, help="frames per second (default: real time)"
    )
    render.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    render.set_defaults(handler=_cmd_render)

    plot = commands.add_parser(
        "plot",
        help="learning curves of runs as a PNG",
        description="Plot success rate and return against env steps from the periodic "
        "evaluations of runs (eval/evaluations.npz), runs of one env and experiment name pooled "
        "across seeds: the mean, with the spread across seeds shaded.",
    )
    plot.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of runs"
    )
    plot.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="image file (default: curves.png in the run, or in the runs' common folder)",
    )
    plot.add_argument(
        "--spread",
        choices=("minmax", "std", "iqm"),
        default="minmax",
        help="the curve and its band: the mean with the min-max across seeds or ± one std, or the "
        "interquartile mean with its 95%% bootstrap confidence interval (rliable; the sweep "
        "extra) (default: %(default)s)",
    )
    plot.set_defaults(handler=_cmd_plot)
    add_sweep_commands(commands)

    dataset = commands.add_parser(
        "dataset",
        help="write a dataset of frames with ground truth",
        description="Roll out ENV_ID and write every frame (all cameras, camera matrices, "
        "keypoints, depth, segmentation, body poses) as compressed shards. Re-running the same "
        "command continues an interrupted dataset; a larger --frames extends it.",
    )
    dataset.add_argument("env_id", help="a kp3d env id, e.g. kp3d/Reach-v0")
    dataset.add_argument(
        "--frames", type=_positive_int, required=True, help="total frames (required)"
    )
    dataset.add_argument("--out", required=True, help="dataset directory (required)")
    dataset.add_argument(
        "--policy",
        default="random",
        help="'random' or the run directory of an agent trained on ENV_ID (default: %(default)s)",
    )
    dataset.add_argument(
        "--size", type=_positive_int, default=None, help="image side (default: the env's)"
    )
    dataset.add_argument(
        "--seed", type=int, default=0, help="env and policy seed (default: %(default)s)"
    )
    dataset.add_argument(
        "--shard-size",
        type=_positive_int,
        default=1000,
        help="frames per shard (default: %(default)s)",
    )
    dataset.set_defaults(handler=_cmd_dataset)

    pretrain = commands.add_parser(
        "pretrain",
        help="train a perception module offline on a dataset",
        description="Train any registered perception module on a `kp3d dataset` directory from a "
        "YAML config (configs/pretrain/*.yaml), or resume a run. Held-out episodes evaluate it "
        "(linear-probe landmark error, and PCK for supervised modules); Ctrl-C saves a "
        "resumable checkpoint.",
    )
    _add_run_arguments(
        pretrain,
        set_help="override a config key, e.g. --set steps=2000 (repeatable; read as YAML; "
        "default: none)",
        run_dir_help="directory of the new run (default: "
        "runs/pretrain/{env}__{exp}__{seed}__{time})",
        resume_help="continue this run up to its steps",
    )
    pretrain.set_defaults(handler=_cmd_pretrain)

    bench = commands.add_parser(
        "bench",
        help="benchmarks",
        description="Benchmarks whose numbers BENCHMARKS.md reports. `kp3d bench TARGET --help` "
        "describes each.",
    )
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    bench_envs = targets.add_parser(
        "envs",
        help="env steps/s against a bare render loop",
        description="Time an env's steps (random actions, all wrappers) against the floor: the "
        "same physics and cameras drawn by a bare mujoco.Renderer loop. Prints a Markdown table "
        "with the env's time per step as a multiple of the floor's (lower is better).",
    )
    bench_envs.add_argument(
        "--env", default="kp3d/Reach-v0", help="env id to time (default: %(default)s)"
    )
    bench_envs.add_argument(
        "--steps",
        type=_positive_int,
        default=2000,
        help="steps timed per measurement (default: %(default)s)",
    )
    bench_envs.add_argument(
        "--repeats",
        type=_positive_int,
        default=5,
        help="interleaved repetitions; the median is reported (default: %(default)s)",
    )
    bench_envs.add_argument(
        "--sizes",
        type=_positive_int,
        nargs="+",
        default=[64, 128],
        metavar="SIZE",
        help="image sides in pixels, one table row each (default: 64 128)",
    )
    bench_envs.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes for the vectorised measurement, 0 to skip it (default: %(default)s)",
    )
    bench_envs.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the results as JSON here (default: not written)",
    )
    bench_envs.set_defaults(handler=_cmd_bench_envs)
    return parser


def _add_run_arguments(
    parser: argparse.ArgumentParser, *, set_help: str, run_dir_help: str, resume_help: str
) -> None:
    """The arguments of a command that starts a run from a YAML config or resumes one:
    ``config``, ``--set KEY=VALUE``, ``--run-dir`` and ``--resume RUN_DIR`` (read by
    :func:`_start_or_resume`)."""
    parser.add_argument("config", nargs="?", help="YAML config file (omit with --resume)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    parser.add_argument("--run-dir", default=None, metavar="DIR", help=run_dir_help)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help=resume_help)


def _add_deterministic_argument(parser: argparse.ArgumentParser) -> None:
    """``--deterministic/--no-deterministic`` of the commands that roll out an agent."""
    action = parser.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=True
    )
    # Set afterwards: Python 3.10's BooleanOptionalAction appends its own "(default: ...)".
    action.help = "act with the mean action, or sample with --no-deterministic (default: mean)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kp3d`` console script."""
    from envs.gl import RenderingUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, ImportError, RenderingUnavailableError) as error:
        print(f"kp3d {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # Disk full, read-only folder, a path that is a file...: every kp3d file is written to a
        # temporary name and renamed, so what existed before is intact.
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"kp3d {args.command}: error: {error.strerror or error}{where}; files written "
            "before are intact",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
