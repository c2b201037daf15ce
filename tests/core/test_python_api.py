"""README "Python API": its block runs as shown, in a fresh process (cwd with the repository's configs/), and the
package exports the three functions lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sparsetrain
from sparsetrain.cli import main
from sparsetrain.config import ConfigError
from sparsetrain.errors import InputError
from tests.core.subprocess_runs import REPO, clean_env


def _readme_block() -> str:
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_python_api_block_runs_as_shown(tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(REPO / "configs")
    done = subprocess.run([sys.executable, "-c", _readme_block()], capture_output=True, text=True, cwd=tmp_path,
                          timeout=900, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "api" / "report.json").read_text())
    printed = done.stdout.splitlines()  # the run's own summary table, then the block's two prints
    metric, sparsity = printed[-2].split()
    assert float(metric) == report["phases"]["finetune"]["metric"] and float(sparsity) == report["sparsity"]
    assert printed[-1].startswith("tensor(["), done.stdout


def test_package_exports_the_api_lazily() -> None:
    from sparsetrain.config import load_config

    assert {"load_config", "run_pipeline", "load_compressed"} <= set(sparsetrain.__all__)
    assert sparsetrain.load_config.__doc__ and sparsetrain.run_pipeline.__doc__
    cfg = sparsetrain.load_config(None, ["out_dir=x"])
    assert cfg == load_config(None, ["out_dir=x"])
    code = "import sys, sparsetrain; print(sorted(m for m in ('torch', 'timm', 'deepspeed') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
    assert done.stdout.strip() == "[]", "import sparsetrain must stay light"


QUICKSTART = REPO / "configs" / "quickstart.yaml"


@pytest.mark.parametrize(("overrides", "line"), [
    (["train.batch_size=0"], "train.batch_size: "),
    (["model.imports=[no_such_file_xyz.py]"], "model.imports: cannot import "),
    (["model.name=nope_net"], "model.name: unknown timm model 'nope_net'"),  # `sparsetrain config` refuses it too
])
def test_load_config_raises_input_error_with_the_cli_line(overrides: list[str], line: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    """README "Python API": bad input to `load_config` raises `InputError` (a ValueError; ConfigError is one) with the
    CLI's one line. A fresh-user trial found InputError-but-not-ConfigError documented as ConfigError, and an
    unknown model.name accepted."""
    with pytest.raises(InputError) as info:
        sparsetrain.load_config(QUICKSTART, overrides)
    assert isinstance(info.value, ValueError) and str(info.value).startswith(line), info.value
    capsys.readouterr()
    assert main(["config", str(QUICKSTART), *overrides]) == 2
    assert capsys.readouterr().err == f"error: {info.value}\n"
    assert issubclass(ConfigError, InputError)


@pytest.mark.parametrize(("model", "line"), [
    ({"name": "nope_net"}, "model.name: unknown timm model 'nope_net'"),  # a config built in Python
    ({"checkpoint": "no_such_checkpoint.pth"}, "model.checkpoint: file or export folder not found"),
])
def test_run_pipeline_raises_input_error_for_bad_input(tmp_path: Path, model: dict, line: str) -> None:
    """README "Python API": `run_pipeline`'s errors are `sparsetrain.errors` classes, `InputError` for bad input (it
    raised a plain ValueError for these); the original error stays as `__cause__`."""
    cfg = sparsetrain.load_config(QUICKSTART, [f"out_dir={tmp_path / 'run'}"])
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=model)})
    with pytest.raises(InputError, match=f"^{line}"):
        sparsetrain.run_pipeline(cfg)


def test_two_cli_runs_in_one_process_both_train(tmp_path: Path) -> None:
    """`main(["run", ...])` destroys the process group at its end; a second run in the same process (a notebook, a
    test session) failed with "Group ... is not registered" while DeepSpeed kept the old groups cached. It must
    train like the first."""
    from tests.core.conftest import TINY

    small = [*TINY, "phases.sparsify.epochs=1", "report.accuracy_curve=false"]
    for name in ("first", "second"):
        assert main(["run", *small, f"out_dir={tmp_path / name}"]) == 0
    first, second = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("first", "second"))
    assert second["phases"]["finetune"]["metric"] == first["phases"]["finetune"]["metric"], (first, second)


def test_config_error_is_importable_where_the_readme_names_it() -> None:
    """README "Python API": errors are `sparsetrain.errors` classes, and `ConfigError` is one; a fresh-user trial
    found it only in `sparsetrain.config.loader` (`from sparsetrain.errors import ConfigError` failed)."""
    from sparsetrain import errors
    from sparsetrain.config import loader

    assert errors.ConfigError is sparsetrain.ConfigError is ConfigError is loader.ConfigError
    assert issubclass(errors.ConfigError, errors.InputError) and errors.ConfigError.exit_code == 2
    assert {"ConfigError", "InputError", "NonFiniteError", "ResumeError", "SetupError"} <= set(sparsetrain.__all__)


def test_run_pipeline_refuses_a_cfg_that_is_not_a_config_in_one_line(tmp_path: Path) -> None:
    """A recipe's path (or anything but a RunConfig or a mapping) raised a plain AttributeError ('str' object has no
    attribute 'out_dir'), not the README's `InputError`."""
    with pytest.raises(InputError, match=r"^cfg: expected a RunConfig \(from load_config\) or a mapping of a "
                                         r"recipe's settings, got str 'configs/quickstart.yaml'$"):
        sparsetrain.run_pipeline("configs/quickstart.yaml")


def test_run_pipeline_validates_a_mapping_as_a_recipe(tmp_path: Path) -> None:
    """`run_pipeline({"out_dir": ...})` raised AttributeError ('dict' object has no attribute 'out_dir'): a mapping
    is now read as a recipe's settings, its errors the recipe's (ConfigError), and a valid one runs as its
    RunConfig does."""
    from sparsetrain.config import config_to_dict
    from tests.core.conftest import tiny_config

    with pytest.raises(ConfigError, match=r"^regularizer\.alpha: unknown key \(did you mean regularizer\.alpha2\?\) "
                                          r"\(set to 1\)$"):
        sparsetrain.run_pipeline({"out_dir": str(tmp_path / "bad"), "regularizer": {"alpha": 1}})
    assert not (tmp_path / "bad").exists()
    settings = config_to_dict(tiny_config(tmp_path / "run", "phases.sparsify.epochs=1"))
    report = sparsetrain.run_pipeline(settings)
    assert report == json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["phases"]) == {"sparsify", "prune", "finetune"}, report["phases"]


@pytest.mark.parametrize(("call", "line"), [
    (lambda: sparsetrain.load_config(QUICKSTART, "optim.lr=0.1"),
     "overrides: expected a list of 'key=value' strings, got the string 'optim.lr=0.1'; write ['optim.lr=0.1']"),
    (lambda: sparsetrain.load_config(QUICKSTART, ["optim.lr=0.1", 3]),
     "overrides[1]: expected one of the 'key=value' strings, got int 3"),
    (lambda: sparsetrain.load_config(QUICKSTART, {"optim.lr": 0.1}),
     "overrides: expected a list of 'key=value' strings, got dict {'optim.lr': 0.1}"),
    (lambda: sparsetrain.run_pipeline(sparsetrain.load_config(QUICKSTART), phases="finetune"),
     "phases: expected a list of phase names, got the string 'finetune'; write ['finetune']"),
])
def test_a_string_where_a_list_belongs_is_refused_in_one_line(call, line: str) -> None:
    """A string for `overrides` or `phases` was read one character at a time: `override 'o': expected key=value`,
    `phase: unknown phase(s) e, f, i, n, t, u`. Refused (as `subprocess.run`'s argument list is strict), naming the
    argument and how to write it; tuples stay accepted."""
    with pytest.raises(InputError) as info:
        call()
    assert str(info.value) == line
    assert sparsetrain.load_config(QUICKSTART, ("optim.lr=0.1",)).optim.lr == 0.1


@pytest.mark.parametrize(("path", "line"), [
    (5, "path: expected a recipe file (str or Path) or None, got int 5"),
    ({"seed": 1}, "path: expected a recipe file (str or Path) or None, got dict {'seed': 1}; a mapping of settings is "
                  "run_pipeline's cfg"),
])
def test_load_config_refuses_a_path_that_is_not_one_in_one_line(path: object, line: str) -> None:
    """Stop 12 tail (`run_pipeline` ValueError -> InputError): run_pipeline's bad input was already InputError, but
    load_config(5) raised a bare TypeError from Path(); now the documented InputError naming `path`."""
    with pytest.raises(InputError) as info:
        sparsetrain.load_config(path)
    assert str(info.value) == line


PROCESS_STATE_SCRIPT = """
import logging, os, sys
import torch.distributed as dist
import sparsetrain
from tests.core.conftest import tiny_overrides

logging.basicConfig(format="USER %(name)s: %(message)s", level=logging.INFO)  # the caller's own logging
root, package = list(logging.getLogger().handlers), logging.getLogger("sparsetrain")
env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what the run sets for one process
before = (root, list(package.handlers), package.propagate, sys.excepthook, [os.environ.get(k) for k in env])
sparsetrain.run_pipeline(sparsetrain.load_config(None, tiny_overrides(sys.argv[1] + "/first")))
after = (logging.getLogger().handlers, package.handlers, package.propagate, sys.excepthook,
         [os.environ.get(k) for k in env])
names = ("root handlers", "sparsetrain handlers", "propagate", "sys.excepthook", "RANK...")
print("changed:", [name for name, old, new in zip(names, before, after) if old != new], dist.is_initialized())

# a process group the caller made before the call is used and left as it is
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=0, world_size=1)
group, hook = dist.group.WORLD, sys.excepthook
sparsetrain.run_pipeline(sparsetrain.load_config(None, tiny_overrides(sys.argv[1] + "/second")))
tensor = dist.all_reduce(__import__("torch").ones(1)) or 1
print("own group:", dist.is_initialized() and dist.group.WORLD is group, sys.excepthook is hook)
dist.destroy_process_group()
sys.excepthook = sys.__excepthook__  # torch's hook on the caller's own group is the caller's business
1 / 0
"""


def test_run_pipeline_leaves_the_process_as_it_found_it(tmp_path: Path) -> None:
    """README "Python API": `run_pipeline` destroys the process group it created (it stayed initialized), restores
    `sys.excepthook` (torch's hook prefixed the caller's later tracebacks with `[rank0]:`) and the RANK/WORLD_SIZE/...
    it set, and logs through the `sparsetrain` logger only (it replaced the caller's root handlers with a stderr
    one); a process group the caller created before is used and left alone. A fresh process: this is process-wide."""
    from tests.core.subprocess_runs import free_port

    done = subprocess.run([sys.executable, "-c", PROCESS_STATE_SCRIPT, str(tmp_path), str(free_port())],
                          capture_output=True, text=True, cwd=REPO, timeout=900, env=clean_env())
    assert "changed: [] False" in done.stdout.splitlines(), (done.stdout[-2000:], done.stderr[-3000:])
    assert "own group: True True" in done.stdout.splitlines(), (done.stdout[-2000:], done.stderr[-3000:])
    lines = done.stderr.splitlines()
    assert lines[-1] == "ZeroDivisionError: division by zero", lines[-5:]  # the caller's traceback, unprefixed
    assert sum(" training: 1 rank on cpu" in line for line in lines) == 2, lines  # once per run: not also via root
    assert not any(line.startswith("USER sparsetrain") for line in lines), lines
