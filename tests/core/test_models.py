"""The model factory: timm's builder for sparsetrain's models, data-derived sizes, weights only from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from sparsetrain.config.schema import ModelConfig
from sparsetrain.models.factory import build_model, model_kwargs


@pytest.mark.parametrize(("name", "shape", "conv"), [("lenet5", (1, 28, 28), torch.nn.Conv2d),
                                                      ("lenet5", (1, 40), torch.nn.Conv1d),
                                                      ("lenet300_100", (1, 40), None),
                                                      ("vit_tiny_patch16_224", (3, 32, 32), None)])
def test_fixed_input_size_models_get_the_data_size(name: str, shape: tuple[int, ...], conv: type | None) -> None:
    model = build_model(ModelConfig(name=name), shape[0], 10, shape)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    assert model.pretrained_cfg["fixed_input_size"], f"{name}: built without timm's pretrained config"
    if conv is not None:
        assert isinstance(model.conv1, conv), f"{name} on {shape}: {type(model.conv1).__name__}"


def test_models_with_free_input_size_get_no_img_size() -> None:
    assert "img_size" not in model_kwargs(ModelConfig(name="unet_tiny"), 3, 1, (3, 32, 32))
    assert "img_size" not in model_kwargs(ModelConfig(name="resnet18"), 3, 10, (3, 32, 32))


def test_pretrained_weights_come_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model(ModelConfig(name="lenet5"), 1, 10, (1, 28, 28))
    path = tmp_path / "lenet5.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = build_model(ModelConfig(name="lenet5", pretrained=True, pretrained_file=str(path)), 1, 10, (1, 28, 28))
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), f"{name} not loaded from {path}"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "lenet5", "pretrained": True}, "model.pretrained: no weights for lenet5 in the local Hugging Face "
     "cache; sparsetrain never downloads .the hub is off.: give model.pretrained_file=PATH"),
    ({"name": "lenet5", "pretrained": True, "pretrained_file": "/nonexistent.pth"}, "model.pretrained_file: file "),
    ({"name": "no_such_model"}, "model.name: unknown timm model"),
])
def test_bad_model_settings_give_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        build_model(ModelConfig(**kwargs), 1, 10, (1, 28, 28))
    assert "\n" not in str(err.value)


def test_an_unknown_model_name_suggests_the_closest_timm_names_and_lists_sparsetrains() -> None:
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(name="resnet10x"), 1, 10, (1, 28, 28))
    assert str(err.value) == ("model.name: unknown timm model 'resnet10x' (closest: resnet10t, resnet101, resnet101s; "
                              "sparsetrain's own: lenet5, lenet300_100, lraspp_mobilenetv3_large_100, "
                              "lraspp_mobilenetv3_small_100, unet, unet_small, unet_tiny)")


def test_the_built_in_names_the_config_checks_are_the_models_registered_with_timm() -> None:
    """`model_names.OWN_MODELS` (accepted without importing timm) lists exactly the models sparsetrain registers."""
    import sparsetrain.models
    from sparsetrain.model_names import OWN_MODELS

    assert sorted(OWN_MODELS) == sorted(timm.list_models(module=list(sparsetrain.models.OWN_MODULES)))


def test_loading_logs_sparsetrain_lines_not_timms(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = build_model(ModelConfig(name="lenet5"), 1, 10, (1, 28, 28))
    path = tmp_path / "lenet5.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    with caplog.at_level("INFO"):
        build_model(ModelConfig(name="lenet5", checkpoint=str(path)), 1, 10, (1, 28, 28))
        with pytest.raises(ValueError):
            build_model(ModelConfig(name="resnet18", pretrained=True), 1, 10, (1, 28, 28))
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if m.startswith(("Loaded", "Loading pretrained"))], said
    assert f"model.checkpoint: loaded {len(source.state_dict())} tensors" in "\n".join(said), said


def _vit_file(tmp_path: Path, classes: int) -> tuple[Path, dict]:
    """A timm vit_tiny_patch16_224 (32x32 inputs, patch 4) with `classes` classes, saved as a state dict."""
    torch.manual_seed(classes)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=classes, img_size=32, patch_size=4)
    path = tmp_path / f"vit_{classes}.pth"
    torch.save(source.state_dict(), path)
    return path, source.state_dict()


def _pretrained_vit(path: Path) -> torch.nn.Module:
    return build_model(ModelConfig(name="vit_tiny_patch16_224", pretrained=True, pretrained_file=str(path),
                                   kwargs={"patch_size": 4}), 3, 3, (3, 32, 32))


def test_pretrained_file_with_the_datas_classes_keeps_its_classifier(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Trial 16: timm's load_pretrained drops a file's classifier whenever num_classes differs from the pretrained
    config's (1000), so a user's own 3-class ViT lost its head silently. Now every tensor is the file's."""
    path, source = _vit_file(tmp_path, 3)
    with caplog.at_level("INFO"):
        loaded = _pretrained_vit(path).state_dict()
    for name, tensor in source.items():
        assert torch.equal(loaded[name], tensor), f"{name} not loaded from {path}"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model.pretrained:")]
    assert said == [f"model.pretrained: vit_tiny_patch16_224 weights from {path} (classifier head.weight (3, 192) "
                    "from the file too)"], said


def test_pretrained_file_with_other_classes_says_the_classifier_was_reinitialized(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, source = _vit_file(tmp_path, 5)
    with caplog.at_level("INFO"):
        loaded = _pretrained_vit(path).state_dict()
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], source["blocks.0.attn.qkv.weight"])
    assert loaded["head.weight"].shape == (3, 192)
    said = [r for r in caplog.records if r.getMessage().startswith("model.pretrained:")]
    assert len(said) == 1 and said[0].levelname == "WARNING", said  # the file's head is not timm's 1000 classes
    assert said[0].getMessage() == (
        f"model.pretrained: vit_tiny_patch16_224 weights from {path}; classifier re-initialized: the file has "
        "head.weight (5, 192), the model head.weight (3, 192) (the data's 3 classes; timm loads a pretrained "
        "classifier only when the class counts agree); to start from a model you trained, give it as "
        "model.checkpoint=PATH instead (every tensor checked; model.reset_head=true to re-initialize its classifier)")
