"""`sparsetrain` command line: run, config, export, bench, launch, sweep. New knobs go into configs, not flags."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from sparsetrain import warning_output
from sparsetrain.argtypes import CommandParser
from sparsetrain.config import ConfigError, load_config
from sparsetrain.errors import SparsetrainError, first_line, said_here
from sparsetrain.peer_loss import broken_process_group, write_traceback
from sparsetrain.phases import check_phases

DEEPSPEED_FLAGS = ("--deepspeed_config", "--deepspeed-config", "--deepspeed")  # DeepSpeed's own script flags


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_intermixed_args(argv)`, except that an option the command does not have is named alone: argparse
    would also call every `key=value` override after it unrecognized (`unrecognized arguments: --wait out_dir=D`);
    DeepSpeed's `--deepspeed_config` gets where a DeepSpeed JSON's settings go instead.

    Raises:
        SystemExit: argparse's usage error (code 2).
    """
    _, unknown = parser.parse_known_intermixed_args(argv)
    flags = [token for token in unknown if token.startswith("-")]
    if any(flag.partition("=")[0] in DEEPSPEED_FLAGS for flag in flags):
        from sparsetrain.config.loader import DEEPSPEED_JSON_HINT

        parser.error(f"unrecognized option {' '.join(flags)}: {DEEPSPEED_JSON_HINT}")
    if flags:
        parser.error(f"unrecognized option{'s' * (len(flags) > 1)} {' '.join(flags)}; `{parser.prog} --help` lists "
                     "the options (settings are key=value overrides)")
    return parser.parse_intermixed_args(argv)


def _run(argv: list[str]) -> int:
    parser = CommandParser(prog="sparsetrain run", description="Run the compression pipeline.")
    parser.add_argument("config", nargs="?", help="YAML recipe (default: built-in defaults, a short "
                        "LeNet-300-100 run on digits, 1 epoch per phase, into runs/default; `make demo` runs "
                        "configs/quickstart.yaml into runs/quickstart)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. regularizer.beta=20")
    parser.add_argument("--phase", action="append", help="run only this phase (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the pruning plan and the per-rank memory plan "
                        "(world size from WORLD_SIZE or launch.nodes × launch.tasks_per_node); train nothing")
    args = parse_command_line(parser, argv)
    cfg = load_config(*_split_recipe(args.config, list(args.overrides)), plan_only=args.dry_run)
    if args.dry_run:
        from sparsetrain.plan import plan_report, world_size_for
        from sparsetrain.progress import setup_logging

        setup_logging(is_main=True)  # as the run: the data's lines (class count, transposition, classes a subset lacks)
        print(plan_report(cfg, world_size_for(cfg)), end="")
        return 0
    check_phases(args.phase or [])  # before the imports of torch and the run's data (seconds to minutes)
    from sparsetrain.engine import preemption
    from sparsetrain.engine.distributed import shutdown_distributed
    from sparsetrain.pipeline import run_pipeline

    # SIGTERM (scancel, a cluster's preemption or `scontrol requeue`), SIGUSR1 and the first Ctrl-C (SIGINT) stop at
    # the next step boundary with a checkpoint instead of losing the steps since the last one; a re-run or requeue
    # continues from it. SIGTERM/SIGUSR1 exit 3 (a preemption); Ctrl-C exits 130, also a second one, which quits at
    # once.
    preemption.install_signal_handlers((signal.SIGTERM, signal.SIGUSR1, signal.SIGINT))
    try:
        run_pipeline(cfg, args.phase)
    except preemption.Preempted as err:
        if not preemption.interrupted():  # the cluster's stop: exit 3, a requeue continues
            return _preempted(saved_point(Path(cfg.out_dir)), argv, err.exit_code)
        return _interrupted(f"stopped with a checkpoint at {saved_point(Path(cfg.out_dir))}", argv)
    except KeyboardInterrupt:
        return _interrupted(f"quit at once; a re-run continues from {saved_point(Path(cfg.out_dir))}", argv)
    except Exception as err:  # noqa: BLE001  (re-raised unless Ctrl-C or a lost peer rank caused it)
        reason = broken_process_group(err)
        if reason is not None:
            return _peer_lost(reason, err, Path(cfg.out_dir), argv)
        if not preemption.interrupted():
            raise
        # Ctrl-C reaches child processes too (e.g. the ninja build of DeepSpeed's comm op on a first run), which
        # then fail with their own error: the user's Ctrl-C is the cause, so it is reported as one
        return _interrupted(f"quit at once; a re-run continues from {saved_point(Path(cfg.out_dir))}", argv)
    shutdown_distributed()  # success path only: on errors the process exits and the launcher reaps its peers
    return 0


def _preempted(point: str, argv: list[str], code: int) -> int:
    """SIGTERM/SIGUSR1 during `run` (a cluster's preemption, scancel, `scontrol requeue`): one line saying where the
    checkpoint is, that a requeued job continues from it, and the command that resumes by hand; exit `code` (3)."""
    requeue = "a requeued Slurm job continues from it, or " if "SLURM_JOB_ID" in os.environ else ""
    _say_once(f"preempted: stopped with a checkpoint at {point}; {requeue}resume with {resume_command(argv)}")
    return code


def _interrupted(what: str, argv: list[str]) -> int:
    """Ctrl-C during `run`: one line saying what was kept and the command that resumes; exit 130 (128 + SIGINT)."""
    _say_once(f"interrupted: {what}; resume with {resume_command(argv)}")
    return 130


def _say_once(line: str) -> None:
    """One whole line on stderr from rank 0 only (every rank stops alike; RANK is unset in a single process)."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()


def _peer_lost(reason: str, err: BaseException, out_dir: Path, argv: list[str]) -> int:
    """Another rank died (kill -9, OOM, a lost node) and this rank's collective failed: one line saying so, where a
    re-run continues and the command that resumes, from every surviving rank (rank 0 may be the dead one; the others
    name their rank); the backend's traceback goes to out_dir/error-rank<R>.log. Exit 3, as a preemption: the
    checkpoint is intact and a re-run continues from it."""
    from sparsetrain.errors import ResumeError

    state = saved_point(out_dir)
    where = f"the last checkpoint is at {state} in {out_dir / 'checkpoints'}" if " step " in state else \
        f"a re-run continues from {state}"
    log = write_traceback(err, out_dir)
    rank = os.environ.get("RANK", "0")
    sys.stderr.write(f"{'' if rank == '0' else f'rank {rank}: '}peer lost: the process group broke ({reason}): "
                     f"another rank died or stopped; {where}; resume with {resume_command(argv)}"
                     f"{f' (traceback: {log})' if log else ''}\n")
    sys.stderr.flush()
    return ResumeError.exit_code


def saved_point(out_dir: Path) -> str:
    """Where a re-run continues, from state.json: `sparsify step 40`, `the end of the dense phase` or `the start`."""
    from sparsetrain.engine.checkpoint import read_run_state
    from sparsetrain.phases import final_phase

    state = read_run_state(out_dir) or {}
    if state.get("current"):
        return f"{state['current']['phase']} step {state['current']['step']}"
    finished = final_phase(state.get("completed") or {})
    return f"the end of the {finished} phase" if finished else "the start"


def resume_command(argv: list[str]) -> str:
    """The `sparsetrain run` command that continues an interrupted run, in backquotes: the same arguments, less a
    `resume=` override (resume=false would start over and lose the checkpoint), started as this run was: under
    torchrun or DeepSpeed's launcher the launcher with every flag it was given (`launcher_prefix`; and ` on each of
    the N nodes` after it when there were several)."""
    import shlex

    kept = [arg for arg in argv if arg.partition("=")[0].strip() != "resume"]
    launcher, nodes = launcher_prefix(argv, os.environ, _ancestor_command_lines())
    command = f"`{shlex.join([*(launcher or _program()), 'run', *kept])}`"
    return f"{command} on each of the {nodes} nodes" if nodes > 1 else command


# name -> (its module, the other names of its script, the flag giving ranks per node, the one giving nodes, the flag
# that makes the script a module). torchrun sets TORCHELASTIC_RUN_ID, LOCAL_WORLD_SIZE, WORLD_SIZE and (from
# --master_port) MASTER_PORT on each rank; DeepSpeed's launcher LOCAL_SIZE (ranks per node), CROSS_SIZE (nodes) and
# MASTER_PORT.
LAUNCHERS = {
    "torchrun": ("torch.distributed.run", (), "--nproc_per_node", "--nnodes", "-m"),
    "deepspeed": ("deepspeed.launcher.runner", ("ds",), "--num_gpus", "--num_nodes", "--module"),
}
DEFAULT_MASTER_PORT = "29500"  # both launchers' default --master_port


def launcher_prefix(argv: list[str], env: Mapping[str, str], ancestors: list[list[str]]) -> tuple[list[str], int]:
    """The launcher that started this rank as a command prefix (through which `sparsetrain run argv` runs) and its
    number of nodes; ([], 1) when no launcher did.

    The prefix keeps every flag the launcher was given, in its order (`--master_port 29533`, `--rdzv_*`,
    `--max_restarts`, ...), read from the launcher's own command line: the closest of `ancestors` (this process's
    parents' command lines, nearest first) that runs the launcher's script or module and ends with `run` `argv`.
    When none does (unreadable, or a wrapper script in between), the prefix is rebuilt from the launcher's variables:
    ranks per node, nodes, and a port other than the default (MASTER_PORT; under torchrun only with its static
    rendezvous, TORCHELASTIC_RUN_ID "none", where it is the --master_port given).
    """
    name = "torchrun" if "TORCHELASTIC_RUN_ID" in env and "LOCAL_WORLD_SIZE" in env else \
        "deepspeed" if "LOCAL_SIZE" in env and "CROSS_SIZE" in env else None
    if name is None:
        return [], 1
    module, aliases, per_node_flag, nodes_flag, module_flag = LAUNCHERS[name]
    per_node = int(env["LOCAL_WORLD_SIZE"] if name == "torchrun" else env["LOCAL_SIZE"])
    nodes = max(1, int(env.get("WORLD_SIZE", per_node)) // per_node) if name == "torchrun" else int(env["CROSS_SIZE"])
    for command_line in ancestors:
        given = _launcher_flags(command_line, (name, *aliases), module, ["run", *argv])
        if given is not None:
            return [*_tool(name, module), *given], nodes
    port = env.get("MASTER_PORT", DEFAULT_MASTER_PORT)
    static = name == "deepspeed" or env.get("TORCHELASTIC_RUN_ID") == "none"
    flags = [*([f"{nodes_flag}={nodes}"] if nodes > 1 else []), f"{per_node_flag}={per_node}",
             *([f"--master_port={port}"] if static and port != DEFAULT_MASTER_PORT else [])]
    return [*_tool(name, module), *flags, module_flag, "sparsetrain"], nodes


def _launcher_flags(command_line: list[str], names: tuple[str, ...], module: str,
                    run_args: list[str]) -> list[str] | None:
    """What follows the launcher's script (one of `names`) or `-m module` in `command_line` up to `run_args` at its end
    (its flags and the training script, e.g. `--master_port 29533 -m sparsetrain`), as given; None when
    `command_line` is not that launcher starting `run_args`."""
    for i, token in enumerate(command_line):
        if Path(token).name in names:
            tail = command_line[i + 1:]
            break
        if token == "-m" and command_line[i + 1:i + 2] == [module]:
            tail = command_line[i + 2:]
            break
    else:
        return None
    cut = len(tail) - len(run_args)
    return tail[:cut] if cut >= 1 and tail[cut:] == run_args else None


def _ancestor_command_lines(levels: int = 3) -> list[list[str]]:
    """The command lines of this process's parent, grandparent, ... (nearest first; DeepSpeed's runner is the
    grandparent of a rank, torchrun the parent); those that cannot be read are left out."""
    try:
        import psutil  # a DeepSpeed dependency
    except ImportError:
        return []
    lines = []
    try:
        parents = psutil.Process().parents()[:levels]
    except psutil.Error:
        return []
    for parent in parents:
        try:
            lines.append(parent.cmdline())
        except psutil.Error:  # gone, or another user's
            continue
    return lines


def _tool(name: str, module: str) -> list[str]:
    """`name` when the one on PATH is this environment's, else this environment's script by its path (e.g.
    `.venv/bin/torchrun` run without activating the venv; relative when under the working directory), else
    `python -m module` with this interpreter."""
    here = Path(sys.executable).parent / name
    if not here.exists():
        return [sys.executable, "-m", module]
    return _typed(name, here, os.path.relpath(here) if here.is_relative_to(Path.cwd()) else str(here))


def _program() -> list[str]:
    """How this process was started, as a command a user can paste: `sparsetrain` when that is the one on PATH, else
    the script's path (e.g. `.venv/bin/sparsetrain` run without activating the venv) or `python -m sparsetrain`."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.name in ("__main__.py", "-c") or script.suffix == ".py":
        return [sys.executable, "-m", "sparsetrain"]
    return _typed("sparsetrain", script, str(script))


def _typed(name: str, script: Path, by_path: str) -> list[str]:
    """How a user types `script`: `name` when the `name` on PATH is that script, else `by_path`."""
    import shutil

    on_path = shutil.which(name)
    return [name] if on_path and script.exists() and Path(on_path).resolve() == script.resolve() else [by_path]


def _split_recipe(config_path: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`sparsetrain CMD key=value ...` with no recipe: the first argument is an override, not a file."""
    if config_path and "=" in config_path:
        return None, [config_path, *overrides]
    return config_path, overrides


def _config(argv: list[str]) -> int:
    parser = CommandParser(prog="sparsetrain config", description="Print a recipe's resolved config "
                                     "(YAML), or every config field with its type, default and description.")
    parser.add_argument("config", nargs="?", help="YAML recipe (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--schema", nargs="?", const="", metavar="SECTION",
                        help="list every field (or those under SECTION, e.g. regularizer) instead")
    args = parse_command_line(parser, argv)
    if args.schema is not None:
        from sparsetrain.config import RunConfig
        from sparsetrain.config.describe import format_schema, schema_rows, suggestion

        every = schema_rows(RunConfig)
        rows = [r for r in every if not args.schema or r.path == args.schema or r.path.startswith(f"{args.schema}.")]
        if not rows:
            names = {r.path.rsplit(".", depth)[0] for r in every for depth in range(r.path.count(".") + 1)}
            raise ConfigError(f"config --schema: no field or section {args.schema!r}"
                              f"{suggestion(args.schema, sorted(names))}")
        print(format_schema(rows))
        return 0
    import yaml

    from sparsetrain.config import config_to_dict

    cfg = load_config(*_split_recipe(args.config, list(args.overrides)))
    from sparsetrain.plan import check_model, config_sizes  # imports torch: after the config's own checks

    check_model(cfg, config_sizes(cfg))  # the model checks of `run` that need no data: its sizes from the config
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def _export(argv: list[str]) -> int:
    parser = CommandParser(prog="sparsetrain export", description="Export a finished run's model to "
                                     "RUN_DIR/export (an unfinished run is refused unless --phase names a finished "
                                     "phase), with the run's deploy settings or deploy.* overrides.")
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="deploy.* settings for this export, e.g. deploy.compact=true "
                        "'deploy.formats=[onnx]' (sparsetrain config --schema deploy lists them); other settings "
                        "are the run's own (its config.yaml) and are refused, and so are the deploy.latency* keys: "
                        "export does not time (sparsetrain bench latency RUN_DIR does)")
    parser.add_argument("--phase", help="export this finished phase instead of the run's final one (e.g. sparsify "
                        "of a run stopped before pruning); architecture.json's meta.phase records it")
    _require_positional(parser, argv, "run_dir")
    args = parse_command_line(parser, argv)
    from sparsetrain.deploy.reexport import export_run

    print(export_run(args.run_dir, args.phase, list(args.overrides)))
    return 0


def _require_positional(parser: argparse.ArgumentParser, argv: list[str], name: str) -> None:
    """Exit with argparse's usage error naming only `name` when no positional argument is given (argparse would also
    name the optional `overrides`)."""
    if not any(not arg.startswith("-") for arg in argv) and not {"-h", "--help"} & set(argv):
        parser.error(f"the following argument is required: {name}")


def _eval(argv: list[str]) -> int:
    parser = CommandParser(prog="sparsetrain eval", description="Evaluate a run directory, an export "
                                     "folder (or a file in it) or a checkpoint on a data config: metric (accuracy; "
                                     "segmentation: mIoU from 3 classes, with per-class IoU, else the foreground "
                                     "Dice), params total / non-zero, sparsity, bytes, latency (deploy.latency=false: "
                                     "not timed).")
    parser.add_argument("target", help="run directory, export folder / file, or checkpoint (.safetensors, .pth, ..., "
                        "or a DeepSpeed checkpoint folder)")
    parser.add_argument("config", nargs="?", help="YAML recipe for data (and model, for a checkpoint; a run's "
                        "weights file: that run's config.yaml, e.g. sparsetrain eval RUN/weights/dense.safetensors "
                        "RUN/config.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.path=DIR")
    parser.add_argument("--format", default="auto", help="export format to evaluate: auto, safetensors, bitmask, "
                        "torch_export, onnx, compact (Method 1: dead units removed)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _require_positional(parser, argv, "target")
    args = parse_command_line(parser, argv)
    from sparsetrain.deploy.evaluate import evaluate_target, format_evaluation
    from sparsetrain.progress import setup_logging

    setup_logging(is_main=True)  # the lines that say what was read (model.checkpoint: loaded ... from ...)
    recipe, overrides = _split_recipe(args.config, list(args.overrides))
    result = evaluate_target(args.target, recipe, overrides, args.format)
    print(json.dumps(result, indent=1) if args.json else format_evaluation(result))
    return 0


def _bench_latency(argv: list[str]) -> None:
    from benchmarks.common import OUTPUT_DIR
    from sparsetrain.argtypes import int_at_least, out_folder, positive_int

    parser = CommandParser(prog="sparsetrain bench latency", description="Dense vs compressed latency "
                                     "of a run's export (and vs its compact model, export/compact/, when it has "
                                     "one), timed interleaved in the same rounds: torch eager and onnxruntime, "
                                     "batch 1 and a larger batch, median [p20-p80], peak memory, slowest layers. "
                                     "Prints the table and writes it to OUT/latency-NAME.json and .png (NAME: the "
                                     "run's folder); the run's own latency.json and report.json, timed with its "
                                     "deploy.latency_* settings, are left as they are.")
    parser.add_argument("target", help="run directory or export folder (RUN/export/compact: the compact model "
                        "alone against the dense architecture)")
    # the same bounds as a run's deploy.latency_batch / latency_repeats / latency_threads
    parser.add_argument("--batch", type=int_at_least(2), default=16, help="the larger batch size, 2 or more (the "
                        "other is 1)")
    parser.add_argument("--repeats", type=int_at_least(3), default=30, help="timed interleaved rounds per runtime "
                        "and batch, 3 or more (the p20, median and p80 of each model)")
    parser.add_argument("--threads", type=positive_int, default=1, help="intra-op threads of both runtimes")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory (a child process per model)")
    parser.add_argument("--out", type=out_folder, default=OUTPUT_DIR, help=f"folder for latency-NAME.json and "
                        f"latency-NAME.png (default {OUTPUT_DIR}, as the other benchmarks)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parse_command_line(parser, argv)
    from sparsetrain.deploy.latency import latency_table
    from sparsetrain.deploy.latency_report import bench_stem, format_latency, write_latency

    table = latency_table(args.target, batches=(1, args.batch), repeats=args.repeats, threads=args.threads,
                          memory=not args.no_memory)
    path = write_latency(table, args.out, bench_stem(Path(args.target)))
    print(json.dumps(table, indent=1) if args.json else format_latency(table))
    print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the table alone


# `sparsetrain bench NAME`: what each does (one list for the dispatcher and `--help`)
BENCHMARKS = {
    "kernels": "Triton kernels vs eager/compile, GPU",
    "train_step": "one training step per regularizer path",
    "latency": "dense vs compressed (and compact), side by side",
    "throughput": "samples/s over a long run vs a plain torch loop",
}


def _bench(argv: list[str]) -> int:
    names = tuple(BENCHMARKS)
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: sparsetrain bench NAME [args]   (sparsetrain bench NAME --help for its arguments)\n\nbenchmarks:")
        print("\n".join(f"  {name:<10}  {text}" for name, text in BENCHMARKS.items()))
        return 0
    if not argv or argv[0] not in names:
        raise ConfigError(f"bench: expected one of {', '.join(names)}")
    if argv[0] == "latency":
        _bench_latency(argv[1:])
        return 0
    import importlib

    # the usage line and argparse's errors name the command as typed, not `python -m benchmarks.NAME`
    importlib.import_module(f"benchmarks.{argv[0]}").main(argv[1:], prog=f"sparsetrain bench {argv[0]}")
    return 0


def _launch(argv: list[str]) -> int:
    from launch.cli import launch_main

    return launch_main(argv)


def _sweep(argv: list[str]) -> int:
    from launch.cli import sweep_main

    return sweep_main(argv)


COMMANDS = {
    "run": (_run, "compress a model: dense baseline, sparsity training, prune, fine-tune (resumes in out_dir)"),
    "config": (_config, "print a recipe's resolved config, or every config field with --schema"),
    "export": (_export, "export a finished run's model to RUN_DIR/export (safetensors, bitmask, ONNX, torch.export)"),
    "eval": (_eval, "evaluate a run, export or checkpoint on any data config: metric, size, sparsity, latency"),
    "bench": (_bench, f"benchmarks: {', '.join(f'{n} ({t})' for n, t in BENCHMARKS.items())}"),
    "launch": (_launch, "run the pipeline as a Slurm job (or local processes) through submitit"),
    "sweep": (_sweep, "grid sweep of overrides as a Slurm job array, with a Pareto summary"),
}


def usage() -> str:
    """The top-level help: one line per command."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sparsetrain COMMAND [args]   (sparsetrain COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Recipes are YAML files in configs/; override any field with key=value (sparsetrain config "
              "--schema lists them)."]
    return "\n".join(lines)


LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")  # DeepSpeed's launcher; torch.distributed.launch (hyphenated)


def strip_local_rank(argv: list[str], env: dict[str, str] | os._Environ) -> list[str]:
    """`argv` without the `--local_rank=N` (or `--local_rank N`, `--local-rank=N`) that DeepSpeed's launcher puts
    before the command (`python -m sparsetrain --local_rank=0 run ...`, unless `--no_local_rank`).

    sparsetrain reads the local rank from the environment, as under torchrun: DeepSpeed's launcher sets LOCAL_RANK
    to the same number, so the flag adds nothing. A flag that disagrees with LOCAL_RANK is refused (a wrapper
    changed one of them: which device is meant is unclear); without LOCAL_RANK the flag's value is put there.

    Raises:
        ConfigError: `--local_rank: ...` for a value that is not an integer or differs from LOCAL_RANK.
    """
    head = argv[0] if argv else ""
    name, eq, value = head.partition("=")
    if name not in LOCAL_RANK_FLAGS:
        return argv
    rest = argv[1:] if eq else argv[2:]
    value = value if eq else (argv[1] if len(argv) > 1 else "")
    if not value.isdigit():
        raise ConfigError(f"{name}: expected the launcher's local rank, an integer (got {value!r})")
    given = env.get("LOCAL_RANK")
    if given is not None and given != value:
        raise ConfigError(f"{name}: {value} differs from the environment's LOCAL_RANK={given}, which sparsetrain "
                          "uses; start it with one launcher (torchrun, or deepspeed)")
    env.setdefault("LOCAL_RANK", value)
    return rest


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; sparsetrain's own errors become one `error:` line and their exit code.

    Exit codes (`sparsetrain.errors`): 0 success, 2 bad input, 3 resume/preemption (also a run stopped by SIGTERM or
    SIGUSR1, with a checkpoint: one `preempted:` line with the command that resumes; and a rank whose peer died: one
    `peer lost:` line), 4 non-finite numbers, 5 a
    library set-up sparsetrain does not expect, 130 interrupted by Ctrl-C (`run`: a first one checkpoints at the next
    step, a second quits at once; one `interrupted:` line with the command that resumes), 1 anything unexpected (with
    its traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    warning_output.install()
    try:
        argv = strip_local_rank(argv, os.environ)  # under DeepSpeed's launcher
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        from sparsetrain.config.describe import suggestion

        print(f"error: unknown command {argv[0]!r}{suggestion(argv[0], list(COMMANDS))}; "
              f"expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except SparsetrainError as err:
        if said_here(err, os.environ.get("RANK", "0")):
            print(f"error: {first_line(err)}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:  # bad values found by a library (e.g. timm's unknown model name)
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside `run`'s training (`run` reports its own): no traceback
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `sparsetrain` script and `python -m sparsetrain`: `main`, then `fast_exit.exit_now` with its exit code
    (argparse's usage errors included); an unexpected exception propagates with its traceback and a normal exit."""
    from sparsetrain.fast_exit import exit_now

    try:
        code = main()
    except SystemExit as stop:
        code = stop.code
    except BrokenPipeError:  # the reader went away (`sparsetrain config --schema | head`): no traceback
        code = _reader_gone()
    exit_now(code)


def _reader_gone() -> int:
    """Exit status 141 (128 + SIGPIPE, what a shell reports for a writer its reader left) after pointing stdout at
    /dev/null, so that the exit's flush does not raise again (Python's documented way for a closed pipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    entry()
