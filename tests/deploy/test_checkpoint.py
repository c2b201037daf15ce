"""model.checkpoint: trained weights from safetensors, torch state dicts, training checkpoints and exports."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel

from sparsetrain.cli import main
from sparsetrain.config.schema import ModelConfig, PruneConfig
from sparsetrain.models.checkpoint import check_checkpoint
from sparsetrain.models.factory import build_model
from sparsetrain.pruning.filters import channel_groups, choose_filters
from sparsetrain.structural import remove_channels, save_pruned_model

SHAPE = (1, 28, 28)


def _lenet5(seed: int, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="lenet5"), 1, classes, SHAPE)


def _build(path: Path, classes: int = 10, **kwargs) -> torch.nn.Module:
    torch.manual_seed(99)
    return build_model(ModelConfig(name="lenet5", checkpoint=str(path), **kwargs), 1, classes, SHAPE)


def _assert_holds(model: torch.nn.Module, source: dict[str, torch.Tensor], label: str) -> None:
    state = model.state_dict()
    assert state.keys() == source.keys(), f"{label}: keys differ"
    for name, tensor in source.items():
        assert torch.equal(state[name], tensor), f"{label}: {name} not loaded"


def _writers() -> dict:
    """How training scripts save weights: file name -> function(model state, ema state, path)."""
    namespace = argparse.Namespace(model="lenet5", lr=0.1)  # both timm and torchvision pickle their args
    return {
        "flat.safetensors": lambda s, e, p: save_file({k: v.contiguous() for k, v in s.items()}, str(p)),
        "plain.pth": lambda s, e, p: torch.save(s, p),
        "ddp.pt": lambda s, e, p: torch.save({f"module.{k}": v for k, v in s.items()}, p),
        # timm train.py: CheckpointSaver keeps 'state_dict' (+ 'state_dict_ema'), optimizer, epoch, args
        "timm.pth.tar": lambda s, e, p: torch.save({"epoch": 3, "arch": "lenet5", "state_dict": s,
                                                    "state_dict_ema": e, "optimizer": {}, "args": namespace}, p),
        # torchvision references/classification/train.py: 'model', 'model_ema' (an AveragedModel), args
        "torchvision.pth": lambda s, e, p: torch.save({"model": s, "model_ema": _averaged(e), "optimizer": {},
                                                       "epoch": 3, "args": namespace}, p),
        "ema_only.bin": lambda s, e, p: torch.save({"model_ema": _averaged(e)}, p),
        # a user's own loop: numpy values beside the weights (np.float64 metric, np.ndarray history, np.dtype)
        "numpy.pth": lambda s, e, p: torch.save({"model": s, "epoch": 8, "best_acc": np.float64(0.9889),
                                                 "losses": np.array([0.5, 0.25], dtype=np.float32),
                                                 "steps": np.arange(3), "dtype": np.dtype("int16")}, p),
    }


def _averaged(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model = _lenet5(0)
    model.load_state_dict(state)
    return AveragedModel(model).state_dict()  # keys 'module.*' plus 'n_averaged'


@pytest.mark.parametrize("name", list(_writers()))
def test_every_checkpoint_layout_loads_the_trained_weights(tmp_path: Path, name: str) -> None:
    weights, ema = _lenet5(1).state_dict(), _lenet5(2).state_dict()
    path = tmp_path / name
    _writers()[name](weights, ema, path)
    expected = ema if name == "ema_only.bin" else weights
    _assert_holds(_build(path), expected, name)
    if name in ("timm.pth.tar", "torchvision.pth"):
        _assert_holds(_build(path, checkpoint_ema=True), ema, f"{name} with checkpoint_ema")
    elif name != "ema_only.bin":  # asked for EMA weights where there are none: refused, not the plain weights taken
        with pytest.raises(ValueError, match=f"^model.checkpoint_ema: {path} .*no EMA weights") as info:
            _build(path, checkpoint_ema=True)
        assert "\n" not in str(info.value)


def test_checkpoint_ema_names_the_keys_a_training_checkpoint_has(tmp_path: Path) -> None:
    torch.save({"state_dict": _lenet5(1).state_dict(), "epoch": 3, "arch": "lenet5"}, tmp_path / "ckpt.pth.tar")
    with pytest.raises(ValueError) as info:
        _build(tmp_path / "ckpt.pth.tar", checkpoint_ema=True)
    assert str(info.value) == (f"model.checkpoint_ema: {tmp_path / 'ckpt.pth.tar'} has no state_dict_ema or "
                               "model_ema (its keys: state_dict, epoch, arch), no EMA weights; leave "
                               "model.checkpoint_ema unset to load its weights")


def test_reset_head_keeps_everything_but_a_fresh_classifier(tmp_path: Path) -> None:
    source = _lenet5(1, classes=10).state_dict()
    torch.save({"state_dict": source}, tmp_path / "c10.pth")
    model = _build(tmp_path / "c10.pth", classes=4, reset_head=True)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 4)
    fresh = _lenet5(99, classes=4).state_dict()  # same seed as _build: the classifier timm would initialize
    for name, tensor in model.state_dict().items():
        head = name.startswith("head.")
        label = "fresh" if head else "loaded"
        assert torch.equal(tensor, fresh[name] if head else source[name]), f"{name}: not {label}"


def test_reset_head_log_line_counts_the_loaded_tensors_and_names_the_fresh_classifier(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _lenet5(1, classes=10).state_dict()
    save_file(source, str(tmp_path / "c10.safetensors"))
    with caplog.at_level("INFO"):
        _build(tmp_path / "c10.safetensors", classes=4, reset_head=True)
    values = sum(t.numel() for k, t in source.items() if not k.startswith("head."))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model.checkpoint: loaded"))
    assert line == (f"model.checkpoint: loaded 6 of its 8 tensors ({values:,} values) from "
                    f"{tmp_path / 'c10.safetensors'} into lenet5; classifier re-initialized (model.reset_head): "
                    "head.weight (4, 500), head.bias (4,)"), line


def test_a_wrong_stem_says_which_shape_is_whose_and_points_at_data_in_chans(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_file(build_model(ModelConfig(name="lenet5"), 1, 10, SHAPE).state_dict(), str(tmp_path / "gray.safetensors"))
    with pytest.raises(ValueError) as info:  # RGB data (imagefolder's default) into a gray checkpoint's model
        build_model(ModelConfig(name="lenet5", checkpoint=str(tmp_path / "gray.safetensors")), 3, 10, (3, 28, 28))
    assert str(info.value) == (
        f"model.checkpoint: {tmp_path / 'gray.safetensors'} does not fit lenet5: wrong shape in 1 tensor "
        "(conv1.weight: checkpoint (20, 1, 5, 5), model (20, 3, 5, 5)); the checkpoint's stem (conv1.weight) takes 1 "
        "input channel, the model 3 (the data's channels; imagefolder reads images as RGB unless data.in_chans=1): "
        "set data.in_chans=1")


def test_a_structurally_pruned_export_is_its_own_smaller_model(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    dense = build_model(ModelConfig(name="unet_tiny"), 3, 1, (3, 32, 32)).eval()
    groups = channel_groups(dense, (3, 32, 32))
    drop = choose_filters(dense, groups, PruneConfig(rule="filters", filter_fraction=0.5))
    pruned = remove_channels(dense, drop, groups=groups).eval()
    folder = save_pruned_model(pruned, tmp_path / "export", meta={"model_name": "unet_tiny",
                                                                "model_kwargs": {"num_classes": 1, "in_chans": 3}})
    with caplog.at_level("INFO"):
        loaded = build_model(ModelConfig(name="unet_tiny", checkpoint=str(folder)), 3, 1, (3, 32, 32)).eval()
    params = sum(p.numel() for p in pruned.parameters())
    assert sum(p.numel() for p in loaded.parameters()) == params
    assert (f"model.checkpoint: loaded the structurally pruned unet_tiny ({params:,} parameters) from {folder} "
            "(model.safetensors)") in caplog.text, caplog.text
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x)), "pruned export not loaded as it was saved"
    with torch.device("meta"):
        meta = build_model(ModelConfig(name="unet_tiny"), 3, 1, (3, 32, 32))
    check_checkpoint(meta, ModelConfig(name="unet_tiny", checkpoint=str(folder)))  # the run's check before open
    reset = ModelConfig(name="unet_tiny", checkpoint=str(folder), reset_head=True)
    with pytest.raises(ValueError, match="^model.reset_head: not supported for a structurally pruned export"):
        check_checkpoint(meta, reset)


def test_a_pruned_phase_named_as_a_safetensors_file_names_its_folder(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Method 2 saves its pruned phases as `weights/<phase>/` folders, earlier phases as `weights/<phase>.safetensors`
    (trial 27 #18): `eval RUN/weights/prune.safetensors` said only 'is not a run directory, export folder, ...'."""
    weights = tmp_path / "run" / "weights"
    save_pruned_model(_lenet5(0), weights / "prune", meta={"model_name": "lenet5", "model_kwargs": {"num_classes": 10}})
    given = weights / "prune.safetensors"
    note = (f"{weights / 'prune'}/ beside it holds those weights (a structurally pruned model is saved as a folder: "
            "architecture.json + model.safetensors); give that folder")
    capsys.readouterr()
    assert main(["eval", str(given)]) == 2
    assert capsys.readouterr().err.strip() == f"error: eval: {given} does not exist; {note}"
    with pytest.raises(ValueError) as err:
        _build(given)
    assert str(err.value) == f"model.checkpoint: file or export folder not found: {given}; {note}"
    with pytest.raises(ValueError, match=r"not found: \S+/weights/sparsify.safetensors$"):  # no folder: no note
        _build(weights / "sparsify.safetensors")


def _bad_inputs(tmp: Path) -> dict[str, tuple[dict, str]]:
    (tmp / "notes.pth").write_text("not a checkpoint")
    torch.save({"epoch": 1}, tmp / "no_weights.pth")
    (tmp / "empty.pth").write_bytes(b"")
    (tmp / "noise.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    torch.save(torch.nn.Linear(2, 2), tmp / "module.pth")  # torch.save(model), not its state_dict()
    torch.manual_seed(0)
    torch.save(build_model(ModelConfig(name="lenet300_100"), 1, 10, SHAPE).state_dict(), tmp / "lenet300.pth")
    state = _lenet5(0).state_dict()
    torch.save({f"backbone.{k}": v for k, v in state.items()}, tmp / "prefixed.pth")
    state["conv2.weight"] = torch.zeros(40, 20, 5, 5)
    torch.save(state, tmp / "shape.pth")
    torch.save(_lenet5(0, classes=7).state_dict(), tmp / "c7.pth")
    return {
        "missing": ({"checkpoint": str(tmp / "nope.pth")}, "model.checkpoint: file or export folder not found"),
        "not a checkpoint": ({"checkpoint": str(tmp / "notes.pth")}, "model.checkpoint: .* is a text file, not a "
                             "safetensors file or torch checkpoint"),
        "no weights": ({"checkpoint": str(tmp / "no_weights.pth")}, "model.checkpoint: .* holds no tensors"),
        "noise": ({"checkpoint": str(tmp / "noise.pth")}, r"model.checkpoint: .* is not a safetensors file or torch "
                  r"checkpoint \(RuntimeError: [^()]* \.\.\.\)$"),  # a long first line is cut at a sentence end
        "empty": ({"checkpoint": str(tmp / "empty.pth")}, r"model.checkpoint: .* is empty \(0 bytes\); was it "
                  "written completely\\?$"),
        "module": ({"checkpoint": str(tmp / "module.pth")}, r"model.checkpoint: .* holds pickled Python objects \(e.g. "
                   r"torch.save\(model\)\), .*; save model.state_dict\(\) instead$"),
        "keys": ({"checkpoint": str(tmp / "lenet300.pth")}, r"model.checkpoint: .* does not fit lenet5: missing 4 "
                 r"keys \(conv1.weight, conv1.bias, conv2.weight, ...\); unexpected 2 keys \(fc2.weight, fc2.bias\); "
                 r"wrong shape in 3 tensors \(fc1.weight: checkpoint \(300, 784\), model \(500, 800\), "
                 r"fc1.bias: .*\)$"),
        "prefix": ({"checkpoint": str(tmp / "prefixed.pth")}, r"missing 8 keys \(conv1.weight, conv1.bias, "
                   r"conv2.weight, ...\); unexpected 8 keys \(backbone.conv1.weight, .*, ...\)$"),
        "shape": ({"checkpoint": str(tmp / "shape.pth")}, r"wrong shape in 1 tensor \(conv2.weight: checkpoint "
                  r"\(40, 20, 5, 5\), model \(50, 20, 5, 5\)\)$"),
        "classes": ({"checkpoint": str(tmp / "c7.pth")}, "model.reset_head: .* has 7 classes .*, the data 10; set "
                    "model.reset_head=true"),
        "folder": ({"checkpoint": str(tmp)}, r"model.checkpoint: .* is a folder but neither a sparsetrain export "
                   r"\(architecture.json and model.safetensors\), a run directory with a finished phase .* nor a "
                   r"DeepSpeed checkpoint"),
    }


BAD = ["missing", "not a checkpoint", "no weights", "noise", "empty", "module", "keys", "prefix", "shape", "classes",
       "folder"]


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoints_give_one_line_naming_the_field(tmp_path: Path, case: str) -> None:
    kwargs, message = _bad_inputs(tmp_path)[case]
    with pytest.raises(ValueError, match=message) as err:
        build_model(ModelConfig(name="lenet5", **kwargs), 1, 10, SHAPE)
    assert "\n" not in str(err.value), f"{case}: message spans lines"


def _meta_lenet5(classes: int = 10) -> torch.nn.Module:
    """The run's model as `plan.check_model` builds it: on the meta device, no weights."""
    with torch.device("meta"):
        return build_model(ModelConfig(name="lenet5"), 1, classes, SHAPE)


@pytest.mark.parametrize("case", BAD)
def test_the_early_check_refuses_a_bad_checkpoint_with_the_line_of_the_load(tmp_path: Path, case: str) -> None:
    """`check_checkpoint` (names and shapes only, on the meta model, before a run writes anything) gives the very line
    the load gives; a wrong-shape checkpoint used to pass every check before `open` and fail in the dense phase."""
    kwargs, _ = _bad_inputs(tmp_path)[case]
    cfg = ModelConfig(name="lenet5", **kwargs)
    with pytest.raises(ValueError) as loaded:
        build_model(cfg, 1, 10, SHAPE)
    with pytest.raises(ValueError) as early:
        check_checkpoint(_meta_lenet5(), cfg)
    assert str(early.value) == str(loaded.value), case


@pytest.mark.parametrize("name", list(_writers()))
def test_the_early_check_takes_every_checkpoint_layout_the_load_takes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _writers()[name](_lenet5(1).state_dict(), _lenet5(2).state_dict(), path)
    check_checkpoint(_meta_lenet5(), ModelConfig(name="lenet5", checkpoint=str(path)))
    if name in ("timm.pth.tar", "torchvision.pth"):
        check_checkpoint(_meta_lenet5(), ModelConfig(name="lenet5", checkpoint=str(path), checkpoint_ema=True))
    check_checkpoint(_meta_lenet5(classes=4), ModelConfig(name="lenet5", checkpoint=str(path), reset_head=True))


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    code = main(["run", f"out_dir={tmp_path / 'run'}", f"model.checkpoint={tmp_path / 'notes.pth'}",
                 "tracking.mode=disabled"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: model.checkpoint: ") and "\n" not in err, err


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.reset_head=true"], "model.reset_head: only applies with model.checkpoint"),
    (["model.checkpoint=x.pth", "model.pretrained=true"], "model.checkpoint: give either"),
])
def test_checkpoint_settings_are_checked_at_load(overrides: list[str], message: str) -> None:
    from sparsetrain.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_checkpoint_holding_nan_is_refused_at_load_naming_file_and_tensor(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """Trial 17: NaN weights read from model.checkpoint with phases.dense.epochs=0 ended in `non-finite values in the
    dense weights to hand on (fc1.weight); the dense phase diverged: lower optim.lr ...`, blaming a phase that took
    no step. Now the load says which file and tensor hold NaN (exit 4, as NaN/inf in the data), before any phase."""
    from tests.core.conftest import tiny_overrides

    torch.manual_seed(0)
    state = build_model(ModelConfig(name="lenet300_100"), 1, 10, (1, 8, 8)).state_dict()
    state["fc1.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, path)
    code = main(["run", *tiny_overrides(tmp_path / "run", "phases.dense.enabled=true", "phases.dense.epochs=0",
                                        f"model.checkpoint={path}")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 4 and errors == [f"error: non-finite values in the weights of {path} (fc1.weight); model.checkpoint "
                                    "holds NaN or inf: give one saved before the weights diverged (a run's last good "
                                    "checkpoint, weights/<phase>.safetensors)"], errors


def _mnv3_run(tmp_path: Path, classes: int, *overrides: str) -> list[str]:
    """`run --dry-run` args of a mobilenetv3_small_050 on a 4-class ImageFolder, from a checkpoint with `classes`."""
    from tests.helpers.image_tree import write_image_tree

    tree = write_image_tree(tmp_path / "ds", classes=4, per_class=(2, 1), side=16)
    torch.manual_seed(0)
    ckpt = tmp_path / f"c{classes}.pt"
    torch.save(build_model(ModelConfig(name="mobilenetv3_small_050"), 3, classes, (3, 16, 16)).state_dict(), ckpt)
    return ["run", f"out_dir={tmp_path / 'run'}", "data.source=imagefolder", f"data.path={tree}", "data.image_size=16",
            "model.name=mobilenetv3_small_050", f"model.checkpoint={ckpt}", "tracking.mode=disabled", *overrides,
            "--dry-run"]


def test_a_wrong_num_classes_names_each_count_and_keeps_a_fitting_classifier(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Trial 25: model.kwargs.num_classes=10 with a 4-class checkpoint on 4-class data said `has 4 classes ..., the
    data 10; set model.reset_head=true`: the 10 is the model's outputs, and the fix threw the trained classifier
    away. Now each count is named, and with a checkpoint that has the data's classes the fix is to leave
    model.kwargs.num_classes out."""
    from tests.helpers.cli_checks import one_error_line

    args = _mnv3_run(tmp_path, 4, "model.kwargs.num_classes=10")
    assert main(args) == 2
    assert one_error_line(capsys) == (
        f"error: model.kwargs.num_classes: 10 model outputs, but the data has 4 classes and {tmp_path / 'c4.pt'} has "
        "4 classes (classifier.weight (4, 1024)): leave model.kwargs.num_classes out (the trained classifier is then "
        "kept)")
    assert main(args[:-2] + ["--dry-run"]) == 0  # the same run without model.kwargs.num_classes loads it
    capsys.readouterr()


def test_reset_head_is_offered_only_when_the_checkpoint_has_other_classes(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from tests.helpers.cli_checks import one_error_line

    assert main(_mnv3_run(tmp_path, 7, "model.kwargs.num_classes=10")) == 2
    assert one_error_line(capsys) == (
        f"error: model.kwargs.num_classes: 10 model outputs, the data has 4 classes and {tmp_path / 'c7.pt'} has 7 "
        "classes (classifier.weight (7, 1024)); set model.reset_head=true to re-initialize the classifier (with "
        "model.kwargs.num_classes left out it gets the data's 4 outputs)")
    assert main(_mnv3_run(tmp_path, 7)) == 2
    assert one_error_line(capsys).endswith("has 7 classes (classifier.weight (7, 1024)), the data 4; set "
                                           "model.reset_head=true to re-initialize the classifier")


def test_reset_head_warns_when_it_discards_a_classifier_that_fits_the_data(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Trial 25: `num_classes=10 reset_head=true` on a 4-class checkpoint and 4-class data passed without a word."""
    assert main(_mnv3_run(tmp_path, 4, "model.kwargs.num_classes=10", "model.reset_head=true")) == 0
    warned = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines() if "model.reset_head" in line]
    assert warned == [
        f"warning: model.reset_head: {tmp_path / 'c4.pt'}'s classifier (classifier.weight (4, 1024)) has the data's 4 "
        "classes but is re-initialized for 10 outputs (model.kwargs.num_classes): its training is discarded; leave "
        "model.reset_head and model.kwargs.num_classes out to keep it"], warned
    assert main(_mnv3_run(tmp_path, 7, "model.reset_head=true")) == 0  # a classifier of other classes: no word
    assert "model.reset_head" not in capsys.readouterr().err
