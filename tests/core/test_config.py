"""Config loading: inheritance, overrides, and one-line errors naming the bad field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrain.config import ConfigError, load_config
from tests.usage_errors import one_line

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_recipe_validates(recipe: str) -> None:
    load_config(REPO / "configs" / recipe, ["data.path=somewhere"])


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seed: 3\nregularizer: {beta: 5, alpha0: 1.0e-6}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nregularizer: {beta: 7}\n")
    cfg = load_config(tmp_path / "child.yaml", ["alpha2=0.5", "deepspeed.zero_stage=2"])
    assert (cfg.seed, cfg.regularizer.beta, cfg.regularizer.alpha0) == (3, 7, 1e-6), "base values not inherited"
    assert cfg.regularizer.alpha2 == 0.5, "bare leaf override did not resolve to regularizer.alpha2"
    assert cfg.deepspeed.zero_stage == 2


@pytest.mark.parametrize("overrides, expected", [
    (["regularizer.gamma=1"], "regularizer.gamma: unknown key"),
    (["regularizer.beta=abc"], "regularizer.beta:"),
    (["regularizer.beta=-1"], "regularizer.beta: expected a number >= 0, got -1"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage:"),
    (["data.source=npz"], "data.path: required for data.source='npz'"),
    (["task=segmentation"], "task: 'segmentation' does not match data.source='digits'"),
    (["nosuchkey=1"], "nosuchkey: unknown config key"),
    (["epochs=3"], "epochs: ambiguous override"),
    (["train.batch_size"], "override 'train.batch_size': expected key=value"),
    (["=5"], "override '=5': expected key=value (the key is empty)"),
    (["phases.sparsify.lr=100"], "phases.sparsify.lr: expected a number > 0 and <= 10 or null, got 100"),
    (["regularizer.alpha0=.inf"], "regularizer.alpha0: Input should be a finite number (got inf)"),
    (["optim.weight_decay=.nan"], "optim.weight_decay: Input should be a finite number (got nan)"),
    (["deepspeed.zero_stage=3", "regularizer.gradient_path=autograd"],
     "regularizer.gradient_path: autograd adds the penalty of whole weights to the loss"),
    (["regularizer={name:grad_count}"], "regularizer: `name:grad_count` is read as one key (YAML needs a space after "
     "the colon); write `{name: grad_count}`"),
])
def test_bad_config_gives_one_line_error(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert message.startswith(expected), f"expected {expected!r}, got {message!r}"


def test_cli_prints_one_line_error_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sparsetrain", "run", "optim.lr=0", f"out_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: optim.lr: expected a number > 0 and <= 10, got 0", result.stderr


@pytest.mark.parametrize(("override", "expected"), [
    ("regularizer.bta=1", "regularizer.bta: unknown key (did you mean regularizer.beta?)"),
    ("alph0=1", "alph0: unknown config key (did you mean regularizer.alpha0?)"),
    ("traing.batch_size=3", "traing: unknown key (did you mean train?)"),
    ("regularizer.gamma=1", "regularizer.gamma: unknown key (set to 1); regularizer takes: name, "),  # nothing close
    ("model.num_classes=5", "model.num_classes: unknown key (set to 5): the class count comes from the data (its "
     "labels, or an ImageFolder tree's class folders); for a model.checkpoint with other classes set "
     "model.reset_head=true"),  # a key other tools have: where the setting comes from here
])
def test_unknown_key_suggests_the_closest_valid_one(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("deepspeed.offload_param=cpu", "deepspeed.offload_param: unknown key (set to 'cpu'): DeepSpeed's ZeRO-3 parameter "
     "offload, which sparsetrain does not take (deepspeed.offload_optimizer=cpu offloads the optimizer state)"),
    ("deepspeed.overlap_comm=true", "deepspeed.overlap_comm: unknown key (set to True): a DeepSpeed ZeRO tuning option "
     "sparsetrain does not take (DeepSpeed's default is used)"),
    ("deepspeed.offload=cpu", "deepspeed.offload: unknown key (set to 'cpu'); closest key of deepspeed: "
     "offload_optimizer"),
    ("optim.foo=1", "optim.foo: unknown key (set to 1); optim takes: name, lr, weight_decay, momentum, schedule, "
     "warmup_steps"),
])
def test_an_unknown_key_names_the_closest_keys_of_its_section_and_deepspeeds_own_options(override: str,
                                                                                          expected: str) -> None:
    """Trial 16: `deepspeed.offload_param=cpu` gave `unknown key (got 'cpu')`, which read as if 'cpu' were the key,
    and suggested nothing."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == expected


@pytest.mark.parametrize(("override", "expected"), [
    ("deepspeed.zero_optimization.offload_param.device=cpu", "deepspeed.zero_optimization.offload_param: unknown key: "
     "DeepSpeed's ZeRO-3 parameter offload, which sparsetrain does not take (deepspeed.offload_optimizer=cpu offloads "
     "the optimizer state)"),
    ("deepspeed.zero_optimization.offload_optimizer.device=cpu", "deepspeed.zero_optimization.offload_optimizer: "
     "unknown key: it is deepspeed.offload_optimizer=cpu here (ZeRO >= 1)"),
    ("deepspeed.zero_optimization.stage3_param_persistence_threshold=0", "deepspeed.zero_optimization."
     "stage3_param_persistence_threshold: unknown key (set to 0): it is deepspeed.param_persistence_threshold here"),
    ("deepspeed.zero_optimization.stage=3", "deepspeed.zero_optimization.stage: unknown key (set to 3): DeepSpeed's "
     "zero_optimization.stage is deepspeed.zero_stage here"),
    ("deepspeed.zero_optimization.overlap_comm=true", "deepspeed.zero_optimization.overlap_comm: unknown key (set to "
     "True): a DeepSpeed ZeRO tuning option sparsetrain does not take (DeepSpeed's default is used)"),
    ("deepspeed.bf16.enabled=true", "deepspeed.bf16: unknown key: DeepSpeed's bf16 section is deepspeed.precision=bf16 "
     "here"),
    ("deepspeed.zero_optimization.foo=1", "deepspeed.zero_optimization: unknown key: DeepSpeed's zero_optimization "
     "section is deepspeed.zero_stage, deepspeed.offload_optimizer and deepspeed.param_persistence_threshold here"),
])
def test_deepspeed_keys_nested_as_in_a_ds_config_json_get_their_rows_hint(override: str, expected: str) -> None:
    """Trial 27, finding 19: `deepspeed.zero_optimization.offload_param.device=cpu` (a ds_config.json's nesting) got
    only the zero_optimization section's hint, not the README table's `offload_param` row (`not taken`) that the flat
    `deepspeed.offload_param=cpu` gets."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == expected


@pytest.mark.parametrize(("override", "expected"), [
    ("train.epochs=-1", "train.epochs: unknown key (set to -1); epochs is set at phases.dense.epochs, "
     "phases.sparsify.epochs or phases.finetune.epochs"),  # a field of other sections is named, not left unhinted
    ("model.name=", "model.name: empty value (read as null); expected str, e.g. the default lenet300_100"),
    ("deploy.formats=onnx", "deploy.formats: expected a list (got 'onnx'): write deploy.formats=[onnx] (in YAML: "
     "formats: [onnx])"),
    ("deploy.formats=[safetensors]", "deploy.formats: safetensors and bitmask are always written "
     "(model.safetensors, model.bitmask.safetensors); list only the extra formats, onnx and/or torch_export, or [] "
     "for none (got ['safetensors'])"),
])
def test_config_errors_say_what_to_write_instead(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == expected


def test_schema_shows_an_optional_section_as_a_mapping_with_its_keys() -> None:
    from sparsetrain.config.describe import format_schema, schema_rows
    from sparsetrain.config.schema import RunConfig

    rows = {row.path: row for row in schema_rows(RunConfig)}
    assert (rows["data.train_subset"].type, rows["data.train_subset"].default) == ("mapping | None", "null")
    assert [(p, rows[p].type) for p in rows if p.startswith("data.train_subset.")] == [
        ("data.train_subset.parts", "int"), ("data.train_subset.part", "int"), ("data.train_subset.seed", "int")]
    assert "Config" not in "".join(row.type for row in rows.values()), format_schema(list(rows.values()))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsetrain", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_config_errors_are_refused_before_torch_timm_or_deepspeed_are_imported(tmp_path: Path) -> None:
    """A config error (and `run --phase` with an unknown phase) is one line in well under a second: the config checks,
    built-in model names included, import none of torch, timm (which imports torchvision and torch._dynamo) or
    DeepSpeed, ~4 s together. Each command is refused as before (exit 2, its one `error:` line)."""
    refusals = [
        (["run", "configs/lenet300_fashion.yaml", "train.lr=abc"], "error: train.lr: unknown key (set to 'abc')"),
        (["run", "configs/quickstart.yaml", "--dry-run", "optim.lr=0"], "error: optim.lr: expected a number > 0"),
        (["run", "configs/quickstart.yaml", "--phase", "polish"], "error: phase: unknown phase(s) polish"),
        (["config", "configs/unet_synthetic.yaml", "regularizer.beta=50"], "error: regularizer.beta: not a setting"),
        (["launch", "configs/quickstart.yaml", "train.batch_size=0"], "error: train.batch_size: "),
        (["sweep", "configs/quickstart.yaml", "optim.lr=0,1"], "error: sweep point lr=0: optim.lr: expected a number "),
    ]
    commands = [[*argv, f"out_dir={tmp_path / 'run'}"] for argv, _ in refusals]
    code = ("import contextlib, io, json, sys\nfrom sparsetrain.cli import main\nresults = []\n"
            f"for argv in {commands!r}:\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        results.append([main(argv), err.getvalue()])\n"
            "print(json.dumps([results, sorted(m for m in ('torch', 'timm', 'deepspeed') if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    results, heavy = json.loads(done.stdout)
    for (argv, line), (code, stderr) in zip(refusals, results, strict=True):
        assert code == 2 and stderr.startswith(line) and stderr.count("\n") == 1, (argv, code, stderr)
    assert heavy == [], f"a config error imported {heavy}: the config checks must not need them"
    assert not (tmp_path / "run").exists(), "a refused command wrote its out_dir"


def test_cli_help_lists_every_command() -> None:
    from sparsetrain.cli import COMMANDS

    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS), result.stdout


def test_bench_help_lists_the_benchmarks(capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import BENCHMARKS, main

    assert main(["bench", "--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == list(BENCHMARKS) == ["kernels", "train_step", "latency", "throughput"]


def test_eval_without_target_names_only_the_target(capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        "sparsetrain eval: error: the following argument is required: target")


def test_cli_config_prints_the_resolved_recipe_and_the_schema() -> None:
    import yaml

    result = _cli("config", "configs/quickstart.yaml", "alpha0=3e-4", "train.batch_size=32")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["regularizer"]["alpha0"] == 3e-4 and resolved["train"]["batch_size"] == 32
    assert resolved["model"]["name"] == "lenet300_100", "recipe values missing from the resolved config"
    schema = _cli("config", "--schema", "regularizer")
    assert schema.returncode == 0, schema.stderr
    assert "regularizer.beta  (float, default 10.0)" in schema.stdout
    assert all(line.startswith(("regularizer.", "    ")) for line in schema.stdout.splitlines()), schema.stdout
    for typo, meant in (("regularizr", "regularizer"), ("deploy.formts", "deploy.formats")):  # as overrides do
        wrong = _cli("config", "--schema", typo)
        assert (wrong.returncode, wrong.stderr.strip()) == (
            2, f"error: config --schema: no field or section {typo!r} (did you mean {meant}?)"), wrong.stderr


CONFIG_MODEL_REFUSALS = [
    (("model.name=resnet-18",), "error: model.name: unknown timm model 'resnet-18' (closest: "),
    (("model.kwargs.depth=3",), "error: model.kwargs: lenet300_100 does not take the arguments it was given "),
    # was silent: timm's patch grid floors, so the ViT saw only the top-left 16×16 of each 30×30 image
    (("model.name=vit_tiny_patch16_224", "data.source=synthetic", "data.image_size=30"),
     "error: data.image_size: vit_tiny_patch16_224 cuts images into 16×16 patches, so the sides must be divisible by "
     "16; got 30×30 (only the top-left 16×16 would be seen); e.g. data.image_size=32, or model.kwargs.patch_size=15"),
]


@pytest.mark.parametrize(("overrides", "error"), CONFIG_MODEL_REFUSALS)
def test_cli_config_refuses_the_model_settings_run_refuses(capsys: pytest.CaptureFixture,
                                                           overrides: tuple[str, ...], error: str) -> None:
    """Fresh-user trial: `sparsetrain config RECIPE model.name=resnet-18` printed the resolved config; `run` refuses
    it (the same check, `plan.check_model`)."""
    from sparsetrain.cli import main

    capsys.readouterr()
    assert main(["config", str(REPO / "configs" / "quickstart.yaml"), *overrides]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(error) and len(err.splitlines()) == 1, err


def test_cli_config_refuses_no_input_shape_on_the_config_sizes(capsys: pytest.CaptureFixture) -> None:
    """`config` reads no data: its sizes (3×224×224 here, the digits are 1×8×8) are not the run's, so a model that
    does not take them is not refused (`run` and a `--dry-run` that reads the data check the real shapes)."""
    from sparsetrain.cli import main

    assert main(["config", str(REPO / "configs" / "quickstart.yaml"), "model.kwargs.in_chans=1"]) == 0
    capsys.readouterr()


def test_num_workers_auto_fits_the_cpus_of_each_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    data = load_config(None, ["data.num_workers=auto"]).data
    assert data.num_workers == "auto" and data.workers() == min(8, cpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus))
    assert data.workers() == 1
    assert load_config(None, ["data.num_workers=3"]).data.workers() == 3
    resnet = load_config(Path(__file__).resolve().parents[2] / "configs" / "resnet18_cifar.yaml", ["data.path=x"])
    assert resnet.data.num_workers == "auto", "the recipe's 4 workers made DataLoader warn on 2-core machines"
    for bad in ("many", "65"):
        with pytest.raises(ConfigError, match="data.num_workers"):
            load_config(None, [f"data.num_workers={bad}"])


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert str(info.value) == f"config: {recipe}:3:2: not valid YAML (expected ',' or ']', but got ':')"


def test_built_in_defaults_do_not_share_the_quickstart_run_dir(capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain run` without a recipe differs from configs/quickstart.yaml, so it writes elsewhere: a later
    `make demo` would otherwise find a run with other settings in runs/quickstart and refuse it."""
    from sparsetrain.cli import main

    defaults, quickstart = load_config(None, []), load_config("configs/quickstart.yaml", [])
    assert defaults.phases != quickstart.phases and defaults.out_dir != quickstart.out_dir
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    named = str(Path(defaults.out_dir).relative_to(Path.cwd()))  # stored absolute (README "Paths")
    assert named in " ".join(capsys.readouterr().out.split()), "run --help names another out_dir"


@pytest.mark.parametrize(("text", "line", "key"), [
    ("optim:\n  lr: 0.01\noptim:\n  name: sgd\n", 3, "optim"),  # was name sgd, lr 0.001: the first lr dropped
    ("seed: 1\noptim: {lr: 0.01, lr: 0.1}\n", 2, "lr"),  # was lr 0.1: the last won
])
def test_a_key_given_twice_in_a_recipe_is_refused_with_file_and_line(tmp_path: Path, text: str, line: int,
                                                                     key: str) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert message.startswith(f"config: {recipe}:{line}: duplicate key {key!r} (first given at line"), message
    assert "\n" not in message, message


def test_a_key_given_twice_in_an_override_mapping_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim={lr: 0.01, lr: 0.1}"])
    assert str(info.value).startswith("override 'optim={lr: 0.01, lr: 0.1}': duplicate key 'lr'"), str(info.value)


@pytest.mark.parametrize("override", ["optim.lr=yes", "deepspeed.zero_stage=yes", "seed=true", "train.threads=on",
                                      "launch.nodes=yes", "launch.mem_gb=false", "phases.dense.lr=true"])
def test_a_boolean_in_a_numeric_field_is_refused(override: str) -> None:
    """YAML's yes/true were read as the number 1 (optim.lr=yes -> 1.0, deepspeed.zero_stage=yes -> ZeRO 1)."""
    field, _, text = override.partition("=")
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == (f"{field}: expected a number, not a boolean; YAML reads true/false/yes/no/on/off as "
                               f"booleans (got {text in ('yes', 'true', 'on')})"), str(info.value)


def test_a_boolean_in_a_mapping_of_numbers_and_a_recipe_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^prune.layer_thresholds: head.weight: expected a number, not a boolean"):
        load_config(None, ["prune={rule: layer_threshold, layer_thresholds: {head.weight: true}}"])
    (tmp_path / "r.yaml").write_text("seed: true\n")
    with pytest.raises(ConfigError, match=r"^seed: expected a number, not a boolean"):
        load_config(tmp_path / "r.yaml")


def test_numbers_and_booleans_keep_their_fields() -> None:
    cfg = load_config(None, ["optim.lr=1", "seed=7", "train.grad_checkpointing=yes", "data.num_workers=auto",
                             "model.kwargs={drop_rate: 0.1, pretrained_strict: true}"])
    assert (cfg.optim.lr, cfg.seed, cfg.train.grad_checkpointing, cfg.data.num_workers) == (1.0, 7, True, "auto")


@pytest.mark.parametrize(("override", "names", "got"), [
    ("regularizer.name=[1,2]", "regularizer.name: expected one of l0_exp, l2, none, grad_count", "(got [1, 2])"),
    ("regularizer.name.bogus=1", "regularizer.name: expected one of l0_exp, l2, none, grad_count",
     "(got {'bogus': 1})"),
    ("prune.rule={a: 1}", "prune.rule: expected one of global_threshold, layer_threshold, global_sparsity, "
     "layer_sparsity, filters", "(got {'a': 1})"),
])
def test_a_list_or_mapping_as_strategy_name_names_the_valid_names(override: str, names: str, got: str) -> None:
    """Was `TypeError: unhashable type` (the registry lookup of a list or dict). Strategies other tests register
    (tests/arch) may follow the built-in names."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(names) and message.endswith(f" {got}") and "\n" not in message, message


@pytest.mark.parametrize(("override", "expected"), [
    ("data.image_size=2", "data.image_size: expected an int in 4..4096 or null, got 2"),
    ("train.batch_size=0", "train.batch_size: expected an int >= 1, got 0"),
    ("prune={rule: layer_sparsity, layer_sparsity: {a.weight: 1.0}}", "prune.layer_sparsity.a.weight: expected a "
     "number >= 0 and < 1, got 1.0"),  # a mapping's value: the bounds of the mapping's value type
])
def test_a_value_out_of_its_bounds_says_what_is_expected(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == expected


def test_image_size_out_of_bounds_is_one_line_in_sparsetrains_words(capsys: pytest.CaptureFixture,
                                                                      tmp_path: Path) -> None:
    """Trial 27, finding 15: `data.image_size=100000 --dry-run` said pydantic's `Input should be less than or equal
    to 4096 (got 100000)`, with neither the lower bound nor that null (native sizes) is taken."""
    from sparsetrain.cli import main

    capsys.readouterr()
    assert main(["run", "data.image_size=100000", f"out_dir={tmp_path / 'run'}", "--dry-run"]) == 2
    assert capsys.readouterr().err == "error: data.image_size: expected an int in 4..4096 or null, got 100000\n"


@pytest.mark.parametrize(("override", "expected"), [
    ("deepspeed.timeout_min=1e30", "deepspeed.timeout_min: expected a number > 0 and <= 525600, got 1e30"),
    ("seed=99999999999999999999", "seed: expected an int in 0..4294967295, got 99999999999999999999"),
    ("data.train_subset.seed=4294967296", "data.train_subset.seed: expected an int in 0..4294967295, got 4294967296"),
])
def test_values_the_run_cannot_take_are_refused_at_load(override: str, expected: str) -> None:
    """Were accepted by config and --dry-run, then crashed the run: OverflowError (timedelta), 'error: Overflow when
    unpacking long long' (torch.manual_seed) naming no field."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["optim.name=adamw", "optim.weight_decay=1e30"], "optim.weight_decay: 1e+30 with optim.lr 0.001 gives lr * "
     "weight_decay = 1e+27: adamw multiplies every weight by 1 - 1e+27 <= 0 at each step, zeroing the model; expected "
     "below 1 / 0.001 = 1000 (usual values 0 to 0.1)"),
    (["optim.name=sgd", "optim.lr=0.01", "optim.weight_decay=10", "phases.finetune.lr=0.2"], "optim.weight_decay: 10 "
     "with phases.finetune.lr 0.2 gives lr * weight_decay = 2: sgd multiplies every weight by 1 - 2 <= 0 at each "
     "step, zeroing the model; expected below 1 / 0.2 = 5 (usual values 0 to 0.1)"),
])
def test_a_weight_decay_that_zeroes_the_weights_each_step_is_refused_at_load(overrides: list[str],
                                                                             expected: str) -> None:
    """Was accepted and collapsed the run to chance: adamw and sgd scale every weight by 1 - lr * weight_decay per
    step, <= 0 from lr * weight_decay = 1 on; Adam's coupled decay has no such bound (tests/core/test_collapse.py)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value) == expected
    assert load_config(None, ["optim.name=adamw", "optim.weight_decay=999"]).optim.weight_decay == 999
    assert load_config(None, ["optim.weight_decay=1e30"]).optim.weight_decay == 1e30  # adam: the collapse hint


def test_a_run_at_the_largest_seed_and_timeout_trains(tmp_path: Path) -> None:
    """The bounds are ones the run takes: torch's process group (timeout_min), numpy/mnist1d and the torch generators
    seeded from `seed` (phase and epoch seeds derived from it)."""
    from sparsetrain.config.schema import MAX_SEED, MAX_TIMEOUT_MIN
    from sparsetrain.data.builtin import load_mnist1d_data
    from tests.core.conftest import tiny_overrides
    from tests.core.subprocess_runs import run_cli

    load_mnist1d_data(load_config(None, ["data.source=mnist1d"]).data, MAX_SEED)  # np.random.seed's range
    overrides = tiny_overrides(tmp_path / "run", f"seed={MAX_SEED}", f"deepspeed.timeout_min={MAX_TIMEOUT_MIN}",
                               "phases.sparsify.epochs=0.1", "phases.finetune.epochs=0.1", "prune.sparsity=0.3")
    result = run_cli(overrides)  # without the torch.distributed variables of earlier in-process runs
    assert result.returncode == 0, result.stderr[-2000:]


def test_recipe_files_that_are_not_recipes_name_the_file_and_what_is_expected(tmp_path: Path) -> None:
    """A binary recipe was "error: 'utf-8' codec can't decode byte ...", `base: [base.yaml]` was "file not found:
    .../['base.yaml']" and a folder was "file not found" though it exists."""
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256)))
    (tmp_path / "listed.yaml").write_text("base: [base.yaml]\nseed: 1\n")
    (tmp_path / "missing.yaml").write_text("base: nope.yaml\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")
    cases = {
        binary: f"config: {binary} is not a YAML recipe (byte 8 is not UTF-8 text: a binary file?); expected a YAML "
                "text file such as configs/quickstart.yaml",
        tmp_path / "listed.yaml": f"base: expected one recipe file name (relative to its folder) in "
                                  f"{tmp_path / 'listed.yaml'}, got ['base.yaml']; e.g. base: base.yaml",
        tmp_path / "missing.yaml": f"base: file not found: {tmp_path / 'nope.yaml'} (the base of "
                                   f"{tmp_path / 'missing.yaml'})",
        tmp_path: f"config: {tmp_path} is a folder; expected a YAML recipe file such as configs/quickstart.yaml",
        run: f"config: {run} is a folder; expected a YAML recipe file; a run directory's recipe is {run}/config.yaml",
    }
    for recipe, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(recipe)
        assert str(info.value) == expected


def test_cli_config_of_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sparsetrain", "config", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: config: {tmp_path} is a folder; expected a YAML "
                                      "recipe file such as configs/quickstart.yaml"), result.stderr


def test_fewer_model_outputs_than_data_classes_are_refused_before_the_run_opens(capsys: pytest.CaptureFixture,
                                                                               tmp_path: Path) -> None:
    """Was `IndexError: Target 4 is out of bounds` from cross_entropy, a traceback after the run opened."""
    from sparsetrain.cli import main

    capsys.readouterr()
    out_dir = tmp_path / "run"
    assert main(["run", "model.kwargs={num_classes: 3}", f"out_dir={out_dir}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: model.kwargs.num_classes: 3 model outputs for data with 10 classes (labels 0-9); expected "
                   "at least 10, or leave it out (the class count comes from the data)\n"), err
    assert not out_dir.exists()


def test_a_patch_size_that_does_not_divide_native_images_is_refused_by_the_dry_run(capsys: pytest.CaptureFixture,
                                                                                  tmp_path: Path) -> None:
    """The digits keep their native 8×8 (data.image_size does not resize them): the line names the patch size."""
    from sparsetrain.cli import main

    capsys.readouterr()
    assert main(["run", "model.name=vit_tiny_patch16_224", "model.kwargs={patch_size: 3, depth: 1}",
                 f"out_dir={tmp_path / 'run'}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: model.kwargs.patch_size: vit_tiny_patch16_224 cuts images into 3×3 patches, but the images "
                   "of data.source=digits are 8×8 (only the top-left 6×6 would be seen); give a patch size dividing "
                   "both sides, e.g. model.kwargs.patch_size=2\n"), err


@pytest.mark.parametrize(("source", "split"), [
    ("voc", "ImageSets/Segmentation/val.txt"), ("npz", "the file's x_test / y_test"), ("idx", "the t10k files"),
    ("imagefolder", "the val/ or test/ folder"), ("mnist1d", "its own test set")])
def test_test_fraction_set_for_a_source_with_its_own_split_is_refused(source: str, split: str) -> None:
    """Trial 20: `eval RUN data.test_fraction=1.0` on voc still scored val.txt alone and `run ... data.source=voc
    data.test_fraction=0.9 --dry-run` passed: the sources with their own test split ignored it silently. Set on the
    command line (even to the default) or in a recipe to another value: one line; a stored config (the default for
    every source) still reloads."""
    from sparsetrain.config import config_to_dict
    from sparsetrain.config.loader import validate

    task = ["task=segmentation"] if source == "voc" else []
    expected = (f"data.test_fraction: read by data.source digits, synthetic, seg_synthetic, seg_folder only, not "
                f"{source!r}, whose test split is {split}; leave it out")
    for value in ("0.9", "1.0", "0.2"):
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"data.source={source}", *task, f"data.test_fraction={value}"], plan_only=True)
        assert str(err.value) == expected, str(err.value)
    stored = config_to_dict(load_config(None, [f"data.source={source}", *task, "data.path=somewhere"]))
    assert stored["data"]["test_fraction"] == 0.2 and validate(stored).data.source == source, "a run dir reloads"
    with pytest.raises(ConfigError, match="data.test_fraction: read by"):
        validate({**stored, "data": {**stored["data"], "test_fraction": 0.5}})


def test_test_fraction_of_a_dry_run_on_voc_is_one_line(capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    assert main(["run", "task=segmentation", "data.source=voc", "data.test_fraction=0.9", "--dry-run"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors == ["error: data.test_fraction: read by data.source digits, synthetic, seg_synthetic, seg_folder "
                      "only, not 'voc', whose test split is ImageSets/Segmentation/val.txt; leave it out"], errors


@pytest.mark.parametrize(("override", "named"), [
    ("deepspeed=ds.json", "deepspeed: expected a mapping of deepspeed.* settings (got 'ds.json'); "),
    ("deepspeed.config=/tmp/ds.json", "deepspeed.config: unknown key (set to '/tmp/ds.json'): "),
    ("deepspeed.config_file=ds.json", "deepspeed.config_file: unknown key (set to 'ds.json'): "),
])
def test_a_deepspeed_json_is_refused_saying_where_its_settings_go(override: str, named: str) -> None:
    """Trial 26, finding 8: `deepspeed=ds.json` gave pydantic's `Input should be a valid dictionary or instance of
    DeepSpeedConfig`, `deepspeed.config=ds.json` only the section's keys; neither said a DeepSpeed JSON is not
    taken nor where its settings go."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    said = str(info.value)
    assert said.startswith(f"{named}a DeepSpeed config JSON is not taken: sparsetrain writes DeepSpeed's config from "
                           "its deepspeed.* keys (zero_optimization.stage -> deepspeed.zero_stage, "), said
    assert said.endswith('README "DeepSpeed settings")') and "\n" not in said and "DeepSpeedConfig" not in said, said


def test_deepspeed_precision_fp16_is_refused_with_the_reason() -> None:
    """Trial 26, finding 8: `deepspeed.precision=fp16` said only which values are allowed, without the why that
    `deepspeed.fp16.enabled` gets."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["deepspeed.precision=fp16"])
    assert str(info.value) == ("deepspeed.precision: Input should be 'fp32' or 'bf16' (got 'fp16'): DeepSpeed's fp16 "
                               "(loss scaling) is not taken; bf16 (fp32 masters, no loss scaling) is the reduced "
                               "precision here"), str(info.value)


def test_the_dry_run_refuses_a_batch_the_planned_ranks_do_not_divide(capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Trial 26, finding 9: with WORLD_SIZE=2 (torchrun) the dry run planned `micro-batch 16` for batch 100 and
    gradient accumulation 3 (16 × 2 × 3 = 96) and exited 0, where `run` refuses it at once."""
    from sparsetrain.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    capsys.readouterr()
    assert main(["run", "train.batch_size=100", "deepspeed.gradient_accumulation_steps=3",
                 f"out_dir={tmp_path / 'run'}", "--dry-run"]) == 2
    assert capsys.readouterr().err == ("error: train.batch_size: 100 is not divisible by world_size 2 × "
                                       "gradient_accumulation_steps 3 = 6\n")
    assert main(["run", "train.batch_size=96", "deepspeed.gradient_accumulation_steps=3",
                 f"out_dir={tmp_path / 'run'}", "--dry-run"]) == 0
    assert "micro-batch 16" in capsys.readouterr().out


def test_a_refusal_every_rank_makes_alike_is_printed_by_rank_0_only(tmp_path: Path) -> None:
    """Trial 26, finding 9: under torchrun the batch-size refusal came once per rank; a real 2-rank run prints it
    once (rank 0), exit 2 on every rank, and nothing is written."""
    from tests.core.subprocess_runs import run_cli

    result = run_cli(["train.batch_size=100", "deepspeed.gradient_accumulation_steps=3", "tracking.mode=disabled",
                      f"out_dir={tmp_path / 'run'}"], nproc=2)
    said = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert said == ["error: train.batch_size: 100 is not divisible by world_size 2 × gradient_accumulation_steps 3 "
                    "= 6"], result.stderr[-3000:]
    assert result.returncode != 0 and not (tmp_path / "run" / "state.json").exists()
    from sparsetrain.errors import InputError, alike_on_every_rank, said_here

    assert not said_here(alike_on_every_rank(InputError("x")), "1") and said_here(InputError("x"), "1")


def test_a_prune_refusal_on_two_ranks_is_printed_by_rank_0_only(tmp_path: Path) -> None:
    """Trial 29, F2: under torchrun the prune phase's `would prune all ... of fc1.weight` came once per rank (the
    thresholds are reduced over the ranks, so every rank refuses alike)."""
    from tests.core.subprocess_runs import run_cli

    result = run_cli(["phases.dense.enabled=false", "phases.sparsify.epochs=0", "prune.threshold=100",
                      "tracking.mode=disabled", "deploy.formats=[]", "deploy.latency=false",
                      f"out_dir={tmp_path / 'run'}"], nproc=2)
    said = [line for line in result.stderr.splitlines() if line.startswith(("error:", "rank 1:"))]
    assert len(said) == 1 and said[0].startswith("error: prune.threshold: ") and "would prune all" in said[0], \
        result.stderr[-3000:]
    assert result.returncode != 0


def test_deepspeeds_config_flag_says_a_deepspeed_json_is_not_taken(capsys: pytest.CaptureFixture) -> None:
    """Trial 26, finding 8: `run recipe.yaml --deepspeed_config ds.json` said only `unrecognized option`."""
    from sparsetrain.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["run", "--deepspeed_config", "ds.json"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("sparsetrain run: error: unrecognized option --deepspeed_config: "
                                                   "a DeepSpeed config JSON is not taken"), err
    assert err.count("\n") == 1, err
