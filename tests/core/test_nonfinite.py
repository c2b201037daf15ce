"""Non-finite numbers stop the run at the first bad step, with one line; nothing non-finite is saved or handed on.

Sources covered: a learning rate that makes training diverge (issue 10, fault 1), NaN in the training inputs,
NaN in the test split (a non-finite phase result), and gradients that overflow under ZeRO 2, where DeepSpeed
itself skips the step.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sparsetrain.config import load_config
from sparsetrain.config.schema import DataConfig
from sparsetrain.data.builtin import BUILTIN_LOADERS
from sparsetrain.engine.batches import BatchPlan
from sparsetrain.engine.finite import hint
from sparsetrain.errors import NonFiniteError
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides
from tests.core.subprocess_runs import run_cli

DIVERGING = ("optim.name=sgd", "optim.lr=10", "train.log_every=1", "train.checkpoint_every=5")
STOP_LINE = re.compile(r"error: non-finite (loss|regularizer value|gradient norm) at sparsify step (\d+)/44: "
                       r"lower optim.lr or phases.sparsify.lr \(now 10\), enable deepspeed.gradient_clipping "
                       r"\(e.g. 1.0\), or check the data; nothing after the last good checkpoint \(sparsify step "
                       r"(\d+)\) was saved; a re-run with resume=true continues from it")


def _rows(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _train_rows(out: Path) -> list[dict]:
    return [row for row in _rows(out) if "loss" in row and "event" not in row]


def _assert_all_finite(rows: list[dict]) -> None:
    for row in rows:
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"step {row['global_step']} logged non-finite values {bad}"


def _assert_nothing_handed_on(out: Path) -> None:
    for path in ("weights", "export", "report.json"):
        assert not (out / path).exists(), f"{path} was written although the run diverged"


def test_after_a_nonfinite_stop_the_resume_may_lower_the_penalty_strength(tmp_path: Path) -> None:
    """The strength of the penalty is fixed once its phase has stepped (tests/core/test_run_dir.py), except after a
    stop on NaN/inf, whose error asks to lower it: the checkpoint the resume continues from is marked so, and the
    next checkpoint replaces the mark."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"continues from it$"):
        run_pipeline(tiny_config(out, *DIVERGING))
    current = json.loads((out / "state.json").read_text())["current"]
    assert current["phase"] == "sparsify" and current["stopped"] == "non-finite", current
    run_pipeline(tiny_config(out, *DIVERGING, "optim.lr=0.01", "regularizer.alpha0=1e-4"))
    state = json.loads((out / "state.json").read_text())
    assert "finetune" in state["completed"] and state["current"] is None, state


def test_a_second_divergence_from_the_same_checkpoint_names_the_way_out(tmp_path: Path) -> None:
    """Seen: a resume of a diverged run continues from its last good checkpoint, finite but already blown up, and
    fails again at the same step with the same line ('a re-run with resume=true continues from it'), which does not
    say how to get out. The second stop from that checkpoint says so and names resume=false or a lower lr."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"continues from it$") as first:
        run_pipeline(tiny_config(out, *DIVERGING))
    current = json.loads((out / "state.json").read_text())["current"]
    again = run_cli(tiny_overrides(out, *DIVERGING))
    assert again.returncode == 4, again.stderr[-3000:]
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    same = str(first.value).split("; nothing after the last good checkpoint")[0]  # the same step, cause and hint
    assert errors[0] == (
        f"error: {same}; the run diverged again from its last good checkpoint (sparsify step {current['step']}; "
        "stop 2 from it), so a resume with the same settings repeats this: resume with a lower optim.lr or "
        "phases.sparsify.lr, or start the run over with resume=false"), errors
    assert current.get("nonfinite_stops") == 1, current
    assert json.loads((out / "state.json").read_text())["current"]["nonfinite_stops"] == 2


def test_diverging_run_stops_at_first_bad_step_and_resumes_from_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(tiny_overrides(out, *DIVERGING))
    assert result.returncode == 4, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    match = STOP_LINE.fullmatch(last)
    assert match, f"not the one-line non-finite error: {last!r}"
    bad, good = int(match[2]), int(match[3])
    rows = _train_rows(out)
    assert [row["global_step"] for row in rows] == list(range(1, bad)), "steps before the bad one must all be logged"
    _assert_all_finite(rows)
    assert rows[-1]["loss"] > 1e3, f"the run did not diverge before step {bad}: loss {rows[-1]['loss']}"
    state = json.loads((out / "state.json").read_text())
    assert state["completed"] == {} and state["current"]["step"] == good == (bad - 1) // 5 * 5 > 0, state
    _assert_nothing_handed_on(out)
    model_file = out / "checkpoints" / state["current"]["tag"] / "mp_rank_00_model_states.pt"
    module = torch.load(model_file, weights_only=False, map_location="cpu")["module"]
    assert all(bool(t.isfinite().all()) for t in module.values()), "the last good checkpoint holds NaN/inf"

    # The advice works: the run continues from that checkpoint with the new settings (lr from the config, not 10).
    # In this process (the CLI's stop is above; the resume is the pipeline's, as for any run)
    run_pipeline(tiny_config(out, "optim.name=sgd", "optim.lr=0.01", "deepspeed.gradient_clipping=1.0",
                             "train.log_every=1", "train.checkpoint_every=5"))
    rows = [row for row in _train_rows(out) if row["phase"] == "sparsify"]
    assert [row["global_step"] for row in rows] == list(range(1, 45)), "sparsify steps repeated or missing"
    assert [row["lr"] for row in rows] == [10.0] * good + [0.01] * (44 - good), "did not resume at the checkpoint"
    _assert_all_finite(_rows(out))
    final = load_file(str(out / "weights" / "finetune.safetensors"))
    assert all(bool(t.isfinite().all()) for t in final.values()), "fine-tuned weights hold NaN/inf"
    report = json.loads((out / "report.json").read_text())
    assert math.isfinite(report["phases"]["finetune"]["loss"]) and 0 < report["sparsity"] < 1, report


def _digits_npz(path: Path, poison: str) -> tuple[Path, int]:
    """The built-in digits as float arrays with one NaN pixel in `poison` (x_train or x_test)."""
    x_train, y_train, x_test, y_test = BUILTIN_LOADERS["digits"](DataConfig(source="digits"), 0)
    arrays = {"x_train": x_train.astype(np.float32), "y_train": y_train, "x_test": x_test.astype(np.float32),
              "y_test": y_test}
    sample = 97
    arrays[poison][sample, 0, 3, 4] = np.nan
    np.savez(path, **arrays)
    return path, sample


def _first_step_with(sample: int, cfg: object, num_samples: int) -> int:
    """1-based sparsify step whose batch holds `sample` (the batch order is a pure function of seed and step)."""
    plan = BatchPlan(num_samples, cfg.train.batch_size, 1, 0, 1, cfg.seed * 10 + 2)
    return next(step + 1 for step in range(10_000) if any(sample in mb for mb in plan.micro_batches(step)))


def test_nan_in_training_data_stops_at_the_step_whose_batch_holds_it(tmp_path: Path) -> None:
    path, sample = _digits_npz(tmp_path / "digits.npz", "x_train")
    cfg = tiny_config(tmp_path / "run", "data.source=npz", f"data.path={path}", "data.normalize=false")
    expected = _first_step_with(sample, cfg, len(np.load(path)["x_train"]))
    with pytest.raises(NonFiniteError) as info:
        run_pipeline(cfg)
    assert str(info.value).startswith(f"non-finite input data at sparsify step {expected}/44: check the data "
                                      f"(data.source=npz, data.path={path}): it holds NaN or inf;"), info.value
    _assert_all_finite(_rows(tmp_path / "run"))
    _assert_nothing_handed_on(tmp_path / "run")


def test_nan_in_test_data_is_not_recorded_as_a_phase_result(tmp_path: Path) -> None:
    path, _ = _digits_npz(tmp_path / "digits.npz", "x_test")
    cfg = tiny_config(tmp_path / "run", "data.source=npz", f"data.path={path}", "data.normalize=false")
    with pytest.raises(NonFiniteError, match=r"^non-finite sparsify result\(s\) loss \(evaluation on the test "
                       r"split\); check the test data for NaN or inf$"):
        run_pipeline(cfg)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert "sparsify" not in state["completed"], "a NaN loss was recorded as the sparsify result"


def test_overflowing_gradients_under_zero_2_stop_the_run(tmp_path: Path) -> None:
    """ZeRO 2 skips a step whose gradients overflow and would carry on: sparsetrain stops instead."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"^non-finite (loss|gradient norm) at sparsify step \d+/44: ") as info:
        run_pipeline(tiny_config(out, *DIVERGING, "deepspeed.zero_stage=2"))
    bad = int(re.search(r"step (\d+)/", str(info.value))[1])
    assert [row["global_step"] for row in _train_rows(out)] == list(range(1, bad))
    _assert_all_finite(_rows(out))
    _assert_nothing_handed_on(out)


def test_overflowing_regularizer_names_its_strength(tmp_path: Path) -> None:
    """A penalty that overflows by itself is fixed by its strength, not the lr: the hint names that setting first."""
    with pytest.raises(NonFiniteError) as info:
        run_pipeline(tiny_config(tmp_path / "run", "regularizer.alpha0=1e37"))
    assert str(info.value).startswith("non-finite regularizer value at sparsify step 1/44: lower regularizer.alpha0 "
                                      "(now 1e+37) or regularizer.alpha2 (now 0.0001), lower optim.lr or "
                                      "phases.sparsify.lr (now 0.001)"), info.value


@pytest.mark.parametrize(("regularizer", "phase", "strength"), [
    ("{name: grad_count, lambda_s: 5}", "sparsify", "regularizer.lambda_s (now 5) or regularizer.alpha2 (now 0.0001)"),
    ("{name: l0_exp, alpha0: 5}", "finetune", "regularizer.alpha2 (now 0.0001)"),  # fine-tuning trains with l2 only
    ("{name: l0_exp, alpha0: 5, finetune_l0: true}", "finetune", "regularizer.alpha0 (now 5) or"),
])
def test_regularizer_hint_names_the_strength_of_the_phase_penalty(regularizer: str, phase: str, strength: str) -> None:
    cfg = load_config(None, [f"regularizer={regularizer}", "prune={rule: filters}"])
    assert hint(cfg, phase, "regularizer value").startswith(f"lower {strength}")
    assert hint(cfg, phase, "loss").startswith("lower optim.lr")
