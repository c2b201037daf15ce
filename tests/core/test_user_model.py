"""A user's own architecture through `model.imports`: a module that registers it with timm's `@register_model`
(`examples/my_net.py`) makes `model.name: my_net` work for `config`, `run` (1 and 2 ranks), `--dry-run`, Method 2,
`eval`, `export`, `bench latency` and `load_compressed` in a fresh process.

In-process tests import `examples/my_net.py` (one file per module name in a process); the CLI runs import a copy in
`tmp_path`, so that removing it afterwards shows what an export needs it for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.pipeline import run_pipeline
from tests.core.subprocess_runs import REPO, clean_env, run_cli, run_command

EXAMPLE = REPO / "examples" / "my_net.py"
QUICK = ["phases.dense.epochs=1", "phases.sparsify.epochs=1", "phases.finetune.epochs=1", "tracking.mode=disabled",
         "train.threads=1", "report.accuracy_curve=false"]


def _user_module(folder: Path) -> Path:
    """A copy of the example module in `folder` (a user's file outside the repository)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(EXAMPLE, folder / "my_net.py"))


def test_imports_are_relative_to_the_current_directory_and_stored_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule for every path setting (README "Paths"): in a recipe as on the command line, relative to the current
    directory (examples/my_net.yaml, run from the repository root, names examples/my_net.py)."""
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "examples" / "my_net.yaml")
    assert config.model.name == "my_net" and config.model.imports == [str(EXAMPLE)]
    monkeypatch.chdir(REPO / "examples")
    assert load_config(None, ["model.imports=[my_net.py]", "model.name=my_net"]).model.imports == [str(EXAMPLE)]
    assert load_config(None, ["model.imports=[json]"]).model.imports == ["json"]  # a module name stays as it is


def test_every_path_setting_of_a_recipe_is_relative_to_the_current_directory(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh-user trial: `imports: [net.py]` was taken from the recipe's folder and stored absolute, while
    `checkpoint: w.pth` (and data.path, ...) was taken from the current directory and stored as written."""
    from sparsetrain.config.loader import apply_overrides, load_raw, validate

    recipe = tmp_path / "recipes" / "mine.yaml"
    recipe.parent.mkdir()
    recipe.write_text("out_dir: runs/mine\nmodel: {name: my_net, imports: [net.py], checkpoint: w.pth}\n"
                      "data: {source: npz, path: ../data/x.npz}\nlaunch: {log_folder: logs}\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = validate(load_raw(recipe))  # validated without importing net.py (not written)
    assert config.model.imports == [str(work / "net.py")] and config.model.checkpoint == str(work / "w.pth")
    assert (config.data.path, config.out_dir, config.launch.log_folder) == (
        str(tmp_path / "data" / "x.npz"), str(work / "runs" / "mine"), str(work / "logs"))
    given = validate(apply_overrides({}, ["model.checkpoint=../w.pth", "data.path=~/x.npz"]))  # command line
    assert (given.model.checkpoint, given.data.path) == (str(tmp_path / "w.pth"), str(Path.home() / "x.npz"))


def test_config_command_checks_the_name_after_importing(capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the recipe's imports are relative to the current directory
    recipe = str(REPO / "examples" / "my_net.yaml")
    assert main(["config", recipe]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["imports"] == [str(EXAMPLE)], "config.yaml must hold the absolute path"
    assert main(["config", recipe, "model.name=my_nett"]) == 2
    assert "closest: my_net" in capsys.readouterr().err


@pytest.mark.parametrize(("entry", "says"), [
    ("missing.py", "file not found"),
    ("bad_syntax.py", "SyntaxError: '(' was never closed"),
    ("no_such_package_xyz.models", "ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    ("raises.py", "ImportError: needs torchvision>=99"),
])
def test_an_entry_that_cannot_be_imported_is_one_line_before_anything_is_written(
        entry: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad_syntax.py").write_text("x = (\n")
    (tmp_path / "raises.py").write_text("raise ImportError('needs torchvision>=99\\nsecond line')\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", f"model.imports=[{entry}]", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.imports: cannot import ") and entry in err and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists(), "nothing may be written before the imports succeeded"


def test_dry_run_and_method2_remove_filters_of_a_user_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Method 2 on the user's CNN: the generic graph analysis finds its channel groups and removes filters."""
    monkeypatch.chdir(REPO)  # the recipe's imports are relative to the current directory
    recipe = str(REPO / "examples" / "my_net.yaml")
    method2 = ["regularizer={name: grad_count}", "prune={rule: filters, filter_fraction: 0.5, round_to: 1}",
               "optim.name=sgd", "optim.lr=0.05", "deploy.formats=[]", "deploy.latency=false",
               "deploy.compact=false", *QUICK]
    assert main(["run", recipe, *method2, "--dry-run"]) == 0
    assert "total" in capsys.readouterr().out
    report = run_pipeline(load_config(recipe, [*method2, f"out_dir={tmp_path / 'm2'}"]))
    assert report["params"]["pruned"] < report["params"]["dense"], report["params"]
    layers = {layer for row in report["kept_filters"] for layer in row["layers"]}
    assert {"features.0", "features.3"} <= layers, report["kept_filters"]


def _fresh_python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -c script` in a new process outside the repository (nothing imported beforehand)."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=clean_env())


@pytest.mark.slow
def test_method1_end_to_end_on_a_user_model(tmp_path: Path) -> None:
    """Run (digits, 1 epoch per phase), eval, export, bench latency; then `load_compressed` in a fresh process gives
    what onnxruntime gives, and without the module only the formats that need no Python class load."""
    module = _user_module(tmp_path / "mine")
    out = tmp_path / "run"
    done = run_cli([str(REPO / "configs" / "quickstart.yaml"), "model.name=my_net", f"model.imports=[{module}]",
                    f"out_dir={out}", *QUICK, "deploy.latency=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    arch = json.loads((out / "export" / "architecture.json").read_text())
    assert arch["meta"]["model_imports"] == [str(module)]
    # the three commands one after another in one fresh process, through the CLI's `main` (what `python -m
    # sparsetrain` calls): a process each would only add its ~5 s of imports; each must exit 0
    commands = [["eval", str(out), "--json"], ["export", str(out)],
                ["bench", "latency", str(out), "--repeats", "3", "--out", str(tmp_path / "bench")]]
    script = ("import sys\nfrom sparsetrain.cli import main\n"
              f"for command in {commands!r}:\n"
              "    print('exit', command[0], main(command), file=sys.stderr, flush=True)\n")
    done = run_command([sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr[-3000:]
    codes = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("exit ")]
    assert codes == [[command[0], "0"] for command in commands], done.stderr[-3000:]
    table = json.loads(next((tmp_path / "bench").glob("latency-*.json")).read_text())
    assert table["timed"], table
    script = (
        "import numpy as np, torch, onnxruntime as ort, sparsetrain\n"
        f"model = sparsetrain.load_compressed({str(out)!r})\n"
        "x = torch.randn(5, 1, 8, 8)\n"
        "with torch.no_grad():\n"
        "    y = model(x).numpy()\n"
        f"s = ort.InferenceSession({str(out / 'export' / 'model.onnx')!r}, providers=['CPUExecutionProvider'])\n"
        "z = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]\n"
        "print(model.export_format, float(np.abs(y - z).max()))\n"
    )
    done = _fresh_python(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    fmt, diff = done.stdout.split()
    assert fmt == "safetensors" and float(diff) <= 1e-4, done.stdout
    module.unlink()  # the export needs the module for its torch formats only
    # one fresh process: the ONNX file loads (printed first), then the torch format fails on the missing module
    # (the ONNX load imports no model module, so the second load starts as in a process of its own)
    script = (f"import sparsetrain\nonnx = sparsetrain.load_compressed({str(out)!r}, 'onnx')\n"
              "print(onnx.export_format, flush=True)\n"
              f"sparsetrain.load_compressed({str(out)!r}, 'safetensors')\n")
    without = _fresh_python(script, tmp_path)
    assert without.stdout.split() == ["onnx"], without.stderr[-2000:]
    assert without.returncode == 1 and f"model.imports: cannot import '{module}' (file not found" in \
        without.stderr, without.stderr


_TWO_RANKS = ["data.source=digits", "model.name=my_net", "phases.dense.enabled=false", *QUICK, "deploy.formats=[]",
              "deploy.latency=false", "deploy.compact=false"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(module, out_dir) of a finished 2-rank run of the user's model, its module a copy outside the repository."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    module, out = _user_module(tmp / "mine"), tmp / "run"
    done = run_cli([*_TWO_RANKS, f"model.imports=[{module}]", f"out_dir={out}"], nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return module, out


def test_two_ranks_each_import_the_module(two_rank_run: tuple[Path, Path]) -> None:
    module, out = two_rank_run
    assert (out / "report.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["imports"] == [str(module)]


def test_changed_imports_do_not_block_a_resume(tmp_path: Path, two_rank_run: tuple[Path, Path]) -> None:
    """model.imports says where the code is found: a moved file resumes the same run (a copy of the finished 2-rank
    run, re-run with the module's copy in another folder)."""
    out = tmp_path / "run"
    shutil.copytree(two_rank_run[1], out)
    moved = _user_module(tmp_path / "b")
    done = run_cli([*_TWO_RANKS, f"model.imports=[{moved}]", f"out_dir={out}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already complete" in done.stderr + done.stdout


def test_user_model_factory_receives_the_data_sizes() -> None:
    """What sparsetrain passes: the data's classes and channels (img_size only to fixed-size models)."""
    from sparsetrain.config.schema import ModelConfig
    from sparsetrain.models.factory import build_model

    model = build_model(ModelConfig(name="my_net", imports=[str(EXAMPLE)]), 3, 7, (3, 12, 12))
    assert model.head.out_features == 7 and model.features[0].in_channels == 3
    assert model(torch.zeros(1, 3, 12, 12)).shape == (1, 7)
    np.testing.assert_equal(type(model).__module__, "my_net")


def test_readme_user_module_and_command_work_as_shown(tmp_path: Path) -> None:
    """README 'Your own model': its module, saved as my_net.py, and its command (as `config`, which builds the
    model and checks it takes the data, without training)."""
    section = (REPO / "README.md").read_text().split("## Your own model", 1)[1]
    module = section.split("```python\n", 1)[1].split("```", 1)[0]
    command = section.split("```bash\n", 1)[1].split("```", 1)[0].split()
    assert command[:2] == ["sparsetrain", "run"] and "model.imports=[my_net.py]" in command, command
    (tmp_path / "my_net.py").write_text(module)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    done = subprocess.run([sys.executable, "-m", "sparsetrain", "config", *command[2:]], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600, env=clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert yaml.safe_load(done.stdout)["model"]["imports"] == [str(tmp_path / "my_net.py")]


_NET = """
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes=10{chans}):
        super().__init__()
        self.head = nn.LazyLinear(num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))

default_cfgs = generate_default_cfgs({{"{name}": {{}}}})

@register_model
def {name}({factory_args}):
    return {body}
"""
_USER_MODELS = {  # a factory without **kwargs; a class without in_chans; a class that takes what sparsetrain passes
    "tiny_nokw": dict(chans=", in_chans=1", factory_args="pretrained=False", body="Net()"),
    "tiny_nochans": dict(chans="", factory_args="pretrained=False, **kwargs",
                         body='build_model_with_cfg(Net, "tiny_nochans", pretrained, **kwargs)'),
    "tiny_sized": dict(chans=", in_chans=1", factory_args="pretrained=False, **kwargs",
                       body='build_model_with_cfg(Net, "tiny_sized", pretrained, **kwargs)'),
}


@pytest.mark.parametrize(("name", "overrides", "error"), [
    ("tiny_nokw", [], "error: model.name: tiny_nokw does not take the argument 'pretrained_cfg' it is given "
     "(tiny_nokw() got an unexpected keyword argument 'pretrained_cfg'); timm.create_model passes pretrained_cfg, "
     "pretrained_cfg_overlay, cache_dir to every factory: give it **kwargs and build the model with timm's "
     'build_model_with_cfg, which takes them; see README "Your own model"'),
    ("tiny_nochans", [], "error: model.name: tiny_nochans does not take the argument 'in_chans' it is given "
     "(Net.__init__() got an unexpected keyword argument 'in_chans'); sparsetrain passes in_chans (the data's "
     'channels): the model\'s class must take it; see README "Your own model"'),
    ("tiny_sized", ["model.kwargs.depth=3"], "error: model.kwargs: tiny_sized does not take the arguments it was "
     "given (Net.__init__() got an unexpected keyword argument 'depth'); `sparsetrain config --schema model` "
     "describes model.kwargs"),
])
def test_an_argument_the_user_did_not_set_names_model_name_and_who_passes_it(
        name: str, overrides: list[str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: a factory without **kwargs (or a class without in_chans) was blamed on model.kwargs, which
    the user had not set; model.kwargs is named only for an argument it holds."""
    module = tmp_path / f"{name}.py"
    module.write_text(_NET.format(name=name, **_USER_MODELS[name]))
    capsys.readouterr()
    code = main(["config", str(REPO / "configs" / "quickstart.yaml"), f"model.name={name}",
                 f"model.imports=[{module}]", *overrides])
    out, err = capsys.readouterr()
    assert (code, out, err.strip()) == (2, "", error), err
