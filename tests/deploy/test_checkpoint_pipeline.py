"""A model trained outside sparsetrain, compressed by it: dense.epochs=0 measures the checkpoint, and the
sparsify / prune / fine-tune phases continue from its weights (also from a sparsetrain export)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from sparsetrain.config.schema import DataConfig, ModelConfig
from sparsetrain.data import build_data
from sparsetrain.deploy.reexport import export_run
from sparsetrain.models.factory import build_model
from sparsetrain.pipeline import run_pipeline
from sparsetrain.pruning.sharded_masks import load_full_masks
from tests.core.conftest import tiny_config
from tests.core.subprocess_runs import run_command


def _batch(batch: tuple) -> tuple:
    return batch  # InMemoryDataset.__getitems__ already gathers (inputs, targets)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """LeNet-300-100 trained on digits by a plain torch loop, saved as a timm-style training checkpoint."""
    torch.manual_seed(3)
    data = build_data(DataConfig(source="digits"), seed=0)
    model = build_model(ModelConfig(name="lenet300_100"), data.in_chans, data.num_classes, data.input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in DataLoader(data.train, batch_size=64, shuffle=True, collate_fn=_batch):  # one epoch
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "lenet300_100", "state_dict": model.state_dict(), "optimizer": {}}, path)
    return {"path": path, "state": model.state_dict(), "accuracy": _accuracy(model, data.test)}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, test: torch.utils.data.Dataset) -> float:
    model.eval()
    correct = total = 0
    for x, y in DataLoader(test, batch_size=256, collate_fn=_batch):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


EVAL_THEN_COMPRESS = ("phases.dense.enabled=true", "phases.dense.epochs=0", "phases.sparsify.enabled=false",
                      "prune.rule=global_sparsity", "prune.sparsity=0.5", "phases.finetune.epochs=0.2")


def test_dense_metric_is_the_checkpoints_and_pruning_starts_from_its_weights(trained: dict, tmp_path: Path) -> None:
    checkpoint = tmp_path / "own_copy.pth.tar"
    shutil.copy(trained["path"], checkpoint)
    report = run_pipeline(tiny_config(tmp_path, f"model.checkpoint={checkpoint}", *EVAL_THEN_COMPRESS))
    assert abs(report["phases"]["dense"]["metric"] - trained["accuracy"]) <= 0.01, \
        f"dense.metric {report['dense']['metric']:.4f} vs plain torch {trained['accuracy']:.4f}"
    assert report["phases"]["dense"]["steps"] == 0
    pruned = load_file(str(tmp_path / "weights" / "prune.safetensors"))
    masks = load_full_masks(tmp_path / "weights" / "masks.safetensors")
    for name, tensor in trained["state"].items():
        expected = tensor * masks[name] if name in masks else tensor
        assert torch.equal(pruned[name], expected), f"{name}: pruning did not start from the checkpoint"
    assert report["phases"]["finetune"]["metric"] > 50, "fine-tuning from a trained model should stay far above chance"
    checkpoint.unlink()  # a finished run no longer needs its starting checkpoint
    (tmp_path / "export" / "model.safetensors").unlink()
    export_run(tmp_path)
    assert torch.equal(load_file(str(tmp_path / "export" / "model.safetensors"))["fc1.weight"],
                       load_file(str(tmp_path / "weights" / "finetune.safetensors"))["fc1.weight"])


@pytest.fixture(scope="module")
def zero3(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained LeNet-300-100 as a DeepSpeed ZeRO-3 checkpoint folder, saved by a real (one-rank, gloo) engine."""
    out = tmp_path_factory.mktemp("zero3") / "ds_checkpoints"
    proc = run_command([sys.executable, "-m", "tests.helpers.zero_checkpoint", str(trained["path"]), str(out), "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {"latest", "global_step1", "zero_to_fp32.py"}, list(out.iterdir())
    return out


@pytest.mark.parametrize("given", ["folder", "tag"])
def test_a_deepspeed_zero3_checkpoint_starts_the_run(trained: dict, zero3: Path, tmp_path: Path, given: str,
                                                     capfd: pytest.CaptureFixture) -> None:
    """Trial 16: users' own DeepSpeed training writes ZeRO checkpoints (global_stepN/ with each rank's partitions,
    latest, zero_to_fp32.py); model.checkpoint refused the folder. Now DeepSpeed's zero_to_fp32 reads it."""
    path = zero3 if given == "folder" else zero3 / "global_step1"
    report = run_pipeline(tiny_config(tmp_path, f"model.checkpoint={path}", "phases.dense.enabled=true",
                                      "phases.dense.epochs=0"), ["dense"])
    assert abs(report["phases"]["dense"]["metric"] - trained["accuracy"]) <= 0.01, \
        f"dense.metric {report['phases']['dense']['metric']:.4f} vs the model's {trained['accuracy']:.4f}"
    said = [line.partition(" ")[2] for line in capfd.readouterr().err.splitlines() if " model.checkpoint:" in line]
    assert said == [f"model.checkpoint: loaded 6 tensors (50,610 values) from {path} (DeepSpeed ZeRO checkpoint "
                    "global_step1, consolidated by DeepSpeed's zero_to_fp32) into lenet300_100"], said


def test_a_zero3_checkpoint_that_does_not_fit_is_refused_before_the_run_writes(zero3: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        run_pipeline(tiny_config(out, f"model.checkpoint={zero3}", "model.kwargs={hidden: [200, 100]}"))
    assert str(err.value) == (f"model.checkpoint: {zero3} does not fit lenet300_100: wrong shape in 3 tensors "
                              "(fc1.weight: checkpoint (300, 64), model (200, 64), fc1.bias: checkpoint (300,), "
                              "model (200,), fc2.weight: checkpoint (100, 300), model (100, 200))")
    assert not (out / "state.json").exists()


def test_one_rank_file_of_a_zero_checkpoint_names_the_folder(zero3: Path, tmp_path: Path) -> None:
    rank_file = zero3 / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    with pytest.raises(ValueError) as err:
        run_pipeline(tiny_config(tmp_path, f"model.checkpoint={rank_file}"))
    assert str(err.value) == (f"model.checkpoint: {rank_file} is one rank's file of a DeepSpeed ZeRO checkpoint; "
                              f"give the folder ({zero3}): the weights of every rank are consolidated with "
                              "DeepSpeed's zero_to_fp32")


@pytest.fixture(scope="module")
def zero0(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained LeNet-300-100 as a DeepSpeed ZeRO-0 checkpoint folder, saved by a real (one-rank, gloo) engine:
    DeepSpeed writes stage 0 as global_step1/mp_rank_00_model_states.pt (the whole module, optimizer inside) and
    latest, with no per-rank optimizer files and no zero_to_fp32.py."""
    out = tmp_path_factory.mktemp("zero0") / "ds_checkpoints"
    proc = run_command([sys.executable, "-m", "tests.helpers.zero_checkpoint", str(trained["path"]), str(out), "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["latest", "mp_rank_00_model_states.pt"], \
        sorted(out.rglob("*"))
    return out


@pytest.mark.parametrize("given", ["folder", "tag"])
def test_a_deepspeed_zero0_checkpoint_starts_the_run(trained: dict, zero0: Path, tmp_path: Path, given: str,
                                                     capfd: pytest.CaptureFixture) -> None:
    """Trial 18: ZeRO-1/2/3 folders were taken, a ZeRO-0 folder (no *_optim_states.pt) was refused as 'neither a
    sparsetrain export ... nor a DeepSpeed ZeRO checkpoint'. Its module states are read as DeepSpeed saved them."""
    path = zero0 if given == "folder" else zero0 / "global_step1"
    report = run_pipeline(tiny_config(tmp_path, f"model.checkpoint={path}", "phases.dense.enabled=true",
                                      "phases.dense.epochs=0"), ["dense"])
    assert abs(report["phases"]["dense"]["metric"] - trained["accuracy"]) <= 0.01, \
        f"dense.metric {report['phases']['dense']['metric']:.4f} vs the model's {trained['accuracy']:.4f}"
    said = [line.partition(" ")[2] for line in capfd.readouterr().err.splitlines() if " model.checkpoint:" in line]
    assert said == [f"model.checkpoint: loaded 6 tensors (50,610 values) from {path} (DeepSpeed ZeRO 0 checkpoint "
                    "global_step1, the module DeepSpeed saved whole) into lenet300_100"], said


def test_a_zero1_tag_folder_without_its_optimizer_partitions_is_refused(zero0: Path, tmp_path: Path) -> None:
    """Model states alone are taken as ZeRO 0 only when DeepSpeed recorded stage 0: a ZeRO-1 folder that lost its
    *_optim_states.pt (the fp32 weights) is one line, not its lower-precision module copy read silently."""
    states = torch.load(zero0 / "global_step1" / "mp_rank_00_model_states.pt", weights_only=False)
    states["ds_config"]["zero_optimization"]["stage"] = 1
    tag = tmp_path / "ds" / "global_step7"
    tag.mkdir(parents=True)
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError) as err:
        run_pipeline(tiny_config(tmp_path / "run", f"model.checkpoint={tag}"))
    assert str(err.value) == (f"model.checkpoint: {tag} is a DeepSpeed ZeRO stage 1 checkpoint without its optimizer "
                              "partitions (*_optim_states.pt), which hold the fp32 weights; give the tag folder as the "
                              "training saved it")


@pytest.mark.parametrize("stage", [0, 3])
def test_eval_measures_a_deepspeed_checkpoint_folder(trained: dict, zero0: Path, zero3: Path, stage: int,
                                                     capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain eval` took checkpoint files only ('is not a run directory, export folder or checkpoint file');
    a DeepSpeed folder of either kind now measures the model it holds, read as model.checkpoint reads it."""
    from sparsetrain.cli import main

    folder = zero0 if stage == 0 else zero3
    capsys.readouterr()
    assert main(["eval", str(folder), "model.name=lenet300_100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "checkpoint" and result["params"]["total"] == 50_610, result
    assert abs(result["metrics"]["metric"] - trained["accuracy"]) <= 0.01, result["metrics"]
    rank_file = next((folder / "global_step1").glob("*_model_states.pt"))  # ZeRO 3: zero_pp_rank_0_mp_rank_00_...
    assert main(["eval", str(rank_file), "model.name=lenet300_100"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"is one rank's file of a DeepSpeed ZeRO checkpoint; give the "
                                                    f"folder ({folder}): " + (
        "the module DeepSpeed saved whole is read from it" if stage == 0 else
        "the weights of every rank are consolidated with DeepSpeed's zero_to_fp32"))


@pytest.fixture(scope="module")
def compressed(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A sparsetrain run (directory, report) that compressed the trained LeNet-300-100 checkpoint."""
    out = tmp_path_factory.mktemp("compressed") / "a"
    return out, run_pipeline(tiny_config(out, f"model.checkpoint={trained['path']}", *EVAL_THEN_COMPRESS))


def test_a_sparsetrain_export_is_a_checkpoint_too(compressed: tuple[Path, dict], tmp_path: Path) -> None:
    run, first = compressed
    second = run_pipeline(tiny_config(tmp_path / "b", f"model.checkpoint={run / 'export'}",
                                      *EVAL_THEN_COMPRESS[:3], "phases.finetune.enabled=false",
                                      "prune={rule: global_threshold, threshold: 0}"))
    assert abs(second["phases"]["dense"]["metric"] - first["phases"]["finetune"]["metric"]) <= 0.01
    assert second["sparsity"] == pytest.approx(first["sparsity"]), "the export's exact zeros were not kept"


@pytest.mark.parametrize("inside", ["", "export", "export/model.safetensors", "weights/finetune.safetensors"])
def test_weights_of_a_run_with_another_model_name_it(compressed: tuple[Path, dict], inside: str) -> None:
    checkpoint = compressed[0] / inside  # the run's architecture.json / config.yaml say lenet300_100
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(name="resnet18", checkpoint=str(checkpoint)), 1, 10, (1, 8, 8))
    assert str(err.value) == (f"model.checkpoint: {checkpoint} holds a lenet300_100 model; set "
                              "model.name=lenet300_100 (the config has resnet18)")


def _with_programs(run: Path, copy: Path) -> Path:
    """A copy of `run` whose export also holds model.pt2 and model.onnx (tiny_config writes neither)."""
    from sparsetrain.deploy.program import trace, write_onnx, write_program

    shutil.copytree(run, copy)
    example = torch.zeros(1, 4)
    program, _ = trace(torch.nn.Linear(4, 2).eval(), example)
    write_program(program, copy / "export" / "model.pt2")
    write_onnx(program, example, copy / "export" / "model.onnx", opset=18)
    return copy


@pytest.mark.parametrize(("inside", "kind", "instead"), [
    ("export/model.bitmask.safetensors", "is a bitmask export file", "export/model.safetensors"),
    ("export/model.onnx", "is an ONNX model", "export/model.safetensors"),
    ("export/model.pt2", "is a torch.export program", "export/model.safetensors"),
    ("weights/masks.safetensors", "is a pruning mask file", "weights/<phase>.safetensors"),
])
def test_other_files_of_a_run_say_which_file_to_give(compressed: tuple[Path, dict], tmp_path: Path, inside: str,
                                                     kind: str, instead: str) -> None:
    run = _with_programs(compressed[0], tmp_path / "run")
    checkpoint = run / inside
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(name="lenet300_100", checkpoint=str(checkpoint)), 1, 10, (1, 8, 8))
    message = str(err.value)
    assert message.startswith(f"model.checkpoint: {checkpoint} {kind}") and "\n" not in message, message
    assert str(run / instead) in message, message


def test_a_run_directory_without_export_gives_its_final_weights(compressed: tuple[Path, dict], tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(compressed[0], run, ignore=shutil.ignore_patterns("export"))
    with caplog.at_level("INFO"):
        model = build_model(ModelConfig(name="lenet300_100", checkpoint=str(run)), 1, 10, (1, 8, 8))
    final = load_file(str(run / "weights" / "finetune.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())
    assert f"from {run} (weights/finetune.safetensors, its last finished phase)" in caplog.text
    for given, file in ((compressed[0], "export/model.safetensors"), (compressed[0] / "export", "model.safetensors")):
        caplog.clear()
        with caplog.at_level("INFO"):
            build_model(ModelConfig(name="lenet300_100", checkpoint=str(given)), 1, 10, (1, 8, 8))
        assert f"from {given} ({file}) into lenet300_100" in caplog.text, caplog.text  # the file read, not the folder


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after sparsity training and pruning (its final phase, finetune, has not run)."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    run_pipeline(tiny_config(out, "phases.sparsify.epochs=0.3"), ["sparsify", "prune"])
    return out


@pytest.mark.parametrize("export", [True, False])
def test_an_unfinished_run_says_which_phase_it_gives(unfinished: Path, tmp_path: Path, export: bool,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run", ignore=None if export else
                               shutil.ignore_patterns("export")))
    with caplog.at_level("INFO"):
        model = build_model(ModelConfig(name="lenet300_100", checkpoint=str(run)), 1, 10, (1, 8, 8))
    prune = load_file(str(run / "weights" / "prune.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in prune.items())
    lines = [r.getMessage() for r in caplog.records if "unfinished run" in r.getMessage()]
    source = "export" if export else "weights/prune.safetensors"
    assert lines == [f"model.checkpoint: {run} is an unfinished run (its final phase finetune has not finished; last "
                     f"finished: prune): taking the prune phase's weights ({source}); to start from another finished "
                     f"phase give {run}/weights/sparsify.safetensors"], caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        build_model(ModelConfig(name="lenet300_100", checkpoint=str(run / "weights" / "sparsify.safetensors")),
                    1, 10, (1, 8, 8))
    assert "unfinished run" not in caplog.text, "a phase's file given explicitly is not a surprise"


def test_a_run_from_an_unfinished_run_warns_once(unfinished: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """The dense phase evaluates the checkpoint and sparsity training starts from it again: the note that it is an
    unfinished run's, and where the weights came from, are said once, the note as a `warning:` line."""
    capsys.readouterr()
    run_pipeline(tiny_config(tmp_path / "from_unfinished", f"model.checkpoint={unfinished}",
                             "phases.dense.enabled=true", "phases.dense.epochs=0", "phases.sparsify.epochs=0.1",
                             "phases.finetune.epochs=0.1"))
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "is an unfinished run" in line]
    assert len(notes) == 1 and notes[0].split(" ", 1)[1].startswith(f"warning: model.checkpoint: {unfinished} is an "
                                                                     "unfinished run"), notes
    assert len([line for line in err if "model.checkpoint: loaded" in line]) == 1, err
