"""What `sparsetrain launch` says about a submitted job: its name, as squeue shows it, and its log files.

Fresh-user trial 22: every job read `sparsetr` in squeue (the default name `sparsetrain-<out_dir name>` cut by
squeue's 8-character NAME column) and launch did not print the name; the `follow it:` line named `_log.err`, the
progress, while the final table is in `_log.out`. Real local Slurm cluster, a held job.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetrain.config.loader import save_resolved
from tests.core.conftest import tiny_config
from tests.launch.cli_runs import launch_in_process

HELD = 'launch.extra_sbatch=["--hold"]'


def _recipe(out_dir: Path) -> str:
    """A tiny digits recipe (the core tests' TINY settings) into `out_dir`, written next to it."""
    recipe = out_dir.parent / f"{out_dir.name}.yaml"
    save_resolved(tiny_config(out_dir), recipe)
    return str(recipe)


@pytest.fixture
def held(slurm_cluster: None, tmp_path: Path) -> Iterator[tuple[int, str, str, Path]]:
    """`sparsetrain launch` of a held job into out_dir `qs2`: (exit code, stdout, stderr, out_dir)."""
    out_dir = tmp_path / "qs2"
    code, out, err = launch_in_process([_recipe(out_dir), "--cluster", "slurm", HELD])
    try:
        yield code, out, err, out_dir
    finally:
        match = re.search(r"submitted job (\d+)", out)
        if match:
            subprocess.run(["scancel", match.group(1)], capture_output=True, check=False)


@pytest.mark.slurm
def test_launch_names_the_job_after_its_out_dir_first(held: tuple[int, str, str, Path]) -> None:
    """squeue shows `qs2-spar` (was `sparsetr` for every job); launch prints the whole name."""
    code, out, err, out_dir = held
    assert code == 0, err
    job_id = re.match(r"submitted job (\d+) \(name qs2-sparsetrain, 1 rank, cluster=slurm\); logs in ", out).group(1)
    queue = subprocess.run(["squeue", "-j", job_id], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^\s*{job_id}\s+\S+\s+qs2-spar\s", queue, re.M), queue
    named = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%j"], capture_output=True, text=True, check=True)
    assert named.stdout.strip() == "qs2-sparsetrain"


@pytest.mark.slurm
def test_follow_line_names_the_progress_log_and_the_file_with_the_final_table(
        held: tuple[int, str, str, Path]) -> None:
    """Rank 0's progress goes to `_log.err`, the end-of-run table to `_log.out`: the `follow it:` line names both
    (it named only `_log.err`)."""
    code, out, err, out_dir = held
    assert code == 0, err
    job_id = re.match(r"submitted job (\d+) ", out).group(1)
    log = out_dir / "slurm" / f"{job_id}_0_log"
    assert f"; tail -f {log}.err (rank 0's progress); the final table: {log}.out; when it ends: " in \
        out.splitlines()[1], out


def test_launch_job_name_overrides_the_default(tmp_path: Path) -> None:
    """`launch.job_name` is the name, as before; the default puts the out_dir's name first."""
    recipe = _recipe(tmp_path / "run")
    code, out, err = launch_in_process([recipe, "launch.job_name=mine", "--cluster", "slurm", "--dry-run"])
    assert code == 0 and "#SBATCH --job-name=mine\n" in out, err
    code, out, err = launch_in_process([recipe, "--cluster", "slurm", "--dry-run"])
    assert code == 0 and "#SBATCH --job-name=run-sparsetrain\n" in out, err


@pytest.mark.slurm
@pytest.mark.slow
def test_the_wandb_config_of_a_slurm_run_names_its_job(slurm_cluster: None, tmp_path: Path) -> None:
    """A job run through Slurm records its job id in the W&B config (`slurm.job_id`), with its name."""
    from tests.helpers.wandb_log import read_runs

    out_dir = tmp_path / "wb"
    recipe = out_dir.parent / "wb.yaml"
    save_resolved(tiny_config(out_dir, "phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3",
                              "tracking.mode=offline", "launch.cpus_per_task=1"), recipe)
    code, out, err = launch_in_process([str(recipe), "--cluster", "slurm", "--wait", "--timeout", "300"])
    match = re.search(r"submitted job (\d+)", out)
    if code != 0 and match:
        subprocess.run(["scancel", match.group(1)], capture_output=True, check=False)
    assert code == 0, out + err
    (run,) = read_runs(out_dir)
    assert run["config"]["slurm"]["job_id"] == match.group(1), run["config"].get("slurm")
    assert run["config"]["slurm"]["job_name"] == "wb-sparsetrain"
