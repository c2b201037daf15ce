"""Run-directory safety: a finished run's out_dir keeps the config it was trained with, a changed config that would
change its results is one line (never a traceback, never a silent success), a bad out_dir or an empty config
file is one line. Real tiny runs on digits (tests.core.conftest.TINY)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.config import config_to_dict, load_config
from sparsetrain.engine import preemption
from sparsetrain.engine.checkpoint import read_run_state
from sparsetrain.models.checkpoint import run_weights
from sparsetrain.pipeline import run_pipeline
from sparsetrain.rundir import changed_settings, check_finished, check_same_run
from tests.core.conftest import tiny_config, tiny_overrides

SHORT = ("phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run_pipeline(tiny_config(out, *SHORT))  # in-process runs that succeed go through run_pipeline: the CLI's
    return out  # shutdown_distributed() at the end is for a process that exits


def _rerun(out: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", *tiny_overrides(out, *SHORT, *extra)])
    return code, capsys.readouterr().err.strip()


def _complete(out: Path) -> str:
    """The end of the refusal for a complete run in `out`."""
    return (f"the run is complete: `sparsetrain run {out / 'config.yaml'}` reports it again (its stored settings, "
            f"shown by `sparsetrain config {out / 'config.yaml'}`); for these settings use a new out_dir (resume=false "
            "would start over and replace the finished run)")


@pytest.mark.parametrize(("extra", "expected"), [
    (("regularizer.alpha0=1e-3",), "regularizer.alpha0 0.0002 -> 0.001 (fixed: sparsify has stepped with it)"),
    (("phases.sparsify.epochs=2",), "phases.sparsify.epochs 0.5 -> 2 (fixed: sparsify has run with it)"),  # not 2.0
    (("model.name=lenet5",), 'model.name "lenet300_100" -> "lenet5" (fixed: sparsify has run with it)'),  # no
    # load_state_dict error; the dense phase is disabled (TINY): sparsify is the first that ran with it
    (("data.source=synthetic", "seed=3"), 'seed 0 -> 3 (fixed: sparsify has run with it); data.source "digits" -> '
     '"synthetic" (fixed: sparsify has run with it)'),
    (("regularizer={name: l2}",), 'regularizer.name "l0_exp" -> "l2" (fixed: sparsify has stepped with it); '
     "regularizer.alpha0 0.0002 -> (unset) (fixed: sparsify has stepped with it); regularizer.beta 20 -> (unset) "
     "(fixed: sparsify has stepped with it); and 2 more"),
    (("optim.lr=5e-4",), "optim.lr 0.001 -> 0.0005 (fixed: every phase that steps with it has finished)"),
])
def test_changed_result_settings_are_refused_and_config_kept(finished: Path, capsys: pytest.CaptureFixture,
                                                            extra: tuple[str, ...], expected: str) -> None:
    """Each setting says why it is fixed; a complete run says how to see it again, and that resume=false would
    replace it (the message offered resume=false alone)."""
    before = (finished / "config.yaml").read_text()
    code, err = _rerun(finished, capsys, *extra)
    assert code == 2, err
    assert err == f"error: out_dir: {finished} holds a run with other settings: {expected}; {_complete(finished)}"
    assert (finished / "config.yaml").read_text() == before, "a refused config overwrote the run's config.yaml"


def _preempted_at_first_sparsify_step(out: Path) -> None:
    """A run of `SHORT` stopped as SIGTERM stops it (in process): a checkpoint at sparsify's first step, then
    Preempted."""
    preemption.clear()
    preemption.request_stop()
    try:
        with pytest.raises(preemption.Preempted):
            run_pipeline(tiny_config(out, *SHORT))
    finally:
        preemption.clear()


def test_rerunning_the_original_command_of_a_run_resumed_with_another_lr(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: sparsify interrupted, resumed with optim.lr=5e-4 to the end; the original command (lr 1e-3)
    was refused without saying why, offering resume=false (which would throw the finished run away). The stored
    settings' command the message names reports the run again."""
    out = tmp_path / "run"
    _preempted_at_first_sparsify_step(out)
    run_pipeline(tiny_config(out, *SHORT, "optim.lr=5e-4"))
    code, err = _rerun(out, capsys)
    assert code == 2 and err == (f"error: out_dir: {out} holds a run with other settings: optim.lr 0.0005 -> 0.001 "
                                 f"(fixed: every phase that steps with it has finished); {_complete(out)}"), err
    run_pipeline(load_config(out / "config.yaml"))  # `sparsetrain run OUT/config.yaml`, in process (see `finished`)
    assert "[finetune] already complete (run finished at " in capsys.readouterr().err


def test_execution_settings_may_change_on_resume(finished: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    run_pipeline(tiny_config(copy, *SHORT, "train.log_every=7", "train.checkpoint_every=3", "train.eval_batch_size=99"))
    assert "log_every: 7" in (copy / "config.yaml").read_text()


def test_resume_false_starts_over_with_other_settings(finished: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    run_pipeline(tiny_config(copy, *SHORT, "regularizer.alpha0=3e-4", "resume=false"))
    assert "alpha0: 0.0003" in (copy / "config.yaml").read_text()


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_rerun_of_a_finished_run_says_so_and_keeps_its_export(finished: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    export, report = _stamps(copy / "export"), json.loads((copy / "report.json").read_text())
    capsys.readouterr()
    assert run_pipeline(tiny_config(copy, *SHORT)) == report, "a re-run changed the finished run's report"
    err = capsys.readouterr().err
    assert re.search(r"\[finetune\] already complete \(run finished at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); nothing to "
                     "train\n", err), err
    assert "already holds the finetune model for these deploy settings: not exported again" in err, err
    assert _stamps(copy / "export") == export, "export/ was written again although it was up to date"
    run_pipeline(tiny_config(copy, *SHORT, "deploy.opset=17"))  # deploy settings may change: then it is redone
    assert "[export] writing" in capsys.readouterr().err
    assert _stamps(copy / "export")["model.safetensors"] != export["model.safetensors"]


def test_resume_at_a_phase_boundary_says_where(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_pipeline(tiny_config(tmp_path, *SHORT), ["sparsify"])
    capsys.readouterr()
    run_pipeline(tiny_config(tmp_path, *SHORT))
    assert "[prune] resuming after finished phase sparsify\n" in capsys.readouterr().err
    run_pipeline(tiny_config(tmp_path, *SHORT), ["prune"])
    assert re.search(r"\[prune\] already complete \(finished at [\d: -]+\); nothing to train\n",
                     capsys.readouterr().err)


def test_changed_settings_lists_in_schema_order_and_skips_new_keys() -> None:
    stored = {"seed": 0, "model": {"name": "a"}, "regularizer": {"name": "l0_exp", "beta": 5},
              "tracking": {"mode": "x"}}
    new = {"seed": 1, "model": {"name": "b", "added_later": 1}, "regularizer": {"name": "l2"},
           "tracking": {"mode": "y"}}
    keys = [k for k, _, _ in changed_settings(stored, new, {"completed": {"finetune": {}}})]
    assert keys == ["seed", "model.name", "regularizer.name", "regularizer.beta"]


SPARSIFY_DONE = {"completed": {"sparsify": {}}, "current": None}
MID_SPARSIFY = {"completed": {}, "current": {"phase": "sparsify", "step": 10}}
EVALUATED = {"completed": {"dense": {"metric": 20.0, "steps": 0}}, "current": None}  # phases.dense.epochs=0
NONFINITE_SPARSIFY = {"completed": {}, "current": {"phase": "sparsify", "step": 10, "stopped": "non-finite"}}
NONFINITE_FINETUNE = {"phase": "finetune", "step": 10, "stopped": "non-finite"}


@pytest.mark.parametrize(("key", "state", "may_change"), [
    (("prune", "threshold"), SPARSIFY_DONE, True),  # fixing a prune error after sparsify (test_prune_plan)
    (("prune", "threshold"), {"completed": {"sparsify": {}, "prune": {}}, "current": None}, False),
    (("prune", "schedule"), SPARSIFY_DONE, False),  # gradual pruning acts during sparsify
    (("phases", "finetune", "epochs"), SPARSIFY_DONE, True),
    (("phases", "sparsify", "epochs"), MID_SPARSIFY, False),
    (("regularizer", "beta"), MID_SPARSIFY, False),
    (("regularizer", "alpha0"), MID_SPARSIFY, False),  # two strengths in one phase (was free: a recovery setting)
    (("regularizer", "alpha0"), NONFINITE_SPARSIFY, True),  # what the non-finite error asks to lower
    (("regularizer", "alpha0"), {"completed": {"dense": {}}, "current": None}, True),  # sparsify has not started
    (("regularizer", "alpha0"), SPARSIFY_DONE, False),  # sparsify trained with the old one (was free)
    (("regularizer", "alpha0"), {"completed": {"sparsify": {}, "prune": {}}, "current": NONFINITE_FINETUNE},
     False),  # an l2 fine-tuning's penalty has no alpha0: only alpha2 may be lowered
    (("regularizer", "alpha2"), {"completed": {"sparsify": {}, "prune": {}}, "current": NONFINITE_FINETUNE}, True),
    (("regularizer", "alpha0"), {"completed": {"sparsify": {}, "prune": {}, "finetune": {}}}, False),  # finished
    (("regularizer", "alpha2"), EVALUATED, True),  # the dense phase took no step: the l2 term acted on nothing
    (("regularizer", "alpha2"), {"completed": {"dense": {"steps": 3}}, "current": None}, False),
    (("regularizer", "beta"), {"completed": {"dense": {}, "sparsify": {"steps": 0}}, "current": None}, True),
    (("optim", "lr"), MID_SPARSIFY, True),
    (("optim", "name"), MID_SPARSIFY, False),
    (("seed",), {"completed": {}, "current": None}, True),  # nothing started yet
    (("seed",), MID_SPARSIFY, False),
    (("train", "batch_size"), EVALUATED, True),  # the dense phase took no step: the batch size acted on nothing
    (("optim", "name"), EVALUATED, True),
    (("model", "name"), EVALUATED, False),  # what it evaluated
    (("phases", "dense", "epochs"), EVALUATED, False),  # a finished phase is not re-run: another count is refused
    (("train", "batch_size"), {"completed": {"dense": {"steps": 0}, "sparsify": {}}, "current": None}, False),
    (("train", "batch_size"), {"completed": {"dense": {"steps": 0}}, "current": {"phase": "sparsify"}}, False),
])
def test_a_setting_is_fixed_once_the_phase_it_acts_on_has_started(key: tuple[str, ...], state: dict,
                                                                   may_change: bool) -> None:
    def config(value: object) -> dict:
        cfg = {"regularizer": {"name": "l0_exp"}, "phases": {"finetune": {"enabled": True}}}
        node = cfg
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
        return cfg

    changed = changed_settings(config(1), config(2), state)
    assert [k for k, _, _ in changed] == ([] if may_change else [".".join(key)])


def test_regularizer_settings_are_fixed_once_their_phase_has_stepped(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """regularizer.alpha0 changed between an interrupted sparsify phase and its resume was accepted (a recovery
    setting), mixing two recipes in one phase: now one line names it. Before sparsify starts it may change, and after a
    stop on non-finite numbers the strength the error asks to lower may change too (tests/core/test_nonfinite.py)."""
    out = tmp_path / "run"
    _preempted_at_first_sparsify_step(out)
    assert read_run_state(out)["current"]["phase"] == "sparsify"
    code, err = _rerun(out, capsys, "regularizer.alpha0=1e-3")
    assert code == 2 and err == (f"error: out_dir: {out} holds a run with other settings: regularizer.alpha0 0.0002 "
                                 "-> 0.001 (fixed: sparsify has stepped with it; it may change only after a NaN/inf "
                                 "stop); use a new out_dir, or resume=false to start over"), err


def test_regularizer_settings_may_change_before_their_phase_starts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    dense = ("phases.dense.enabled=true", "phases.dense.epochs=0.3")
    run_pipeline(tiny_config(out, *SHORT, *dense), ["dense"])
    run_pipeline(tiny_config(out, *SHORT, *dense, "regularizer.alpha0=1e-3", "regularizer.beta=5"))
    assert "alpha0: 0.001" in (out / "config.yaml").read_text()
    assert "finetune" in read_run_state(out)["completed"]


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, text: str) -> None:
    recipe = tmp_path / "empty.yaml"
    recipe.write_text(text)
    assert main(["run", str(recipe), f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: config: empty config file {recipe}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_batch_size_larger_than_the_data_is_refused_before_any_phase(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: the error came after the dense phase had evaluated (and finished), whose state then
    refused the re-run with a smaller batch as a run with other settings."""
    capsys.readouterr()
    overrides = tiny_overrides(tmp_path, "phases.dense.enabled=true", "phases.dense.epochs=0", "train.batch_size=4096")
    assert main(["run", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    fits = r"error: train.batch_size: 4096 exceeds the (\d+) training samples; set train.batch_size=\1 or less$"
    assert re.search(fits, err), err
    assert "[dense]" not in err and not (tmp_path / "state.json").exists(), "a phase ran before the check"


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: relative path -> (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


REFUSED = "train.batch_size=4096", "tracking.mode=offline"  # W&B on: a refusal after the W&B run started leaked it
# Refusals of the model's settings (fresh-user trial: config.yaml, wandb/ and wandb_run_id.txt were written first)
MODEL_REFUSALS = [
    (("tracking.mode=offline", "model.name=resnet-18"), "error: model.name: unknown timm model 'resnet-18' (closest: "),
    (("tracking.mode=offline", "model.kwargs.depth=3"), "error: model.kwargs: lenet300_100 does not take the "
     "arguments it was given (LeNet300100.__init__() got an unexpected keyword argument 'depth')"),
    (("tracking.mode=offline", "model.name=unet_tiny"), "error: model.name: unet_tiny outputs a mask per pixel"),
    (("tracking.mode=offline", "model.checkpoint=/nonexistent/model.safetensors"),
     "error: model.checkpoint: file or export folder not found: /nonexistent/model.safetensors"),
    (("tracking.mode=offline", "model.pretrained=true", "model.pretrained_file=/nonexistent/lenet.pth"),
     "error: model.pretrained_file: file not found: /nonexistent/lenet.pth"),
    # inputs the model does not take (the meta forward raised and decided nothing; the real model's check came
    # when the dense phase built it, after config.yaml and W&B)
    (("tracking.mode=offline", "model.name=resnet18", "model.kwargs.in_chans=3"), "error: model.name: resnet18 does "
     "not accept inputs of shape (1, 8, 8) (Given groups=1, weight of size [64, 3, 7, 7], expected input[2, 1, 8, 8] "
     "to have 3 channels, but got 1 channels instead)\n"),
    (("tracking.mode=offline", "model.name=vit_tiny_patch16_224"), "error: model.name: vit_tiny_patch16_224 does "
     "not accept inputs of shape (1, 8, 8) (Calculated padded input size per channel: (8 x 8). Kernel size: (16 x "
     "16). Kernel size can't be greater than actual input size)\n"),
    (("tracking.mode=offline", "model.name=vit_tiny_patch16_224", "model.kwargs.img_size=224"), "error: model.name: "
     "vit_tiny_patch16_224 does not accept inputs of shape (1, 8, 8) (Input height (8) doesn't match model (224).)\n"),
    # tensors of the wrong shapes: found only when the dense phase loaded them, after config.yaml and W&B
    (("tracking.mode=offline", "model.checkpoint={tmp}/lenet_28x28.safetensors"),
     "error: model.checkpoint: {tmp}/lenet_28x28.safetensors does not fit lenet300_100: wrong shape in 1 tensor "
     "(fc1.weight: checkpoint (300, 784), model (300, 64))\n"),
]


def _with_files(tmp: Path, extra: tuple[str, ...], error: str) -> tuple[tuple[str, ...], str]:
    """`extra` and `error` with `{tmp}` replaced by `tmp`, where `lenet_28x28.safetensors` holds a lenet300_100 for
    28×28 inputs (the digits' are 8×8: its fc1 takes 784 inputs, the run's 64)."""
    from safetensors.torch import save_file

    from sparsetrain.config.schema import ModelConfig
    from sparsetrain.models.factory import build_model

    save_file(build_model(ModelConfig(name="lenet300_100"), 1, 10, (1, 28, 28)).state_dict(),
              str(tmp / "lenet_28x28.safetensors"))
    return tuple(arg.replace("{tmp}", str(tmp)) for arg in extra), error.replace("{tmp}", str(tmp))


@pytest.mark.parametrize(("extra", "error"), [
    (REFUSED, "error: train.batch_size: 4096 exceeds the"),
    (("tracking.mode=offline", "--phase", "finetune"), "error: phase: finetune starts from the weights of the prune"),
    (("tracking.mode=offline", "prune={rule: layer_sparsity, sparsity: 0.5, layer_sparsity: {fc9.weight: 0.9}}"),
     "error: prune.layer_sparsity.fc9.weight: not a prunable layer of this model"),
    (("tracking.mode=offline", "data.source=npz", "data.path=/nonexistent/digits.npz"), "error: data.path: "),
    *MODEL_REFUSALS,
])
def test_a_refused_run_leaves_no_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple[str, ...],
                                         error: str) -> None:
    """A run refused before any phase (its batch size, a --phase that needs an earlier one, a layer or data file
    that does not exist) left config.yaml and an empty offline W&B run, or an empty folder, in the out_dir it
    created."""
    out = tmp_path / "run"
    extra, error = _with_files(tmp_path, extra, error)
    capsys.readouterr()
    assert main(["run", *tiny_overrides(out, *extra)]) == 2
    err = capsys.readouterr().err
    assert error in err and "Traceback" not in err, err
    assert not out.exists(), f"the refused run left {sorted(_files(out))}"


def test_dry_run_refuses_a_checkpoint_that_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`run --dry-run` checks the checkpoint against the model as `run` does (the data read here gives the sizes)."""
    extra, error = _with_files(tmp_path, MODEL_REFUSALS[-1][0], MODEL_REFUSALS[-1][1])
    capsys.readouterr()
    assert main(["run", *tiny_overrides(tmp_path / "run", *extra), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith(error) and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(("extra", "error"), [
    (REFUSED, "error: train.batch_size: 4096 exceeds the"),  # may change: the dense phase took no step
    ((*REFUSED, "resume=false"), "error: train.batch_size: 4096 exceeds the"),  # cleared the earlier run first
    (("tracking.mode=offline", "--phase", "finetune"), "error: phase: finetune starts from the weights of the prune"),
    *[((*extra, "resume=false"), error) for extra, error in MODEL_REFUSALS],  # another model: resume=false
    # the dense phase measured the initial weights: model.checkpoint is fixed (refused before config.yaml and W&B)
    (("tracking.mode=offline", "model.checkpoint={tmp}/missing.pth"), 'holds a run with other settings: '
     'model.checkpoint null -> "{tmp}/missing.pth" (fixed: dense has run with it); use a new out_dir'),
])
def test_a_refused_run_leaves_an_earlier_run_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       extra: tuple[str, ...], error: str) -> None:
    """A refusal before any phase in the out_dir of an earlier run (here: its dense phase, which measured the initial
    weights) touches none of its files: config.yaml was rewritten with the refused settings, a W&B run was added,
    and resume=false had cleared state.json and the weights before the refusal."""
    out = tmp_path / "run"
    evaluated = ("phases.dense.enabled=true", "phases.dense.epochs=0")
    run_pipeline(tiny_config(out, *evaluated, "tracking.mode=offline"), ["dense"])
    before = _files(out)
    extra, error = _with_files(tmp_path, extra, error)
    capsys.readouterr()
    assert main(["run", *tiny_overrides(out, *evaluated, *extra)]) == 2
    err = capsys.readouterr().err
    assert error in err and "Traceback" not in err, err
    assert _files(out) == before, "the refused run changed the earlier run's out_dir"


def _lenet_checkpoint(path: Path) -> Path:
    """A lenet300_100 for the digits' 8×8 inputs saved at `path`."""
    from safetensors.torch import save_file

    from sparsetrain.config.schema import ModelConfig
    from sparsetrain.models.factory import build_model

    save_file(build_model(ModelConfig(name="lenet300_100"), 1, 10, (1, 8, 8)).state_dict(), str(path))
    return path


def test_a_resume_that_reads_a_missing_checkpoint_leaves_the_run_as_it_was(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: the dense phase had measured model.checkpoint, then the file was gone; the resume printed
    `[sparsify] resuming after finished phase dense`, rewrote config.yaml and added a W&B offline run (one per
    refused attempt) before sparsify (which starts from model.checkpoint, not from the dense weights) refused it."""
    checkpoint = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    out = tmp_path / "run"
    evaluated = ("phases.dense.enabled=true", "phases.dense.epochs=0", f"model.checkpoint={checkpoint}",
                 "tracking.mode=offline")
    run_pipeline(tiny_config(out, *evaluated), ["dense"])
    checkpoint.unlink()
    before = _files(out)
    capsys.readouterr()
    assert main(["run", *tiny_overrides(out, *evaluated)]) == 2
    err = capsys.readouterr().err
    assert f"error: model.checkpoint: file or export folder not found: {checkpoint}" in err, err
    assert "resuming after" not in err and "Traceback" not in err, err
    assert _files(out) == before, "the refused resume changed the earlier run's out_dir"


def test_phases_that_start_from_finished_phases_do_not_read_the_checkpoint(tmp_path: Path) -> None:
    """Once dense and sparsify have finished, prune, finetune and the report start from their weights:
    model.checkpoint (gone) is not read, nor by a sparsify phase that continues from its own checkpoint."""
    checkpoint = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    settings = (*SHORT, "phases.dense.enabled=true", "phases.dense.epochs=0", f"model.checkpoint={checkpoint}")
    at_boundary, mid_phase = tmp_path / "boundary", tmp_path / "mid"
    run_pipeline(tiny_config(at_boundary, *settings), ["dense", "sparsify"])
    preemption.clear()
    preemption.request_stop()
    try:
        with pytest.raises(preemption.Preempted):
            run_pipeline(tiny_config(mid_phase, *settings))
    finally:
        preemption.clear()
    assert read_run_state(mid_phase)["current"]["phase"] == "sparsify"
    checkpoint.unlink()
    for out in (at_boundary, mid_phase):
        run_pipeline(tiny_config(out, *settings))
        assert "finetune" in read_run_state(out)["completed"]


def test_a_run_with_relative_paths_continues_from_another_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: config.yaml stored out_dir, model.checkpoint, data.path as given (relative to where the run
    started), so `sparsetrain run R/config.yaml` from another directory failed. Every path setting is stored
    absolute."""
    monkeypatch.chdir(tmp_path)
    _lenet_checkpoint(tmp_path / "lenet.safetensors")
    run_pipeline(tiny_config(Path("run"), *SHORT, "model.checkpoint=lenet.safetensors"), ["sparsify"])
    stored = load_config(tmp_path / "run" / "config.yaml")
    assert (stored.out_dir, stored.model.checkpoint) == (str(tmp_path / "run"), str(tmp_path / "lenet.safetensors"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    run_pipeline(load_config("../run/config.yaml"))  # `sparsetrain run ../run/config.yaml`, in process
    assert "[prune] resuming after finished phase sparsify" in capsys.readouterr().err
    assert "finetune" in read_run_state(tmp_path / "run")["completed"] and not any(elsewhere.iterdir())


def test_a_stored_relative_path_equals_its_absolute_form_on_resume(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A config.yaml written before paths were stored absolute holds them as given: the resume from the directory
    the run started in compares them resolved (the new side is absolute)."""
    monkeypatch.chdir(tmp_path)
    state = {"completed": {"dense": {"steps": 0}, "sparsify": {"steps": 5}}, "current": None}
    old = {"model": {"checkpoint": "w.pth"}, "data": {"path": "./data/../data/x.npz"}, "out_dir": "runs/r"}
    new = {"model": {"checkpoint": str(tmp_path / "w.pth")}, "data": {"path": str(tmp_path / "data" / "x.npz")},
           "out_dir": str(tmp_path / "runs" / "r")}
    assert changed_settings(old, new, state) == []
    moved = {**new, "model": {"checkpoint": str(tmp_path / "other" / "w.pth")}}
    assert [k for k, _, _ in changed_settings(old, moved, state)] == ["model.checkpoint"]


@pytest.mark.parametrize(("make", "reason"), [
    (lambda tmp: tmp / "afile", "File exists"),
    (lambda tmp: tmp / "afile" / "sub", "Not a directory"),
    (lambda tmp: Path("/proc/sparsetrain-test-run"), "No such file or directory"),
])
def test_unusable_out_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, make, reason: str) -> None:
    (tmp_path / "afile").write_text("not a folder")
    out = make(tmp_path)
    assert main(["run", *tiny_overrides(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: out_dir: cannot create the run directory {out} ({reason})", err


@pytest.mark.parametrize("state", [None, "", "{not json", "[]", '{"completed": null}', '{"completed": ["finetune"]}',
                                   "a folder"])
def test_every_reader_takes_a_missing_or_malformed_state_json_alike(finished: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   state: str | None) -> None:
    """The resume check, export/eval's finished check and model.checkpoint's run weights read state.json through
    one reader: missing, unreadable and malformed are all "no finished phase recorded" (no traceback, no weights
    taken from a list that merely names a phase); a re-run says in one line that it is corrupt."""
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copy(finished / "config.yaml", run / "config.yaml")
    shutil.copy(finished / "weights" / "finetune.safetensors", run / "weights" / "finetune.safetensors")
    if state == "a folder":
        (run / "state.json").mkdir()
    elif state is not None:
        (run / "state.json").write_text(state)
    assert read_run_state(run) is None
    assert run_weights(run) is None, "weights taken from a run whose state.json records no finished phase"
    check_finished(run, "eval")  # not a run with state: the caller's own checks apply
    check_same_run(run, config_to_dict(tiny_config(run, *SHORT, "seed=5")))  # nothing recorded to compare with
    if state is not None:
        capsys.readouterr()
        assert main(["run", *tiny_overrides(run, *SHORT)]) == 3
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: resume: {run / 'state.json'} is corrupt (") and "\n" not in err, err
