"""The ``kp3d`` command line.

Subcommands:
    kp3d envs                  list the registered environments
    kp3d demo [--out DIR]      roll out every environment and write multi-camera MP4s
    kp3d bench envs [...]      environment throughput benchmark (numbers for BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


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

    paths = rollout_videos(
        Path(args.out),
        steps=args.steps,
        size=args.size,
        seed=args.seed,
        upscale_factor=args.upscale,
    )
    print("wrote:")
    for path in paths:
        print(f"  {path}")
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kp3d", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envs_parser = commands.add_parser("envs", help="list the registered environments")
    envs_parser.set_defaults(handler=_cmd_envs)

    demo = commands.add_parser("demo", help="roll out every env and write multi-camera videos")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--steps", type=_positive_int, default=100, help="steps per env")
    demo.add_argument("--size", type=_positive_int, default=64, help="image side in pixels")
    demo.add_argument(
        "--upscale", type=_positive_int, default=4, help="nearest-neighbour upscaling of the frames"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_cmd_demo)

    bench = commands.add_parser("bench", help="benchmarks")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    bench_envs = targets.add_parser("envs", help="env steps/s against a bare render loop")
    bench_envs.add_argument("--env", default="kp3d/Reach-v0")
    bench_envs.add_argument("--steps", type=_positive_int, default=2000)
    bench_envs.add_argument(
        "--repeats",
        type=_positive_int,
        default=5,
        help="interleaved repetitions; the median is reported",
    )
    bench_envs.add_argument("--sizes", type=_positive_int, nargs="+", default=[64, 128])
    bench_envs.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes for the vectorised measurement (0: skip)",
    )
    bench_envs.add_argument("--json", default=None, help="also write the results as JSON here")
    bench_envs.set_defaults(handler=_cmd_bench_envs)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
