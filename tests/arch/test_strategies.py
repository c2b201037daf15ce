"""Strategies own their settings: a key the chosen strategy does not read fails at load, a new strategy is one
module + one settings class + one registry entry, and regularizer.kernel still works for one release."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsetrain.config import ConfigError, load_config
from sparsetrain.config.describe import schema_rows
from sparsetrain.config.schema import RunConfig
from sparsetrain.pipeline import run_pipeline
from tests.arch import toy_l1, toy_rowwise
from tests.core.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("recipe", "override", "expected"), [
    ("unet_synthetic.yaml", "regularizer.beta=50", "regularizer.beta: not a setting of regularizer.name='grad_count'"),
    ("quickstart.yaml", "regularizer.lambda_s=1", "regularizer.lambda_s: not a setting of regularizer.name='l0_exp'"),
    ("lenet300_mnist.yaml", "prune.filter_fraction=0.3", "prune.filter_fraction: not a setting of "
     "prune.rule='global_sparsity'"),
    ("unet_synthetic.yaml", "regularizer.gradient_path=autograd", "regularizer.gradient_path: Input should be 'hook'"),
    ("unet_synthetic.yaml", "prune.grouped_conv=groups", "prune.grouped_conv: Input should be 'within_groups' or "
     "'whole_groups'"),
])
def test_a_setting_the_strategy_does_not_read_fails_at_load(recipe: str, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / recipe, [override, "data.path=x"])
    assert str(info.value).startswith(expected) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(("recipe", "overrides", "expected"), [
    # the rule chosen on the command line, the recipe's old setting left over: the hint gives the chosen rule's section
    ("quickstart.yaml", ["prune.rule=layer_sparsity"], "prune.threshold: not a setting of prune.rule='layer_sparsity', "
     "chosen on the command line (its settings: schedule, gradual, sparsity, layer_sparsity); the recipe's prune "
     "section sets threshold (read by rule=global_threshold|layer_threshold); to switch to rule=layer_sparsity, give "
     "the whole section, e.g. prune='{rule: layer_sparsity, sparsity: ...}'"),
    ("lenet300_mnist.yaml", ["rule=filters"], "prune.sparsity: not a setting of prune.rule='filters', chosen on the "
     "command line (its settings: filter_norm_threshold, filter_fraction, max_filter_fraction, channel_score, "
     "round_to, allow_inexact, grouped_conv); the recipe's prune section sets sparsity (read by "
     "rule=global_sparsity|layer_sparsity); to switch to rule=filters, give the whole section, e.g. "
     "prune='{rule: filters, filter_norm_threshold: ...}'"),
    ("quickstart.yaml", ["regularizer.name=l2"], "regularizer.alpha0: not a setting of regularizer.name='l2', chosen "
     "on the command line (its settings: alpha2, gradient_path, backend); the recipe's regularizer section sets alpha0 "
     "(read by name=l0_exp); to switch to name=l2, give the whole section, e.g. regularizer='{name: l2}'"),
    # both on the command line: the setting's readers, and what the chosen rule takes instead
    ("quickstart.yaml", ["prune.rule=global_sparsity", "prune.threshold=0.1"], "prune.threshold: not a setting of "
     "prune.rule='global_sparsity', chosen on the command line (its settings: schedule, gradual, sparsity); threshold "
     "is read by rule=global_threshold|layer_threshold; for rule=global_sparsity give e.g. "
     "prune='{rule: global_sparsity, sparsity: ...}'"),
    # the user's own key is named before the recipe's leftover (alpha0 here)
    ("quickstart.yaml", ["regularizer.name=l2", "regularizer.beta=5"], "regularizer.beta: not a setting of "
     "regularizer.name='l2', chosen on the command line (its settings: alpha2, gradient_path, backend); beta is read "
     "by name=l0_exp; for name=l2 give e.g. regularizer='{name: l2}'"),
    # the rule from the recipe, the setting from the command line: switch to a rule that reads it
    ("lenet300_mnist.yaml", ["prune.threshold=0.1"], "prune.threshold: not a setting of prune.rule='global_sparsity' "
     "(its settings: schedule, gradual, sparsity); read by rule=global_threshold|layer_threshold; to switch, give the "
     "whole section, e.g. prune='{rule: global_threshold, threshold: ...}'"),
])
def test_the_hint_names_the_rule_chosen_on_the_command_line(recipe: str, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / recipe, [*overrides, "data.path=x"])
    assert str(info.value) == expected


def _child_recipe(tmp_path: Path, body: str) -> Path:
    """A recipe deriving from configs/quickstart.yaml (regularizer l0_exp with alpha0/beta, prune global_threshold)."""
    path = tmp_path / "child.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'quickstart.yaml'}\n{body}\n")
    return path


def test_a_recipe_naming_another_strategy_replaces_the_base_section(tmp_path: Path) -> None:
    """The base's alpha0/beta (l0_exp) and threshold (global_threshold) are not merged into the new strategy."""
    cfg = load_config(_child_recipe(tmp_path, "regularizer: {name: grad_count, lambda_s: 5.0e-3}\n"
                                              "prune: {rule: filters, filter_fraction: 0.25}"))
    assert (cfg.regularizer.name, cfg.regularizer.lambda_s, cfg.regularizer.count_window) == ("grad_count", 5e-3, 50)
    assert (cfg.prune.rule, cfg.prune.filter_fraction) == ("filters", 0.25)
    # the same strategy (named or not) still merges key by key
    cfg = load_config(_child_recipe(tmp_path, "regularizer: {name: l0_exp, beta: 5}\nprune: {threshold: 0.5}"))
    assert (cfg.regularizer.alpha0, cfg.regularizer.beta, cfg.prune.threshold) == (2e-4, 5, 0.5)


def test_a_dotted_strategy_switch_is_refused_with_the_new_strategys_section() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / "quickstart.yaml", ["regularizer.name=grad_count"])
    assert str(info.value).startswith("regularizer.alpha0: not a setting of regularizer.name='grad_count', chosen on "
                                      "the command line"), str(info.value)
    assert str(info.value).endswith("to switch to name=grad_count, give the whole section, e.g. "
                                    "regularizer='{name: grad_count, count_tau: ...}'"), str(info.value)
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["regularizer={name: grad_count, lambda_s: 5e-3}"])
    assert (cfg.regularizer.name, cfg.regularizer.lambda_s) == ("grad_count", 5e-3)


@pytest.mark.parametrize("command", [["run"], ["sweep", "--cluster", "debug", "--no-wait"]])
def test_cli_run_and_sweep_refuse_an_unread_setting_in_one_line(command: list[str], tmp_path: Path) -> None:
    value = "regularizer.beta=50" if command == ["run"] else "regularizer.beta=10,20"
    result = subprocess.run([sys.executable, "-m", "sparsetrain", *command, "configs/unet_synthetic.yaml", value,
                             f"out_dir={tmp_path}"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    where = "" if command == ["run"] else "sweep point beta=10: "  # a sweep names the point it refuses
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}regularizer.beta: not a setting of"), result.stderr
    assert not any(tmp_path.iterdir()), "a run started although the config was refused"


@pytest.mark.parametrize(("kernel", "path", "backend"), [
    ("autograd", "autograd", "torch"), ("torch", "hook", "torch"), ("triton", "hook", "triton"),
    ("auto", "hook", "auto"),
])
def test_the_old_kernel_key_still_works_with_a_warning(kernel: str, path: str, backend: str) -> None:
    with pytest.warns(FutureWarning, match=f"regularizer.kernel={kernel} is deprecated"):
        cfg = load_config(None, [f"regularizer.kernel={kernel}"])
    assert (cfg.regularizer.gradient_path, cfg.regularizer.backend) == (path, backend)
    with pytest.raises(ConfigError, match="^regularizer.kernel: replaced by"):
        load_config(None, [f"regularizer.kernel={kernel}", "regularizer.backend=torch"])


def test_grad_count_has_no_autograd_path_even_through_the_old_key() -> None:
    with pytest.raises(ConfigError, match="^regularizer.gradient_path: Input should be 'hook'"), \
            pytest.warns(FutureWarning):
        load_config(None, ["regularizer={name: grad_count}", "regularizer.kernel=autograd"])


def test_every_strategy_setting_is_listed_once_with_its_readers() -> None:
    rows = {row.path: row for row in schema_rows(RunConfig)}
    assert rows["regularizer.beta"].description.startswith("[name=l0_exp]")
    assert rows["regularizer.strength"].description.startswith("[name=toy_l1]"), "registered strategy not listed"
    assert rows["prune.threshold"].description.startswith("[rule=global_threshold|layer_threshold]")
    assert "[" not in rows["regularizer.alpha2"].description, "alpha2 is read by every strategy"


def test_toy_regularizer_runs_end_to_end(tmp_path: Path) -> None:
    """The toy l1 strategy trains through the real pipeline (DeepSpeed engine, gradient hook, prune, fine-tune)."""
    assert toy_l1.ToyL1Config in (type(load_config(None, ["regularizer={name: toy_l1}"]).regularizer),)
    with pytest.raises(ConfigError, match=r"^regularizer.beta: not a setting of regularizer.name='toy_l1'"):
        load_config(None, ["regularizer={name: toy_l1}", "regularizer.beta=3"])
    reports, weights = {}, {}
    for strength in (0.0, 1e-3):
        out = tmp_path / f"s{strength}"
        cfg = tiny_config(out, f"regularizer={{name: toy_l1, strength: {strength}}}", "phases.sparsify.epochs=1",
                          "phases.finetune.epochs=0.5", "tracking.mode=offline")
        assert isinstance(cfg.regularizer, toy_l1.ToyL1Config)
        reports[strength] = run_pipeline(cfg)
        weights[strength] = load_file(str(out / "weights" / "sparsify.safetensors"))["fc1.weight"]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        regs = [row["reg"] for row in rows if row.get("phase") == "sparsify" and "reg" in row]
        assert regs and all(r > 0 for r in regs) == (strength > 0), f"logged penalty {regs}"
    assert reports[1e-3]["phases"]["finetune"]["metric"] > 50, reports[1e-3]
    shrink = weights[1e-3].abs().mean() / weights[0.0].abs().mean()
    assert shrink < 0.95, f"the l1 pull did not shrink fc1 (mean |w| ratio {shrink:.3f})"
    assert torch.isfinite(weights[1e-3]).all()


def test_toy_prune_rule_runs_end_to_end(tmp_path: Path) -> None:
    """The toy row-wise rule (one module, one settings class, one `register_prune_rule` entry) loads, refuses a
    setting it does not read, and prunes through the real pipeline (sharded prune step, masked fine-tune)."""
    assert type(load_config(None, ["prune={rule: toy_rowwise}"]).prune) is toy_rowwise.ToyRowwiseConfig
    with pytest.raises(ConfigError, match=r"^prune.sparsity: not a setting of prune.rule='toy_rowwise'"):
        load_config(None, ["prune={rule: toy_rowwise}", "prune.sparsity=0.5"])
    cfg = tiny_config(tmp_path, "prune={rule: toy_rowwise, fraction: 0.75}", "phases.sparsify.epochs=0.5",
                      "phases.finetune.epochs=0.5")
    report = run_pipeline(cfg)
    pruned = load_file(str(tmp_path / "weights" / "prune.safetensors"))
    for name in ("fc1.weight", "fc2.weight"):
        zeros = (pruned[name] == 0).sum(1)
        assert (zeros == round(0.75 * pruned[name].shape[1])).all(), f"{name}: zeros per row {zeros.unique()}"
    final = load_file(str(tmp_path / "weights" / "finetune.safetensors"))["fc1.weight"]
    assert torch.equal(final == 0, pruned["fc1.weight"] == 0), "fine-tuning did not keep the rule's mask"
    assert report["phases"]["prune"]["sparsity"] > 0.7, report["phases"]["prune"]


GOLDEN = json.loads((Path(__file__).parent / "golden" / "recipes_before_issue13.json").read_text())
# Settings added since the golden file, with the defaults the recipes get (issue 13 item 3 scoring / selection,
# issue 11 item 5 rounding; the rounding changes Method 2 results on purpose; grouped convs narrowed inside their
# groups: no recipe's model has a grouped conv other than depthwise, which it leaves alone).
ADDED_SINCE = {"prune": {"channel_score": "l2", "round_to": 8, "allow_inexact": False,
                         "grouped_conv": "within_groups"}}
# Recipes retuned on purpose since the golden file (issue 9, 2026-11-30: LeNet-5 prunes gradually during sparsity
# training, which takes pruning's cost from 3.7 pt to 0 and the final accuracy from -3.15 to -2.63 pt vs dense;
# lenet5_mnist inherits it).
_LENET5_RETUNED = {"regularizer": {"alpha0": 2e-5}, "prune": {"schedule": "gradual"}}
RETUNED = {"lenet5_fashion.yaml": _LENET5_RETUNED, "lenet5_mnist.yaml": _LENET5_RETUNED}


@pytest.mark.parametrize("recipe", sorted(GOLDEN))
def test_every_recipe_resolves_to_the_settings_it_had_before(recipe: str) -> None:
    """The regularizer and prune sections of each recipe, resolved on main before issue 13 (00f15e4, golden file;
    other recipes only need to load: tests/core/test_config.py): every setting the chosen strategy reads keeps
    its value, and the old kernel becomes the same gradient path and backend. Training results then follow:
    quickstart and unet_synthetic gave bit-identical weights in every phase before and after (see the branch's
    report to the lead)."""
    from sparsetrain.config import config_to_dict
    from sparsetrain.config.strategies import KERNEL_TO_SETTINGS

    cfg = config_to_dict(load_config(REPO / "configs" / recipe, ["data.path=somewhere"]))
    for section in ("regularizer", "prune"):
        before, now = dict(GOLDEN[recipe][section]), cfg[section]
        if section == "regularizer":
            before.update(KERNEL_TO_SETTINGS[before.pop("kernel")])
        before.update({k: v for k, v in ADDED_SINCE.get(section, {}).items() if k in now and k not in before})
        before.update(RETUNED.get(recipe, {}).get(section, {}))
        assert set(now) <= set(before), f"{recipe}: {section} gained settings {set(now) - set(before)}"
        assert now == {k: before[k] for k in now}, f"{recipe}: {section} changed"


def test_cli_shows_the_deprecation_as_one_warning_line() -> None:
    result = subprocess.run([sys.executable, "-m", "sparsetrain", "config", "configs/quickstart.yaml",
                             "regularizer.kernel=autograd"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ("warning: regularizer.kernel=autograd is deprecated and will be removed in the "
                                     "next release; use regularizer.gradient_path=autograd regularizer.backend=torch")
    assert "gradient_path: autograd" in result.stdout and "kernel" not in result.stdout


@pytest.mark.parametrize("recipe", sorted(GOLDEN))
def test_a_resolved_config_of_the_previous_release_still_loads(recipe: str) -> None:
    """Run directories written before issue 13 hold every setting of every strategy in config.yaml; `sparsetrain
    export` / `eval` read them back into the chosen strategy's settings (the old kernel with its warning)."""
    from sparsetrain.config import config_to_dict
    from sparsetrain.config.loader import validate

    old = {section: {**GOLDEN[recipe][section], **RETUNED.get(recipe, {}).get(section, {})}
           for section in ("regularizer", "prune")}
    with pytest.warns(FutureWarning, match="regularizer.kernel"):
        cfg = config_to_dict(validate({**old, "data": {"source": "npz", "path": "x"}}))
    now = config_to_dict(load_config(REPO / "configs" / recipe, ["data.path=somewhere"]))
    assert (cfg["regularizer"], cfg["prune"]) == (now["regularizer"], now["prune"])
    old["regularizer"].pop("count_tau")  # not the complete flat section: strict again
    with pytest.raises(ConfigError, match="not a setting of regularizer.name"):
        validate({**old, "data": {"source": "npz", "path": "x"}})


@pytest.mark.parametrize(("overrides", "finetune"), [([], "l2"), (["regularizer.finetune_l0=true"], "l0_exp"),
                                                      (["regularizer={name: grad_count}"], "l2")])
def test_the_pipeline_decides_which_phase_gets_which_penalty(overrides: list[str], finetune: str) -> None:
    """dense: l2 only; sparsify: the strategy; finetune: l2, or the strategy when it keeps its penalty there. The
    l2 stand-in keeps the strategy's alpha2, gradient path and backend."""
    from sparsetrain.pipeline import phase_penalty

    cfg = load_config(None, [*overrides, "regularizer.alpha2=3e-4", "regularizer.backend=torch"]).regularizer
    chosen = {phase: phase_penalty(cfg, phase) for phase in ("dense", "sparsify", "finetune")}
    assert chosen["sparsify"] is cfg
    assert [chosen[p].name for p in ("dense", "finetune")] == ["l2", finetune]
    for penalty in chosen.values():
        assert (penalty.alpha2, penalty.backend, penalty.gradient_path) == (3e-4, "torch", cfg.gradient_path)
