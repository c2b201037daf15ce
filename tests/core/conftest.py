"""Tiny, fast pipeline configs for the core tests (digits + LeNet-300-100, a few dozen steps per phase)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsetrain.config import RunConfig, load_config

TINY = [
    "data.source=digits", "model.name=lenet300_100", "train.batch_size=64", "train.log_every=5",
    "train.checkpoint_every=10", "phases.dense.enabled=false", "phases.sparsify.epochs=2",
    "phases.finetune.epochs=1", "regularizer.alpha0=2e-4", "regularizer.beta=20", "prune.rule=global_sparsity",
    "prune.sparsity=0.8", "tracking.mode=disabled", "train.threads=1",
    "deploy.formats=[]", "deploy.latency=false", "deploy.compact=false",  # exports, latency: tests/deploy
    "report.plots=false",  # ~1 s of matplotlib per run; a test that reads a PNG passes report.plots=true
]


def tiny_overrides(out_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"out_dir={out_dir}", *extra]


def tiny_config(out_dir: Path, *extra: str) -> RunConfig:
    return load_config(None, tiny_overrides(out_dir, *extra))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
