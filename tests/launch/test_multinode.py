"""Two Slurm nodes on one machine: a 2-node × 1-task job equals the same job as 1 node × 2 tasks.

The cluster is `launch/local_slurm.sh start --nodes 2` (what `.ci/run` starts): each node's slurmd runs in its
own network and UTS namespace, with its own address on a bridge and its own host name. The two ranks of the
2-node job are therefore on two hosts that reach each other only over that bridge, through the rendezvous
launch/job.py derives from the job's node list (MASTER_ADDR = first node, resolved through /etc/hosts) and gloo's
connections to the address each rank's host name resolves to. Both jobs go through the real CLI
(`sparsetrain launch --cluster slurm --wait`: launch/submit.py, submitit, sbatch, srun, launch/job.py) and are
failed only when they stop making progress (tests/core/subprocess_runs.py), never for being slow.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.core.subprocess_runs import REPO, STALL_S, clean_env, watch

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]  # may queue behind other jobs

QUICKSTART = REPO / "configs" / "quickstart.yaml"
# ~55 optimizer steps under ZeRO-2 (reduce-scatter and all-gather cross the hosts), one thread per rank.
TINY = ["phases.dense.epochs=0.5", "phases.sparsify.epochs=1.5", "phases.finetune.epochs=0.5",
        "deepspeed.zero_stage=2", "train.threads=1", "launch.time_min=20", "launch.cpus_per_task=1",
        "deploy.formats=[]", "deploy.latency=false",  # exports and latency have their own tests (tests/deploy)
        "tracking.mode=disabled"]  # and W&B (quickstart's offline mode, ~2-3 s a run): tests/core, test_slurm.py
# Same ranks, same data, same collectives: only the transport differs (bridge vs loopback), so the results
# agree to float rounding (they are bitwise equal here).
ATOL, RTOL = 1e-7, 1e-6


def _slurmd_namespaces(node: str) -> tuple[str, str]:
    """(network, UTS) namespace of the slurmd serving `node`, from its pid file in Slurm's own config."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    pattern = re.search(r"^SlurmdPidFile\s*=\s*(\S+)", config, re.M).group(1)
    pid = Path(pattern.replace("%n", node).replace("%h", node)).read_text().strip()
    try:
        return os.readlink(f"/proc/{pid}/ns/net"), os.readlink(f"/proc/{pid}/ns/uts")
    except PermissionError:
        pytest.skip("reading slurmd's namespaces needs root")


def test_nodes_are_separate_hosts(two_node_slurm: list[str]) -> None:
    nodes = two_node_slurm[:2]
    namespaces = [_slurmd_namespaces(node) for node in nodes]
    here = (os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/uts"))
    assert len({ns[0] for ns in namespaces} | {here[0]}) == 3, f"network namespaces {namespaces}, here {here}"
    assert len({ns[1] for ns in namespaces} | {here[1]}) == 3, f"UTS namespaces {namespaces}, here {here}"
    addresses = [socket.gethostbyname(node) for node in nodes]
    assert len(set(addresses)) == 2 and not any(a.startswith("127.") for a in addresses), addresses


def _cancel_jobs_of(out_dir: Path) -> None:
    ids = {path.name.split("_")[0] for path in (out_dir / "slurm").glob("*_submitted.pkl")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, check=False)


def _launch(out_dir: Path, layout: list[str]) -> None:
    """`sparsetrain launch ... --cluster slurm --wait` to the end; fails on a stall (no output anywhere)."""
    command = [sys.executable, "-m", "sparsetrain", "launch", str(QUICKSTART), "--cluster", "slurm", "--wait",
               *TINY, *layout, f"out_dir={out_dir}"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "output"
        try:
            with log.open("w") as f:
                proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=f, stderr=f, text=True,
                                        start_new_session=True)
                outcome = watch(proc, [log, out_dir])
        finally:
            _cancel_jobs_of(out_dir)
        output = log.read_text()
    assert outcome == "exited", f"{' '.join(layout)}: {outcome} (no output for {STALL_S:.0f} s):\n{output[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(layout)} failed; logs in {out_dir / 'slurm'}:\n{output[-3000:]}"


def _rank_hosts(out_dir: Path) -> dict[int, str]:
    """Global rank -> host name, from submitit's first line in each task's log."""
    hosts = {}
    for path in (out_dir / "slurm").glob("*_log.out"):
        match = re.search(r"hostname=([^,]+),.*global_rank=(\d+)", path.read_text())
        assert match, f"{path}: no submitit job environment line"
        hosts[int(match.group(2))] = match.group(1)
    return hosts


@pytest.fixture(scope="module")
def one_node_run(two_node_slurm: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("nodes1") / "run"
    _launch(out_dir, ["launch.nodes=1", "launch.tasks_per_node=2"])
    return out_dir


def test_two_node_job_equals_one_node_job(two_node_slurm: list[str], one_node_run: Path,
                                          tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    _launch(out_dir, ["launch.nodes=2", "launch.tasks_per_node=1"])

    hosts, one_node_hosts = _rank_hosts(out_dir), _rank_hosts(one_node_run)
    assert sorted(hosts) == [0, 1] and hosts[0] != hosts[1], f"2-node job ran on {hosts}"
    assert set(hosts.values()) <= set(two_node_slurm), f"{hosts} are not cluster nodes {two_node_slurm}"
    assert len(set(one_node_hosts.values())) == 1, f"1-node job ran on {one_node_hosts}"
    report = json.loads((out_dir / "report.json").read_text())
    reference = json.loads((one_node_run / "report.json").read_text())
    assert report["world_size"] == reference["world_size"] == 2
    got = load_file(str(out_dir / "weights" / "finetune.safetensors"))
    want = load_file(str(one_node_run / "weights" / "finetune.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        diff = (got[name] - want[name]).abs().max().item()
        assert torch.allclose(got[name], want[name], atol=ATOL, rtol=RTOL), f"{name}: max |diff| {diff:.3g}"
    assert report["sparsity"] == reference["sparsity"]
