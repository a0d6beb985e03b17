"""The ``kp3d sweep`` and ``kp3d report`` commands (:mod:`agents.sweep`, :mod:`agents.report`);
:mod:`agents.cli` adds them to its parser. Ray Tune, Optuna and rliable, the ``sweep`` extra, are
imported only when a command runs."""

from __future__ import annotations

import argparse


def _cmd_sweep(args: argparse.Namespace) -> int:
    from agents.sweep import run_sweep

    return run_sweep(
        args.sweep,
        out=args.out,
        address=args.address,
        resume=args.resume,
        retry_failed=args.retry_failed,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from agents.report import write_report

    report = write_report(args.folders, budgets=args.budgets, out=args.out)
    print(report.read_text(), end="")
    print(f"report: {report}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``sweep`` and ``report`` to the ``kp3d`` subcommands."""
    sweep = commands.add_parser(
        "sweep",
        help="many runs on Ray Tune: configs x grid x seeds, or an Optuna search",
        description="Run the trials of a sweep file (configs, seeds, overrides, a grid or an "
        "Optuna search with an ASHA scheduler; see agents/sweep.py and configs/sweeps/) on Ray "
        "Tune: locally, one trial per core, or on a Ray cluster with --address. Each trial is a "
        "kp3d run directory under OUT/runs. Needs the sweep extra: pip install -e '.[sweep]'.",
    )
    sweep.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file")
    sweep.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="the sweep's folder (default: runs/sweeps/<sweep file's name>)",
    )
    sweep.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="join this Ray cluster (started with `ray start --head`) instead of starting Ray "
        "on this machine; OUT must be on a filesystem every node sees",
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep in --out: finished trials are kept, unfinished ones "
        "resume from their last checkpoint",
    )
    sweep.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume, also run the failed trials again",
    )
    sweep.set_defaults(handler=_cmd_sweep)

    report = commands.add_parser(
        "report",
        help="IQM with bootstrap confidence intervals, curves and profiles of many runs",
        description="For the runs of a sweep folder (or any folder of runs), grouped by task "
        "and experiment, seeds pooled: a markdown table of success rate and return at fixed "
        "budgets (interquartile mean over seeds with 95%% stratified-bootstrap confidence "
        "intervals, by rliable), sample-efficiency curves and performance profiles, written to "
        "the first FOLDER's report/. Needs the sweep extra.",
    )
    report.add_argument(
        "folders",
        nargs="+",
        metavar="FOLDER",
        help="sweep folders, or folders of runs (one report for all)",
    )
    report.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        default=None,
        metavar="STEPS",
        help="env-step budgets of the table (default per task: 1/4, 1/2 and all of the steps "
        "every run reached)",
    )
    report.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write (default: the first FOLDER's report/)",
    )
    report.set_defaults(handler=_cmd_report)
