"""Kill a run mid-phase (SIGKILL), re-run the same command: the result equals an uninterrupted run."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sparsetrain.engine import preemption
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides
from tests.core.subprocess_runs import (
    interrupt_when_printed,
    kill_at_logged_step,
    kill_rank_at_logged_step,
    run_cli,
    run_command,
    signal_at_logged_step,
)
from tests.helpers.compare import assert_same_weights
from tests.helpers.wandb_log import assert_wandb_matches_metrics, read_runs

EXTRA = ("phases.sparsify.epochs=8", "train.checkpoint_every=10", "tracking.mode=offline")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out_dir of the uninterrupted run (EXTRA, a step log row per step) that the resume tests compare with:
    `sparsetrain run`'s pipeline in this process (a process of its own would only add ~5 s of imports)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_pipeline(tiny_config(out, *EXTRA, "train.log_every=1"))
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(out_dir, a copy of it) of a run (EXTRA, a row per step) SIGKILLed mid-sparsify at logged step 45, 5 steps
    after its step-40 checkpoint (W&B's unwritten buffer is lost with the process): `resumed` continues the first;
    a test that damages the run takes a copy of the second (out_dir may change when a run resumes)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    kill_at_logged_step(tiny_overrides(out, *EXTRA, "train.log_every=1"), out, 45)
    pristine = out.parent / "copy"
    shutil.copytree(out, pristine)
    return out, pristine


@pytest.fixture(scope="module")
def resumed(killed: tuple[Path, Path]) -> Path:
    """out_dir of the killed run after the same command continued it to the end."""
    out = killed[0]
    result = run_cli(tiny_overrides(out, *EXTRA, "train.log_every=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _steps(out: Path) -> list[int]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line["global_step"] for line in lines if "loss" in line and "event" not in line]


def _step_seconds(out: Path, phase: str, up_to: int = 10**9, after: int = 0) -> float:
    """Seconds of the logged training steps of `phase` in (after, up_to] (metrics.jsonl's step_time_ms, checkpoint
    saves excluded; one row per step: train.log_every=1)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(row["step_time_ms"] for row in rows if row.get("phase") == phase and "step_time_ms" in row
               and after < row["step"] <= up_to) / 1e3


def test_a_finished_run_keeps_no_checkpoint_files(uninterrupted: Path) -> None:
    """Trial 16: checkpoints/ kept DeepSpeed's `latest` (naming a removed step folder), zero_to_fp32.py and
    zero_to_torch.py after the run; README: mid-phase checkpoints last only while a phase runs. (The run checkpoints
    every 10 steps: EXTRA.)"""
    left = uninterrupted / "checkpoints"
    assert not left.exists(), sorted(p.name for p in left.iterdir())


def test_clearing_the_last_phase_removes_deepspeeds_zero_files(tmp_path: Path) -> None:
    """Under ZeRO >= 1 DeepSpeed's save_checkpoint also writes zero_to_fp32.py and zero_to_torch.py beside `latest`:
    once the finished phase's step folders are dropped, checkpoints/ goes with them."""
    import torch

    from sparsetrain.engine.checkpoint import Checkpointer
    from sparsetrain.engine.distributed import DistInfo

    ckpt = tmp_path / "checkpoints"
    written = run_command([sys.executable, "-m", "tests.helpers.zero_checkpoint", "-", str(ckpt), "3",
                           "sparsify-step0000010"])
    assert written.returncode == 0, written.stderr[-3000:]
    assert {p.name for p in ckpt.iterdir()} == {"latest", "sparsify-step0000010", "zero_to_fp32.py", "zero_to_torch.py"}
    Checkpointer(tmp_path, DistInfo(0, 1, 0, torch.device("cpu")), keep=2).clear_phase("sparsify")
    assert not ckpt.exists(), sorted(p.name for p in ckpt.iterdir())


def test_kill_and_resume_matches_uninterrupted_run(killed: tuple[Path, Path], resumed: Path,
                                                  uninterrupted: Path) -> None:
    interrupted, reference = resumed, uninterrupted
    state = json.loads((killed[1] / "state.json").read_text())  # as the kill left it
    assert state["current"]["phase"] == "sparsify" and "sparsify" not in state["completed"]
    assert_same_weights(load_file(str(reference / "weights" / "finetune.safetensors")),
                        load_file(str(interrupted / "weights" / "finetune.safetensors")), atol=1e-6, rtol=1e-6,
                        label="resumed vs uninterrupted")
    steps = _steps(interrupted)
    assert steps == sorted(set(steps)), "the step log has repeated steps"
    assert steps == _steps(reference), "the step log differs from the uninterrupted run's (gaps or repeats)"
    run_ids = {p.name.split("-")[-1] for p in (interrupted / "wandb").glob("offline-run-*")}
    assert run_ids == {(interrupted / "wandb_run_id.txt").read_text().strip()}, "resume started a new W&B run"
    assert_wandb_matches_metrics(interrupted)


def test_wandb_holds_every_step_after_a_hard_kill_mid_phase(killed: tuple[Path, Path], resumed: Path) -> None:
    """Issue 10, fault 5: a process group killed between checkpoints loses W&B's unwritten buffer (metrics.jsonl
    had 198 steps, W&B 150); after the resume W&B holds each step of metrics.jsonl once, with its values. (The run
    of `killed` is killed 5 steps after a checkpoint.)"""
    out = resumed
    assert _steps(killed[1])[-1] >= 45
    steps = _steps(out)
    assert steps == list(range(1, len(steps) + 1)), "the step log has gaps or repeats"
    assert_wandb_matches_metrics(out)
    assert len(read_runs(out)) == 2, "expected the killed segment and the resumed one"


def test_truncated_checkpoint_gives_clear_error(tmp_path: Path, killed: tuple[Path, Path]) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed[1], out)
    tag = json.loads((out / "state.json").read_text())["current"]["tag"]
    model_file = next((out / "checkpoints" / tag).glob("mp_rank_00_model_states.pt"))
    model_file.write_bytes(model_file.read_bytes()[:100])
    result = run_cli(tiny_overrides(out, *EXTRA))
    assert result.returncode == 3, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: resume: checkpoint {out / 'checkpoints' / tag} is unreadable"), last


def test_corrupt_state_file_gives_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text('{"completed": {"dense"')
    result = run_cli(tiny_overrides(out))
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: resume: {out / 'state.json'} is corrupt")


def test_ctrl_c_checkpoints_at_the_next_step_and_resumes_exactly(tmp_path: Path, uninterrupted: Path) -> None:
    """Ctrl-C (SIGINT to the process group) checkpoints at the next step like SIGTERM, but is reported as an
    interruption: one `interrupted:` line naming the checkpoint and the command that resumes, exit 130, no
    KeyboardInterrupt traceback; that command (without resume=false, which would start over) continues from the
    checkpoint and matches an uninterrupted run."""
    out, reference = tmp_path / "interrupted", uninterrupted
    overrides = tiny_overrides(out, *EXTRA, "train.log_every=1", "train.checkpoint_every=1000")
    result = signal_at_logged_step([*overrides, "resume=false"], out, 15, signal.SIGINT)
    assert result.returncode == 130, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr[-3000:]
    stop = re.fullmatch(r"interrupted: stopped with a checkpoint at sparsify step (\d+); resume with `(.*)`", lines[-1])
    assert stop, lines[-1]
    state = json.loads((out / "state.json").read_text())
    assert state["current"]["step"] == int(stop[1]) >= 15, "no checkpoint at the interrupted step"
    # the checkpoint records the phase's wall time so far: at least its logged steps' (log_every=1: a row per step)
    before = state["current"]["elapsed_s"]
    assert before >= _step_seconds(out, "sparsify", up_to=int(stop[1])) > 0, before
    command = shlex.split(stop[2])
    # started as `python -m sparsetrain` (cli_command): the printed command starts the same way, pasteable as is
    assert command[:4] == [sys.executable, "-m", "sparsetrain", "run"] and command[4:] == overrides, command
    assert run_cli(command[4:]).returncode == 0
    # report.json's wall time of the resumed phase adds the resumed attempt to the time before the interrupt
    wall = json.loads((out / "report.json").read_text())["wall_time_s"]["sparsify"]
    assert wall >= before + _step_seconds(out, "sparsify", after=int(stop[1])), (wall, before)
    assert_same_weights(load_file(str(reference / "weights" / "finetune.safetensors")),
                        load_file(str(out / "weights" / "finetune.safetensors")), atol=1e-6, rtol=1e-6,
                        label="after Ctrl-C and resume vs uninterrupted")
    assert _steps(out) == _steps(reference), "steps lost or repeated around the interrupt"


def test_sigterm_stop_stays_a_preemption(tmp_path: Path) -> None:
    """SIGTERM (scancel, a cluster's preemption) keeps its exit code 3, which requeues rely on; its one line names the
    checkpoint's step (state.json's) and gives the command that resumes by hand (it was `error: ...` with no resume
    hint); outside a Slurm job it does not mention Slurm's requeue."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, *EXTRA, "train.log_every=1")
    result = signal_at_logged_step(overrides, out, 15, signal.SIGTERM)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    # outside a Slurm job the line does not mention Slurm (tests/launch/test_slurm.py checks the line inside one)
    stop = re.fullmatch(r"preempted: stopped with a checkpoint at sparsify step (\d+); resume with `(.*)`", last)
    assert stop, last
    assert json.loads((out / "state.json").read_text())["current"]["step"] == int(stop[1]) >= 15
    assert shlex.split(stop[2]) == [sys.executable, "-m", "sparsetrain", "run", *overrides], stop[2]


def test_ctrl_c_after_training_quits_at_once_with_the_resume_command(tmp_path: Path) -> None:
    """One Ctrl-C while the finished run times its latency table (no training step left to stop at, and a re-run
    redoes the table) quits at once: one `interrupted:` line saying where a re-run continues, exit 130, no
    traceback (it used to be acknowledged and then ignored, the run ending with exit 0)."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, "phases.sparsify.epochs=1", "deploy.latency=true", "deploy.latency_repeats=100000",
                               "deploy.latency_memory=false")  # peak memory (child processes) is measured first
    result = interrupt_when_printed(overrides, "[latency] torch cpu batch 1:")
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"interrupted: quit at once; a re-run continues from the end of the finetune phase; resume with "
                    f"`{shlex.join([sys.executable, '-m', 'sparsetrain', 'run', *overrides])}`"), last


def test_ctrl_c_after_training_raises_at_once() -> None:
    """After the last training step (`after_training`) the first SIGINT raises KeyboardInterrupt at once, and one
    still pending from the last phase raises on entry; SIGTERM's stop lets it finish."""
    preemption.clear()
    try:
        with preemption.after_training(), pytest.raises(KeyboardInterrupt):
            preemption.interrupt()
        preemption.clear()
        preemption.interrupt()  # during the last phase's final evaluation: a stop with nothing left to stop at
        with pytest.raises(KeyboardInterrupt), preemption.after_training():
            pass
        preemption.clear()
        preemption.request_stop()  # SIGTERM
        with preemption.after_training():
            pass
    finally:
        preemption.clear()


def test_second_ctrl_c_quits_at_once() -> None:
    """The first SIGINT only asks for the stop (marked as an interruption, not a preemption); a second one while it is
    pending raises KeyboardInterrupt (the CLI prints one `interrupted:` line, exit 130)."""
    preemption.clear()
    try:
        preemption.request_stop()
        assert not preemption.interrupted(), "SIGTERM's stop is not an interruption"
        preemption.clear()
        preemption.interrupt()
        assert preemption.stop_requested() and preemption.interrupted()
        with pytest.raises(KeyboardInterrupt):
            preemption.interrupt()
    finally:
        preemption.clear()


LAUNCHERS = {  # the env a launcher gives each rank -> the command that resumes (after `resume with `)
    "torchrun, 1 node": ({"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"},
                         "`{torchrun} --nproc_per_node=2 -m sparsetrain run {args}`"),
    "torchrun, 3 nodes": ({"TORCHELASTIC_RUN_ID": "job7", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "12"},
                          "`{torchrun} --nnodes=3 --nproc_per_node=4 -m sparsetrain run {args}` on each of the 3 "
                          "nodes"),
    "deepspeed, 1 node": ({"LOCAL_SIZE": "2", "CROSS_SIZE": "1", "WORLD_SIZE": "2"},
                          "`{deepspeed} --num_gpus=2 --module sparsetrain run {args}`"),
    "deepspeed, 2 nodes": ({"LOCAL_SIZE": "8", "CROSS_SIZE": "2", "WORLD_SIZE": "16"},
                           "`{deepspeed} --num_nodes=2 --num_gpus=8 --module sparsetrain run {args}` on each of the 2 "
                           "nodes"),
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_resume_command_under_a_launcher_starts_as_many_ranks(monkeypatch: pytest.MonkeyPatch, launcher: str,
                                                               tmp_path: Path) -> None:
    """Under torchrun or DeepSpeed's launcher the `interrupted:`/`preempted:` line gives the launcher command with the
    same ranks per node (a rank's own `python -m sparsetrain` would resume on 1 rank); `resume=` is left out."""
    from sparsetrain.cli import resume_command

    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "CROSS_SIZE", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    env, expected = LAUNCHERS[launcher]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["/somewhere/sparsetrain/__main__.py", "run"])  # how torchrun starts a rank
    bin_dir = Path(sys.executable).parent
    assert all((bin_dir / tool).exists() for tool in ("torchrun", "deepspeed")), "the environment's launchers"
    args = ["configs/quickstart.yaml", "phases.sparsify.epochs=100", "out_dir=runs/a b"]
    # the venv not activated (the launchers not on PATH): the environment's own script, by its path from the cwd
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(bin_dir.parent.parent)
    tools = {tool: f"{bin_dir.parent.name}/{bin_dir.name}/{tool}" for tool in ("torchrun", "deepspeed")}
    assert resume_command([*args, "resume=false"]) == expected.format(**tools, args=shlex.join(args))
    monkeypatch.setenv("PATH", str(bin_dir))  # activated: the short name
    assert resume_command(args) == expected.format(torchrun="torchrun", deepspeed="deepspeed", args=shlex.join(args))


ARGS = ["configs/quickstart.yaml", "out_dir=runs/a b", "resume=false"]
TORCHRUN = {"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "MASTER_PORT": "29533"}
RECORDED = {  # the env of a rank, its parents' command lines (nearest first) -> the launcher flags printed after it
    "torchrun as a module, port": (TORCHRUN, [["/v/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node=2",
                                               "--master_port", "29533", "-m", "sparsetrain", "run", *ARGS]],
                                   ["--nproc_per_node=2", "--master_port", "29533", "-m", "sparsetrain"]),
    "torchrun script, rendezvous on 2 nodes": (
        {"TORCHELASTIC_RUN_ID": "job7", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8", "MASTER_PORT": "41234"},
        [["/v/bin/python3", "/v/bin/torchrun", "--nnodes=2", "--nproc-per-node=4", "--rdzv_backend=c10d",
          "--rdzv_endpoint=node1:29400", "--rdzv_id=job7", "--max_restarts=3", "--module", "sparsetrain", "run",
          *ARGS]],
        ["--nnodes=2", "--nproc-per-node=4", "--rdzv_backend=c10d", "--rdzv_endpoint=node1:29400", "--rdzv_id=job7",
         "--max_restarts=3", "--module", "sparsetrain"]),
    "deepspeed: its runner is the grandparent": (
        {"LOCAL_SIZE": "2", "CROSS_SIZE": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29533"},
        [["/v/bin/python3", "-u", "-m", "deepspeed.launcher.launch", "--world_info=eyJsb2NhbGhvc3QiOiBbMCwgMV19",
          "--master_addr=127.0.0.1", "--master_port=29533", "--module", "--enable_each_rank_log=None", "sparsetrain",
          "run", *ARGS],
         ["/v/bin/python3", "/v/bin/deepspeed", "--num_gpus=2", "--master_port", "29533", "--module", "sparsetrain",
          "run", *ARGS]],
        ["--num_gpus=2", "--master_port", "29533", "--module", "sparsetrain"]),
    "unreadable: from the env, static rendezvous": (TORCHRUN, [["/bin/bash", "./train.sh"]],
                                                    ["--nproc_per_node=2", "--master_port=29533", "-m", "sparsetrain"]),
    "unreadable: from the env, standalone": ({**TORCHRUN, "TORCHELASTIC_RUN_ID": "3f2a"}, [],
                                             ["--nproc_per_node=2", "-m", "sparsetrain"]),  # a port of its choosing
    "another launch in the parent": (TORCHRUN, [["/v/bin/torchrun", "--nproc_per_node=2", "-m", "sparsetrain",
                                                 "run", "other.yaml"]],
                                     ["--nproc_per_node=2", "--master_port=29533", "-m", "sparsetrain"]),
}


@pytest.mark.parametrize("case", list(RECORDED))
def test_resume_command_keeps_every_launcher_flag(case: str) -> None:
    """torchrun / DeepSpeed flags such as --master_port 29533, --rdzv_* or --max_restarts were dropped from the resume
    command (it rebuilt only the ranks per node and nodes): they come from the launcher's own command line, as given;
    only when that cannot be read from the launcher's variables (MASTER_PORT where it is the given port)."""
    from sparsetrain.cli import launcher_prefix

    env, ancestors, flags = RECORDED[case]
    prefix, _ = launcher_prefix(ARGS, env, ancestors)
    assert Path(prefix[0]).name in ("torchrun", "deepspeed") or prefix[1] == "-m", prefix
    assert prefix[-len(flags):] == flags and len(prefix) - len(flags) in (1, 3), prefix  # 3: python -m module


def test_resume_command_of_a_2_rank_torchrun_run_repeats_its_flags(tmp_path: Path) -> None:
    """A real torchrun run on 2 ranks with --master_port, stopped by SIGTERM (torchrun passes it on): the `preempted:`
    line gives torchrun with the flags it was started with, and that command continues the run to its end."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, "phases.sparsify.epochs=4", "train.log_every=1", "train.checkpoint_every=1000")
    result = signal_at_logged_step(overrides, out, 5, signal.SIGTERM, nproc=2)
    launched = result.args[result.args.index("torch.distributed.run") + 1:result.args.index("run")]
    stops = [re.fullmatch(r"preempted: stopped with a checkpoint at sparsify step \d+; resume with `(.*)`", line)
             for line in result.stderr.splitlines()]
    stops = [stop for stop in stops if stop]
    assert len(stops) == 1, result.stderr[-3000:]
    command = shlex.split(stops[0][1])
    assert Path(command[0]).name == "torchrun" and command[1:] == [*launched, "run", *overrides], command
    assert any(flag.startswith("--master_port=") for flag in launched), launched
    resumed = run_command(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "finetune" in json.loads((out / "state.json").read_text())["completed"]


def test_a_killed_peer_rank_gives_one_line_with_the_checkpoint_and_the_resume_command(tmp_path: Path) -> None:
    """Trial 26, finding 3: `kill -9` of rank 1 left rank 0 dying in a ~100-line gloo traceback (`Connection reset by
    peer`, twice: plain and `[rank0]:`-prefixed) with no sparsetrain line. Now rank 0 says in one line that the
    process group broke, where the last checkpoint is and the command that resumes; the traceback goes to
    out_dir/error-rank0.log, and that command finishes the run."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, "phases.sparsify.epochs=4", "train.log_every=1", "train.checkpoint_every=3")
    result = kill_rank_at_logged_step(overrides, out, 7, rank=1)
    lines = [line for line in result.stderr.splitlines() if "peer lost:" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Connection reset by peer" not in result.stderr.replace(lines[0], ""), result.stderr[-3000:]
    assert "[rank0]:" not in result.stderr, result.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())["current"]
    stop = re.fullmatch(r"peer lost: the process group broke \((.+)\): another rank died or stopped; the last "
                        r"checkpoint is at (\w+) step (\d+) in (\S+); resume with `(.*)` \(traceback: (\S+)\)",
                        lines[0])
    assert stop, lines[0]
    assert stop[1].startswith("gloo: ") and "pair.cc" not in stop[1], stop[1]
    assert (stop[2], int(stop[3]), Path(stop[4])) == (state["phase"], state["step"], out / "checkpoints"), lines[0]
    assert Path(stop[6]) == out / "error-rank0.log" and "Traceback" in Path(stop[6]).read_text()
    resumed = run_command(shlex.split(stop[5]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "finetune" in json.loads((out / "state.json").read_text())["completed"]


def test_the_stop_lines_come_from_rank_0_only(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """Every rank stops alike: the `interrupt:` acknowledgement and the `interrupted:`/`preempted:` line are rank 0's,
    each a whole line (two ranks writing at once ran theirs together)."""
    from sparsetrain.cli import _interrupted, _preempted

    for rank, says in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        preemption.clear()
        try:
            preemption.interrupt()
        finally:
            preemption.clear()
        assert _interrupted("stopped with a checkpoint at sparsify step 3", ["x=1"]) == 130
        assert _preempted("sparsify step 3", ["x=1"], 3) == 3
        err = capfd.readouterr().err.splitlines()
        starts = [line.split(" ", 1)[0] for line in err]
        assert starts == (["interrupt:", "interrupted:", "preempted:"] if says else []), f"rank {rank}: {err}"
