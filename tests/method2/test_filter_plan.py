"""`run --dry-run`'s filter plan of a Method 2 run (`pruning.filter_plan`): bounds that the prune phase keeps."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.pipeline import run_pipeline
from sparsetrain.plan import check_model, data_sizes
from sparsetrain.pruning.filter_plan import filter_plan
from sparsetrain.pruning.filters import channel_groups
from sparsetrain.structural.selection import ChannelSelection, _choose, _step, removal_bounds
from tests.method2.test_grad_count import TINY_UNET

PLAN = ["prune.filter_fraction=0.25", "prune.max_filter_fraction=0.75", "prune.round_to=2",
        "phases.sparsify.epochs=1", "phases.finetune.epochs=0", "deepspeed.zero_stage=0"]


@pytest.mark.parametrize(("fraction", "max_fraction", "round_to", "unit_channels"),
                         [(0.0, 0.75, 1, 1), (0.25, 0.75, 8, 1), (0.5, 0.6, 4, 2), (0.125, 0.9, 3, 1)])
def test_bounds_are_the_selection_with_no_unit_and_every_unit_dead(fraction: float, max_fraction: float,
                                                                     round_to: int, unit_channels: int) -> None:
    sel = ChannelSelection(fraction=fraction, max_fraction=max_fraction, round_to=round_to)
    for n in itertools.chain(range(2, 40), (64, 96, 100, 576)):
        scores, none = torch.linspace(1, 2, n), torch.zeros(n, dtype=torch.bool)
        step = _step(round_to, unit_channels)
        fewest = _choose(scores, none, none, sel, step)[1][2]
        most = _choose(scores, ~none, none, sel, step)[1][2]
        assert removal_bounds(n, sel, unit_channels) == (fewest, most), (n, fewest, most)


def test_a_method2_run_removes_within_its_dry_run_plan(tmp_path, capsys: pytest.CaptureFixture) -> None:
    overrides = [*TINY_UNET, *PLAN, f"out_dir={tmp_path / 'run'}"]
    assert main(["run", *overrides, "--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = re.search(r"filter plan \(prune.rule=filters\): (\d+) prunable channel groups of (\d+), ([\d,]+) "
                        r"filters\n  the prune phase removes at least ([\d,]+) filters .* at most ([\d,]+) ", out)
    assert summary, out
    cfg = load_config(None, overrides)
    sizes = data_sizes(cfg)
    groups = channel_groups(check_model(cfg, sizes), sizes.input_shape, cfg.prune.grouped_conv)
    plans = filter_plan(groups, cfg.prune)
    assert [int(x.replace(",", "")) for x in summary.groups()] == [
        len(plans), len(groups), sum(p.units for p in plans), sum(p.fewest for p in plans),
        sum(p.most for p in plans)]
    assert any(p.fewest < p.most for p in plans) and any(p.fewest > 0 for p in plans), plans

    report = run_pipeline(cfg)
    rows = report["kept_filters"]
    assert [(r["group"], r["total"]) for r in rows] == [(p.group, p.units) for p in plans]
    for row, plan in zip(rows, plans, strict=True):
        assert plan.fewest <= row["total"] - row["kept"] <= plan.most, (row, plan)
