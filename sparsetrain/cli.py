"""`sparsetrain` command line: run, export, bench, launch, sweep. New knobs go into configs, not flags."""

from __future__ import annotations

import argparse
import sys

from sparsetrain.config import ConfigError, load_config


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sparsetrain run", description="Run the compression pipeline.")
    parser.add_argument("config", nargs="?", help="YAML recipe (default: built-in quickstart defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. regularizer.beta=20")
    parser.add_argument("--phase", action="append", help="run only this phase (repeatable)")
    args = parser.parse_args(argv)
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:  # `sparsetrain run key=value` with no recipe
        config_path, overrides = None, [config_path, *overrides]
    cfg = load_config(config_path, overrides)
    from sparsetrain.engine.distributed import shutdown_distributed
    from sparsetrain.pipeline import run_pipeline

    run_pipeline(cfg, args.phase)
    shutdown_distributed()  # success path only: on errors the process exits and the launcher reaps its peers
    return 0


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sparsetrain export", description="Export a finished run's model.")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    from sparsetrain.export import export_run

    print(export_run(args.run_dir))
    return 0


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] not in ("kernels", "train_step"):
        raise ConfigError("bench: expected 'kernels' or 'train_step'")
    if argv[0] == "kernels":
        from benchmarks.kernels import main as bench_main
    else:
        from benchmarks.train_step import main as bench_main
    bench_main(argv[1:])
    return 0


def _launch(argv: list[str]) -> int:
    from launch.cli import launch_main

    return launch_main(argv)


def _sweep(argv: list[str]) -> int:
    from launch.cli import sweep_main

    return sweep_main(argv)


COMMANDS = {"run": _run, "export": _export, "bench": _bench, "launch": _launch, "sweep": _sweep}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: sparsetrain {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, ValueError) as err:
        # Bad input: one line naming the field, never a deep traceback.
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from sparsetrain.engine.checkpoint import CheckpointError
        from sparsetrain.engine.preemption import Preempted

        if isinstance(err, CheckpointError | Preempted):
            print(f"error: {err}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
