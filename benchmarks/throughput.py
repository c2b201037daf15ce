"""CPU training throughput: does the step rate hold over a long run, and what sparsetrain's loop costs over plain torch.

Two measurements, printed side by side in one run:

* **drift**: the recipe's phases (default: `configs/lenet300_fashion.yaml`, dense + sparsify, as configured) run
  through the real pipeline; from `metrics.jsonl` (`step_time_ms`, `cpu_time_ms` per logged window) the steps/s
  of the first and of the last 10 % of each phase's steps. Weights decaying into the float subnormal range slow
  CPU arithmetic ~30× (see `train.flush_denormal`); a ratio last/first near 1 says the rate holds. Wall time on
  a shared machine also moves with the load, so the ratio of CPU time per step is printed beside it.
* **overhead**: sparsetrain's dense training step (DeepSpeed engine, gradient hooks adding the l2 term,
  deterministic batches, the preemption check) against a plain torch + timm loop of the same model, Adam, batch
  and l2 (as Adam weight decay 2·α2 on the same kernels). Both run in one process in alternating rounds, so load
  changes hit both alike; medians over rounds.

The benchmark's own runs skip what a throughput measurement does not need (`SKIPPED`: the extra export formats,
the compact model, the latency table, plots, the accuracy curve); `--quick` is a run of seconds (`QUICK`: a
fraction of an epoch per phase, fewer and shorter rounds), a smoke test of the benchmark, not a measurement.

Usage: ``python -m benchmarks.throughput [--quick] [--config configs/lenet300_fashion.yaml] [--threads 2]
[--set key=value]`` (also ``sparsetrain bench throughput``). Results go to ``<out>/throughput-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import OUTPUT_DIR, write_json
from sparsetrain.argtypes import CommandParser, nonnegative_float, out_folder, positive_int

PROG = "python -m benchmarks.throughput"  # the usage line's command; `sparsetrain bench throughput` passes its own
DEFAULT_CONFIG = "configs/lenet300_fashion.yaml"
EDGE = 0.1  # first / last fraction of a phase's steps
# what the benchmark's runs leave out: the end of `run` would export in every format and time the latency table
SKIPPED = ["deploy.formats=[]", "deploy.compact=false", "deploy.latency=false", "report.plots=false",
           "report.accuracy_curve=false"]
QUICK = {"epochs": 0.25, "rounds": 3, "round_steps": 20}  # --quick: seconds (117 steps per phase of lenet300)
QUICK_LOG_EVERY = 5  # --quick logs a step window every 5 steps: a short phase still has first and last windows


def window_rates(lines: list[dict], phase: str) -> dict[str, float]:
    """Steps/s (wall) and CPU ms per step over the first and last `EDGE` of one phase's logged windows."""
    rows = [row for row in lines if row.get("phase") == phase and "step_time_ms" in row]
    if not rows:
        raise ValueError(f"benchmark: no timed steps of phase {phase} in metrics.jsonl")
    total, previous, windows = rows[-1]["step"], 0, []
    for row in rows:
        windows.append((row["step"], row["step"] - previous, row["step_time_ms"], row["cpu_time_ms"]))
        previous = row["step"]

    def rate(chosen: list[tuple]) -> tuple[float, float]:
        steps = sum(w[1] for w in chosen)
        return 1e3 * steps / sum(w[1] * w[2] for w in chosen), sum(w[1] * w[3] for w in chosen) / steps

    first = rate([w for w in windows if w[0] - w[1] < EDGE * total])
    last = rate([w for w in windows if w[0] > (1 - EDGE) * total])
    return {"phase": phase, "steps": total, "first_steps_per_s": first[0], "last_steps_per_s": last[0],
            "ratio": last[0] / first[0], "first_cpu_ms": first[1], "last_cpu_ms": last[1],
            "cpu_ratio": first[1] / max(last[1], 1e-9)}


def measure_drift(cfg_path: str, overrides: list[str], phases: list[str]) -> list[dict]:
    """Run `phases` of the recipe in a temporary run directory and read back its step timings."""
    from sparsetrain.config import load_config
    from sparsetrain.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="sparsetrain-throughput-") as tmp:
        cfg = load_config(cfg_path, [*SKIPPED, *overrides, f"out_dir={tmp}", "resume=false",
                                     "tracking.mode=disabled"])
        run_pipeline(cfg, phases)
        lines = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return [window_rates(lines, phase) for phase in phases]


def sparsetrain_step(cfg_path: str, overrides: list[str], out_dir: str) -> tuple[Callable[[], None], dict]:
    """One dense training step of sparsetrain's own loop (`engine.loop`), on the recipe's model and data."""
    from sparsetrain.config import load_config
    from sparsetrain.engine.batches import iterate_micro_batches
    from sparsetrain.engine.deepspeed_setup import GradientHooks, build_engine
    from sparsetrain.engine.finite import FiniteGuard
    from sparsetrain.engine.loop import RunContext, _agree, _one_step  # the loop's own step, not a copy
    from sparsetrain.pipeline import Pipeline
    from sparsetrain.pruning.masks import prunable_parameters

    cfg = load_config(cfg_path, [*overrides, f"out_dir={out_dir}", "resume=false", "tracking.mode=disabled"])
    pipeline = Pipeline(cfg)
    pipeline.open()
    ctx: RunContext = pipeline.ctx
    model = pipeline.model_from(None)
    prunable = prunable_parameters(model)
    regularizer = pipeline.regularizer_for("dense", model)
    hooks = GradientHooks(regularizer, None)
    engine = build_engine(cfg, model, ctx.dist.world_size, cfg.optim.lr, 10**9, prunable, hooks)
    regularizer.bind(prunable_parameters(engine.module), None)
    plan = ctx.plan("dense")
    batches = iterate_micro_batches(ctx.train_set, plan, 0, 10**9, cfg.data.workers())
    params = prunable_parameters(engine.module)
    guard = FiniteGuard(ctx.dist.device)
    engine.train()
    done = 0

    def step() -> None:  # the loop's per-step work: the step, its non-finite record, the stop/non-finite check
        nonlocal done
        done += 1
        _one_step(ctx, engine, hooks, params, batches, plan.grad_accum, guard)
        guard.end_step(done)
        _agree(ctx, guard, boundary=False)

    setup = {"model": cfg.model.name, "batch": cfg.train.batch_size, "optimizer": cfg.optim.name,
             "alpha2": cfg.regularizer.alpha2, "lr": cfg.optim.lr, "inputs": ctx.train_set, "pipeline": pipeline}
    return step, setup


def plain_step(setup: dict) -> Callable[[], None]:
    """The same training in a plain torch + timm loop: Adam with weight decay 2·α2 on the conv/linear kernels."""
    from sparsetrain.pruning.masks import prunable_parameters

    pipeline, data = setup["pipeline"], setup["inputs"]
    model = pipeline.new_model()  # timm.create_model with the same name, arguments and seed
    kernels = set(map(id, prunable_parameters(model).values()))
    decayed = [p for p in model.parameters() if id(p) in kernels]
    rest = [p for p in model.parameters() if id(p) not in kernels]
    optimizer = torch.optim.Adam([{"params": decayed, "weight_decay": 2 * setup["alpha2"]},
                                  {"params": rest, "weight_decay": 0.0}], lr=setup["lr"])
    batch, state = setup["batch"], {"order": torch.randperm(len(data)), "at": 0}
    model.train()

    def step() -> None:
        if state["at"] + batch > len(data):
            state["order"], state["at"] = torch.randperm(len(data)), 0
        x, y = data.__getitems__(state["order"][state["at"]:state["at"] + batch].tolist())
        state["at"] += batch
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def measure_overhead(steps: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict[str, dict]:
    """Median steps/s (wall) and CPU ms per step of each loop, measured in alternating rounds."""
    for step in steps.values():
        for _ in range(max(3, per_round // 5)):
            step()
    walls: dict[str, list[float]] = {name: [] for name in steps}
    cpus: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                step()
            walls[name].append(per_round / (time.perf_counter() - wall0))
            cpus[name].append(1e3 * (time.process_time() - cpu0) / per_round)
    return {name: {"steps_per_s": statistics.median(walls[name]), "cpu_ms": statistics.median(cpus[name])}
            for name in steps}


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    """The arguments; `prog` is the command that the usage line and errors name (`sparsetrain bench throughput`
    from the CLI)."""
    parser = CommandParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of seconds: --epochs {QUICK['epochs']} --rounds {QUICK['rounds']} "
                        f"--round-steps {QUICK['round_steps']}, a step window logged every {QUICK_LOG_EVERY} "
                        "steps (the flags given win)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="recipe whose model, data and phases are timed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable), e.g. --set train.flush_denormal=false")
    parser.add_argument("--phases", default="dense,sparsify", help="phases of the long run (drift)")
    parser.add_argument("--epochs", type=nonnegative_float,
                        help="epochs of each timed phase (default 20; one epoch of the lenet300 recipe is 468 steps, "
                        "so 20 are about 9,400 per phase; 0 = the recipe's)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    parser.add_argument("--rounds", type=positive_int,
                        help="alternating rounds of the overhead comparison (default 7)")
    parser.add_argument("--round-steps", type=positive_int, help="steps per loop per round (default 200)")
    parser.add_argument("--out", type=out_folder, default=OUTPUT_DIR,
                        help=f"folder for throughput-cpu.json (default {OUTPUT_DIR})")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {"epochs": 20.0, "rounds": 7, "round_steps": 200}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None, prog: str = PROG) -> dict:
    """Runs both measurements, prints them, writes ``<out>/throughput-cpu.json`` and returns the payload.

    Args:
        argv: The arguments after the command (default: `sys.argv[1:]`).
        prog: The command as typed, for the usage line and errors: `python -m benchmarks.throughput` or
            `sparsetrain bench throughput`.
    """
    args = parse_args(argv, prog)
    quick = [f"train.log_every={QUICK_LOG_EVERY}"] if args.quick else []
    overrides = [f"train.threads={args.threads}", "train.device=cpu", *quick, *args.overrides]
    phases = args.phases.split(",")
    lengths = [f"phases.{phase}.epochs={args.epochs}" for phase in phases if args.epochs]
    drift = measure_drift(args.config, [*overrides, *lengths], phases)
    with tempfile.TemporaryDirectory(prefix="sparsetrain-throughput-") as tmp:
        ours, setup = sparsetrain_step(args.config, overrides, tmp)
        loops = measure_overhead({"sparsetrain": ours, "plain": plain_step(setup)}, args.rounds, args.round_steps)
        setup["pipeline"].close()
    ratio = loops["sparsetrain"]["steps_per_s"] / loops["plain"]["steps_per_s"]
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    quick = " (--quick: a smoke test, not a measurement)" if args.quick else ""
    print(f"{args.config} on CPU{quick}, {threads}, {' '.join(args.overrides) or 'no overrides'}; "
          f"{args.epochs:g} epoch(s) per phase; not run: export formats, latency table, plots ({' '.join(SKIPPED)})")
    print(f"{'phase':<10}{'steps':>7}{'first 10% st/s':>16}{'last 10% st/s':>15}{'last/first':>11}"
          f"{'CPU ms first':>14}{'CPU ms last':>13}{'first/last CPU':>16}")
    for row in drift:
        print(f"{row['phase']:<10}{row['steps']:>7}{row['first_steps_per_s']:>16.1f}{row['last_steps_per_s']:>15.1f}"
              f"{row['ratio']:>11.3f}{row['first_cpu_ms']:>14.2f}{row['last_cpu_ms']:>13.2f}{row['cpu_ratio']:>16.3f}")
    print(f"dense step, {setup['model']}, batch {setup['batch']}, {setup['optimizer']}: sparsetrain "
          f"{loops['sparsetrain']['steps_per_s']:.1f} steps/s ({loops['sparsetrain']['cpu_ms']:.2f} CPU ms), "
          f"plain torch + timm {loops['plain']['steps_per_s']:.1f} steps/s ({loops['plain']['cpu_ms']:.2f} CPU ms); "
          f"sparsetrain / plain = {ratio:.3f} (wall), "
          f"{loops['plain']['cpu_ms'] / loops['sparsetrain']['cpu_ms']:.3f} (CPU time)")
    payload = {"config": args.config, "quick": args.quick, "epochs": args.epochs, "threads": args.threads,
               "overrides": args.overrides, "skipped": SKIPPED, "drift": drift,
               "overhead": {**loops, "ratio": ratio, "rounds": args.rounds, "round_steps": args.round_steps}}
    print(f"wrote {write_json(payload, args.out, 'throughput', 'cpu')}")
    return payload


if __name__ == "__main__":
    main()
